//! Flow events for the coordinator's flow log: denied packets (and newly allowed inbound flows)
//! aggregated per (src, dst, proto, port, verdict) and bounded, so that a flood of denied packets
//! costs one hash update each and produces a handful of events, never a packet-rate stream.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::{FlowEvent, FlowVerdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dst_port: Option<u16>,
    denied: bool,
}

/// Aggregates flow events between two `take` calls.
pub struct FlowLog {
    pending: HashMap<Key, FlowEvent>,
    /// Bound on distinct pending events; further distinct flows are only counted.
    max_pending: usize,
    /// Distinct flows dropped from the log because it was full (also reported by `status`).
    pub overflowed: u64,
    recent_denied: VecDeque<FlowEvent>,
    max_recent: usize,
}

impl FlowLog {
    pub fn new(max_pending: usize, max_recent: usize) -> Self {
        FlowLog {
            pending: HashMap::new(),
            max_pending,
            overflowed: 0,
            recent_denied: VecDeque::new(),
            max_recent,
        }
    }

    pub fn record(
        &mut self,
        now: UnixMillis,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dst_port: Option<u16>,
        verdict: FlowVerdict,
    ) {
        let denied = verdict == FlowVerdict::Denied;
        let key = Key {
            src,
            dst,
            proto,
            dst_port,
            denied,
        };
        if let Some(ev) = self.pending.get_mut(&key) {
            ev.count = ev.count.saturating_add(1);
            return;
        }
        let ev = FlowEvent {
            at: now,
            src,
            dst,
            proto,
            dst_port,
            verdict,
            count: 1,
        };
        if denied {
            if self.recent_denied.len() >= self.max_recent {
                self.recent_denied.pop_front();
            }
            self.recent_denied.push_back(ev.clone());
        }
        if self.pending.len() >= self.max_pending {
            self.overflowed += 1;
            return;
        }
        self.pending.insert(key, ev);
    }

    /// Everything aggregated since the last call, oldest first.
    pub fn take(&mut self) -> Vec<FlowEvent> {
        let mut v: Vec<FlowEvent> = self.pending.drain().map(|(_, e)| e).collect();
        v.sort_by_key(|e| e.at);
        v
    }

    /// The last denied flows (first packet of each aggregate), for `status`.
    pub fn recent_denied(&self) -> Vec<FlowEvent> {
        self.recent_denied.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_and_bounds() {
        let mut log = FlowLog::new(2, 3);
        let a: IpAddr = "100.64.0.1".parse().unwrap();
        let b: IpAddr = "100.64.0.2".parse().unwrap();
        for _ in 0..1000 {
            log.record(UnixMillis(5), a, b, 6, Some(22), FlowVerdict::Denied);
        }
        for port in 0..10 {
            log.record(UnixMillis(6), a, b, 6, Some(port), FlowVerdict::Denied);
        }
        let evs = log.take();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].count, 1000);
        assert_eq!(log.overflowed, 9);
        assert_eq!(log.recent_denied().len(), 3);
        assert!(log.take().is_empty());
    }
}
