//! The inbound packet filter, compiled from the coordinator's `FilterRule`s into a structure
//! that answers "may src send proto/port to dst" with a hash lookup for host sources (the common
//! case: peers' /32 and /128) and a short scan only for rules with wider source prefixes.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use ztmesh_common::netmap::{proto, FilterRule, PortRange};

/// One rule after compilation: a protocol bitset and merged, sorted port ranges.
#[derive(Debug, Clone)]
struct CompiledRule {
    dst: Vec<IpNet>,
    protos: [u64; 4],
    /// Sorted, non-overlapping.
    ports: Vec<PortRange>,
}

impl CompiledRule {
    fn matches(&self, dst: IpAddr, proto_num: u8, dst_port: Option<u16>) -> bool {
        if self.protos[usize::from(proto_num >> 6)] & (1u64 << (proto_num & 63)) == 0 {
            return false;
        }
        if !proto::has_ports(proto_num) {
            return self.dst.iter().any(|n| n.contains(&dst));
        }
        let Some(port) = dst_port else {
            return false;
        };
        // Binary search the merged ranges: the last range starting at or before `port`.
        let i = self.ports.partition_point(|r| r.first <= port);
        i > 0 && self.ports[i - 1].last >= port && self.dst.iter().any(|n| n.contains(&dst))
    }
}

/// A compiled inbound filter. The default (no rules) denies everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    rules: Vec<CompiledRule>,
    /// Rules whose sources include this exact host address.
    by_host: HashMap<IpAddr, Vec<u32>>,
    /// Rules with at least one non-host source prefix, with those prefixes.
    wide: Vec<(Vec<IpNet>, u32)>,
}

fn merge_ports(mut ports: Vec<PortRange>) -> Vec<PortRange> {
    ports.retain(|r| r.first <= r.last);
    ports.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ports.len());
    for r in ports {
        match out.last_mut() {
            Some(prev) if u32::from(r.first) <= u32::from(prev.last) + 1 => {
                prev.last = prev.last.max(r.last)
            }
            _ => out.push(r),
        }
    }
    out
}

impl Filter {
    pub fn compile(rules: &[FilterRule]) -> Filter {
        let mut f = Filter::default();
        for rule in rules {
            let idx = f.rules.len() as u32;
            let mut protos = [0u64; 4];
            for p in &rule.protos {
                protos[usize::from(p >> 6)] |= 1u64 << (p & 63);
            }
            f.rules.push(CompiledRule {
                dst: rule.dst.clone(),
                protos,
                ports: merge_ports(rule.ports.clone()),
            });
            let mut wide = Vec::new();
            for net in &rule.src {
                if net.prefix_len() == net.max_prefix_len() {
                    let list = f.by_host.entry(net.addr()).or_default();
                    if list.last() != Some(&idx) {
                        list.push(idx);
                    }
                } else {
                    wide.push(*net);
                }
            }
            if !wide.is_empty() {
                f.wide.push((wide, idx));
            }
        }
        f
    }

    /// Whether a new inbound flow from `src` to `dst` is allowed.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto_num: u8, dst_port: Option<u16>) -> bool {
        if let Some(list) = self.by_host.get(&src) {
            if list
                .iter()
                .any(|&i| self.rules[i as usize].matches(dst, proto_num, dst_port))
            {
                return true;
            }
        }
        self.wide.iter().any(|(nets, i)| {
            nets.iter().any(|n| n.contains(&src))
                && self.rules[*i as usize].matches(dst, proto_num, dst_port)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: &[&str], dst: &[&str], protos: &[u8], ports: &[(u16, u16)]) -> FilterRule {
        FilterRule {
            src: src.iter().map(|s| s.parse().unwrap()).collect(),
            dst: dst.iter().map(|s| s.parse().unwrap()).collect(),
            protos: protos.to_vec(),
            ports: ports
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
        }
    }

    /// The compiled filter must agree with the reference matcher on every query.
    #[test]
    fn agrees_with_reference_matcher() {
        let rules = vec![
            rule(
                &["100.64.0.5/32", "fd5a:746d:6573::5/128"],
                &["100.64.0.9/32", "fd5a:746d:6573::9/128"],
                &proto::DEFAULT,
                &[(22, 22), (80, 90), (85, 100)],
            ),
            rule(
                &["100.64.1.0/24"],
                &["100.64.0.9/32"],
                &[proto::UDP],
                &[(53, 53)],
            ),
            rule(&["100.64.0.6/32"], &["100.64.0.9/32"], &[proto::ICMP], &[]),
        ];
        let f = Filter::compile(&rules);
        let srcs = [
            "100.64.0.5",
            "100.64.0.6",
            "100.64.1.7",
            "100.64.2.1",
            "fd5a:746d:6573::5",
        ];
        let dsts = ["100.64.0.9", "100.64.0.8", "fd5a:746d:6573::9"];
        for s in srcs {
            for d in dsts {
                for p in [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, 47] {
                    for port in [
                        None,
                        Some(0),
                        Some(22),
                        Some(53),
                        Some(85),
                        Some(100),
                        Some(101),
                    ] {
                        let (s, d): (IpAddr, IpAddr) = (s.parse().unwrap(), d.parse().unwrap());
                        let want = rules.iter().any(|r| r.allows(s, d, p, port));
                        assert_eq!(f.allows(s, d, p, port), want, "{s} {d} {p} {port:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn empty_filter_denies() {
        let f = Filter::compile(&[]);
        assert!(!f.allows(
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            proto::ICMP,
            None
        ));
    }
}
