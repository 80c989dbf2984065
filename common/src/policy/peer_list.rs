//! A sorted set of node ids stored as LEB128 varints of the gaps between neighbours: node ids
//! are handed out in sequence, so a peer of a large mesh costs one or two bytes instead of
//! eight, which is what keeps a view of thousands of peers small.

use crate::ids::NodeId;
use std::fmt;

/// Sorted node ids without duplicates, delta-encoded.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerList {
    /// Varint of the first id, then of each gap to the previous id (always above zero).
    bytes: Vec<u8>,
    len: u32,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes the varint at `at`; returns it and the offset after it. The bytes were written
/// by `put_varint`, so they are well formed.
fn get_varint(bytes: &[u8], mut at: usize) -> (u64, usize) {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[at];
        at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return (v, at);
        }
        shift += 7;
    }
}

/// Where an id is, or would go, in the list.
struct Slot {
    /// Byte offset of the first element not below the id (or the end).
    at: usize,
    /// The element before that point (0 when there is none).
    prev: u64,
    /// That element and the offset after it, if there is one.
    next: Option<(u64, usize)>,
}

impl PeerList {
    /// From ids already sorted and without duplicates.
    pub fn from_sorted(ids: &[NodeId]) -> PeerList {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let mut bytes = Vec::with_capacity(ids.len() + 8);
        let mut prev = 0;
        for id in ids {
            put_varint(&mut bytes, id.0 - prev);
            prev = id.0;
        }
        bytes.shrink_to_fit();
        PeerList {
            bytes,
            len: ids.len() as u32,
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ids in ascending order.
    pub fn iter(&self) -> PeerIter<'_> {
        PeerIter {
            bytes: &self.bytes,
            at: 0,
            prev: 0,
        }
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.slot(id.0).next.is_some_and(|(v, _)| v == id.0)
    }

    fn slot(&self, id: u64) -> Slot {
        let (mut at, mut prev) = (0, 0);
        while at < self.bytes.len() {
            let (gap, after) = get_varint(&self.bytes, at);
            let v = prev + gap;
            if v >= id {
                return Slot {
                    at,
                    prev,
                    next: Some((v, after)),
                };
            }
            prev = v;
            at = after;
        }
        Slot {
            at,
            prev,
            next: None,
        }
    }

    /// Adds an id; returns whether it was new. Only the gaps around it are rewritten.
    pub fn insert(&mut self, id: NodeId) -> bool {
        let s = self.slot(id.0);
        let mut patch = Vec::with_capacity(20);
        put_varint(&mut patch, id.0 - s.prev);
        let end = match s.next {
            Some((v, _)) if v == id.0 => return false,
            Some((v, after)) => {
                put_varint(&mut patch, v - id.0);
                after
            }
            None => s.at,
        };
        // Grow to the exact size at once (no doubling, no shrinking after).
        self.bytes
            .reserve_exact(patch.len().saturating_sub(end - s.at));
        self.bytes.splice(s.at..end, patch);
        self.len += 1;
        true
    }

    /// Removes an id; returns whether it was there.
    pub fn remove(&mut self, id: NodeId) -> bool {
        let s = self.slot(id.0);
        let Some((v, after)) = s.next.filter(|(v, _)| *v == id.0) else {
            return false;
        };
        let mut patch = Vec::with_capacity(10);
        let end = if after < self.bytes.len() {
            let (gap, after_next) = get_varint(&self.bytes, after);
            put_varint(&mut patch, v + gap - s.prev);
            after_next
        } else {
            after
        };
        self.bytes.splice(s.at..end, patch);
        // The byte or two freed stay reserved (a peer that leaves often comes back); an
        // empty list gives its memory back.
        if self.bytes.is_empty() {
            self.bytes = Vec::new();
        }
        self.len -= 1;
        true
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }
}

impl FromIterator<NodeId> for PeerList {
    fn from_iter<I: IntoIterator<Item = NodeId>>(iter: I) -> Self {
        let mut ids: Vec<NodeId> = iter.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        PeerList::from_sorted(&ids)
    }
}

impl fmt::Debug for PeerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Iterator over a [`PeerList`].
pub struct PeerIter<'a> {
    bytes: &'a [u8],
    at: usize,
    prev: u64,
}

impl Iterator for PeerIter<'_> {
    type Item = NodeId;
    fn next(&mut self) -> Option<NodeId> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let (gap, after) = get_varint(self.bytes, self.at);
        self.at = after;
        self.prev += gap;
        Some(NodeId(self.prev))
    }
}

impl<'a> IntoIterator for &'a PeerList {
    type Item = NodeId;
    type IntoIter = PeerIter<'a>;
    fn into_iter(self) -> PeerIter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn ids(xs: &[u64]) -> Vec<NodeId> {
        xs.iter().map(|x| NodeId(*x)).collect()
    }

    #[test]
    fn round_trips_and_stays_small() {
        let xs = ids(&[0, 1, 2, 127, 128, 300, 16_384, 1 << 40, u64::MAX]);
        let l = PeerList::from_sorted(&xs);
        assert_eq!(l.iter().collect::<Vec<_>>(), xs);
        assert_eq!(l.len(), xs.len());
        let dense = PeerList::from_sorted(&ids(&(1..=8000).collect::<Vec<_>>()));
        assert_eq!(dense.heap_bytes(), 8000, "one byte per sequential id");
    }

    #[test]
    fn inserts_and_removes_agree_with_a_btreeset() {
        // A fixed pseudo-random walk over ids with small and large gaps.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut model = BTreeSet::new();
        let mut l = PeerList::default();
        for _ in 0..5000 {
            let r = next();
            let id = NodeId(match r % 3 {
                0 => r % 64,
                1 => r % 100_000,
                _ => r >> 3,
            });
            if next() % 3 == 0 {
                assert_eq!(l.remove(id), model.remove(&id), "remove {id}");
            } else {
                assert_eq!(l.insert(id), model.insert(id), "insert {id}");
            }
            assert_eq!(l.len(), model.len());
            assert_eq!(l.contains(&id), model.contains(&id));
        }
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(l, model.iter().copied().collect::<PeerList>());
        for id in model.clone() {
            assert!(l.remove(id));
        }
        assert!(l.is_empty() && l.heap_bytes() == 0);
    }
}
