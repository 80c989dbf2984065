//! The flow journal: recent flow events reported by the devices' packet filters (the PEPs),
//! kept in memory for `flows` queries and written to the log as one structured line each, so
//! that a SIEM reading the coordinator's JSON logs receives them all.
//!
//! Bounded per device: a device that floods reports only pushes out its own oldest events,
//! never another device's, and memory stays proportional to the devices that reported.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use ztmesh_common::ids::NodeId;
use ztmesh_common::wire::{FlowEvent, FlowVerdict};

/// Events kept per device (the newest).
pub const PER_NODE: usize = 64;

/// One event as the journal keeps it: who reported it, and what it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    pub node: NodeId,
    pub hostname: String,
    #[serde(flatten)]
    pub event: FlowEvent,
}

#[derive(Default)]
pub struct FlowJournal {
    by_node: HashMap<NodeId, VecDeque<FlowRecord>>,
}

impl FlowJournal {
    /// Keep `events` reported by `node` (the identity of its session, never a field it sent).
    pub fn record(&mut self, node: NodeId, hostname: &str, events: Vec<FlowEvent>) {
        let q = self.by_node.entry(node).or_default();
        for event in events {
            log_event(node, hostname, &event);
            if q.len() == PER_NODE {
                q.pop_front();
            }
            q.push_back(FlowRecord {
                node,
                hostname: hostname.to_owned(),
                event,
            });
        }
    }

    /// The newest `limit` events, newest first, of one device or of all.
    pub fn recent(&self, node: Option<NodeId>, limit: usize) -> Vec<FlowRecord> {
        let mut all: Vec<&FlowRecord> = match node {
            Some(id) => self.by_node.get(&id).into_iter().flatten().collect(),
            None => self.by_node.values().flatten().collect(),
        };
        all.sort_by_key(|r| std::cmp::Reverse(r.event.at));
        all.into_iter().take(limit).cloned().collect()
    }
}

fn log_event(node: NodeId, hostname: &str, e: &FlowEvent) {
    let verdict = match e.verdict {
        FlowVerdict::Denied => "denied",
        FlowVerdict::Allowed => "allowed",
    };
    tracing::info!(
        target: "ztmesh::flows",
        node = %node,
        hostname,
        at = e.at.0,
        src = %e.src,
        dst = %e.dst,
        proto = e.proto,
        dst_port = e.dst_port,
        verdict,
        count = e.count,
        "flow"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztmesh_common::time::UnixMillis;

    fn ev(at: u64, port: u16) -> FlowEvent {
        FlowEvent {
            at: UnixMillis(at),
            src: "100.64.0.2".parse().unwrap(),
            dst: "100.64.0.1".parse().unwrap(),
            proto: 6,
            dst_port: Some(port),
            verdict: FlowVerdict::Denied,
            count: 1,
        }
    }

    #[test]
    fn newest_first_per_device_and_overall() {
        let mut j = FlowJournal::default();
        j.record(NodeId(1), "a", vec![ev(10, 22), ev(30, 23)]);
        j.record(NodeId(2), "b", vec![ev(20, 80)]);
        let ports = |v: Vec<FlowRecord>| -> Vec<u16> {
            v.into_iter().filter_map(|r| r.event.dst_port).collect()
        };
        assert_eq!(ports(j.recent(None, 10)), vec![23, 80, 22]);
        assert_eq!(ports(j.recent(Some(NodeId(1)), 10)), vec![23, 22]);
        assert_eq!(ports(j.recent(None, 1)), vec![23]);
        assert!(j.recent(Some(NodeId(9)), 10).is_empty());
    }

    #[test]
    fn a_flooding_device_only_pushes_out_its_own_events() {
        let mut j = FlowJournal::default();
        j.record(NodeId(2), "quiet", vec![ev(1, 443)]);
        let flood: Vec<FlowEvent> = (0..10 * PER_NODE as u64).map(|i| ev(100 + i, 1)).collect();
        j.record(NodeId(1), "noisy", flood);
        assert_eq!(j.recent(Some(NodeId(1)), usize::MAX).len(), PER_NODE);
        assert_eq!(j.recent(Some(NodeId(2)), usize::MAX).len(), 1);
        // The newest of the flood are the ones kept.
        let newest = j.recent(Some(NodeId(1)), 1)[0].event.at.0;
        assert_eq!(newest, 100 + 10 * PER_NODE as u64 - 1);
    }
}
