//! The in-memory state of the control plane, behind one mutex: the policy in force, the netmap
//! engine, the admitted nodes, the connected sessions and the timers. Every push is made while
//! the lock is held, so each session sees its credential, full view and deltas in order.

use super::deadlines::{self, Deadlines, Kind};
use super::mesh::{Mesh, Push};
use crate::store::LoginMethod;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use ztmesh_common::credential::{NodeCredential, SignedCredential};
use ztmesh_common::ids::{MachinePublicKey, NodeId};
use ztmesh_common::policy::{InventoryNode, Policy};
use ztmesh_common::posture::{attr, PostureAttrs};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::ServerMsg;

/// Messages queued per session before it counts as too slow and is disconnected (it then
/// reconnects and gets a fresh full view).
pub const OUTBOX: usize = 256;

/// The receiving half of a session's queue. Messages are boxed: tokio allocates a channel's
/// slots in blocks of 32, and a block of unboxed `ServerMsg`s would cost every connected
/// session about 3 KiB even while idle.
pub type Outbox = mpsc::Receiver<Box<ServerMsg>>;

/// An admitted node.
pub struct NodeState {
    pub machine_key: MachinePublicKey,
    pub hostname: String,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub tags: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// What the device reported (without `custom:*`, which only admins set).
    pub reported: PostureAttrs,
    /// `custom:*` attributes set by admins or an MDM/EDR feed.
    pub custom: PostureAttrs,
    pub credential: NodeCredential,
    pub signed: SignedCredential,
    pub endpoints: Vec<SocketAddr>,
    pub method: Option<LoginMethod>,
    pub login_expires_at: Option<UnixMillis>,
    /// OIDC refresh token (a secret; never logged).
    pub refresh_token: Option<String>,
    /// The IdP's subject of the OIDC login, when known.
    pub subject: Option<String>,
    /// The re-authentication URL already handed out, if the login session ended.
    pub reauth_url: Option<String>,
    /// When its last posture report (login, renewal or report) arrived.
    pub posture_at: UnixMillis,
    /// The report interval it was told in its last credential grant: the one it is held to.
    pub posture_interval: Duration,
}

impl NodeState {
    /// When its next posture report is overdue.
    pub fn posture_due(&self) -> UnixMillis {
        deadlines::posture_deadline(self.posture_at, self.posture_interval)
    }

    /// The node as the policy sees it.
    pub fn inventory(&self, id: NodeId) -> InventoryNode {
        InventoryNode {
            id,
            user: self.user.clone(),
            user_groups: self.groups.clone(),
            tags: self.tags.clone(),
            addresses: self.addresses.clone(),
            posture: merged_posture(&self.reported, &self.custom),
        }
    }
}

/// The device's report with admin-set attributes on top; a device cannot set `custom:*` itself.
pub fn merged_posture(reported: &PostureAttrs, custom: &PostureAttrs) -> PostureAttrs {
    let mut p: PostureAttrs = reported
        .iter()
        .filter(|(k, _)| !k.starts_with(attr::CUSTOM_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    p.extend(custom.iter().map(|(k, v)| (k.clone(), v.clone())));
    p
}

/// The sending half of a connected, admitted session.
pub struct SessionHandle {
    pub conn: u64,
    pub tx: mpsc::Sender<Box<ServerMsg>>,
}

pub struct Core {
    pub policy: Arc<Policy>,
    pub mesh: Mesh,
    pub nodes: HashMap<NodeId, NodeState>,
    pub sessions: HashMap<NodeId, SessionHandle>,
    pub deadlines: Deadlines,
}

impl Core {
    pub fn new(policy: Arc<Policy>) -> Self {
        Core {
            mesh: Mesh::new(policy.clone()),
            policy,
            nodes: HashMap::new(),
            sessions: HashMap::new(),
            deadlines: Deadlines::default(),
        }
    }

    /// Whether `conn` is the connection currently serving node `id`.
    pub fn is_current(&self, id: NodeId, conn: u64) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.conn == conn)
    }

    /// Queue a message for a node's session, if connected. A session whose queue is full is
    /// dropped: it will reconnect and start from a full view.
    pub fn send(&mut self, to: NodeId, msg: ServerMsg) {
        let Some(s) = self.sessions.get(&to) else {
            return;
        };
        match s.tx.try_send(Box::new(msg)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(node = %to, conn = s.conn, "session too slow to read its updates; disconnecting it");
                self.drop_session(to);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(node = %to, "session already gone");
                self.drop_session(to);
            }
        }
    }

    pub fn push_all(&mut self, pushes: Vec<Push>) {
        for p in pushes {
            self.send(p.to, ServerMsg::NetMapDelta(p.delta));
        }
    }

    /// Forget a node's session (its connection ends once it drained what was queued).
    pub fn drop_session(&mut self, id: NodeId) {
        self.sessions.remove(&id);
        self.mesh.unsubscribe(id);
    }

    /// Take a node out of the mesh: every peer is told at once, the node gets `Revoked`.
    /// Returns the state it had, if it was admitted.
    pub fn remove_node(&mut self, id: NodeId, reason: &str) -> Option<NodeState> {
        let state = self.nodes.remove(&id);
        self.deadlines.clear_node(id);
        let pushes = self.mesh.remove(id);
        self.push_all(pushes);
        if self.sessions.contains_key(&id) {
            self.send(
                id,
                ServerMsg::Revoked {
                    reason: reason.to_owned(),
                },
            );
            // Dropping the handle ends the session's admitted state after it sent `Revoked`.
            self.drop_session(id);
        }
        state
    }

    /// Set a timer; returns whether the sweeper must wake up because it is now the earliest.
    pub fn set_deadline(&mut self, id: NodeId, kind: Kind, at: UnixMillis) -> bool {
        self.deadlines.set(id, kind, at)
    }
}
