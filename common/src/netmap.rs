//! A node's view of the mesh as the coordinator sends it: the peers it may talk to (each with
//! its signed credential and reachable endpoints) and its inbound packet filter.
//! A node learns nothing about nodes outside its view.

use crate::credential::SignedCredential;
use crate::ids::NodeId;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// IANA protocol numbers the policy language names.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    /// What a rule without `proto` allows: TCP, UDP and ICMP (both families).
    pub const DEFAULT: [u8; 4] = [TCP, UDP, ICMP, ICMPV6];
    /// Whether packets of this protocol carry ports a rule can match.
    pub fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | 132 /* SCTP */)
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: 65535,
    };
    pub fn single(p: u16) -> Self {
        PortRange { first: p, last: p }
    }
    pub fn contains(&self, p: u16) -> bool {
        self.first <= p && p <= self.last
    }
}

/// One inbound allowance: packets from `src` to `dst` with a protocol in `protos` and, for
/// protocols with ports, a destination port in `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilterRule {
    pub src: Vec<IpNet>,
    /// The destination prefixes on this node (its own addresses, later routed subnets).
    pub dst: Vec<IpNet>,
    /// IANA protocol numbers; never empty.
    pub protos: Vec<u8>,
    /// Destination port ranges; ignored for protocols without ports.
    pub ports: Vec<PortRange>,
}

impl FilterRule {
    /// Reference matcher (the client compiles rules into a faster structure).
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: Option<u16>) -> bool {
        rule_allows(
            (&self.src, &self.dst, &self.protos, &self.ports),
            src,
            dst,
            proto,
            dst_port,
        )
    }
}

/// The lists of a filter rule: sources, destinations, protocols, ports.
pub type RuleLists<'a> = (&'a [IpNet], &'a [IpNet], &'a [u8], &'a [PortRange]);

/// Whether a packet matches a filter rule given by its lists (shared by [`FilterRule`] and
/// the policy compiler's views, which hold the same lists in shared form).
pub fn rule_allows(
    (srcs, dsts, protos, ports): RuleLists<'_>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dst_port: Option<u16>,
) -> bool {
    srcs.iter().any(|n| n.contains(&src))
        && dsts.iter().any(|n| n.contains(&dst))
        && protos.contains(&proto)
        && (!proto::has_ports(proto)
            || dst_port.is_some_and(|p| ports.iter().any(|r| r.contains(p))))
}

/// A peer as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer's coordinator-signed credential (hostname, addresses, WireGuard key, expiry).
    pub credential: SignedCredential,
    /// UDP endpoints where the peer may be reached, best first.
    pub endpoints: Vec<SocketAddr>,
}

/// A node's complete view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetMap {
    /// Increases with every change of this node's view.
    pub version: u64,
    pub peers: Vec<PeerEntry>,
    pub filter: Vec<FilterRule>,
}

/// A change to a view, relative to `base_version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMapDelta {
    pub base_version: u64,
    pub version: u64,
    /// Added peers, and peers whose credential or endpoints changed.
    pub upsert: Vec<PeerEntry>,
    pub remove: Vec<NodeId>,
    /// The new filter, when it changed.
    pub filter: Option<Vec<FilterRule>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rule_matches_ports_only_for_port_protocols() {
        let r = FilterRule {
            src: vec!["100.64.0.0/24".parse().unwrap()],
            dst: vec!["100.64.0.9/32".parse().unwrap()],
            protos: proto::DEFAULT.to_vec(),
            ports: vec![PortRange::single(443)],
        };
        let s: IpAddr = "100.64.0.5".parse().unwrap();
        let d: IpAddr = "100.64.0.9".parse().unwrap();
        assert!(r.allows(s, d, proto::TCP, Some(443)));
        assert!(!r.allows(s, d, proto::TCP, Some(22)));
        assert!(!r.allows(s, d, proto::TCP, None));
        assert!(r.allows(s, d, proto::ICMP, None));
        assert!(!r.allows("100.64.1.5".parse().unwrap(), d, proto::TCP, Some(443)));
        assert!(!r.allows(s, "100.64.0.8".parse().unwrap(), proto::TCP, Some(443)));
    }
}
