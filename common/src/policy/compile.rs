//! The incremental view compiler: from the policy and the inventory, each node's view (peers
//! and inbound filter). Rules are indexed by the selector keys they use (`tag:web`,
//! `group:eng`, a user, ...), so a node finds the rules it takes part in by a few hash
//! lookups; each rule remembers its source and destination members, so a change of one node
//! recomputes only the views of the nodes on the other side of the rules it is (or was) in.

use super::target::Selector;
use super::{InventoryNode, NodeView, Policy};
use crate::ids::NodeId;
use crate::netmap::{FilterRule, PortRange};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// A selector that names nodes (as opposed to addresses).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    All,
    User(String),
    Group(String),
    Tag(String),
    Member,
    Tagged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Src,
    Dst(u16),
}

/// The rules of one policy, indexed for membership lookups.
struct RuleIndex {
    by_key: HashMap<Key, Vec<(u32, Role)>>,
    /// Prefix selectors (literal or `hosts`), with the rule and role they belong to.
    prefixes: Vec<(IpNet, u32, Role)>,
    /// Per rule: source prefixes that go into filters as they are (only for rules without a
    /// posture requirement: with one, only devices that pass it may send).
    raw_src: Vec<Vec<IpNet>>,
    /// Per rule: its source prefix selectors.
    src_prefixes: Vec<Vec<IpNet>>,
}

impl RuleIndex {
    fn build(policy: &Policy) -> RuleIndex {
        let mut ix = RuleIndex {
            by_key: HashMap::new(),
            prefixes: Vec::new(),
            raw_src: Vec::new(),
            src_prefixes: Vec::new(),
        };
        for (ri, rule) in policy.rules.iter().enumerate() {
            let ri = ri as u32;
            let has_posture = !rule.posture.postures.is_empty();
            let mut raw = Vec::new();
            let mut sp = Vec::new();
            let sides = rule.src.iter().map(|s| (s, Role::Src)).chain(
                rule.dst
                    .iter()
                    .enumerate()
                    .map(|(e, d)| (&d.selector, Role::Dst(e as u16))),
            );
            for (sel, role) in sides {
                let key = match sel {
                    Selector::All => {
                        if role == Role::Src && !has_posture {
                            raw.push("0.0.0.0/0".parse().expect("constant"));
                            raw.push("::/0".parse().expect("constant"));
                        }
                        Key::All
                    }
                    Selector::User(u) => Key::User(u.clone()),
                    Selector::Group(g) => Key::Group(g.clone()),
                    Selector::Tag(t) => Key::Tag(t.clone()),
                    Selector::Member => Key::Member,
                    Selector::Tagged => Key::Tagged,
                    Selector::Prefix { net, .. } => {
                        if role == Role::Src {
                            sp.push(*net);
                            if !has_posture {
                                raw.push(*net);
                            }
                        }
                        ix.prefixes.push((*net, ri, role));
                        continue;
                    }
                };
                let hits = ix.by_key.entry(key).or_default();
                if !hits.contains(&(ri, role)) {
                    hits.push((ri, role));
                }
            }
            ix.raw_src.push(normalize(raw));
            ix.src_prefixes.push(sp);
        }
        ix
    }
}

/// The rules one node takes part in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Memberships {
    /// (rule, matched by a node selector rather than only by address), sorted by rule.
    src: Vec<(u32, bool)>,
    /// (rule, destination entries it matches), sorted by rule.
    dst: Vec<(u32, Vec<u16>)>,
}

struct NodeState {
    node: InventoryNode,
    m: Memberships,
}

#[derive(Default)]
struct RuleState {
    /// Source devices (that pass the rule's posture), with their node-selector flag.
    src: BTreeMap<NodeId, bool>,
    dst: BTreeSet<NodeId>,
    /// Normalised source prefixes for filters.
    src_nets: Arc<Vec<IpNet>>,
}

/// Keeps every node's view up to date as the policy and the inventory change.
pub struct ViewCompiler {
    policy: Arc<Policy>,
    index: RuleIndex,
    nodes: HashMap<NodeId, NodeState>,
    rules: Vec<RuleState>,
    views: HashMap<NodeId, NodeView>,
}

impl ViewCompiler {
    pub fn new(policy: Arc<Policy>) -> Self {
        let index = RuleIndex::build(&policy);
        let rules = (0..policy.rules.len())
            .map(|r| RuleState {
                // Raw source prefixes apply before any node joins.
                src_nets: Arc::new(index.raw_src[r].clone()),
                ..RuleState::default()
            })
            .collect();
        ViewCompiler {
            policy,
            index,
            nodes: HashMap::new(),
            rules,
            views: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Replaces the policy and recompiles everything; returns the ids whose view changed.
    pub fn set_policy(&mut self, policy: Arc<Policy>) -> Vec<NodeId> {
        self.index = RuleIndex::build(&policy);
        self.policy = policy;
        self.rules = (0..self.policy.rules.len())
            .map(|_| RuleState::default())
            .collect();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            let m = memberships(&self.policy, &self.index, &self.nodes[id].node);
            self.nodes.get_mut(id).expect("present").m = m;
        }
        for (id, st) in &self.nodes {
            for (r, sel) in &st.m.src {
                self.rules[*r as usize].src.insert(*id, *sel);
            }
            for (r, _) in &st.m.dst {
                self.rules[*r as usize].dst.insert(*id);
            }
        }
        for r in 0..self.rules.len() {
            self.refresh_src_nets(r);
        }
        let mut changed = self.recompute(ids);
        changed.sort_unstable();
        changed
    }

    /// Adds or updates a node; returns the ids whose view changed (including its own when
    /// its view changed, and always when the node is new).
    pub fn upsert_node(&mut self, node: InventoryNode) -> Vec<NodeId> {
        let id = node.id;
        let m = memberships(&self.policy, &self.index, &node);
        let old = self.nodes.remove(&id);
        let is_new = old.is_none();
        let addrs_changed = old
            .as_ref()
            .is_none_or(|o| o.node.addresses != node.addresses);
        let old_m = old.map(|o| o.m).unwrap_or_default();
        self.nodes.insert(id, NodeState { node, m: m.clone() });
        let mut affected = self.apply_membership_change(id, &old_m, &m, addrs_changed);
        affected.push(id);
        let mut changed = self.recompute(affected);
        if is_new && !changed.contains(&id) {
            self.views.entry(id).or_default();
            changed.push(id);
        }
        changed.sort_unstable();
        changed
    }

    /// Removes a node; returns the ids whose view changed (the removed node included).
    pub fn remove_node(&mut self, id: NodeId) -> Vec<NodeId> {
        let Some(old) = self.nodes.remove(&id) else {
            return Vec::new();
        };
        let affected = self.apply_membership_change(id, &old.m, &Memberships::default(), true);
        self.views.remove(&id);
        let mut changed = self.recompute(affected);
        changed.push(id);
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    pub fn view(&self, id: NodeId) -> Option<&NodeView> {
        self.views.get(&id)
    }

    /// Every view, by node.
    pub fn views(&self) -> impl Iterator<Item = (NodeId, &NodeView)> {
        self.views.iter().map(|(k, v)| (*k, v))
    }

    pub fn node(&self, id: NodeId) -> Option<&InventoryNode> {
        self.nodes.get(&id).map(|s| &s.node)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Updates the rules' member sets for one node's change of memberships; returns the
    /// nodes whose view may change as a result.
    fn apply_membership_change(
        &mut self,
        id: NodeId,
        old: &Memberships,
        new: &Memberships,
        addrs_changed: bool,
    ) -> Vec<NodeId> {
        let mut affected = Vec::new();
        let mut dirty = Vec::new();
        for (r, was, now) in merge_by_rule(&old.src, &new.src) {
            if was == now && !addrs_changed {
                continue;
            }
            let rs = &mut self.rules[r as usize];
            match now {
                Some(flag) => {
                    rs.src.insert(id, *flag);
                }
                None => {
                    rs.src.remove(&id);
                }
            }
            affected.extend(rs.dst.iter().copied());
            dirty.push(r as usize);
        }
        for (r, was, now) in merge_by_rule(&old.dst, &new.dst) {
            if was == now && !addrs_changed {
                continue;
            }
            let rs = &mut self.rules[r as usize];
            if now.is_some() {
                rs.dst.insert(id);
            } else {
                rs.dst.remove(&id);
            }
            affected.extend(rs.src.keys().copied());
        }
        for r in dirty {
            self.refresh_src_nets(r);
        }
        affected
    }

    fn refresh_src_nets(&mut self, r: usize) {
        let has_posture = !self.policy.rules[r].posture.postures.is_empty();
        let mut nets: Vec<IpNet> = self.index.raw_src[r].clone();
        let covered_by_raw = |a: &IpAddr| self.index.raw_src[r].iter().any(|n| n.contains(a));
        for (id, by_selector) in &self.rules[r].src {
            let Some(st) = self.nodes.get(id) else {
                continue;
            };
            if !has_posture && !by_selector {
                // Its in-prefix addresses are already covered by the raw prefix.
                continue;
            }
            for a in &st.node.addresses {
                if *by_selector || self.index.src_prefixes[r].iter().any(|n| n.contains(a)) {
                    if !has_posture && covered_by_raw(a) {
                        continue;
                    }
                    nets.push(IpNet::from(*a));
                }
            }
        }
        self.rules[r].src_nets = Arc::new(normalize(nets));
    }

    /// Recomputes the views of `ids`; returns those that changed.
    fn recompute(&mut self, mut ids: Vec<NodeId>) -> Vec<NodeId> {
        ids.sort_unstable();
        ids.dedup();
        let mut changed = Vec::new();
        for id in ids {
            let Some(st) = self.nodes.get(&id) else {
                continue;
            };
            let v = self.build_view(id, st);
            match self.views.get(&id) {
                Some(old) if *old == v => {}
                _ => {
                    self.views.insert(id, v);
                    changed.push(id);
                }
            }
        }
        changed
    }

    fn build_view(&self, id: NodeId, st: &NodeState) -> NodeView {
        let mut peers: Vec<NodeId> = Vec::new();
        for (r, _) in &st.m.src {
            peers.extend(self.rules[*r as usize].dst.iter().copied());
        }
        // (dst nets, protos, ports) -> source lists.
        type Group<'a> = (Vec<IpNet>, &'a [u8], &'a [PortRange]);
        let mut groups: BTreeMap<Group<'_>, Vec<&Arc<Vec<IpNet>>>> = BTreeMap::new();
        for (r, entries) in &st.m.dst {
            let rs = &self.rules[*r as usize];
            peers.extend(rs.src.keys().copied());
            if rs.src_nets.is_empty() {
                continue;
            }
            let rule = &self.policy.rules[*r as usize];
            for e in entries {
                let entry = &rule.dst[*e as usize];
                let dst: Vec<IpNet> = match &entry.selector {
                    Selector::Prefix { net, .. } => st
                        .node
                        .addresses
                        .iter()
                        .filter(|a| net.contains(*a))
                        .map(|a| IpNet::from(*a))
                        .collect(),
                    _ => st.node.addresses.iter().map(|a| IpNet::from(*a)).collect(),
                };
                for cap in &entry.caps {
                    let srcs = groups
                        .entry((dst.clone(), &cap.protos[..], &cap.ports[..]))
                        .or_default();
                    if !srcs.iter().any(|s| Arc::ptr_eq(s, &rs.src_nets)) {
                        srcs.push(&rs.src_nets);
                    }
                }
            }
        }
        let mut filter: Vec<FilterRule> = groups
            .into_iter()
            .map(|((dst, protos, ports), srcs)| {
                let src = if srcs.len() == 1 {
                    srcs[0].as_ref().clone()
                } else {
                    normalize(srcs.iter().flat_map(|s| s.iter().copied()).collect())
                };
                FilterRule {
                    src,
                    dst,
                    protos: protos.to_vec(),
                    ports: ports.to_vec(),
                }
            })
            .collect();
        // Rules that differ only in ports become one.
        filter.sort_by(|a, b| {
            (&a.dst, &a.protos, &a.src, &a.ports).cmp(&(&b.dst, &b.protos, &b.src, &b.ports))
        });
        let mut merged: Vec<FilterRule> = Vec::with_capacity(filter.len());
        for f in filter {
            match merged.last_mut() {
                Some(l) if l.dst == f.dst && l.protos == f.protos && l.src == f.src => {
                    l.ports.extend(f.ports);
                    l.ports = super::target::merge_ports(std::mem::take(&mut l.ports));
                }
                _ => merged.push(f),
            }
        }
        merged.shrink_to_fit();
        peers.sort_unstable();
        peers.dedup();
        peers.retain(|p| *p != id);
        NodeView {
            peers: peers.into_iter().collect(),
            filter: merged,
        }
    }
}

/// Pairs up two rule-sorted lists: (rule, old entry, new entry).
fn merge_by_rule<'a, T: PartialEq>(
    old: &'a [(u32, T)],
    new: &'a [(u32, T)],
) -> Vec<(u32, Option<&'a T>, Option<&'a T>)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < old.len() || j < new.len() {
        let a = old.get(i).map(|x| x.0);
        let b = new.get(j).map(|x| x.0);
        match (a, b) {
            (Some(x), Some(y)) if x == y => {
                out.push((x, Some(&old[i].1), Some(&new[j].1)));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                out.push((x, Some(&old[i].1), None));
                i += 1;
            }
            (Some(x), None) => {
                out.push((x, Some(&old[i].1), None));
                i += 1;
            }
            (_, Some(y)) => {
                out.push((y, None, Some(&new[j].1)));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// The rules a node takes part in, found through the index.
fn memberships(policy: &Policy, ix: &RuleIndex, n: &InventoryNode) -> Memberships {
    if n.addresses.is_empty() {
        return Memberships::default();
    }
    let mut keys = vec![Key::All];
    if !n.tags.is_empty() {
        keys.push(Key::Tagged);
        keys.extend(n.tags.iter().map(|t| Key::Tag(t.clone())));
    } else if let Some(u) = &n.user {
        keys.push(Key::Member);
        keys.push(Key::User(u.clone()));
        keys.extend(policy.groups_of(u).iter().map(|g| Key::Group(g.clone())));
        keys.extend(n.user_groups.iter().map(|g| Key::Group(g.clone())));
    }
    // (rule, role, by node selector)
    let mut hits: Vec<(u32, Role, bool)> = Vec::new();
    for k in &keys {
        if let Some(hs) = ix.by_key.get(k) {
            hits.extend(hs.iter().map(|(r, role)| (*r, *role, true)));
        }
    }
    for (net, r, role) in &ix.prefixes {
        if n.addresses.iter().any(|a| net.contains(a)) {
            hits.push((*r, *role, false));
        }
    }
    hits.sort_unstable();
    let mut m = Memberships::default();
    let mut posture_cache: Vec<Option<bool>> = vec![None; policy.postures.len()];
    let mut holds = |p: usize| -> bool {
        *posture_cache[p].get_or_insert_with(|| policy.posture_holds(p, &n.posture))
    };
    for (r, role, by_sel) in hits {
        match role {
            Role::Src => {
                if let Some(last) = m.src.last_mut().filter(|l| l.0 == r) {
                    last.1 |= by_sel;
                    continue;
                }
                let req = &policy.rules[r as usize].posture;
                let ok = req.postures.is_empty()
                    || if req.all {
                        req.postures.iter().all(|p| holds(*p))
                    } else {
                        req.postures.iter().any(|p| holds(*p))
                    };
                if ok {
                    m.src.push((r, by_sel));
                }
            }
            Role::Dst(e) => match m.dst.last_mut().filter(|l| l.0 == r) {
                Some(last) => {
                    if !last.1.contains(&e) {
                        last.1.push(e);
                    }
                }
                None => m.dst.push((r, vec![e])),
            },
        }
    }
    for (_, es) in &mut m.dst {
        es.sort_unstable();
    }
    m
}

/// Sorts prefixes, drops those inside another, and merges sibling halves into their parent,
/// so that a set of addresses is described by as few prefixes as possible.
pub fn normalize(mut v: Vec<IpNet>) -> Vec<IpNet> {
    for n in &mut v {
        *n = n.trunc();
    }
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<IpNet> = Vec::with_capacity(v.len());
    for n in v {
        if out.last().is_some_and(|l| l.contains(&n)) {
            continue;
        }
        out.push(n);
        while out.len() >= 2 {
            let b = out[out.len() - 1];
            let a = out[out.len() - 2];
            let parent = match a.supernet() {
                Some(p)
                    if a.prefix_len() == b.prefix_len() && b.supernet() == Some(p) && a != b =>
                {
                    p
                }
                _ => break,
            };
            out.pop();
            out.pop();
            out.push(parent);
        }
    }
    out.shrink_to_fit();
    out
}

/// Compiles every view at once (convenience for tests and tools).
pub fn compile_all(
    policy: Arc<Policy>,
    nodes: impl IntoIterator<Item = InventoryNode>,
) -> BTreeMap<NodeId, NodeView> {
    let mut c = ViewCompiler::new(policy);
    c.bulk_load(nodes);
    c.views.into_iter().collect()
}

impl ViewCompiler {
    /// Loads many nodes and compiles once (faster than one `upsert_node` per node).
    pub fn bulk_load(&mut self, nodes: impl IntoIterator<Item = InventoryNode>) -> Vec<NodeId> {
        for n in nodes {
            self.nodes.insert(
                n.id,
                NodeState {
                    node: n,
                    m: Memberships::default(),
                },
            );
        }
        let p = self.policy.clone();
        self.set_policy(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn normalize_merges_and_drops_covered() {
        assert_eq!(
            normalize(vec![
                n("10.0.0.1/32"),
                n("10.0.0.0/32"),
                n("10.0.0.2/32"),
                n("10.0.0.3/32")
            ]),
            vec![n("10.0.0.0/30")]
        );
        assert_eq!(
            normalize(vec![n("10.0.0.5/32"), n("10.0.0.0/24"), n("fd00::1/128")]),
            vec![n("10.0.0.0/24"), n("fd00::1/128")]
        );
        assert_eq!(
            normalize(vec![n("10.0.0.1/32"), n("10.0.0.2/32")]),
            vec![n("10.0.0.1/32"), n("10.0.0.2/32")]
        );
        assert_eq!(
            normalize(vec![n("0.0.0.0/1"), n("128.0.0.0/1")]),
            vec![n("0.0.0.0/0")]
        );
    }
}
