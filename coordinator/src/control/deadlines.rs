//! Timers of admitted nodes (credential expiry, login-session end, posture report due), as a
//! pure ordered queue. The sweeper task sleeps until the earliest one; nothing polls.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use ztmesh_common::ids::NodeId;
use ztmesh_common::time::UnixMillis;

/// What happens at a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The node's credential ends: remove it from every view.
    CredentialExpiry,
    /// The node's login session ends: re-verify (OIDC refresh) or ask for a new login.
    LoginExpiry,
    /// The node's next posture report is overdue: without one its posture is unknown, and it
    /// is taken out of the mesh.
    PostureDue,
}

/// Time allowed past the posture report interval, for the network, the device's probes and
/// its clock: half the interval, within 2 s..60 s.
pub fn posture_grace(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_secs(2), Duration::from_secs(60))
}

/// When a node whose last posture arrived at `last` and that was told to report every
/// `interval` counts as silent.
pub fn posture_deadline(last: UnixMillis, interval: Duration) -> UnixMillis {
    let allowed = interval.saturating_add(posture_grace(interval));
    last.saturating_add_ms(u64::try_from(allowed.as_millis()).unwrap_or(u64::MAX))
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
        self.clear(id, Kind::PostureDue);
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

    #[test]
    fn posture_deadline_allows_half_the_interval_within_bounds() {
        let t = UnixMillis(1_000_000);
        let secs = Duration::from_secs;
        // Default 5 min: 60 s of grace (the cap).
        assert_eq!(
            posture_deadline(t, secs(300)),
            UnixMillis(1_000_000 + 360_000)
        );
        // 20 s: 10 s.
        assert_eq!(
            posture_deadline(t, secs(20)),
            UnixMillis(1_000_000 + 30_000)
        );
        // 1 s: at least 2 s.
        assert_eq!(posture_deadline(t, secs(1)), UnixMillis(1_000_000 + 3_000));
        let mut d = Deadlines::default();
        d.set(NodeId(1), Kind::PostureDue, UnixMillis(5));
        d.set(NodeId(1), Kind::CredentialExpiry, UnixMillis(9));
        d.clear_node(NodeId(1));
        assert_eq!(
            d.next(),
            None,
            "removing a node clears its posture timer too"
        );
    }
}
