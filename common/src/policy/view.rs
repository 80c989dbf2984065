//! A node's compiled view (its peers and inbound filter) in the compact form the compiler
//! keeps for every node: peers delta-encoded, filter lists shared between views through
//! `Arc` (every server behind the same tag points at the same source list, equal lists are
//! interned), and heap accounting that counts a shared list once.

use super::peer_list::PeerList;
use crate::netmap::{rule_allows, FilterRule, PortRange};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::net::IpAddr;
use std::sync::Arc;

/// What one node must know: its peers (both ends of every allowed flow, and nobody else)
/// and its inbound filter.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// Never the node itself.
    pub peers: PeerList,
    /// The node's addresses as host prefixes: the destination of every rule whose `dst` is
    /// `None`.
    pub own: Arc<[IpNet]>,
    /// Rules that admit traffic to all of the node's addresses say so (`dst: None`) rather
    /// than list them, so nodes that differ only in their addresses (the servers behind a
    /// tag) hold one rule array between them, and a change to it costs one allocation.
    pub filter: Arc<[ViewRule]>,
}

/// One inbound filter rule of a view; the wire form is [`FilterRule`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ViewRule {
    pub src: Arc<[IpNet]>,
    /// The node's own addresses the rule admits traffic to: `None` for all of them
    /// ([`NodeView::own`]), else a strict part of them.
    pub dst: Option<Arc<[IpNet]>>,
    pub protos: Arc<[u8]>,
    pub ports: Arc<[PortRange]>,
}

impl ViewRule {
    /// The rule's destination addresses, for a node whose own addresses are `own`.
    pub fn dst<'a>(&'a self, own: &'a [IpNet]) -> &'a [IpNet] {
        self.dst.as_deref().unwrap_or(own)
    }

    /// Whether a packet to a node with addresses `own` matches (as [`FilterRule::allows`]).
    pub fn allows(
        &self,
        own: &[IpNet],
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dst_port: Option<u16>,
    ) -> bool {
        rule_allows(
            (&self.src, self.dst(own), &self.protos, &self.ports),
            src,
            dst,
            proto,
            dst_port,
        )
    }

    /// The wire form, for a node whose own addresses are `own`.
    pub fn to_filter_rule(&self, own: &[IpNet]) -> FilterRule {
        FilterRule {
            src: self.src.to_vec(),
            dst: self.dst(own).to_vec(),
            protos: self.protos.to_vec(),
            ports: self.ports.to_vec(),
        }
    }
}

/// Bytes of an `Arc<[T]>` allocation: two reference counts, then the elements.
fn arc_bytes<T>(a: &Arc<[T]>) -> usize {
    2 * size_of::<usize>() + std::mem::size_of_val::<[T]>(a)
}

impl NodeView {
    /// The filter in wire form.
    pub fn filter_rules(&self) -> Vec<FilterRule> {
        self.filter
            .iter()
            .map(|r| r.to_filter_rule(&self.own))
            .collect()
    }

    /// A rule's destination addresses in this view.
    pub fn dst<'a>(&'a self, r: &'a ViewRule) -> &'a [IpNet] {
        r.dst(&self.own)
    }

    /// Whether the filter admits a packet (as [`FilterRule::allows`] over its rules).
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: Option<u16>) -> bool {
        self.filter
            .iter()
            .any(|r| r.allows(&self.own, src, dst, proto, dst_port))
    }

    /// Whether two views' filters are the same rules once destinations are resolved (a
    /// shared array or an equal one is the common case and costs no list comparison).
    pub fn same_filter(&self, other: &NodeView) -> bool {
        let same_own = Arc::ptr_eq(&self.own, &other.own) || self.own == other.own;
        if same_own && Arc::ptr_eq(&self.filter, &other.filter) {
            return true;
        }
        self.filter.len() == other.filter.len()
            && self.filter.iter().zip(other.filter.iter()).all(|(a, b)| {
                a.src == b.src
                    && a.protos == b.protos
                    && a.ports == b.ports
                    && (same_own && a.dst == b.dst || self.dst(a) == other.dst(b))
            })
    }

    /// Heap bytes this view owns: its peer list. Its own address list and its rule array
    /// (with the lists in it) may be shared with other views and are counted by
    /// [`heap_bytes_shared`], once for all.
    pub fn heap_bytes(&self) -> usize {
        self.peers.heap_bytes()
    }
}

/// Views are equal when a node would be told the same: the same peers and the same filter
/// in wire form (whether or not a destination is spelt out as the node's own addresses).
impl PartialEq for NodeView {
    fn eq(&self, other: &NodeView) -> bool {
        self.peers == other.peers && self.same_filter(other)
    }
}

impl Eq for NodeView {}

/// Heap bytes of many views together: what each owns, plus every shared list once.
pub fn heap_bytes_shared<'a>(views: impl IntoIterator<Item = &'a NodeView>) -> usize {
    let mut seen: HashSet<*const u8> = HashSet::new();
    let mut total = 0;
    let mut once = |ptr: *const u8, bytes: usize| {
        let new = seen.insert(ptr);
        if new {
            total += bytes;
        }
        new
    };
    let mut owned = 0;
    for v in views {
        owned += v.heap_bytes();
        once(Arc::as_ptr(&v.own).cast(), arc_bytes(&v.own));
        if !once(Arc::as_ptr(&v.filter).cast(), arc_bytes(&v.filter)) {
            continue;
        }
        for r in v.filter.iter() {
            once(Arc::as_ptr(&r.src).cast(), arc_bytes(&r.src));
            if let Some(d) = &r.dst {
                once(Arc::as_ptr(d).cast(), arc_bytes(d));
            }
            once(Arc::as_ptr(&r.protos).cast(), arc_bytes(&r.protos));
            once(Arc::as_ptr(&r.ports).cast(), arc_bytes(&r.ports));
        }
    }
    owned + total
}

/// A fast hasher for keys the coordinator makes itself (node ids, address lists, rule
/// numbers): no device chooses them, so the flooding resistance of the default hasher buys
/// nothing here, and hashing is a large part of a view update.
#[derive(Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }
    fn write_u16(&mut self, v: u16) {
        self.add(u64::from(v));
    }
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// Lists longer than this are not interned.
const MAX_INTERNED: usize = 1024;

/// Hands out one shared copy of every distinct list, so that views whose filters come out
/// equal (servers behind the same tags) hold one allocation between them.
pub(super) struct Interner<T> {
    set: FastSet<Arc<[T]>>,
    /// Size at which lists no view holds any more are dropped.
    sweep_at: usize,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: FastSet::default(),
            sweep_at: 1024,
        }
    }
}

impl<T: Hash + Eq> Interner<T> {
    pub(super) fn intern(&mut self, v: Vec<T>) -> Arc<[T]> {
        // Long lists come from one broad rule each and seldom equal another; hashing them at
        // every change of that rule would cost more than sharing saves.
        if v.len() > MAX_INTERNED {
            return Arc::from(v);
        }
        if let Some(a) = self.set.get(&v[..]) {
            return a.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (2 * self.set.len()).max(1024);
        }
        let a: Arc<[T]> = Arc::from(v);
        self.set.insert(a.clone());
        a
    }
}

/// Results computed from shared lists, keyed by which lists (by identity) they came from.
/// An entry keeps its inputs alive, so their addresses cannot be reused by other lists while
/// it exists; entries whose result no view holds any more are dropped as the cache grows.
pub(super) struct UnionCache {
    /// Input identities -> (the inputs, kept alive; the union).
    map: FastMap<Vec<usize>, UnionEntry>,
    sweep_at: usize,
}

type UnionEntry = (Vec<Arc<[IpNet]>>, Arc<[IpNet]>);

impl Default for UnionCache {
    fn default() -> Self {
        UnionCache {
            map: FastMap::default(),
            sweep_at: 1024,
        }
    }
}

impl UnionCache {
    pub(super) fn get_or_make(
        &mut self,
        parts: &[&Arc<[IpNet]>],
        make: impl FnOnce() -> Arc<[IpNet]>,
    ) -> Arc<[IpNet]> {
        let mut key: Vec<usize> = parts
            .iter()
            .map(|p| Arc::as_ptr(p).cast::<u8>() as usize)
            .collect();
        key.sort_unstable();
        if let Some((_, r)) = self.map.get(&key) {
            return r.clone();
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (_, r)| Arc::strong_count(r) > 1);
            self.sweep_at = (2 * self.map.len()).max(1024);
        }
        let r = make();
        let inputs = parts.iter().map(|p| Arc::clone(p)).collect();
        self.map.insert(key, (inputs, r.clone()));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn rule(src: &Arc<[IpNet]>) -> ViewRule {
        ViewRule {
            src: src.clone(),
            dst: None,
            protos: Arc::from(vec![6u8]),
            ports: Arc::from(vec![PortRange::single(443)]),
        }
    }

    fn own(a: &str) -> Arc<[IpNet]> {
        Arc::from(vec![a.parse::<IpNet>().unwrap()])
    }

    #[test]
    fn shared_lists_are_counted_once() {
        let src: Arc<[IpNet]> = Arc::from(vec!["100.64.0.0/24".parse::<IpNet>().unwrap(); 10]);
        let a = NodeView {
            peers: PeerList::from_sorted(&[NodeId(2)]),
            own: own("100.64.1.1/32"),
            filter: Arc::from(vec![rule(&src)]),
        };
        let b = NodeView {
            peers: PeerList::from_sorted(&[NodeId(1)]),
            own: own("100.64.1.2/32"),
            filter: Arc::from(vec![rule(&src)]),
        };
        let alone = heap_bytes_shared([&a]);
        let both = heap_bytes_shared([&a, &b]);
        // The second view adds its own parts but not the shared source list again.
        assert!(both < 2 * alone);
        assert_eq!(both - alone, alone - arc_bytes(&src));
        assert!(a.allows(
            "100.64.0.9".parse().unwrap(),
            "100.64.1.1".parse().unwrap(),
            6,
            Some(443)
        ));
        assert!(!a.allows(
            "100.64.0.9".parse().unwrap(),
            "100.64.1.2".parse().unwrap(),
            6,
            Some(443)
        ));
        let wire = a.filter_rules();
        assert_eq!(wire[0].src.len(), 10, "wire form carries the list");
        assert_eq!(wire[0].dst, [a.own[0]], "and the node's own addresses");
        // One rule array shared by both views is counted once.
        let shared = NodeView {
            filter: a.filter.clone(),
            ..b.clone()
        };
        assert!(heap_bytes_shared([&a, &shared]) < both);
    }

    #[test]
    fn views_compare_by_resolved_destinations() {
        let src: Arc<[IpNet]> = Arc::from(vec!["100.64.0.0/24".parse::<IpNet>().unwrap()]);
        let mine = own("100.64.1.1/32");
        let implicit = NodeView {
            peers: PeerList::default(),
            own: mine.clone(),
            filter: Arc::from(vec![rule(&src)]),
        };
        let spelt = NodeView {
            filter: Arc::from(vec![ViewRule {
                dst: Some(Arc::from(mine.to_vec())),
                ..rule(&src)
            }]),
            ..implicit.clone()
        };
        assert_eq!(implicit, spelt);
        assert_eq!(implicit.filter_rules(), spelt.filter_rules());
        let elsewhere = NodeView {
            own: own("100.64.1.2/32"),
            ..implicit.clone()
        };
        assert_ne!(implicit, elsewhere, "same array, other addresses");
        let no_filter = |a: &str| NodeView {
            own: own(a),
            ..NodeView::default()
        };
        assert_eq!(no_filter("100.64.1.1/32"), no_filter("100.64.1.2/32"));
    }

    #[test]
    fn interned_lists_are_one_allocation_until_unused() {
        let mut i = Interner::default();
        let a = i.intern(vec![1u8, 2]);
        let b = i.intern(vec![1u8, 2]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &i.intern(vec![3u8])));
        drop((a, b));
        for n in 0..2000u32 {
            i.intern(n.to_be_bytes().to_vec());
        }
        assert!(i.set.len() < 2000, "lists nobody holds are swept");
    }
}
