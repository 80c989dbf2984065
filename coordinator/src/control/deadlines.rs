//! Timers of admitted nodes (credential expiry, login-session end), as a pure ordered queue.
//! The sweeper task sleeps until the earliest one; nothing polls.

use std::collections::{BTreeSet, HashMap};
use ztmesh_common::ids::NodeId;
use ztmesh_common::time::UnixMillis;

/// What happens at a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The node's credential ends: remove it from every view.
    CredentialExpiry,
    /// The node's login session ends: re-verify (OIDC refresh) or ask for a new login.
    LoginExpiry,
}

/// One deadline per (node, kind); setting it again replaces the old one.
#[derive(Default)]
pub struct Deadlines {
    queue: BTreeSet<(UnixMillis, NodeId, Kind)>,
    index: HashMap<(NodeId, Kind), UnixMillis>,
}

impl Deadlines {
    /// Set (or move) a deadline. Returns whether it became the earliest one, in which case the
    /// sweeper must be woken to sleep less.
    pub fn set(&mut self, id: NodeId, kind: Kind, at: UnixMillis) -> bool {
        if let Some(old) = self.index.insert((id, kind), at) {
            self.queue.remove(&(old, id, kind));
        }
        self.queue.insert((at, id, kind));
        self.queue.first().is_some_and(|(t, ..)| *t == at)
    }

    pub fn clear(&mut self, id: NodeId, kind: Kind) {
        if let Some(old) = self.index.remove(&(id, kind)) {
            self.queue.remove(&(old, id, kind));
        }
    }

    pub fn clear_node(&mut self, id: NodeId) {
        self.clear(id, Kind::CredentialExpiry);
        self.clear(id, Kind::LoginExpiry);
    }

    pub fn next(&self) -> Option<UnixMillis> {
        self.queue.first().map(|(t, ..)| *t)
    }

    /// Take every deadline at or before `now`, earliest first.
    pub fn take_due(&mut self, now: UnixMillis) -> Vec<(NodeId, Kind)> {
        let mut due = Vec::new();
        while let Some(&(t, id, kind)) = self.queue.first() {
            if t > now {
                break;
            }
            self.queue.pop_first();
            self.index.remove(&(id, kind));
            due.push((id, kind));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_fire_in_order_and_can_move() {
        let mut d = Deadlines::default();
        assert!(d.set(NodeId(1), Kind::CredentialExpiry, UnixMillis(100)));
        assert!(!d.set(NodeId(2), Kind::CredentialExpiry, UnixMillis(200)));
        assert!(d.set(NodeId(3), Kind::LoginExpiry, UnixMillis(50)));
        // Renewal moves node 1's expiry later.
        d.set(NodeId(1), Kind::CredentialExpiry, UnixMillis(300));
        assert_eq!(d.next(), Some(UnixMillis(50)));
        assert_eq!(
            d.take_due(UnixMillis(199)),
            vec![(NodeId(3), Kind::LoginExpiry)]
        );
        d.clear_node(NodeId(2));
        assert_eq!(d.take_due(UnixMillis(250)), vec![]);
        assert_eq!(
            d.take_due(UnixMillis(300)),
            vec![(NodeId(1), Kind::CredentialExpiry)]
        );
        assert_eq!(d.next(), None);
    }
}
