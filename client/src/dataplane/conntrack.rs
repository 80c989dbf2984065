//! Connection tracking: the flows this node started (whose replies pass the inbound filter) and
//! the inbound flows the filter allowed (so later packets skip the rule lookup). Bounded in size,
//! every entry expires, and flows cut by a view change leave a short-lived marker so that neither
//! side can revive them with a stray packet.

use super::packet::{Parsed, TcpInfo, TCP_FIN, TCP_RST, TCP_SYN};
use std::collections::HashMap;
use std::net::IpAddr;
use ztmesh_common::netmap::proto;
use ztmesh_common::time::UnixMillis;

/// A flow, oriented from this node: `local` is one of our overlay addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
}

impl FlowKey {
    /// Key of a packet we send (from the TUN).
    pub fn outbound(p: &Parsed) -> FlowKey {
        FlowKey {
            proto: p.proto,
            local: p.src,
            remote: p.dst,
            local_port: p.src_port,
            remote_port: p.dst_port,
        }
    }
    /// Key of a packet we receive (from a peer).
    pub fn inbound(p: &Parsed) -> FlowKey {
        FlowKey {
            proto: p.proto,
            local: p.dst,
            remote: p.src,
            local_port: p.dst_port,
            remote_port: p.src_port,
        }
    }
}

/// Who opened the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Origin {
    Local,
    Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Opening,
    Established,
    Closing,
    /// Cut by a view change: every packet of this flow is dropped until the marker expires.
    Cut,
}

#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub origin: Origin,
    state: State,
    expires: UnixMillis,
    /// Next sequence number the remote side will send (what a RST to the local side must carry).
    remote_next: Option<u32>,
    /// Next sequence number the local side will send.
    local_next: Option<u32>,
}

/// Timeouts in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp_opening: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub udp: u64,
    pub icmp: u64,
    pub other: u64,
    pub cut_marker: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_opening: 30_000,
            tcp_established: 2 * 3_600_000,
            tcp_closing: 10_000,
            udp: 120_000,
            icmp: 30_000,
            other: 120_000,
            cut_marker: 10_000,
        }
    }
}

/// What the table says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Part of a tracked flow: pass.
    Tracked,
    /// Part of a flow cut by a view change: drop.
    Cut,
    /// Unknown: the caller decides (filter for inbound, create for outbound).
    Untracked,
}

/// A flow removed by [`Conntrack::cut`], with what is needed to reset its local end.
#[derive(Debug, Clone, Copy)]
pub struct CutFlow {
    pub key: FlowKey,
    pub origin: Origin,
    /// For TCP: the sequence number a RST towards the local side must carry.
    pub rst_seq: Option<u32>,
    pub rst_ack: Option<u32>,
}

fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn max_seq(cur: Option<u32>, new: u32) -> Option<u32> {
    match cur {
        Some(c) if !seq_after(new, c) => Some(c),
        _ => Some(new),
    }
}

pub struct Conntrack {
    map: HashMap<FlowKey, Flow>,
    max_entries: usize,
    pub timeouts: Timeouts,
}

impl Conntrack {
    pub fn new(max_entries: usize, timeouts: Timeouts) -> Self {
        Conntrack {
            map: HashMap::with_capacity(max_entries.min(4096)),
            max_entries,
            timeouts,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn timeout_for(&self, proto_num: u8, state: State) -> u64 {
        match (proto_num, state) {
            (_, State::Cut) => self.timeouts.cut_marker,
            (proto::TCP, State::Opening) => self.timeouts.tcp_opening,
            (proto::TCP, State::Established) => self.timeouts.tcp_established,
            (proto::TCP, State::Closing) => self.timeouts.tcp_closing,
            (proto::UDP, _) => self.timeouts.udp,
            (proto::ICMP | proto::ICMPV6, _) => self.timeouts.icmp,
            _ => self.timeouts.other,
        }
    }

    fn touch(&self, flow: &mut Flow, key: &FlowKey, now: UnixMillis, tcp: Option<TcpInfo>) {
        if let Some(t) = tcp {
            if t.flags & (TCP_RST | TCP_FIN) != 0 {
                flow.state = State::Closing;
            } else if flow.state == State::Opening && t.flags & TCP_SYN == 0 {
                flow.state = State::Established;
            }
        } else if flow.state == State::Opening {
            flow.state = State::Established;
        }
        flow.expires = now.saturating_add_ms(self.timeout_for(key.proto, flow.state));
    }

    /// A packet we send. Creates the flow when unknown (loose pickup, like Linux conntrack, so
    /// a flow that outlived its entry keeps working); refuses only flows cut by a view change,
    /// or new flows when the table is full of live entries.
    pub fn outbound(&mut self, now: UnixMillis, p: &Parsed) -> Lookup {
        let key = FlowKey::outbound(p);
        let tcp = p.tcp;
        if let Some(mut flow) = self.map.get(&key).copied() {
            if flow.state == State::Cut {
                if flow.expires > now {
                    return Lookup::Cut;
                }
            } else {
                if let Some(t) = tcp {
                    flow.local_next = max_seq(flow.local_next, t.seq.wrapping_add(t.seg_len));
                    if t.flags & super::packet::TCP_ACK != 0 {
                        flow.remote_next = max_seq(flow.remote_next, t.ack);
                    }
                }
                self.touch(&mut flow, &key, now, tcp);
                self.map.insert(key, flow);
                return Lookup::Tracked;
            }
        }
        if !self.make_room(now) {
            return Lookup::Cut;
        }
        let mut flow = Flow {
            origin: Origin::Local,
            state: State::Opening,
            expires: now,
            remote_next: None,
            local_next: tcp.map(|t| t.seq.wrapping_add(t.seg_len)),
        };
        if let Some(t) = tcp {
            if t.flags & super::packet::TCP_ACK != 0 {
                flow.remote_next = Some(t.ack);
            }
            // A non-SYN segment means the connection already exists (picked up mid-stream).
            if t.flags & TCP_SYN == 0 {
                flow.state = State::Established;
            }
        }
        self.touch(&mut flow, &key, now, tcp);
        self.map.insert(key, flow);
        Lookup::Tracked
    }

    /// A packet we received, already authenticated and anti-spoof checked.
    pub fn inbound(&mut self, now: UnixMillis, p: &Parsed) -> Lookup {
        let key = FlowKey::inbound(p);
        let Some(flow) = self.map.get(&key).copied() else {
            return Lookup::Untracked;
        };
        let mut flow = flow;
        if flow.state == State::Cut {
            return if flow.expires > now {
                Lookup::Cut
            } else {
                self.map.remove(&key);
                Lookup::Untracked
            };
        }
        if flow.expires <= now {
            self.map.remove(&key);
            return Lookup::Untracked;
        }
        if let Some(t) = p.tcp {
            flow.remote_next = max_seq(flow.remote_next, t.seq.wrapping_add(t.seg_len));
        }
        self.touch(&mut flow, &key, now, p.tcp);
        self.map.insert(key, flow);
        Lookup::Tracked
    }

    /// Record an inbound flow the filter allowed. False when the table is full.
    pub fn insert_inbound(&mut self, now: UnixMillis, p: &Parsed) -> bool {
        if !self.make_room(now) {
            return false;
        }
        let key = FlowKey::inbound(p);
        let mut flow = Flow {
            origin: Origin::Remote,
            state: State::Opening,
            expires: now,
            remote_next: p.tcp.map(|t| t.seq.wrapping_add(t.seg_len)),
            local_next: None,
        };
        if let Some(t) = p.tcp {
            if t.flags & TCP_SYN == 0 {
                flow.state = State::Established;
            }
        }
        self.touch(&mut flow, &key, now, p.tcp);
        self.map.insert(key, flow);
        true
    }

    /// Whether the packet quoted in an ICMP error belongs to a live flow. The quoted packet is
    /// one this node sent, so it is looked up in outbound orientation.
    pub fn knows_quoted(&self, now: UnixMillis, quoted: &Parsed) -> bool {
        self.map
            .get(&FlowKey::outbound(quoted))
            .is_some_and(|f| f.state != State::Cut && f.expires > now)
    }

    /// Whether there is room for one more entry, sweeping expired ones if the table is full.
    fn make_room(&mut self, now: UnixMillis) -> bool {
        if self.map.len() < self.max_entries {
            return true;
        }
        self.sweep(now);
        self.map.len() < self.max_entries
    }

    /// Drop expired entries.
    pub fn sweep(&mut self, now: UnixMillis) {
        self.map.retain(|_, f| f.expires > now);
    }

    /// Cut every live flow for which `doomed` says so: it becomes a marker that drops the flow's
    /// packets for a while. Returns what is needed to reset the local ends.
    pub fn cut(
        &mut self,
        now: UnixMillis,
        mut doomed: impl FnMut(&FlowKey, Origin) -> bool,
    ) -> Vec<CutFlow> {
        let marker = self.timeouts.cut_marker;
        let mut out = Vec::new();
        for (key, flow) in self.map.iter_mut() {
            if flow.state == State::Cut || flow.expires <= now || !doomed(key, flow.origin) {
                continue;
            }
            out.push(CutFlow {
                key: *key,
                origin: flow.origin,
                rst_seq: flow.remote_next,
                rst_ack: flow.local_next,
            });
            flow.state = State::Cut;
            flow.expires = now.saturating_add_ms(marker);
        }
        out
    }

    /// Forget everything (own identity gone).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// Non-first fragments carry no ports: they pass when the first fragment of the same datagram
/// (same addresses, protocol and IP id) passed. Bounded, short-lived.
pub struct FragTable {
    map: HashMap<(IpAddr, IpAddr, u8, u32), UnixMillis>,
    max_entries: usize,
    ttl_ms: u64,
}

impl FragTable {
    pub fn new(max_entries: usize, ttl_ms: u64) -> Self {
        FragTable {
            map: HashMap::new(),
            max_entries,
            ttl_ms,
        }
    }

    /// Remember that the first fragment of datagram `id` passed.
    pub fn allow(&mut self, now: UnixMillis, p: &Parsed, id: u32) {
        if self.map.len() >= self.max_entries {
            self.sweep(now);
            if self.map.len() >= self.max_entries {
                return;
            }
        }
        self.map.insert(
            (p.src, p.dst, p.proto, id),
            now.saturating_add_ms(self.ttl_ms),
        );
    }

    /// Whether a later fragment of datagram `id` may pass.
    pub fn allowed(&self, now: UnixMillis, p: &Parsed, id: u32) -> bool {
        self.map
            .get(&(p.src, p.dst, p.proto, id))
            .is_some_and(|&exp| exp > now)
    }

    pub fn sweep(&mut self, now: UnixMillis) {
        self.map.retain(|_, exp| *exp > now);
    }

    /// Forget fragments from `src` (its flows were cut).
    pub fn forget_source(&mut self, src: IpAddr) {
        self.map.retain(|k, _| k.0 != src);
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}
