//! What a device's session asks of the control plane: login (pre-auth key or interactive),
//! admission (posture gate + credential), renewal, posture reports, endpoints, logout.

use super::core::{merged_posture, NodeState, Outbox, SessionHandle, OUTBOX};
use super::deadlines::Kind;
use super::login::{Identity, JoinOutcome, Purpose};
use super::{issue, now, ControlError, ControlPlane};
use crate::identity::AuthMethod;
use crate::store::{Decision, DeviceRecord, LoginMethod, NewDevice, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use ztmesh_common::addr::overlay_addrs;
use ztmesh_common::ids::{MachinePublicKey, NodeId};
use ztmesh_common::posture::{attr, PostureAttrs};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::{check_hostname, LoginAuth, LoginRequest, RenewRequest, ServerMsg};

/// At most this many endpoints per node are kept and passed on.
const MAX_ENDPOINTS: usize = 16;

/// The outcome of a login step.
pub(crate) enum LoginStep {
    Refused(Vec<String>),
    /// Admitted: the credential and the full view are queued on `rx`, deltas follow.
    Admitted {
        node: NodeId,
        rx: Outbox,
    },
    /// The user must log in in a browser; `wait` yields the identity when done.
    Interactive {
        login_id: String,
        url: String,
        wait: oneshot::Receiver<JoinOutcome>,
    },
}

/// How a `Renew` was answered.
pub(crate) enum RenewOutcome {
    /// On the session's queue: a credential, `Revoked` or `ReauthRequired` (or, after a store
    /// failure, nothing: the client asks again).
    Queued,
    /// Refused; the current credential stays valid until it expires.
    Refused(Vec<String>),
    /// The node is no longer in the mesh (revoked, expired, logged out).
    NotInMesh(String),
    /// A newer connection of the same device serves it now.
    Replaced,
}

/// Why a `Renew` that keeps the WireGuard key is refused.
const SAME_KEY: &str = "renewal refused: a renewal must bring a new WireGuard key (rotating the \
                        key is its point); the current credential stays valid until it expires";

/// What a device that is no longer in the mesh is told when it asks for something.
pub(crate) const NOT_IN_MESH: &str =
    "this device is no longer in the mesh (revoked, expired or logged out); log in again";

/// Who owns a device, as set by the login that is admitting it.
struct Owner {
    user: Option<String>,
    groups: Vec<String>,
    tags: Vec<String>,
    method: LoginMethod,
    login_expires_at: Option<UnixMillis>,
    refresh_token: Option<String>,
    /// The IdP's subject, to check that a refresh names the same user (not stored durably).
    subject: Option<String>,
}

impl Owner {
    fn of(d: &DeviceRecord) -> Option<Owner> {
        Some(Owner {
            user: d.user.clone(),
            groups: d.user_groups.clone(),
            tags: d.tags.clone(),
            method: d.login_method?,
            login_expires_at: d.login_expires_at,
            refresh_token: d.refresh_token.clone(),
            subject: None,
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> LoginStep {
    warn!(error = %e, "store failure during login");
    LoginStep::Refused(vec![
        "the coordinator could not reach its storage; try again".into(),
    ])
}

/// A device cannot report `custom:*` attributes: those come from admins and MDM/EDR feeds.
fn device_reported(p: &PostureAttrs) -> PostureAttrs {
    p.iter()
        .filter(|(k, _)| !k.starts_with(attr::CUSTOM_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn login_method(m: AuthMethod) -> LoginMethod {
    match m {
        AuthMethod::LocalTotp => LoginMethod::LocalTotp,
        AuthMethod::Oidc => LoginMethod::Oidc,
    }
}

fn node_subject(id: NodeId) -> String {
    format!("node:{}", id.0)
}

impl ControlPlane {
    /// First step of a login.
    pub(crate) async fn login(
        &self,
        conn: u64,
        mk: MachinePublicKey,
        req: &LoginRequest,
    ) -> LoginStep {
        if let Err(reason) = check_hostname(&req.hostname) {
            self.audit(
                format!("machine:{mk}"),
                "admission",
                "invalid hostname".into(),
                Decision::Deny,
                reason.clone(),
            )
            .await;
            return LoginStep::Refused(vec![reason]);
        }
        let device = match self.blocking(move |s| s.device_by_machine_key(&mk)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return unavailable(e),
            Err(e) => return unavailable(e),
        };
        if let Some(d) = &device {
            if d.revoked {
                return self.refuse_revoked(d).await;
            }
        }
        let t = now();
        match &req.auth {
            LoginAuth::AuthKey(key) => self.login_with_key(conn, mk, req, device, key).await,
            LoginAuth::Interactive => {
                // A tagged device keeps its enrollment; a user device its unexpired login session.
                if let Some(d) = device {
                    let tagged = d.login_method == Some(LoginMethod::PreauthKey);
                    let session_valid = d.user.is_some()
                        && d.login_expires_at.is_some_and(|e| e > t)
                        && matches!(
                            d.login_method,
                            Some(LoginMethod::LocalTotp | LoginMethod::Oidc)
                        );
                    if tagged || session_valid {
                        if let Some(owner) = Owner::of(&d) {
                            return self.admit(conn, d, owner, req, "existing session").await;
                        }
                    }
                }
                let (tx, rx) = oneshot::channel();
                let purpose = Purpose::Join {
                    tx,
                    hostname: req.hostname.clone(),
                };
                match self.inner.logins.start(purpose, t) {
                    Some(id) => LoginStep::Interactive {
                        url: self.login_url(&id),
                        login_id: id,
                        wait: rx,
                    },
                    None => LoginStep::Refused(vec![
                        "too many logins are pending; try again later".into(),
                    ]),
                }
            }
        }
    }

    async fn refuse_revoked(&self, d: &DeviceRecord) -> LoginStep {
        // The stored reason already starts with "revoked by an administrator" (it is what the
        // device was told at the time); saying it again here doubled it.
        use super::admin::ADMIN_REVOKED;
        let why = match d.revoked_reason.as_deref() {
            Some(r) if r.starts_with(ADMIN_REVOKED) => r.to_owned(),
            Some(r) => format!("{ADMIN_REVOKED}: {r}"),
            None => ADMIN_REVOKED.to_owned(),
        };
        let reason = format!("this device ({}) was {why}", d.id);
        self.audit(
            node_subject(d.id),
            "admission",
            d.hostname.clone(),
            Decision::Deny,
            reason.clone(),
        )
        .await;
        LoginStep::Refused(vec![reason])
    }

    async fn login_with_key(
        &self,
        conn: u64,
        mk: MachinePublicKey,
        req: &LoginRequest,
        device: Option<DeviceRecord>,
        key: &str,
    ) -> LoginStep {
        let t = now();
        let (dev, created) = match device {
            // Enrolled before: the machine-key proof is its identity; the key is not used again.
            Some(d) if d.login_method == Some(LoginMethod::PreauthKey) => {
                if let Some(owner) = Owner::of(&d) {
                    return self
                        .admit(conn, d, owner, req, "enrolled tagged device")
                        .await;
                }
                (d, false)
            }
            Some(d) => (d, false),
            None => {
                let new = NewDevice {
                    machine_key: mk,
                    hostname: req.hostname.clone(),
                    user: None,
                    user_groups: vec![],
                    tags: vec![],
                    created_at: t,
                };
                match self.blocking(move |s| s.create_device(new)).await {
                    Ok(Ok(d)) => (d, true),
                    Ok(Err(StoreError::AlreadyExists(_))) => {
                        return LoginStep::Refused(vec![
                            "another login of this device is in progress".into(),
                        ])
                    }
                    Ok(Err(e)) => return unavailable(e),
                    Err(e) => return unavailable(e),
                }
            }
        };
        let id = dev.id;
        let key = key.to_owned();
        let consumed = match self.blocking(move |s| s.consume_preauth(&key, id, t)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return unavailable(e),
            Err(e) => return unavailable(e),
        };
        let rec = match consumed {
            Ok(rec) => rec,
            Err(e) => {
                // Detailed in the audit log, coarse towards the device.
                self.audit(
                    node_subject(id),
                    "admission",
                    req.hostname.clone(),
                    Decision::Deny,
                    e.to_string(),
                )
                .await;
                if created {
                    let _ = self.blocking(move |s| s.delete_device(id)).await;
                }
                return LoginStep::Refused(vec![
                    "the pre-auth key is invalid, expired, revoked or already used".into(),
                ]);
            }
        };
        let owner = Owner {
            user: None,
            groups: vec![],
            tags: rec.tags.clone(),
            method: LoginMethod::PreauthKey,
            login_expires_at: None,
            refresh_token: None,
            subject: None,
        };
        self.admit(conn, dev, owner, req, &format!("pre-auth key {}", rec.id))
            .await
    }

    /// Second step of an interactive login, once the user finished in the browser.
    pub(crate) async fn finish_login(
        &self,
        conn: u64,
        mk: MachinePublicKey,
        req: &LoginRequest,
        identity: Identity,
    ) -> LoginStep {
        let t = now();
        let existing = match self.blocking(move |s| s.device_by_machine_key(&mk)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return unavailable(e),
            Err(e) => return unavailable(e),
        };
        let dev = match existing {
            Some(d) if d.revoked => return self.refuse_revoked(&d).await,
            Some(d) => d,
            None => {
                let new = NewDevice {
                    machine_key: mk,
                    hostname: req.hostname.clone(),
                    user: Some(identity.user.clone()),
                    user_groups: identity.groups.clone(),
                    tags: vec![],
                    created_at: t,
                };
                match self.blocking(move |s| s.create_device(new)).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => return unavailable(e),
                    Err(e) => return unavailable(e),
                }
            }
        };
        let reauth = self.policy().lifetimes().reauth;
        let owner = Owner {
            user: Some(identity.user.clone()),
            groups: identity.groups.clone(),
            tags: vec![],
            method: login_method(identity.method),
            login_expires_at: Some(t.saturating_add_ms(reauth.as_millis() as u64)),
            refresh_token: identity
                .refresh_token
                .as_ref()
                .map(|r| r.expose().to_owned()),
            subject: identity.subject.clone(),
        };
        let how = format!("interactive login of user:{}", identity.user);
        self.admit(conn, dev, owner, req, &how).await
    }

    /// Posture gate, credential, and into the mesh.
    async fn admit(
        &self,
        conn: u64,
        dev: DeviceRecord,
        owner: Owner,
        req: &LoginRequest,
        how: &str,
    ) -> LoginStep {
        let t = now();
        let id = dev.id;
        let Some((v4, v6)) = overlay_addrs(dev.host_index) else {
            return LoginStep::Refused(vec!["no overlay address could be assigned".into()]);
        };
        let policy = self.policy();
        let undeclared: Vec<String> = owner
            .tags
            .iter()
            .filter(|tag| !policy.is_declared_tag(tag))
            .map(|tag| format!("{tag} is not declared in the policy's tagOwners"))
            .collect();
        let reported = device_reported(&req.posture);
        let mut endpoints = req.endpoints.clone();
        endpoints.truncate(MAX_ENDPOINTS);
        let mut state = NodeState {
            machine_key: dev.machine_key,
            hostname: req.hostname.clone(),
            user: owner.user.clone(),
            groups: owner.groups.clone(),
            tags: owner.tags.clone(),
            addresses: vec![v4.into(), v6.into()],
            reported: reported.clone(),
            custom: dev.custom_attrs.clone(),
            // A placeholder until the credential is issued below, once the policy says yes.
            credential: issue::build(
                &issue::Subject {
                    node_id: id,
                    hostname: &req.hostname,
                    user: owner.user.as_deref(),
                    tags: &owner.tags,
                    machine_key: dev.machine_key,
                    wg_public_key: req.wg_public_key,
                    addresses: &[v4.into(), v6.into()],
                    posture: &reported,
                },
                t,
                policy.lifetimes().credential,
                0,
            ),
            signed: ztmesh_common::credential::SignedCredential {
                body: Vec::new(),
                signature: Vec::new(),
            },
            endpoints: endpoints.clone(),
            method: Some(owner.method),
            login_expires_at: owner.login_expires_at,
            refresh_token: owner.refresh_token.clone(),
            subject: owner.subject.clone(),
            reauth_url: None,
            posture_at: t,
            // Set from the lifetimes of its grant (`Core::grant`).
            posture_interval: policy.lifetimes().posture_report,
        };
        let inventory = state.inventory(id);
        let verdict = if undeclared.is_empty() {
            policy.check_admission(&inventory)
        } else {
            Err(undeclared)
        };
        let serial = match &verdict {
            Ok(()) => match self.blocking(|s| s.next_serial()).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return unavailable(e),
                Err(e) => return unavailable(e),
            },
            Err(_) => 0,
        };
        if verdict.is_ok() {
            let lifetime = policy.lifetimes().credential;
            state.issue(id, req.wg_public_key, t, lifetime, serial, &self.inner.key);
        }
        // One durable write: ownership, posture outcome, credential.
        let failures = verdict.clone().err().unwrap_or_default();
        let expires = state.credential.expires_at;
        let (hostname, reported2, ok) = (req.hostname.clone(), reported.clone(), verdict.is_ok());
        let signed = state.signed.clone();
        let update = self
            .blocking(move |s| {
                s.update_device(id, &mut |d| {
                    d.hostname = hostname.clone();
                    d.user = owner.user.clone();
                    d.user_groups = owner.groups.clone();
                    d.tags = owner.tags.clone();
                    d.login_method = Some(owner.method);
                    d.login_expires_at = owner.login_expires_at;
                    d.refresh_token = owner.refresh_token.clone();
                    d.last_posture = reported2.clone();
                    d.posture_reported_at = Some(t);
                    d.posture_ok = Some(ok);
                    d.posture_failures = failures.clone();
                    d.last_seen = Some(t);
                    if ok {
                        d.set_credential(&signed, expires, serial);
                        d.endpoints = endpoints.clone();
                    }
                })
            })
            .await;
        match update {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return unavailable(e),
            Err(e) => return unavailable(e),
        }
        if let Err(reasons) = verdict {
            self.audit(
                node_subject(id),
                "admission",
                req.hostname.clone(),
                Decision::Deny,
                format!("{how}: {}", reasons.join("; ")),
            )
            .await;
            info!(node = %id, hostname = %req.hostname, ?reasons, "admission refused");
            return LoginStep::Refused(reasons);
        }
        self.audit(
            node_subject(id),
            "admission",
            req.hostname.clone(),
            Decision::Allow,
            format!("{how}; credential serial {serial} until {}", expires.0),
        )
        .await;
        match self.go_live(conn, id, state, &policy) {
            Ok(rx) => {
                info!(node = %id, hostname = %req.hostname, serial, "device admitted");
                LoginStep::Admitted { node: id, rx }
            }
            Err(reasons) => LoginStep::Refused(reasons),
        }
    }

    /// Put an admitted node into the mesh and attach its session: credential, full view, then
    /// deltas, all queued under the lock so nothing overtakes them.
    fn go_live(
        &self,
        conn: u64,
        id: NodeId,
        state: NodeState,
        checked_with: &Arc<ztmesh_common::policy::Policy>,
    ) -> Result<Outbox, Vec<String>> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let wake = {
            let mut core = self.core();
            // The policy may have been swapped while the store was written.
            if !Arc::ptr_eq(&core.policy, checked_with) {
                core.policy.check_admission(&state.inventory(id))?;
            }
            // A newer connection of the same device replaces the older one.
            core.drop_session(id);
            let endpoints = state.endpoints.clone();
            core.nodes.insert(id, state);
            core.sessions.insert(id, SessionHandle { conn, tx });
            let wake = core.grant(id, Some(endpoints));
            let map = core.mesh.subscribe(id).unwrap_or_default();
            core.send(id, ServerMsg::NetMap(map));
            wake
        };
        if wake {
            self.wake_sweeper();
        }
        Ok(rx)
    }

    /// Whether `conn` is the current session of `id`.
    fn is_current(&self, id: NodeId, conn: u64) -> bool {
        self.core()
            .sessions
            .get(&id)
            .is_some_and(|s| s.conn == conn)
    }

    /// `Renew`: fresh posture and a new WireGuard key -> a new credential, peers get the upsert.
    /// Answers that do not go through the session's queue are returned.
    pub(crate) async fn renew(&self, id: NodeId, conn: u64, req: RenewRequest) -> RenewOutcome {
        let t = now();
        let snapshot = {
            let core = self.core();
            let Some(st) = core.nodes.get(&id) else {
                return RenewOutcome::NotInMesh(NOT_IN_MESH.into());
            };
            if !core.is_current(id, conn) {
                return RenewOutcome::Replaced;
            }
            (
                st.user.clone(),
                st.method,
                st.login_expires_at,
                merged_posture(&device_reported(&req.posture), &st.custom),
                st.inventory(id),
                st.credential.wg_public_key == req.wg_public_key,
                st.hostname.clone(),
            )
        };
        let (user, method, login_expires_at, posture, mut inventory, same_key, hostname) = snapshot;
        if same_key {
            self.audit(
                node_subject(id),
                "renewal",
                hostname,
                Decision::Deny,
                SAME_KEY.into(),
            )
            .await;
            return RenewOutcome::Refused(vec![SAME_KEY.into()]);
        }
        if user.is_some() && login_expires_at.is_none_or(|e| e <= t) {
            self.require_reauth(id).await;
            return RenewOutcome::Queued;
        }
        if let (Some(u), Some(LoginMethod::LocalTotp)) = (&user, method) {
            let u = u.clone();
            if let Ok(Ok(Some(rec))) = self.blocking(move |s| s.get_user(&u)).await {
                if rec.disabled {
                    self.revoke(id, "system", "user account disabled".into(), false)
                        .await;
                    return RenewOutcome::Queued;
                }
            }
        }
        inventory.posture = posture;
        let policy = self.policy();
        if let Err(reasons) = policy.check_admission(&inventory) {
            self.revoke_for_posture(id, reasons).await;
            return RenewOutcome::Queued;
        }
        let serial = match self.blocking(|s| s.next_serial()).await {
            Ok(Ok(n)) => n,
            other => {
                // The client sends `Renew` again when no credential comes.
                warn!(node = %id, ?other, "renewal failed: no serial");
                return RenewOutcome::Queued;
            }
        };
        let reported = device_reported(&req.posture);
        let (cred, signed, wake) = {
            let mut core = self.core();
            let lifetime = core.policy.lifetimes().credential;
            let Some(st) = core.nodes.get_mut(&id) else {
                // Revoked meanwhile: the `Revoked` is on the session's queue.
                return RenewOutcome::Queued;
            };
            st.reported = reported.clone();
            st.posture_at = t;
            st.issue(id, req.wg_public_key, t, lifetime, serial, &self.inner.key);
            let (cred, signed) = (st.credential.clone(), st.signed.clone());
            (cred, signed, core.grant(id, None))
        };
        if wake {
            self.wake_sweeper();
        }
        let (expires, signed) = (cred.expires_at, signed);
        let _ = self
            .blocking(move |s| {
                s.update_device(id, &mut |d| {
                    d.last_posture = reported.clone();
                    d.posture_reported_at = Some(t);
                    d.posture_ok = Some(true);
                    d.posture_failures.clear();
                    d.set_credential(&signed, expires, serial);
                    d.last_seen = Some(t);
                })
            })
            .await;
        self.audit(
            node_subject(id),
            "renewal",
            cred.hostname.clone(),
            Decision::Allow,
            format!("credential serial {serial} until {}", expires.0),
        )
        .await;
        info!(node = %id, serial, "credential renewed");
        RenewOutcome::Queued
    }

    /// `PostureReport`: re-evaluate; a failing node is revoked with the reasons.
    pub(crate) async fn posture_report(&self, id: NodeId, conn: u64, attrs: PostureAttrs) {
        let t = now();
        let reported = device_reported(&attrs);
        let verdict = {
            let mut core = self.core();
            if !core.is_current(id, conn) {
                return;
            }
            let policy = core.policy.clone();
            let Some(st) = core.nodes.get_mut(&id) else {
                return;
            };
            let mut inv = st.inventory(id);
            inv.posture = merged_posture(&reported, &st.custom);
            let verdict = policy.check_admission(&inv);
            if verdict.is_ok() {
                st.reported = reported.clone();
                st.posture_at = t;
                let due = st.posture_due();
                let pushes = core.mesh.update_inventory(inv);
                core.push_all(pushes);
                if core.set_deadline(id, Kind::PostureDue, due) {
                    self.wake_sweeper();
                }
            }
            verdict
        };
        match verdict {
            Ok(()) => {
                let _ = self
                    .blocking(move |s| {
                        s.update_device(id, &mut |d| {
                            d.last_posture = reported.clone();
                            d.posture_reported_at = Some(t);
                            d.posture_ok = Some(true);
                            d.posture_failures.clear();
                            d.last_seen = Some(t);
                        })
                    })
                    .await;
            }
            Err(reasons) => self.revoke_for_posture(id, reasons).await,
        }
    }

    /// `Endpoints`: peers learn where to reach the node.
    pub(crate) fn endpoints(&self, id: NodeId, conn: u64, mut eps: Vec<std::net::SocketAddr>) {
        eps.truncate(MAX_ENDPOINTS);
        let mut core = self.core();
        if !core.is_current(id, conn) {
            return;
        }
        if let Some(st) = core.nodes.get_mut(&id) {
            st.endpoints = eps.clone();
        }
        let pushes = core.mesh.set_endpoints(id, eps.clone());
        core.push_all(pushes);
        drop(core);
        // Durable so that a restarted coordinator can tell peers where the node is.
        let store = self.store();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.update_device(id, &mut |d| d.endpoints = eps.clone()) {
                warn!(node = %id, error = %e, "could not store the node's endpoints");
            }
        });
    }

    /// `Logout`: the user ends this device's session.
    pub(crate) async fn logout(&self, id: NodeId, conn: u64) {
        if !self.is_current(id, conn) {
            return;
        }
        self.core().remove_node(id, "logged out");
        let _ = self
            .blocking(move |s| {
                s.update_device(id, &mut |d| {
                    d.login_expires_at = None;
                    d.refresh_token = None;
                    d.clear_credential();
                })
            })
            .await;
        self.audit(
            node_subject(id),
            "logout",
            node_subject(id),
            Decision::Allow,
            "the device logged out".into(),
        )
        .await;
    }

    /// The connection of an admitted session ended (the node stays in the mesh until expiry).
    pub(crate) fn session_closed(&self, id: NodeId, conn: u64) {
        let mut core = self.core();
        if core.sessions.get(&id).is_some_and(|s| s.conn == conn) {
            core.drop_session(id);
        }
    }

    async fn revoke_for_posture(&self, id: NodeId, reasons: Vec<String>) {
        let reason = format!("posture check failed: {}", reasons.join("; "));
        self.revoke_posture(id, reason, reasons).await;
    }

    /// Revoke a node whose posture fails (or is unknown) and record the failures on the device.
    pub(crate) async fn revoke_posture(&self, id: NodeId, reason: String, reasons: Vec<String>) {
        self.revoke(id, "system", reason, false).await;
        let _ = self
            .blocking(move |s| {
                s.update_device(id, &mut |d| {
                    d.posture_ok = Some(false);
                    d.posture_failures = reasons.clone();
                })
            })
            .await;
    }

    /// Take a node out of the mesh now, tell it and every peer, persist and audit.
    /// `admin` sets the durable revoked flag (the device cannot log in again until removed).
    pub(crate) async fn revoke(&self, id: NodeId, actor: &str, reason: String, admin: bool) {
        let removed = self.core().remove_node(id, &reason);
        let hostname = removed.as_ref().map(|s| s.hostname.clone());
        let r = reason.clone();
        let _ = self
            .blocking(move |s| {
                s.update_device(id, &mut |d| {
                    d.clear_credential();
                    if admin {
                        d.revoked = true;
                        d.revoked_reason = Some(r.clone());
                    }
                })
            })
            .await;
        info!(node = %id, reason = %reason, "node revoked");
        self.audit(
            actor.to_owned(),
            "revocation",
            format!("{} ({})", node_subject(id), hostname.unwrap_or_default()),
            Decision::Deny,
            reason,
        )
        .await;
    }

    /// The login session of a user device ended and cannot be refreshed silently: hand out
    /// (once) a URL to log in again. The node keeps its credential until it expires.
    pub(crate) async fn require_reauth(&self, id: NodeId) {
        let t = now();
        let mut core = self.core();
        let Some(st) = core.nodes.get_mut(&id) else {
            return;
        };
        let url = match &st.reauth_url {
            Some(u) => u.clone(),
            None => {
                let Some(user) = st.user.clone() else {
                    return;
                };
                let Some(login) = self
                    .inner
                    .logins
                    .start(Purpose::Reauth { node: id, user }, t)
                else {
                    return;
                };
                let url = self.login_url(&login);
                st.reauth_url = Some(url.clone());
                url
            }
        };
        core.send(id, ServerMsg::ReauthRequired { url });
    }

    /// A re-authentication finished: extend the session and issue a fresh credential.
    pub(crate) async fn reauth_done(&self, id: NodeId, identity: Identity) {
        let t = now();
        let reauth = self.policy().lifetimes().reauth;
        let until = t.saturating_add_ms(reauth.as_millis() as u64);
        let serial = match self.blocking(|s| s.next_serial()).await {
            Ok(Ok(n)) => n,
            _ => return,
        };
        let (signed, expires, wake) = {
            let mut core = self.core();
            let lifetime = core.policy.lifetimes().credential;
            let Some(st) = core.nodes.get_mut(&id) else {
                return;
            };
            st.login_expires_at = Some(until);
            st.reauth_url = None;
            st.groups = identity.groups.clone();
            st.method = Some(login_method(identity.method));
            if let Some(r) = &identity.refresh_token {
                // Providers rotate refresh tokens: keep the newest.
                st.refresh_token = Some(r.expose().to_owned());
            }
            if identity.subject.is_some() {
                st.subject = identity.subject.clone();
            }
            let wg = st.credential.wg_public_key;
            st.issue(id, wg, t, lifetime, serial, &self.inner.key);
            let (signed, expires) = (st.signed.clone(), st.credential.expires_at);
            (signed, expires, core.grant(id, None))
        };
        if wake {
            self.wake_sweeper();
        }
        let groups = identity.groups.clone();
        let token = identity
            .refresh_token
            .as_ref()
            .map(|r| r.expose().to_owned());
        let _ = self
            .blocking(move |s| {
                s.update_device(id, &mut |d| {
                    d.login_expires_at = Some(until);
                    d.set_credential(&signed, expires, serial);
                    d.user_groups = groups.clone();
                    if token.is_some() {
                        d.refresh_token = token.clone();
                    }
                })
            })
            .await;
        self.audit(
            format!("user:{}", identity.user),
            "reauthentication",
            node_subject(id),
            Decision::Allow,
            format!("login session extended until {}", until.0),
        )
        .await;
    }
}

impl From<ControlError> for LoginStep {
    fn from(e: ControlError) -> Self {
        unavailable(e)
    }
}
