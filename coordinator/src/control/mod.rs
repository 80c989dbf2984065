//! The control plane (NIST SP 800-207 Policy Administrator): the QUIC endpoint, device
//! sessions, admission (identity + posture), credential issuing, live netmaps, renewal,
//! revocation and the expiry sweeper.
//!
//! Layout: pure logic in [`mesh`] (netmap engine), [`issue`] (credentials), [`deadlines`]
//! (timers), [`proof`] (machine-key proof), [`login`] (pending logins); the state they share in
//! `core`; the network in `endpoint`, `session` and `frames`; the store at the edges in
//! `admission`, `admin` and `sweeper`. [`testkit`] is a minimal client for tests and benchmarks.

mod admin;
mod admission;
mod core;
pub mod deadlines;
mod endpoint;
pub mod flows;
mod frames;
pub mod issue;
pub mod login;
pub mod mesh;
pub mod proof;
mod restore;
mod session;
mod sweeper;
pub mod testkit;
pub mod tls;

pub use admin::{DeviceSummary, PolicySwap, DEFAULT_POLICY_NAME};
pub use endpoint::QuicServer;
pub use login::{Identity, LoginError, LoginStatus};

use crate::identity::{LoginFuture, LoginRejected, LoginSink, RefreshToken, RefusalFuture};
use crate::store::{AuditEntry, Decision, Store, StoreError};
use core::Core;
use ed25519_dalek::SigningKey;
use login::Logins;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, Semaphore};
use tracing::{error, warn};
use ztmesh_common::credential::coordinator_public_key;
use ztmesh_common::ids::{CoordinatorPublicKey, NodeId};
use ztmesh_common::policy::Policy;
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::FlowEvent;

/// Settings of the control plane.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Base URL of the HTTP listener, for `LoginUrl`s: `{http_base}/login/{id}`.
    pub http_base: String,
    /// Connections that have not yet proven their machine key, at most.
    pub max_unauthenticated: usize,
    /// Time for the QUIC handshake, and again for the `Hello`.
    pub handshake_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            http_base: "http://127.0.0.1:7080".into(),
            max_unauthenticated: 512,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors of the control plane's API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("policy refused:\n{0}")]
    InvalidPolicy(String),
    #[error("policy refused: {} of its tests failed:\n{}", .0.len(), .0.join("\n"))]
    PolicyTestsFailed(Vec<String>),
    #[error("no device {0}")]
    UnknownDevice(String),
    #[error("attribute {0:?} cannot be set: only custom:* attributes are set by admins")]
    NotCustomAttr(String),
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("internal: {0}")]
    Internal(String),
}

/// Re-verification of an OIDC user with its refresh token, when the login session ends
/// (a user disabled at the IdP then loses access). Implemented for
/// [`crate::identity::oidc::OidcProvider`]; tests plug in their own.
pub trait Reverifier: Send + Sync {
    fn refresh<'a>(
        &'a self,
        refresh_token: &'a RefreshToken,
        subject: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, String>> + Send + 'a>>;
}

impl Reverifier for crate::identity::oidc::OidcProvider {
    fn refresh<'a>(
        &'a self,
        refresh_token: &'a RefreshToken,
        subject: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, String>> + Send + 'a>> {
        Box::pin(async move {
            crate::identity::oidc::OidcProvider::refresh(self, refresh_token, subject)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Finished logins from the web layer (local account pages, OIDC callback).
impl LoginSink for ControlPlane {
    fn login_pending(&self, login_id: &str) -> bool {
        matches!(self.login_status(login_id), Some(LoginStatus::Pending))
    }

    fn complete_login<'a>(&'a self, login_id: &'a str, identity: Identity) -> LoginFuture<'a> {
        Box::pin(async move {
            ControlPlane::complete_login(self, login_id, identity)
                .await
                .map_err(|e| LoginRejected(e.to_string()))
        })
    }

    fn fail_login<'a>(
        &'a self,
        login_id: &'a str,
        user: Option<&'a str>,
        reason: &'a str,
    ) -> RefusalFuture<'a> {
        Box::pin(ControlPlane::fail_login(self, login_id, user, reason))
    }
}

/// The control plane. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    key: SigningKey,
    coordinator_key: CoordinatorPublicKey,
    cfg: ControlConfig,
    core: Mutex<Core>,
    logins: Logins,
    /// Wakes the sweeper when a deadline earlier than the one it sleeps for was set.
    sweeper_wake: Arc<Notify>,
    reverifier: RwLock<Option<Arc<dyn Reverifier>>>,
    unauthenticated: Arc<Semaphore>,
    next_conn: AtomicU64,
    flows: Mutex<flows::FlowJournal>,
}

/// The wall clock as the pure logic takes it.
pub fn now() -> UnixMillis {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(d.as_millis() as u64)
}

/// The policy in force when none is stored (or none of the stored ones parses): deny all.
const EMPTY_POLICY: &str = "{}";

impl ControlPlane {
    /// Build the control plane over `store`, with the policy it holds and the devices whose
    /// credentials are still valid back in the mesh. A stored policy that no longer parses
    /// never stops the coordinator: the newest one that does is used, else an empty (deny-all)
    /// policy. Must be called inside a tokio runtime (it starts the sweeper).
    pub fn new(
        store: Arc<dyn Store>,
        key: SigningKey,
        cfg: ControlConfig,
    ) -> Result<Self, ControlError> {
        let policy = Arc::new(load_policy(store.as_ref())?);
        let coordinator_key = coordinator_public_key(&key);
        let mut core = Core::new(policy);
        restore::restore_admitted(&mut core, store.list_devices()?, &coordinator_key, now());
        let inner = Arc::new(Inner {
            store,
            coordinator_key,
            key,
            unauthenticated: Arc::new(Semaphore::new(cfg.max_unauthenticated)),
            cfg,
            core: Mutex::new(core),
            logins: Logins::default(),
            sweeper_wake: Arc::new(Notify::new()),
            reverifier: RwLock::new(None),
            next_conn: AtomicU64::new(1),
            flows: Mutex::new(flows::FlowJournal::default()),
        });
        tokio::spawn(sweeper::run(
            Arc::downgrade(&inner),
            inner.sweeper_wake.clone(),
        ));
        Ok(ControlPlane { inner })
    }

    /// Plug in OIDC re-verification.
    pub fn set_reverifier(&self, r: Arc<dyn Reverifier>) {
        *self
            .inner
            .reverifier
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    /// Keep the flow events an admitted node's packet filter reported.
    pub(crate) fn record_flows(&self, node: NodeId, events: Vec<FlowEvent>) {
        let hostname = self
            .core()
            .nodes
            .get(&node)
            .map(|st| st.hostname.clone())
            .unwrap_or_default();
        self.inner
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(node, &hostname, events);
    }

    /// The newest `limit` flow events reported by `node` (or by every device), newest first.
    pub fn flows(&self, node: Option<NodeId>, limit: usize) -> Vec<flows::FlowRecord> {
        self.inner
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recent(node, limit)
    }

    /// The public key peers verify credentials with.
    pub fn coordinator_key(&self) -> CoordinatorPublicKey {
        self.inner.coordinator_key
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.core().policy.clone()
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock must not take the whole control plane down with it.
        self.inner.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> Arc<dyn Store> {
        self.inner.store.clone()
    }

    /// Run a store call off the async threads (sled flushes block).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> T + Send + 'static,
    ) -> Result<T, ControlError> {
        let store = self.store();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ControlError::Internal(format!("store task: {e}")))
    }

    /// Append an audit record; a failure is logged loudly but does not undo the decision.
    async fn audit(
        &self,
        actor: String,
        action: &str,
        subject: String,
        decision: Decision,
        reason: String,
    ) {
        let entry = AuditEntry {
            at: now(),
            actor,
            action: action.to_owned(),
            subject,
            decision,
            reason,
        };
        match self.blocking(move |s| s.append_audit(entry)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => error!(error = %e, "audit append failed"),
            Err(e) => error!(error = %e, "audit append failed"),
        }
    }

    fn wake_sweeper(&self) {
        self.inner.sweeper_wake.notify_one();
    }

    fn next_conn_id(&self) -> u64 {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn login_url(&self, id: &str) -> String {
        format!(
            "{}/login/{id}",
            self.inner.cfg.http_base.trim_end_matches('/')
        )
    }
}

fn load_policy(store: &dyn Store) -> Result<Policy, ControlError> {
    let history = store.policy_history()?;
    for v in history.iter().rev() {
        match Policy::parse(&v.text, &format!("policy v{}", v.version)) {
            Ok(p) => return Ok(p),
            Err(e) => {
                warn!(version = v.version, error = %e, "stored policy no longer parses; trying an older one")
            }
        }
    }
    Policy::parse(EMPTY_POLICY, "empty policy")
        .map_err(|e| ControlError::Internal(format!("empty policy does not parse: {e}")))
}
