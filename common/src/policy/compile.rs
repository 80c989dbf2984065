//! The incremental view compiler: from the policy and the inventory, each node's view (peers
//! and inbound filter). A node finds the rules it takes part in through the `membership`
//! index; each rule remembers its source and destination members and the source addresses
//! they bring.
//!
//! A change of one node X is applied as a patch, not a rebuild: X's own view is built afresh;
//! the peer relation is symmetric, so the nodes whose peer list changes are exactly those
//! that enter or leave X's peers, and each gets X inserted or removed; and only the nodes
//! behind rules whose source list X changed get their filter rebuilt: once per class of
//! nodes in the same destinations of the same rules, whose views then share the rule array.

use super::membership::{contribution, memberships, merge_by_rule, Memberships, RuleIndex};
use super::peer_list::PeerList;
use super::prefix_set::{insert_host, normalize, remove_host};
use super::target::Selector;
use super::view::{FastMap, Interner, NodeView, UnionCache, ViewRule};
use super::{InventoryNode, Policy};
use crate::ids::NodeId;
use crate::netmap::PortRange;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

struct NodeState {
    node: InventoryNode,
    m: Memberships,
    /// The node's addresses as host prefixes: the destination of its filter rules.
    nets: Arc<[IpNet]>,
    /// The number of its destination entries (`m.dst`) in [`ClassIds`].
    class: u32,
}

impl NodeState {
    fn new(node: InventoryNode, m: Memberships, class: u32) -> Self {
        let nets = node.addresses.iter().map(|a| IpNet::from(*a)).collect();
        NodeState {
            node,
            m,
            nets,
            class,
        }
    }
}

/// Numbers the distinct destination entries (`Memberships::dst`) nodes have: nodes with the
/// same entries and no prefix among them have the same filter but for their own addresses,
/// and a change that refilters thousands of them finds a node's class by this number rather
/// than by hashing and comparing its entries again.
#[derive(Default)]
struct ClassIds {
    ids: FastMap<Vec<(u32, Vec<u16>)>, u32>,
}

impl ClassIds {
    fn id(&mut self, dst: &[(u32, Vec<u16>)]) -> u32 {
        if let Some(i) = self.ids.get(dst) {
            return *i;
        }
        let i = self.ids.len() as u32;
        self.ids.insert(dst.to_vec(), i);
        i
    }

    /// Numbers the nodes' entries afresh, dropping entries no node has any more (nodes
    /// that change keep adding entries).
    fn renumber<'a>(&mut self, nodes: impl Iterator<Item = &'a mut NodeState>) {
        self.ids.clear();
        for st in nodes {
            st.class = self.id(&st.m.dst);
        }
    }
}

#[derive(Default)]
struct RuleState {
    /// Source devices (that pass the rule's posture), with their node-selector flag.
    src: BTreeMap<NodeId, bool>,
    dst: BTreeSet<NodeId>,
    /// Source addresses the members bring (beyond the rule's raw prefixes), with how many
    /// members bring each.
    src_addrs: BTreeMap<IpNet, u32>,
    /// Normalised source prefixes for filters, shared by every view behind the rule.
    src_nets: Arc<[IpNet]>,
}

/// Keeps every node's view up to date as the policy and the inventory change.
pub struct ViewCompiler {
    policy: Arc<Policy>,
    index: RuleIndex,
    nodes: FastMap<NodeId, NodeState>,
    rules: Vec<RuleState>,
    views: FastMap<NodeId, NodeView>,
    lists: Lists,
    classes: ClassIds,
}

/// Interners for the lists views share.
#[derive(Default)]
struct Lists {
    nets: Interner<IpNet>,
    ports: Interner<PortRange>,
    unions: UnionCache,
    /// The filter of every node no rule admits anything to.
    no_rules: Arc<[ViewRule]>,
}

/// Filters built during one change, by the class they were built for (see
/// [`Builder::shared_filter`]).
type Classes = FastMap<u32, Arc<[ViewRule]>>;

impl Lists {
    /// The normalised union of several source lists, computed once for all the views
    /// (the servers behind one tag) that merge the same lists.
    fn union(&mut self, parts: &[&Arc<[IpNet]>]) -> Arc<[IpNet]> {
        let nets = &mut self.nets;
        self.unions.get_or_make(parts, || {
            nets.intern(normalize(
                parts.iter().flat_map(|s| s.iter().copied()).collect(),
            ))
        })
    }
}

impl ViewCompiler {
    pub fn new(policy: Arc<Policy>) -> Self {
        let index = RuleIndex::build(&policy);
        let rules = fresh_rules(&index);
        ViewCompiler {
            policy,
            index,
            nodes: FastMap::default(),
            rules,
            views: FastMap::default(),
            lists: Lists::default(),
            classes: ClassIds::default(),
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Replaces the policy and recompiles everything; returns the ids whose view changed.
    pub fn set_policy(&mut self, policy: Arc<Policy>) -> Vec<NodeId> {
        self.index = RuleIndex::build(&policy);
        self.policy = policy;
        self.rules = fresh_rules(&self.index);
        for st in self.nodes.values_mut() {
            st.m = memberships(&self.policy, &self.index, &st.node);
        }
        self.classes.renumber(self.nodes.values_mut());
        for (id, st) in &self.nodes {
            for (r, sel) in &st.m.src {
                let rs = &mut self.rules[*r as usize];
                rs.src.insert(*id, *sel);
                for a in contribution(&self.policy, &self.index, *r, &st.node.addresses, *sel) {
                    *rs.src_addrs.entry(a).or_default() += 1;
                }
            }
            for (r, _) in &st.m.dst {
                self.rules[*r as usize].dst.insert(*id);
            }
        }
        for r in 0..self.rules.len() {
            self.refresh_src_nets(r);
        }
        let mut ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        ids.sort_unstable();
        let mut changed = Vec::new();
        let b = Builder {
            policy: &self.policy,
            index: &self.index,
            rules: &self.rules,
        };
        let mut classes = Classes::default();
        for id in ids {
            let v = b.view(&mut self.lists, &mut classes, &self.nodes[&id]);
            if self.views.get(&id) != Some(&v) {
                self.views.insert(id, v);
                changed.push(id);
            }
        }
        changed
    }

    /// Adds or updates a node; returns the ids whose view changed (including its own when
    /// its view changed, and always when the node is new).
    pub fn upsert_node(&mut self, node: InventoryNode) -> Vec<NodeId> {
        let id = node.id;
        let m = memberships(&self.policy, &self.index, &node);
        if self.classes.ids.len() > 2 * self.nodes.len() + 1024 {
            self.classes.renumber(self.nodes.values_mut());
        }
        let class = self.classes.id(&m.dst);
        let new = NodeState::new(node, m, class);
        let old = self.nodes.remove(&id);
        let dirty = self.apply_membership_change(id, old.as_ref(), Some(&new));
        self.nodes.insert(id, new);
        let mut changed = self.propagate(id, dirty);
        if old.is_none() && !changed.contains(&id) {
            changed.push(id);
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Removes a node; returns the ids whose view changed (the removed node included).
    pub fn remove_node(&mut self, id: NodeId) -> Vec<NodeId> {
        let Some(old) = self.nodes.remove(&id) else {
            return Vec::new();
        };
        let dirty = self.apply_membership_change(id, Some(&old), None);
        let mut changed = self.propagate(id, dirty);
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

    /// Heap bytes held by all views together, each shared list counted once (for the
    /// memory benchmark).
    pub fn views_heap_bytes(&self) -> usize {
        super::view::heap_bytes_shared(self.views.values())
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

    /// Updates the rules' member sets and source addresses for one node going from `old` to
    /// `new` (either may be absent); returns the rules whose source addresses changed, with
    /// each address that came (`true`) or went.
    fn apply_membership_change(
        &mut self,
        id: NodeId,
        old: Option<&NodeState>,
        new: Option<&NodeState>,
    ) -> Vec<(usize, Vec<(IpNet, bool)>)> {
        let none = Memberships::default();
        let (old_m, new_m) = (old.map_or(&none, |s| &s.m), new.map_or(&none, |s| &s.m));
        let no_addrs: &[IpAddr] = &[];
        let old_addrs = old.map_or(no_addrs, |s| &s.node.addresses);
        let new_addrs = new.map_or(no_addrs, |s| &s.node.addresses);
        let addrs_changed = old_addrs != new_addrs;
        let mut dirty = Vec::new();
        for (r, was, now) in merge_by_rule(&old_m.src, &new_m.src) {
            if was == now && !addrs_changed {
                continue;
            }
            let before = was.map_or_else(Vec::new, |f| {
                contribution(&self.policy, &self.index, r, old_addrs, *f)
            });
            let after = now.map_or_else(Vec::new, |f| {
                contribution(&self.policy, &self.index, r, new_addrs, *f)
            });
            let rs = &mut self.rules[r as usize];
            match now {
                Some(flag) => rs.src.insert(id, *flag),
                None => rs.src.remove(&id),
            };
            if before != after {
                // The addresses whose presence in the rule's sources changes.
                let mut ops = Vec::new();
                for a in before {
                    if let Some(n) = rs.src_addrs.get_mut(&a) {
                        *n -= 1;
                        if *n == 0 {
                            rs.src_addrs.remove(&a);
                            ops.push((a, false));
                        }
                    }
                }
                for a in after {
                    let n = rs.src_addrs.entry(a).or_default();
                    *n += 1;
                    if *n == 1 {
                        ops.push((a, true));
                    }
                }
                dirty.push((r as usize, ops));
            }
        }
        for (r, was, now) in merge_by_rule(&old_m.dst, &new_m.dst) {
            if was.is_some() == now.is_some() {
                continue;
            }
            let rs = &mut self.rules[r as usize];
            if now.is_some() {
                rs.dst.insert(id);
            } else {
                rs.dst.remove(&id);
            }
        }
        dirty
    }

    /// After the rules took in node `id`'s change: rebuilds its view, patches its old and
    /// new peers, and rebuilds the filters behind the `dirty` rules. Returns the changed ids.
    fn propagate(&mut self, id: NodeId, dirty: Vec<(usize, Vec<(IpNet, bool)>)>) -> Vec<NodeId> {
        let mut refilter: Vec<NodeId> = Vec::new();
        for (r, ops) in dirty {
            if self.patch_src_nets(r, &ops) {
                refilter.extend(self.rules[r].dst.iter().copied());
            }
        }
        let mut changed = Vec::new();
        let b = Builder {
            policy: &self.policy,
            index: &self.index,
            rules: &self.rules,
        };
        let mut classes = Classes::default();
        let lists = &mut self.lists;
        let new_view = self
            .nodes
            .get(&id)
            .map(|st| b.view(lists, &mut classes, st));
        let old_view = self.views.remove(&id);
        let no_peers = PeerList::default();
        let old_peers = old_view.as_ref().map_or(&no_peers, |v| &v.peers);
        let new_peers = new_view.as_ref().map_or(&no_peers, |v| &v.peers);
        for (peer, now) in sorted_diff(old_peers.iter(), new_peers.iter()) {
            let Some(v) = self.views.get_mut(&peer) else {
                continue;
            };
            let patched = if now {
                v.peers.insert(id)
            } else {
                v.peers.remove(id)
            };
            if patched {
                changed.push(peer);
            }
        }
        refilter.sort_unstable();
        refilter.dedup();
        // Whether a rule array differs from another, by their addresses: the nodes of a class
        // mostly move from one shared array to another, so this compares once per class. An
        // address cannot stand for two arrays here: every node's old array was allocated
        // before this loop and lives until the node is visited, the new ones until its end.
        let mut differs: FastMap<(usize, usize), bool> = FastMap::default();
        for d in refilter {
            if d == id {
                continue;
            }
            let Some(st) = self.nodes.get(&d) else {
                continue;
            };
            let filter = b.shared_filter(lists, &mut classes, st);
            let v = self.views.get_mut(&d).expect("every node has a view");
            if Arc::ptr_eq(&v.filter, &filter) {
                continue;
            }
            // The node's own addresses did not change, so its arrays compare as they are.
            let key = (
                Arc::as_ptr(&v.filter).cast::<u8>() as usize,
                Arc::as_ptr(&filter).cast::<u8>() as usize,
            );
            let old = &v.filter;
            if *differs.entry(key).or_insert_with(|| old[..] != filter[..]) {
                changed.push(d);
            }
            // Equal or not, the shared array replaces the node's own copy.
            v.filter = filter;
        }
        if let Some(v) = new_view {
            if old_view.as_ref() != Some(&v) {
                changed.push(id);
            }
            self.views.insert(id, v);
        }
        changed
    }

    /// Recomputes a rule's shared source list; returns whether it changed.
    fn refresh_src_nets(&mut self, r: usize) -> bool {
        let raw = &self.index.raw_src[r];
        let rs = &mut self.rules[r];
        let mut nets = Vec::with_capacity(raw.len() + rs.src_addrs.len());
        let mut members = rs.src_addrs.keys().copied().peekable();
        // Both are sorted: merge them so that `normalize` sorts an ordered list.
        for n in raw {
            while let Some(m) = members.next_if(|m| m < n) {
                nets.push(m);
            }
            nets.push(*n);
        }
        nets.extend(members);
        let nets = normalize(nets);
        if *rs.src_nets == nets[..] {
            return false;
        }
        rs.src_nets = self.lists.nets.intern(nets);
        true
    }

    /// Applies address changes to a rule's source list (in place of a rebuild: big rules
    /// have thousands of members); returns whether it changed.
    fn patch_src_nets(&mut self, r: usize, ops: &[(IpNet, bool)]) -> bool {
        let rs = &mut self.rules[r];
        let mut nets = rs.src_nets.to_vec();
        let mut changed = false;
        for (a, add) in ops {
            changed |= if *add {
                insert_host(&mut nets, *a)
            } else {
                remove_host(&mut nets, *a)
            };
        }
        if changed {
            rs.src_nets = self.lists.nets.intern(nets);
        }
        changed
    }
}

/// Builds views from the rules' current member sets.
struct Builder<'a> {
    policy: &'a Policy,
    index: &'a RuleIndex,
    rules: &'a [RuleState],
}

impl Builder<'_> {
    fn view(&self, lists: &mut Lists, classes: &mut Classes, st: &NodeState) -> NodeView {
        NodeView {
            peers: self.peers(st),
            own: st.nets.clone(),
            filter: self.shared_filter(lists, classes, st),
        }
    }

    /// The node's filter, one array for all the nodes in the same destination entries of
    /// the same rules that are built through `classes` (the servers behind a tag): their
    /// filters differ only in the nodes' own addresses, which rules do not spell out.
    /// Through a prefix, a rule reaches only a part of a node's addresses, so such nodes
    /// get their own array.
    fn shared_filter(
        &self,
        lists: &mut Lists,
        classes: &mut Classes,
        st: &NodeState,
    ) -> Arc<[ViewRule]> {
        if st.m.dst_by_prefix {
            return self.filter(lists, st);
        }
        classes
            .entry(st.class)
            .or_insert_with(|| self.filter(lists, st))
            .clone()
    }

    /// Both ends of every rule the node is in, but itself.
    fn peers(&self, st: &NodeState) -> PeerList {
        let mut peers: Vec<NodeId> = Vec::new();
        for (r, _) in &st.m.src {
            peers.extend(self.rules[*r as usize].dst.iter().copied());
        }
        for (r, _) in &st.m.dst {
            peers.extend(self.rules[*r as usize].src.keys().copied());
        }
        // A concatenation of sorted runs, which the stable sort merges.
        peers.sort();
        peers.dedup();
        peers.retain(|p| *p != st.node.id);
        PeerList::from_sorted(&peers)
    }

    /// The node's inbound filter: one entry per (destination, protocols, ports) with the
    /// sources of every rule that grants it, then entries that differ only in ports merged.
    fn filter(&self, lists: &mut Lists, st: &NodeState) -> Arc<[ViewRule]> {
        // (dst, protos, ports) -> source lists. Each of these lists is interned or is all of
        // the node's own addresses (`None`), so equal contents are one allocation: groups are
        // found by identity, without comparing lists.
        type Group<'a> = (
            Option<Arc<[IpNet]>>,
            &'a Arc<[u8]>,
            &'a Arc<[PortRange]>,
            Vec<&'a Arc<[IpNet]>>,
        );
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (r, entries) in &st.m.dst {
            let rs = &self.rules[*r as usize];
            if rs.src_nets.is_empty() {
                continue;
            }
            let rule = &self.policy.rules[*r as usize];
            for e in entries {
                // A strict part of the node's addresses, else `None` for all of them: only
                // then may nodes share the rule (and equal views compare equal).
                let dst: Option<Arc<[IpNet]>> = match &rule.dst[*e as usize].selector {
                    Selector::Prefix { net, .. } => {
                        let inside: Vec<IpNet> = st
                            .nets
                            .iter()
                            .filter(|a| net.contains(*a))
                            .copied()
                            .collect();
                        (inside.len() != st.nets.len()).then(|| lists.nets.intern(inside))
                    }
                    _ => None,
                };
                for (protos, ports) in &self.index.caps[*r as usize][*e as usize] {
                    let at = groups.iter().position(|g| {
                        same_dst(&g.0, &dst) && Arc::ptr_eq(g.1, protos) && Arc::ptr_eq(g.2, ports)
                    });
                    let srcs = match at {
                        Some(i) => &mut groups[i].3,
                        None => {
                            groups.push((dst.clone(), protos, ports, Vec::new()));
                            &mut groups.last_mut().expect("just pushed").3
                        }
                    };
                    if !srcs.iter().any(|s| Arc::ptr_eq(s, &rs.src_nets)) {
                        srcs.push(&rs.src_nets);
                    }
                }
            }
        }
        let mut filter: Vec<ViewRule> = groups
            .into_iter()
            .map(|(dst, protos, ports, srcs)| ViewRule {
                src: match srcs[..] {
                    [one] => one.clone(),
                    _ => lists.union(&srcs),
                },
                dst,
                protos: protos.clone(),
                ports: ports.clone(),
            })
            .collect();
        if filter.is_empty() {
            return lists.no_rules.clone();
        }
        let own = &st.nets;
        filter.sort_by(|a, b| {
            cmp_dst(own, &a.dst, &b.dst)
                .then_with(|| cmp_lists(&a.protos, &b.protos))
                .then_with(|| cmp_lists(&a.src, &b.src))
                .then_with(|| cmp_lists(&a.ports, &b.ports))
        });
        // Rules that differ only in ports (neighbours in this order) become one.
        let mut merged: Vec<ViewRule> = Vec::with_capacity(filter.len());
        for f in filter {
            match merged.last_mut() {
                Some(l) if l.dst == f.dst && l.protos == f.protos && l.src == f.src => {
                    let ports = l.ports.iter().chain(f.ports.iter()).copied().collect();
                    l.ports = lists.ports.intern(super::target::merge_ports(ports));
                }
                _ => merged.push(f),
            }
        }
        Arc::from(merged)
    }
}

/// Whether two destinations are one list (`None`: all of the node's addresses).
fn same_dst(a: &Option<Arc<[IpNet]>>, b: &Option<Arc<[IpNet]>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Orders destinations by the addresses they stand for, as if written out.
fn cmp_dst(
    own: &Arc<[IpNet]>,
    a: &Option<Arc<[IpNet]>>,
    b: &Option<Arc<[IpNet]>>,
) -> std::cmp::Ordering {
    cmp_lists(a.as_ref().unwrap_or(own), b.as_ref().unwrap_or(own))
}

/// Orders lists by content, with a shortcut for one list compared with itself.
fn cmp_lists<T: Ord>(a: &Arc<[T]>, b: &Arc<[T]>) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        std::cmp::Ordering::Equal
    } else {
        a.cmp(b)
    }
}

fn fresh_rules(index: &RuleIndex) -> Vec<RuleState> {
    index
        .raw_src
        .iter()
        .map(|raw| RuleState {
            // Raw source prefixes apply before any node joins.
            src_nets: Arc::from(raw.clone()),
            ..RuleState::default()
        })
        .collect()
}

/// Walks two sorted sequences: every element in only one of them, with `true` when it is
/// in the new one.
fn sorted_diff(
    old: impl Iterator<Item = NodeId>,
    new: impl Iterator<Item = NodeId>,
) -> Vec<(NodeId, bool)> {
    let (mut old, mut new) = (old.peekable(), new.peekable());
    let mut out = Vec::new();
    loop {
        match (old.peek(), new.peek()) {
            (Some(a), Some(b)) if a == b => {
                old.next();
                new.next();
            }
            (Some(a), Some(b)) if a < b => {
                out.push((*a, false));
                old.next();
            }
            (Some(a), None) => {
                out.push((*a, false));
                old.next();
            }
            (_, Some(b)) => {
                out.push((*b, true));
                new.next();
            }
            (None, None) => return out,
        }
    }
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
            self.nodes
                .insert(n.id, NodeState::new(n, Memberships::default(), 0));
        }
        let p = self.policy.clone();
        self.set_policy(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posture::PostureAttrs;

    fn server(id: u64, tags: &[&str]) -> InventoryNode {
        InventoryNode {
            id: NodeId(id),
            user: None,
            user_groups: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            addresses: vec![format!("100.64.0.{id}").parse().unwrap()],
            posture: PostureAttrs::new(),
        }
    }

    #[test]
    fn class_numbers_are_renewed_as_nodes_change() {
        // 60 tags, each reached from tag:a: a node with two of them is in one of 1,770
        // distinct sets of destination entries.
        let tags: Vec<String> = (0..60).map(|k| format!("tag:t{k}")).collect();
        let owners: Vec<String> = tags.iter().map(|t| format!("\"{t}\": []")).collect();
        let acls: Vec<String> = tags
            .iter()
            .map(|t| format!(r#"{{"action": "accept", "src": ["tag:a"], "dst": ["{t}:22"]}}"#))
            .collect();
        let text = format!(
            r#"{{"tagOwners": {{"tag:a": [], {}}}, "acls": [{}]}}"#,
            owners.join(", "),
            acls.join(", ")
        );
        let policy = Arc::new(Policy::parse(&text, "t.hujson").unwrap());
        let mut c = ViewCompiler::new(policy.clone());
        let mut nodes = vec![
            server(1, &["tag:a"]),
            server(2, &["tag:t0", "tag:t1"]),
            server(3, &["tag:t0", "tag:t1"]),
        ];
        c.bulk_load(nodes.clone());
        for k in 0..60 {
            for j in k + 1..60 {
                nodes[2] = server(3, &[&tags[k], &tags[j]]);
                c.upsert_node(nodes[2].clone());
            }
        }
        assert!(
            c.classes.ids.len() <= 2 * c.len() + 1024,
            "entries no node has any more were dropped"
        );
        // Back in node 2's class: the two share one filter again after a refilter.
        nodes[2] = server(3, &["tag:t0", "tag:t1"]);
        c.upsert_node(nodes[2].clone());
        nodes.push(server(4, &["tag:a"]));
        c.upsert_node(nodes[3].clone());
        let fresh = compile_all(policy, nodes);
        for (id, v) in &fresh {
            assert_eq!(c.view(*id), Some(v), "view of {id}");
        }
        let (b2, b3) = (c.view(NodeId(2)).unwrap(), c.view(NodeId(3)).unwrap());
        assert!(
            Arc::ptr_eq(&b2.filter, &b3.filter),
            "one array for the class"
        );
        assert_eq!(
            b2.filter_rules()[0].dst,
            ["100.64.0.2/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            b3.filter_rules()[0].dst,
            ["100.64.0.3/32".parse::<IpNet>().unwrap()]
        );
    }
}
