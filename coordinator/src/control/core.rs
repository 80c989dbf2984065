//! The in-memory state of the control plane, behind one mutex: the policy in force, the netmap
//! engine, the admitted nodes, the connected sessions and the timers. Every push is made while
//! the lock is held, so each session sees its credential, full view and deltas in order.

use super::deadlines::{self, Deadlines, Kind};
use super::issue;
use super::mesh::{Mesh, Push};
use crate::store::LoginMethod;
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use ztmesh_common::credential::{NodeCredential, SignedCredential};
use ztmesh_common::ids::{MachinePublicKey, NodeId, WgPublicKey};
use ztmesh_common::policy::{InventoryNode, Policy};
use ztmesh_common::posture::{attr, PostureAttrs};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::{CredentialGrant, ServerMsg};

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
    /// Issue it a new credential for `wg_public_key`, from `now` for `lifetime`, signed with
    /// the coordinator's `key`. It is in force once [`Core::grant`] has run.
    pub fn issue(
        &mut self,
        id: NodeId,
        wg_public_key: WgPublicKey,
        now: UnixMillis,
        lifetime: Duration,
        serial: u64,
        key: &SigningKey,
    ) {
        let cred = issue::build(
            &issue::Subject {
                node_id: id,
                hostname: &self.hostname,
                user: self.user.as_deref(),
                tags: &self.tags,
                machine_key: self.machine_key,
                wg_public_key,
                addresses: &self.addresses,
                posture: &self.reported,
            },
            now,
            lifetime,
            serial,
        );
        self.signed = cred.sign(key);
        self.credential = cred;
    }

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

    /// Put the credential just issued to admitted node `id` in force: its peers get the
    /// upsert, the node its grant (with the posture report interval in force, which it is held
    /// to from now on), and its timers move. `endpoints: None` keeps the ones peers know.
    /// Returns whether the sweeper must wake up.
    pub fn grant(&mut self, id: NodeId, endpoints: Option<Vec<SocketAddr>>) -> bool {
        let lifetimes = self.policy.lifetimes();
        let Some(st) = self.nodes.get_mut(&id) else {
            return false;
        };
        st.posture_interval = lifetimes.posture_report;
        let cred = &st.credential;
        let grant = CredentialGrant {
            node_id: id,
            credential: st.signed.clone(),
            renew_at: issue::renew_at(cred.issued_at, cred.expires_at),
            posture_report_interval_ms: lifetimes.posture_report.as_millis() as u64,
        };
        let (expires, posture_due, login_ends) =
            (cred.expires_at, st.posture_due(), st.login_expires_at);
        let pushes = self
            .mesh
            .upsert(st.inventory(id), st.signed.clone(), endpoints);
        self.push_all(pushes);
        self.send(id, ServerMsg::Credential(grant));
        let mut wake = self.set_deadline(id, Kind::CredentialExpiry, expires);
        wake |= self.set_deadline(id, Kind::PostureDue, posture_due);
        match login_ends {
            Some(at) => wake |= self.set_deadline(id, Kind::LoginExpiry, at),
            None => self.deadlines.clear(id, Kind::LoginExpiry),
        }
        wake
    }

    /// Set a timer; returns whether the sweeper must wake up because it is now the earliest.
    pub fn set_deadline(&mut self, id: NodeId, kind: Kind, at: UnixMillis) -> bool {
        self.deadlines.set(id, kind, at)
    }
}
