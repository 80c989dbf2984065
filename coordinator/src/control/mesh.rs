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
            .map(|v| v.peers.iter().collect())
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
            .filter(|p| *p != id)
            .filter_map(|p| self.members.get(&p).map(|m| (p, m.rev)))
            .collect();
        (peers, view.filter_rules())
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

#[cfg(test)]
mod tests {
    use super::*;
    use ztmesh_common::posture::PostureAttrs;

    const P1: &str = r#"{
      "tagOwners": { "tag:a": [], "tag:b": [], "tag:c": [] },
      "acls": [ { "action": "accept", "src": ["tag:a"], "dst": ["tag:b:443"] } ],
    }"#;
    const P2: &str = r#"{
      "tagOwners": { "tag:a": [], "tag:b": [], "tag:c": [] },
      "acls": [
        { "action": "accept", "src": ["tag:a"], "dst": ["tag:b:443"] },
        { "action": "accept", "src": ["tag:c"], "dst": ["tag:b:22"] },
      ],
    }"#;

    fn policy(s: &str) -> Arc<Policy> {
        Arc::new(Policy::parse(s, "t").unwrap())
    }

    fn node(id: u64, tag: &str) -> InventoryNode {
        let (v4, v6) = ztmesh_common::addr::overlay_addrs(id as u32).unwrap();
        InventoryNode {
            id: NodeId(id),
            user: None,
            user_groups: vec![],
            tags: vec![tag.into()],
            addresses: vec![v4.into(), v6.into()],
            posture: PostureAttrs::new(),
        }
    }

    fn cred(serial: u8) -> SignedCredential {
        SignedCredential {
            body: vec![serial],
            signature: vec![],
        }
    }

    fn to(pushes: &[Push], id: u64) -> Vec<&NetMapDelta> {
        pushes
            .iter()
            .filter(|p| p.to == NodeId(id))
            .map(|p| &p.delta)
            .collect()
    }

    #[test]
    fn views_follow_joins_changes_and_removals_with_minimal_deltas() {
        let mut m = Mesh::new(policy(P1));
        assert!(m.upsert(node(1, "tag:a"), cred(1), None).is_empty());
        let full_a = m.subscribe(NodeId(1)).unwrap();
        assert!(full_a.peers.is_empty());
        // b joins: a (subscribed) learns b; b is not subscribed yet, so nothing for it.
        let p = m.upsert(node(2, "tag:b"), cred(2), None);
        let d = to(&p, 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].base_version, full_a.version);
        assert_eq!(
            d[0].upsert,
            vec![PeerEntry {
                credential: cred(2),
                endpoints: vec![]
            }]
        );
        assert!(to(&p, 2).is_empty());
        let full_b = m.subscribe(NodeId(2)).unwrap();
        assert_eq!(full_b.peers.len(), 1);
        assert_eq!(full_b.filter.len(), 1);
        // c is unrelated: nobody hears of it.
        assert!(m.upsert(node(3, "tag:c"), cred(3), None).is_empty());
        // New endpoints of b reach a only.
        let ep: SocketAddr = "198.18.0.2:41641".parse().unwrap();
        let p = m.set_endpoints(NodeId(2), vec![ep]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].to, NodeId(1));
        assert_eq!(p[0].delta.upsert[0].endpoints, vec![ep]);
        assert!(m.set_endpoints(NodeId(2), vec![ep]).is_empty(), "no-op");
        // A renewal (new credential) reaches a; b's own view is unchanged.
        let p = m.upsert(node(2, "tag:b"), cred(9), None);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].delta.upsert[0].credential, cred(9));
        assert_eq!(p[0].delta.upsert[0].endpoints, vec![ep], "endpoints kept");
        // Posture-only change without view change: no delta.
        assert!(m.update_inventory(node(2, "tag:b")).is_empty());
        // Policy swap: b gains c as a peer plus a filter change; a is untouched.
        let p = m.set_policy(policy(P2));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].to, NodeId(2));
        assert_eq!(p[0].delta.upsert[0].credential, cred(3));
        assert!(p[0].delta.filter.is_some());
        // Removal: a and b told, versions chain.
        let before = p[0].delta.version;
        let p = m.remove(NodeId(3));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].delta.remove, vec![NodeId(3)]);
        assert_eq!(p[0].delta.base_version, before);
        let p = m.remove(NodeId(2));
        assert_eq!(to(&p, 1)[0].remove, vec![NodeId(2)]);
        assert!(m.remove(NodeId(2)).is_empty());
        assert_eq!(m.member_count(), 1);
        // A resubscription starts from a full map with a larger version.
        let again = m.subscribe(NodeId(1)).unwrap();
        assert!(again.version > full_a.version && again.peers.is_empty());
    }
}
