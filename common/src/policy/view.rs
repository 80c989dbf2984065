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
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeView {
    /// Never the node itself.
    pub peers: PeerList,
    pub filter: Vec<ViewRule>,
}

/// One inbound filter rule of a view; the wire form is [`FilterRule`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ViewRule {
    pub src: Arc<[IpNet]>,
    /// The node's own addresses the rule admits traffic to.
    pub dst: Arc<[IpNet]>,
    pub protos: Arc<[u8]>,
    pub ports: Arc<[PortRange]>,
}

impl ViewRule {
    /// Whether a packet matches (as [`FilterRule::allows`]).
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: Option<u16>) -> bool {
        rule_allows(
            (&self.src, &self.dst, &self.protos, &self.ports),
            src,
            dst,
            proto,
            dst_port,
        )
    }

    pub fn to_filter_rule(&self) -> FilterRule {
        FilterRule {
            src: self.src.to_vec(),
            dst: self.dst.to_vec(),
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
        self.filter.iter().map(ViewRule::to_filter_rule).collect()
    }

    /// Heap bytes this view owns: the peer list and the filter's rule array. The lists its
    /// rules share with other views are counted by [`heap_bytes_shared`], once for all.
    pub fn heap_bytes(&self) -> usize {
        self.peers.heap_bytes() + self.filter.capacity() * size_of::<ViewRule>()
    }
}

/// Heap bytes of many views together: what each owns, plus every shared list once.
pub fn heap_bytes_shared<'a>(views: impl IntoIterator<Item = &'a NodeView>) -> usize {
    let mut seen: HashSet<*const u8> = HashSet::new();
    let mut total = 0;
    let mut once = |ptr: *const u8, bytes: usize| {
        if seen.insert(ptr) {
            total += bytes;
        }
    };
    let mut owned = 0;
    for v in views {
        owned += v.heap_bytes();
        for r in &v.filter {
            once(Arc::as_ptr(&r.src).cast(), arc_bytes(&r.src));
            once(Arc::as_ptr(&r.dst).cast(), arc_bytes(&r.dst));
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

    fn rule(src: &Arc<[IpNet]>, dst: &str) -> ViewRule {
        ViewRule {
            src: src.clone(),
            dst: Arc::from(vec![dst.parse::<IpNet>().unwrap()]),
            protos: Arc::from(vec![6u8]),
            ports: Arc::from(vec![PortRange::single(443)]),
        }
    }

    #[test]
    fn shared_lists_are_counted_once() {
        let src: Arc<[IpNet]> = Arc::from(vec!["100.64.0.0/24".parse::<IpNet>().unwrap(); 10]);
        let a = NodeView {
            peers: PeerList::from_sorted(&[NodeId(2)]),
            filter: vec![rule(&src, "100.64.1.1/32")],
        };
        let b = NodeView {
            peers: PeerList::from_sorted(&[NodeId(1)]),
            filter: vec![rule(&src, "100.64.1.2/32")],
        };
        let alone = heap_bytes_shared([&a]);
        let both = heap_bytes_shared([&a, &b]);
        // The second view adds its own parts but not the shared source list again.
        assert!(both < 2 * alone);
        assert_eq!(both - alone, alone - arc_bytes(&src));
        let r = &a.filter[0];
        assert!(r.allows(
            "100.64.0.9".parse().unwrap(),
            "100.64.1.1".parse().unwrap(),
            6,
            Some(443)
        ));
        assert_eq!(
            r.to_filter_rule().src.len(),
            10,
            "wire form carries the list"
        );
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
