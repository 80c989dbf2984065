//! What the control client knows, shared with the daemon's status and `up` commands.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::broadcast;
use ztmesh_common::credential::NodeCredential;
use ztmesh_common::ids::{CoordinatorPublicKey, NodeId};
use ztmesh_common::time::UnixMillis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Not asked to join (`ztmesh down`, or never `up`).
    #[default]
    Stopped,
    Connecting,
    /// Waiting for the user to log in at the login URL.
    NeedsLogin,
    /// Admitted and meshed.
    Running,
    Refused,
    Revoked,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Connecting => "connecting",
            Phase::NeedsLogin => "needs_login",
            Phase::Running => "running",
            Phase::Refused => "refused",
            Phase::Revoked => "revoked",
        }
    }
}

/// A peer as the view describes it (the credential verified against the coordinator key).
#[derive(Clone, Debug)]
pub struct PeerView {
    pub cred: NodeCredential,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Clone, Debug, Default)]
pub struct ControlState {
    pub phase: Phase,
    pub coordinator: Option<String>,
    pub hostname: String,
    /// When the current control connection came up; `None` while disconnected.
    pub connected_since: Option<UnixMillis>,
    pub coordinator_key: Option<CoordinatorPublicKey>,
    pub login_url: Option<String>,
    pub reauth_url: Option<String>,
    pub refused: Vec<String>,
    pub revoked: Option<String>,
    pub last_error: Option<String>,
    pub own: Option<NodeCredential>,
    pub renew_at: Option<UnixMillis>,
    pub peers: BTreeMap<NodeId, PeerView>,
    pub netmap_version: Option<u64>,
    pub endpoints: Vec<SocketAddr>,
}

/// Progress of a join, for a waiting `ztmesh up`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    LoginUrl(String),
    Refused(Vec<String>),
    /// Admitted, with credential and view applied.
    Meshed,
    Revoked(String),
}

/// The state plus a channel announcing join progress.
pub struct Shared {
    state: Mutex<ControlState>,
    events: broadcast::Sender<Event>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::new(ControlState::default()),
            events: broadcast::channel(32).0,
        }
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, ControlState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn announce(&self, ev: Event) {
        let _ = self.events.send(ev);
    }
}
