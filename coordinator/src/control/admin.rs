//! What the admin API and the login pages ask of the control plane: policy swaps, revocation,
//! device attributes, the device list, and the completion of interactive logins.

use super::core::merged_posture;
use super::login::{Identity, LoginError, LoginStatus, Purpose, Refused};
use super::{now, ControlError, ControlPlane};
use crate::store::{Decision, PolicyVersion};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use tracing::{info, warn};
use ztmesh_common::addr::overlay_addrs;
use ztmesh_common::ids::NodeId;
use ztmesh_common::policy::Policy;
use ztmesh_common::posture::{attr, AttrValue};
use ztmesh_common::time::UnixMillis;

/// One device as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceSummary {
    pub id: NodeId,
    pub hostname: String,
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// `Some(true)` passed its last posture evaluation, `Some(false)` failed it (see
    /// `posture_failures`), `None` never evaluated.
    pub posture_ok: Option<bool>,
    pub posture_failures: Vec<String>,
    /// End of its current credential, when it holds one.
    pub credential_expires_at: Option<UnixMillis>,
    /// Whether it is in the mesh now (admitted, unexpired, unrevoked).
    pub admitted: bool,
    /// Whether its control connection is up.
    pub online: bool,
    pub revoked: bool,
    pub last_seen: Option<UnixMillis>,
}

/// The name policy errors are located in when the admin gave no file name.
pub const DEFAULT_POLICY_NAME: &str = "policy.hujson";

/// How an admin revocation is worded, to the device and in `revoked_reason` (followed by
/// the admin's reason, if any). Stored with the device, so later refusals quote it as is.
pub(crate) const ADMIN_REVOKED: &str = "revoked by an administrator";

/// A policy that is in force, and what it means for devices an admin may not have meant.
#[derive(Debug)]
pub struct PolicySwap {
    pub version: PolicyVersion,
    /// Tags carried by connected devices that the policy does not declare in `tagOwners`,
    /// with those devices' hostnames: no rule can name such a tag, so these devices keep only
    /// what rules on `*`, `autogroup:tagged` or addresses give them. A warning, not a
    /// refusal: retiring a tag is a legitimate change, but rarely one made by accident.
    pub undeclared_tags: BTreeMap<String, Vec<String>>,
}

impl ControlPlane {
    /// Validate `text`, run its tests, store it, swap it in and push every changed view.
    /// Nodes that no longer pass the admission posture are revoked. A refused policy leaves
    /// the running one in force.
    pub async fn set_policy(&self, text: &str, author: &str) -> Result<PolicySwap, ControlError> {
        self.set_policy_named(text, DEFAULT_POLICY_NAME, author)
            .await
    }

    /// [`ControlPlane::set_policy`], with errors located in `file_name` (the file the admin
    /// gave, so that `file:line:column` points at it).
    pub async fn set_policy_named(
        &self,
        text: &str,
        file_name: &str,
        author: &str,
    ) -> Result<PolicySwap, ControlError> {
        let policy = Policy::parse(text, file_name)
            .map_err(|e| ControlError::InvalidPolicy(e.to_string()))?;
        let failures = policy.run_tests();
        if !failures.is_empty() {
            return Err(ControlError::PolicyTestsFailed(
                failures.iter().map(|f| f.to_string()).collect(),
            ));
        }
        let (text, author_s) = (text.to_owned(), author.to_owned());
        let version = self
            .blocking(move |s| s.put_policy(&text, &author_s, now()))
            .await??;
        let policy = Arc::new(policy);
        let (failing, undeclared_tags) = {
            let mut core = self.core();
            core.policy = policy.clone();
            let pushes = core.mesh.set_policy(policy.clone());
            core.push_all(pushes);
            let mut failing = Vec::new();
            let mut undeclared: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (id, st) in &core.nodes {
                if let Err(reasons) = policy.check_admission(&st.inventory(*id)) {
                    failing.push((*id, reasons));
                }
                for tag in st.tags.iter().filter(|t| !policy.is_declared_tag(t)) {
                    undeclared
                        .entry(tag.clone())
                        .or_default()
                        .push(st.hostname.clone());
                }
            }
            (failing, undeclared)
        };
        info!(
            version = version.version,
            author,
            failing = failing.len(),
            "policy swapped"
        );
        for (id, reasons) in failing {
            self.revoke(
                id,
                "system",
                format!(
                    "posture check failed under the new policy: {}",
                    reasons.join("; ")
                ),
                false,
            )
            .await;
        }
        if !undeclared_tags.is_empty() {
            warn!(tags = ?undeclared_tags.keys().collect::<Vec<_>>(),
                "the new policy does not declare tags that connected devices carry");
        }
        Ok(PolicySwap {
            version,
            undeclared_tags,
        })
    }

    /// Revoke a device: out of every view now, `Revoked` to the device, and the durable
    /// revoked flag so it cannot log in again.
    pub async fn revoke_device(&self, id: NodeId, reason: &str) -> Result<(), ControlError> {
        let exists = self.blocking(move |s| s.get_device(id)).await??;
        if exists.is_none() {
            return Err(ControlError::UnknownDevice(id.to_string()));
        }
        let reason = if reason.is_empty() {
            ADMIN_REVOKED.to_owned()
        } else {
            format!("{ADMIN_REVOKED}: {reason}")
        };
        self.revoke(id, "admin", reason, true).await;
        Ok(())
    }

    /// Set a `custom:*` attribute (admin or MDM/EDR feed); `None` removes it. The node is
    /// re-evaluated at once: its views may change, or it may be revoked.
    pub async fn set_device_attr(
        &self,
        id: NodeId,
        key: &str,
        value: Option<AttrValue>,
    ) -> Result<(), ControlError> {
        if !key.starts_with(attr::CUSTOM_PREFIX) || key.len() <= attr::CUSTOM_PREFIX.len() {
            return Err(ControlError::NotCustomAttr(key.to_owned()));
        }
        let (k, v) = (key.to_owned(), value.clone());
        let updated = self
            .blocking(move |s| {
                s.update_device(id, &mut |d| match &v {
                    Some(v) => {
                        d.custom_attrs.insert(k.clone(), v.clone());
                    }
                    None => {
                        d.custom_attrs.remove(&k);
                    }
                })
            })
            .await?;
        let record = match updated {
            Ok(r) => r,
            Err(crate::store::StoreError::NotFound(_)) => {
                return Err(ControlError::UnknownDevice(id.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let verdict = {
            let mut core = self.core();
            let policy = core.policy.clone();
            let Some(st) = core.nodes.get_mut(&id) else {
                return Ok(());
            };
            st.custom = record.custom_attrs.clone();
            let inv = st.inventory(id);
            let verdict = policy.check_admission(&inv);
            if verdict.is_ok() {
                let pushes = core.mesh.update_inventory(inv);
                core.push_all(pushes);
            }
            verdict
        };
        if let Err(reasons) = verdict {
            self.revoke(
                id,
                "system",
                format!(
                    "posture check failed after {key} changed: {}",
                    reasons.join("; ")
                ),
                false,
            )
            .await;
        }
        Ok(())
    }

    /// Every known device with its live state.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, ControlError> {
        let records = self.blocking(|s| s.list_devices()).await??;
        let core = self.core();
        Ok(records
            .into_iter()
            .map(|d| {
                let live = core.nodes.get(&d.id);
                let addresses = overlay_addrs(d.host_index)
                    .map(|(a, b)| vec![IpAddr::from(a), IpAddr::from(b)])
                    .unwrap_or_default();
                DeviceSummary {
                    id: d.id,
                    hostname: live.map(|s| s.hostname.clone()).unwrap_or(d.hostname),
                    user: d.user,
                    tags: d.tags,
                    addresses,
                    posture_ok: d.posture_ok,
                    posture_failures: d.posture_failures,
                    credential_expires_at: live.map(|s| s.credential.expires_at),
                    admitted: live.is_some(),
                    online: core.sessions.contains_key(&d.id),
                    revoked: d.revoked,
                    last_seen: d.last_seen,
                }
            })
            .collect())
    }

    /// The posture attributes the policy currently sees for an admitted node.
    pub fn device_posture(&self, id: NodeId) -> Option<ztmesh_common::posture::PostureAttrs> {
        let core = self.core();
        core.nodes
            .get(&id)
            .map(|s| merged_posture(&s.reported, &s.custom))
    }

    /// The web layer finished an interactive login (local account form or OIDC callback).
    pub async fn complete_login(
        &self,
        login_id: &str,
        identity: Identity,
    ) -> Result<(), LoginError> {
        match self.inner.logins.complete(login_id, &identity, now())? {
            Purpose::Join { tx, .. } => tx.send(Ok(identity)).map_err(|_| LoginError::DeviceGone),
            Purpose::Reauth { node, .. } => {
                self.reauth_done(node, identity).await;
                Ok(())
            }
        }
    }

    /// The web layer refused a sign-in (OIDC: the IdP said no, or its answer failed a check).
    /// Audited; a device waiting to join gets `Refused` with the reason, so that `ztmesh up`
    /// says why instead of waiting for the login to time out.
    pub async fn fail_login(&self, login_id: &str, user: Option<&str>, reason: &str) {
        let actor = user.map_or_else(|| "oidc".to_owned(), |u| format!("user:{u}"));
        let reason = format!("sign-in refused: {reason}");
        let (action, subject) = match self.inner.logins.refuse(login_id, &reason) {
            Some(Refused::Join { hostname }) => ("admission", hostname),
            Some(Refused::Reauth { node, .. }) => ("reauthentication", format!("node:{}", node.0)),
            None => {
                info!(%actor, %reason, "sign-in refused for a login that is no longer pending");
                return;
            }
        };
        info!(%actor, %subject, %reason, "sign-in refused");
        self.audit(actor, action, subject, Decision::Deny, reason)
            .await;
    }

    /// Where a login stands (`None`: unknown id).
    pub fn login_status(&self, login_id: &str) -> Option<LoginStatus> {
        self.inner.logins.status(login_id, now())
    }
}
