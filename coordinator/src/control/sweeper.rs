//! The sweeper: sleeps until the earliest deadline (woken early when an earlier one is set),
//! ends expired credentials (every peer told at once), takes silent devices (posture report
//! overdue) out of the mesh, and handles ended login sessions (OIDC refresh-token
//! re-verification, or a re-authentication URL for the user).

use super::deadlines::Kind;
use super::{now, ControlPlane, Inner};
use crate::identity::RefreshToken;
use crate::store::{Decision, LoginMethod};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};
use ztmesh_common::ids::NodeId;

/// Longest single sleep, so that a wall-clock jump is noticed within this time.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub(super) async fn run(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let sleep_for = {
            // Only a weak reference between rounds, so dropping the control plane ends this task.
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let cp = ControlPlane { inner };
            cp.inner.logins.prune(now());
            let due = cp.core().deadlines.take_due(now());
            for (id, kind) in due {
                match kind {
                    Kind::CredentialExpiry => cp.expire(id).await,
                    Kind::LoginExpiry => {
                        let cp2 = cp.clone();
                        tokio::spawn(async move { cp2.login_ended(id).await });
                    }
                    Kind::PostureDue => {
                        let cp2 = cp.clone();
                        tokio::spawn(async move { cp2.posture_overdue(id).await });
                    }
                }
            }
            let next = cp.core().deadlines.next();
            next.map(|at| Duration::from_millis(now().until(at)))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP)
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = wake.notified() => {}
        }
    }
}

impl ControlPlane {
    /// A credential reached its expiry: out of the mesh now.
    async fn expire(&self, id: NodeId) {
        let t = now();
        let removed = {
            let mut core = self.core();
            match core.nodes.get(&id) {
                // A renewal moved the deadline; a stale timer must not remove the node.
                Some(st) if st.credential.expires_at > t => {
                    let at = st.credential.expires_at;
                    core.set_deadline(id, Kind::CredentialExpiry, at);
                    None
                }
                Some(_) => core.remove_node(id, "credential expired"),
                None => None,
            }
        };
        let Some(st) = removed else {
            return;
        };
        info!(node = %id, hostname = %st.hostname, "credential expired; node removed from every view");
        let _ = self
            .blocking(move |s| s.update_device(id, &mut |d| d.clear_credential()))
            .await;
        self.audit(
            "system".into(),
            "expiry",
            format!("node:{} ({})", id.0, st.hostname),
            Decision::Deny,
            format!("credential serial {} expired", st.credential.serial),
        )
        .await;
    }

    /// A node's posture report is overdue: its posture is unknown, so it leaves the mesh. Not
    /// the durable revoked flag: the device comes back by logging in with a fresh report.
    async fn posture_overdue(&self, id: NodeId) {
        let t = now();
        let reason = {
            let mut core = self.core();
            let Some(st) = core.nodes.get(&id) else {
                return;
            };
            let due = st.posture_due();
            if due > t {
                // A report arrived since the timer was taken.
                core.set_deadline(id, Kind::PostureDue, due);
                return;
            }
            format!(
                "no posture report for {} s (the policy asks for one every {} s)",
                st.posture_at.until(t) / 1000,
                st.posture_interval.as_secs()
            )
        };
        warn!(node = %id, reason = %reason, "posture report overdue");
        self.revoke_posture(id, reason.clone(), vec![reason]).await;
    }

    /// A user device's login session ended.
    async fn login_ended(&self, id: NodeId) {
        let (method, token, subject) = {
            let core = self.core();
            let Some(st) = core.nodes.get(&id) else {
                return;
            };
            if st.login_expires_at.is_some_and(|e| e > now()) {
                return;
            }
            (
                st.method,
                st.refresh_token.clone().map(RefreshToken::new),
                st.subject.clone(),
            )
        };
        let reverifier = self
            .inner
            .reverifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (method, token, reverifier) {
            (Some(LoginMethod::Oidc), Some(token), Some(r)) => {
                match r.refresh(&token, subject.as_deref()).await {
                    Ok(identity) => {
                        let same_user =
                            self.core().nodes.get(&id).is_some_and(|st| {
                                st.user.as_deref() == Some(identity.user.as_str())
                            });
                        if same_user {
                            info!(node = %id, "login session re-verified with the identity provider");
                            self.reauth_done(id, identity).await;
                        } else {
                            self.revoke(
                                id,
                                "system",
                                "re-verification returned a different user".into(),
                                false,
                            )
                            .await;
                        }
                    }
                    Err(e) => {
                        warn!(node = %id, error = %e, "re-verification with the identity provider failed");
                        self.revoke(
                            id,
                            "system",
                            format!("re-verification with the identity provider failed: {e}"),
                            false,
                        )
                        .await;
                    }
                }
            }
            _ => self.require_reauth(id).await,
        }
    }
}
