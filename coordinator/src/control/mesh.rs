//! The netmap engine (sans-IO): the inventory of admitted nodes, their views as the policy
//! compiles them, and for every subscribed (connected) node what it was last sent, so that each
//! change turns into the smallest `NetMapDelta` for exactly the nodes it affects.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use ztmesh_common::credential::SignedCredential;
use ztmesh_common::ids::NodeId;
use ztmesh_common::netmap::{FilterRule, NetMap, NetMapDelta, PeerEntry};
use ztmesh_common::policy::{InventoryNode, Policy, ViewCompiler};

/// An admitted node as its peers see it.
struct Member {
    credential: SignedCredential,
    endpoints: Vec<SocketAddr>,
    /// Bumped whenever `credential` or `endpoints` change, so that sent views can be compared
    /// by number instead of by content.
    rev: u64,
}

/// What a subscribed node was last sent.
struct SentView {
    version: u64,
    peers: HashMap<NodeId, u64>,
    filter: Vec<FilterRule>,
}

/// A delta for one node.
#[derive(Debug)]
pub struct Push {
    pub to: NodeId,
    pub delta: NetMapDelta,
}

/// The engine. Every mutating call returns the deltas to send now.
pub struct Mesh {
    compiler: ViewCompiler,
    members: HashMap<NodeId, Member>,
    sent: HashMap<NodeId, SentView>,
    /// View versions come from one counter, so a node that reconnects never sees a version go back.
    next_version: u64,
    next_rev: u64,
}

impl Mesh {
    pub fn new(policy: Arc<Policy>) -> Self {
        Mesh {
            compiler: ViewCompiler::new(policy),
            members: HashMap::new(),
            sent: HashMap::new(),
            next_version: 1,
            next_rev: 1,
        }
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The nodes in `id`'s view (other admitted nodes only).
    pub fn peers_of(&self, id: NodeId) -> Vec<NodeId> {
        self.compiler
            .view(id)
            .map(|v| {
                v.peers
                    .iter()
                    .copied()
                    .filter(|p| *p != id && self.members.contains_key(p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Admit a node or update it (new credential, new posture, new groups). `endpoints: None`
    /// keeps the ones it had.
    pub fn upsert(
        &mut self,
        node: InventoryNode,
        credential: SignedCredential,
        endpoints: Option<Vec<SocketAddr>>,
    ) -> Vec<Push> {
        let id = node.id;
        let rev = self.bump_rev();
        match self.members.get_mut(&id) {
            Some(m) => {
                m.credential = credential;
                if let Some(e) = endpoints {
                    m.endpoints = e;
                }
                m.rev = rev;
            }
            None => {
                self.members.insert(
                    id,
                    Member {
                        credential,
                        endpoints: endpoints.unwrap_or_default(),
                        rev,
                    },
                );
            }
        }
        let mut affected: BTreeSet<NodeId> = self.peers_of(id).into_iter().collect();
        affected.extend(self.compiler.upsert_node(node));
        // Peers after the change see the new credential; those before it may lose the node.
        affected.extend(self.peers_of(id));
        self.refresh(affected)
    }

    /// Only what the policy sees of a node changed (posture, custom attributes, groups); its
    /// credential and endpoints did not, so peers get no upsert unless their view changed.
    pub fn update_inventory(&mut self, node: InventoryNode) -> Vec<Push> {
        let id = node.id;
        if !self.members.contains_key(&id) {
            return Vec::new();
        }
        let mut affected: BTreeSet<NodeId> = self.peers_of(id).into_iter().collect();
        affected.extend(self.compiler.upsert_node(node));
        affected.extend(self.peers_of(id));
        self.refresh(affected)
    }

    /// Only the endpoints of a node changed.
    pub fn set_endpoints(&mut self, id: NodeId, endpoints: Vec<SocketAddr>) -> Vec<Push> {
        let rev = self.bump_rev();
        let Some(m) = self.members.get_mut(&id) else {
            return Vec::new();
        };
        if m.endpoints == endpoints {
            return Vec::new();
        }
        m.endpoints = endpoints;
        m.rev = rev;
        let affected = self.peers_of(id);
        self.refresh(affected)
    }

    /// Take a node out of every view (revoked, expired, logged out). Its own subscription ends.
    pub fn remove(&mut self, id: NodeId) -> Vec<Push> {
        if self.members.remove(&id).is_none() {
            return Vec::new();
        }
        self.sent.remove(&id);
        let mut affected: BTreeSet<NodeId> = self
            .compiler
            .view(id)
            .map(|v| v.peers.iter().copied().collect())
            .unwrap_or_default();
        affected.extend(self.compiler.remove_node(id));
        affected.remove(&id);
        self.refresh(affected)
    }

    /// Swap the policy; every node whose view changed gets a delta.
    pub fn set_policy(&mut self, policy: Arc<Policy>) -> Vec<Push> {
        let affected = self.compiler.set_policy(policy);
        self.refresh(affected)
    }

    /// Start sending `id` its view: returns the full netmap, or `None` when it is not admitted.
    pub fn subscribe(&mut self, id: NodeId) -> Option<NetMap> {
        if !self.members.contains_key(&id) {
            return None;
        }
        let (peers, filter) = self.target(id);
        let version = self.bump_version();
        let map = NetMap {
            version,
            peers: peers.iter().map(|(p, _)| self.entry(*p)).collect(),
            filter: filter.clone(),
        };
        self.sent.insert(
            id,
            SentView {
                version,
                peers: peers.into_iter().collect(),
                filter,
            },
        );
        Some(map)
    }

    /// Stop tracking what `id` was sent (its connection ended).
    pub fn unsubscribe(&mut self, id: NodeId) {
        self.sent.remove(&id);
    }

    fn bump_rev(&mut self) -> u64 {
        self.next_rev += 1;
        self.next_rev
    }

    fn bump_version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn entry(&self, id: NodeId) -> PeerEntry {
        let m = &self.members[&id];
        PeerEntry {
            credential: m.credential.clone(),
            endpoints: m.endpoints.clone(),
        }
    }

    /// The peers (with revisions) and the filter `id` should have now.
    fn target(&self, id: NodeId) -> (Vec<(NodeId, u64)>, Vec<FilterRule>) {
        let Some(view) = self.compiler.view(id) else {
            return (Vec::new(), Vec::new());
        };
        let peers = view
            .peers
            .iter()
            .filter(|p| **p != id)
            .filter_map(|p| self.members.get(p).map(|m| (*p, m.rev)))
            .collect();
        (peers, view.filter.clone())
    }

    /// Recompute the views of `affected` subscribed nodes and return deltas where they changed.
    fn refresh(&mut self, affected: impl IntoIterator<Item = NodeId>) -> Vec<Push> {
        let mut pushes = Vec::new();
        for id in affected.into_iter().collect::<BTreeSet<_>>() {
            if !self.sent.contains_key(&id) || !self.members.contains_key(&id) {
                continue;
            }
            let (peers, filter) = self.target(id);
            let sent = &self.sent[&id];
            let upsert_ids: Vec<NodeId> = peers
                .iter()
                .filter(|(p, rev)| sent.peers.get(p) != Some(rev))
                .map(|(p, _)| *p)
                .collect();
            let now: HashMap<NodeId, u64> = peers.into_iter().collect();
            let mut remove: Vec<NodeId> = sent
                .peers
                .keys()
                .filter(|p| !now.contains_key(p))
                .copied()
                .collect();
            remove.sort();
            let filter_changed = sent.filter != filter;
            if upsert_ids.is_empty() && remove.is_empty() && !filter_changed {
                continue;
            }
            let upsert = upsert_ids.iter().map(|p| self.entry(*p)).collect();
            let version = self.bump_version();
            let sent = self.sent.get_mut(&id).expect("checked above");
            let base_version = sent.version;
            sent.version = version;
            sent.peers = now;
            let filter = filter_changed.then(|| {
                sent.filter = filter;
                sent.filter.clone()
            });
            pushes.push(Push {
                to: id,
                delta: NetMapDelta {
                    base_version,
                    version,
                    upsert,
                    remove,
                    filter,
                },
            });
        }
        pushes
    }
}
