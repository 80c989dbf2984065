//! The sans-IO mesh engine: WireGuard sessions per peer (boringtun `Tunn`), routing, roaming,
//! and per-packet enforcement. Inputs: packets from the TUN, datagrams from the network, a new
//! identity or view, and `now`; outputs go to a [`Sink`] (datagrams, TUN writes), to an event
//! queue, and to [`Engine::poll_timeout`].
//!
//! The engine opens no socket and reads no clock of its own. One limit: boringtun's `Tunn`
//! reads `Instant::now()` internally for its WireGuard timers (rekey, keepalive, handshake
//! retransmission) and the two-minute rotation of the cookie secret (the handshake rate limit
//! itself counts in engine time, see [`super::hsgate`]), and the handshake's TAI64N timestamp uses the
//! system clock. So WireGuard timer behaviour follows real time even when the engine is driven
//! with virtual time; everything ztmesh decides (credential validity, expiry, conntrack, flow
//! events) follows the `now` it is given.

use super::conntrack::{Conntrack, FragTable, Lookup, Timeouts};
use super::filter::Filter;
use super::flowlog::FlowLog;
use super::hsgate::{Admission, HandshakeGate};
use super::packet::{self, Frag, IcmpKind, Parsed};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{
    HandshakeResponse, Packet, PacketCookieReply, PacketData, Tunn, TunnResult,
};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use ztmesh_common::credential::{CredentialError, NodeCredential, SignedCredential};
use ztmesh_common::ids::{CoordinatorPublicKey, NodeId, WgPublicKey};
use ztmesh_common::netmap::{FilterRule, NetMap};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::FlowVerdict;

/// Where the engine puts what it wants sent or written. The I/O shell batches these; the
/// simulator records them.
pub trait Sink {
    fn send_datagram(&mut self, to: SocketAddr, datagram: &[u8]);
    fn write_tun(&mut self, packet: &[u8]);
}

/// Tunables. The defaults are what the daemon uses.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub mtu: u16,
    /// WireGuard persistent keepalive in seconds (keeps NAT mappings open).
    pub persistent_keepalive: Option<u16>,
    pub max_flows: usize,
    pub conntrack_timeouts: Timeouts,
    /// Handshake messages (initiations and responses with a valid mac1) per second, over all
    /// peers, before a message must carry a valid mac2 or gets a cookie reply.
    pub handshake_rate_limit: u64,
    /// Answer packets to addresses outside the view with ICMP "administratively prohibited".
    pub unreachable_icmp: bool,
    /// How long a replaced WireGuard session keeps carrying traffic while the new key's
    /// handshake completes (key rotation without a gap).
    pub rotation_overlap_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            mtu: ztmesh_common::addr::OVERLAY_MTU,
            persistent_keepalive: Some(25),
            max_flows: 65_536,
            conntrack_timeouts: Timeouts::default(),
            handshake_rate_limit: 100,
            unreachable_icmp: true,
            rotation_overlap_ms: 170_000,
        }
    }
}

/// Why a peer left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RemovalReason {
    /// No longer in the view (revoked, or the policy no longer connects us).
    NotInView,
    /// Its credential expired.
    Expired,
    /// The data plane was cleared (down, or revoked ourselves).
    Cleared,
}

/// What happened, for logs and the daemon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum EngineEvent {
    PeerAdded {
        node: NodeId,
        name: String,
    },
    PeerRemoved {
        node: NodeId,
        reason: RemovalReason,
    },
    /// A peer entry that failed verification (forged, expired, conflicting addresses).
    PeerRefused {
        node: Option<NodeId>,
        reason: String,
    },
    PeerRekeyed {
        node: NodeId,
    },
    HandshakeCompleted {
        node: NodeId,
    },
    /// Own credential became valid: traffic may flow.
    Activated,
    /// Own credential expired (or was cleared): all traffic stopped (fail closed).
    Deactivated {
        reason: String,
    },
    FlowsCut {
        count: usize,
    },
    /// A delta did not apply to the current version; the daemon should ask for a full map.
    NetMapOutOfSync {
        have: Option<u64>,
        base: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("own credential refused: {0}")]
    OwnCredential(#[from] CredentialError),
    #[error("own credential names a different WireGuard key than the private key in use")]
    KeyMismatch,
    #[error("netmap delta from version {base} does not apply to current version {have:?}")]
    DeltaOutOfSync { have: Option<u64>, base: u64 },
}

/// Packet and drop counters (never reset).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub tun_packets: u64,
    pub tun_dropped_inactive: u64,
    pub tun_dropped_malformed: u64,
    pub tun_dropped_bad_source: u64,
    pub tun_dropped_no_route: u64,
    pub tun_dropped_cut: u64,
    pub tun_dropped_no_endpoint: u64,
    pub tx_datagrams: u64,
    pub rx_datagrams: u64,
    pub rx_dropped_inactive: u64,
    pub rx_invalid: u64,
    pub rx_unknown_peer: u64,
    pub rx_wireguard_errors: u64,
    pub rx_malformed: u64,
    pub rx_spoofed: u64,
    pub rx_not_for_us: u64,
    pub rx_denied: u64,
    pub rx_delivered: u64,
    pub cookies_sent: u64,
    pub flows_cut: u64,
    pub conntrack_full: u64,
}

pub(super) struct Identity {
    pub secret: x25519_dalek::StaticSecret,
    pub public: x25519_dalek::PublicKey,
    pub cred: NodeCredential,
    pub coordinator: CoordinatorPublicKey,
    pub handshakes: HandshakeGate,
}

/// A WireGuard session with a peer, under one pair of static keys.
pub(super) struct Session {
    pub tunn: Box<Tunn>,
    pub index: u32,
}

pub(super) struct Peer {
    pub signed: SignedCredential,
    pub cred: NodeCredential,
    pub endpoints: Vec<SocketAddr>,
    pub endpoint: Option<SocketAddr>,
    /// Whether `endpoint` was learned from an authenticated packet (roaming) rather than the view.
    pub endpoint_authenticated: bool,
    pub session: Option<Session>,
    /// The session of the previous key pair, carrying traffic until the new one is up.
    pub previous: Option<(Session, UnixMillis)>,
    pub last_handshake: Option<UnixMillis>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Scratch buffer size: the largest datagram or packet the engine handles.
const SCRATCH: usize = 65_536 + 256;
/// WireGuard timers are driven at this period (as boringtun's own device does).
pub(super) const WG_TICK_MS: u64 = 250;
const SWEEP_MS: u64 = 5_000;

pub struct Engine {
    pub(super) cfg: EngineConfig,
    pub(super) identity: Option<Identity>,
    /// Own credential valid now and WireGuard sessions may exist.
    pub(super) active: bool,
    pub(super) peers: HashMap<NodeId, Peer>,
    pub(super) by_addr: HashMap<IpAddr, NodeId>,
    pub(super) by_key: HashMap<[u8; 32], NodeId>,
    pub(super) by_index: HashMap<u32, NodeId>,
    pub(super) next_index: u32,
    pub(super) netmap_version: Option<u64>,
    /// A view that arrived before the identity (so before the coordinator key was known).
    pub(super) unverified: Option<NetMap>,
    pub(super) filter_rules: Vec<FilterRule>,
    pub(super) filter: Filter,
    pub(super) conntrack: Conntrack,
    pub(super) frags: FragTable,
    pub(super) flowlog: FlowLog,
    pub(super) counters: Counters,
    pub(super) events: VecDeque<EngineEvent>,
    pub(super) next_wg_tick: UnixMillis,
    pub(super) next_sweep: UnixMillis,
    /// When an own credential that is not valid yet becomes valid.
    pub(super) own_wake: Option<UnixMillis>,
    scratch: Box<[u8]>,
}

/// Whether a WireGuard message is a data (transport) message.
fn is_data(p: &Packet<'_>) -> bool {
    matches!(p, Packet::PacketData(_))
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let conntrack = Conntrack::new(cfg.max_flows, cfg.conntrack_timeouts);
        Engine {
            cfg,
            identity: None,
            active: false,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            next_index: rand::random::<u32>() & 0x00ff_ffff,
            netmap_version: None,
            unverified: None,
            filter_rules: Vec::new(),
            filter: Filter::default(),
            conntrack,
            frags: FragTable::new(4096, 30_000),
            flowlog: FlowLog::new(1024, 32),
            counters: Counters::default(),
            events: VecDeque::new(),
            next_wg_tick: UnixMillis(0),
            next_sweep: UnixMillis(0),
            own_wake: None,
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether own credential is valid and traffic may flow.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Own overlay addresses (empty without a valid identity).
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        self.identity
            .as_ref()
            .map(|i| i.cred.addresses.clone())
            .unwrap_or_default()
    }

    pub fn own_wg_key(&self) -> Option<WgPublicKey> {
        self.identity
            .as_ref()
            .map(|i| WgPublicKey(i.public.to_bytes()))
    }

    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    pub fn take_flow_events(&mut self) -> Vec<ztmesh_common::wire::FlowEvent> {
        self.flowlog.take()
    }

    pub(super) fn is_own(&self, a: &IpAddr) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|i| i.cred.addresses.contains(a))
    }

    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// A packet the local system sent into the TUN.
    pub fn handle_tun_packet(&mut self, now: UnixMillis, pkt: &[u8], sink: &mut impl Sink) {
        let mut buf = std::mem::take(&mut self.scratch);
        self.tun_packet(now, pkt, &mut buf, sink);
        self.scratch = buf;
    }

    fn tun_packet(&mut self, now: UnixMillis, pkt: &[u8], buf: &mut [u8], sink: &mut impl Sink) {
        self.counters.tun_packets += 1;
        if !self.active {
            self.counters.tun_dropped_inactive += 1;
            return;
        }
        let p = match packet::parse(pkt) {
            Ok(p) => p,
            Err(_) => {
                self.counters.tun_dropped_malformed += 1;
                return;
            }
        };
        if !self.is_own(&p.src) {
            // Link-local chatter (IPv6 ND, MLD) and anything not from our overlay address.
            self.counters.tun_dropped_bad_source += 1;
            return;
        }
        let Some(&node) = self.by_addr.get(&p.dst) else {
            self.counters.tun_dropped_no_route += 1;
            if self.cfg.unreachable_icmp && !matches!(p.icmp, IcmpKind::Error { .. }) {
                if let Some(n) = packet::build_unreachable(buf, p.dst, &pkt[..p.total_len]) {
                    sink.write_tun(&buf[..n]);
                }
            }
            return;
        };
        let tracked = !matches!(p.frag, Frag::Later { .. })
            && !matches!(p.icmp, IcmpKind::Error { .. } | IcmpKind::Other);
        if tracked {
            match self.conntrack.outbound(now, &p) {
                Lookup::Cut => {
                    self.counters.tun_dropped_cut += 1;
                    return;
                }
                Lookup::Tracked | Lookup::Untracked => {}
            }
        }
        let Some(peer) = self.peers.get_mut(&node) else {
            self.counters.tun_dropped_no_route += 1;
            return;
        };
        let data = &pkt[..p.total_len];
        let Some(endpoint) = peer.endpoint else {
            self.counters.tun_dropped_no_endpoint += 1;
            return;
        };
        // During a key change, keep using the old session until the new one has keys.
        let use_previous = match (&mut peer.session, &peer.previous) {
            (Some(s), Some(_)) => {
                if s.tunn.time_since_last_handshake().is_some() {
                    peer.previous = None;
                    false
                } else {
                    // Make sure the new key pair is handshaking; Done while one is in flight.
                    if let TunnResult::WriteToNetwork(init) =
                        s.tunn.format_handshake_initiation(buf, false)
                    {
                        sink.send_datagram(endpoint, init);
                        self.counters.tx_datagrams += 1;
                    }
                    true
                }
            }
            _ => false,
        };
        let session = if use_previous {
            peer.previous.as_mut().map(|(s, _)| s)
        } else {
            peer.session.as_mut()
        };
        let Some(session) = session else {
            self.counters.tun_dropped_inactive += 1;
            return;
        };
        match session.tunn.encapsulate(data, buf) {
            TunnResult::WriteToNetwork(d) => {
                sink.send_datagram(endpoint, d);
                self.counters.tx_datagrams += 1;
                peer.tx_bytes += data.len() as u64;
            }
            TunnResult::Done => {} // queued until the handshake completes
            _ => self.counters.tun_dropped_inactive += 1,
        }
    }

    /// A datagram from the network, with its source address.
    pub fn handle_datagram(
        &mut self,
        now: UnixMillis,
        from: SocketAddr,
        data: &[u8],
        sink: &mut impl Sink,
    ) {
        let mut buf = std::mem::take(&mut self.scratch);
        self.datagram(now, from, data, &mut buf, sink);
        self.scratch = buf;
    }

    fn datagram(
        &mut self,
        now: UnixMillis,
        from: SocketAddr,
        data: &[u8],
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) {
        self.counters.rx_datagrams += 1;
        if !self.active {
            self.counters.rx_dropped_inactive += 1;
            return;
        }
        let Some(id) = self.identity.as_mut() else {
            return;
        };
        let Ok(parsed) = Tunn::parse_incoming_packet(data) else {
            self.counters.rx_invalid += 1;
            return;
        };
        if matches!(
            parsed,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        ) {
            // mac1 (cheap) and the load check before any Diffie-Hellman: under a flood of
            // handshakes this answers with cookies instead of spending CPU.
            match id.handshakes.admit(now, from.ip(), data, buf) {
                Admission::Pass => {}
                Admission::Cookie(cookie) => {
                    sink.send_datagram(from, cookie);
                    self.counters.cookies_sent += 1;
                    return;
                }
                Admission::Invalid => {
                    self.counters.rx_invalid += 1;
                    return;
                }
            }
        }
        // An initiation names its sender by static key (after one DH); every other message
        // by the receiver index we handed out, whose top 24 bits pick the peer.
        let found = match &parsed {
            Packet::HandshakeInit(init) => {
                let Ok(half) = parse_handshake_anon(&id.secret, &id.public, init) else {
                    self.counters.rx_invalid += 1;
                    return;
                };
                self.by_key
                    .get(&half.peer_static_public)
                    .map(|&n| (n, None))
            }
            Packet::HandshakeResponse(HandshakeResponse { receiver_idx, .. })
            | Packet::PacketCookieReply(PacketCookieReply { receiver_idx, .. })
            | Packet::PacketData(PacketData { receiver_idx, .. }) => {
                let index = receiver_idx >> 8;
                self.by_index.get(&index).map(|&n| (n, Some(index)))
            }
        };
        let Some((node, index)) = found else {
            self.counters.rx_unknown_peer += 1;
            return;
        };
        let data_packet = is_data(&parsed);
        let handshake = matches!(
            parsed,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        );
        let Some(peer) = self.peers.get_mut(&node) else {
            self.counters.rx_unknown_peer += 1;
            return;
        };
        let session = match (index, &mut peer.previous) {
            (Some(i), Some((prev, _))) if prev.index == i => Some(prev),
            _ => peer.session.as_mut(),
        };
        let Some(session) = session else {
            self.counters.rx_unknown_peer += 1;
            return;
        };
        let res = session.tunn.decapsulate(Some(from.ip()), data, buf);
        let authenticated = match &res {
            TunnResult::Done => data_packet,
            TunnResult::Err(_) => false,
            _ => true,
        };
        if authenticated && peer.endpoint != Some(from) {
            // Roaming: only an authenticated packet may move the peer's endpoint.
            tracing::debug!(node = %node, endpoint = %from, "peer endpoint updated");
        }
        if authenticated {
            peer.endpoint = Some(from);
            peer.endpoint_authenticated = true;
        }
        match res {
            TunnResult::Done => {}
            TunnResult::Err(_) => self.counters.rx_wireguard_errors += 1,
            TunnResult::WriteToNetwork(out) => {
                sink.send_datagram(from, out);
                self.counters.tx_datagrams += 1;
                if handshake {
                    peer.last_handshake = Some(now);
                    self.events
                        .push_back(EngineEvent::HandshakeCompleted { node });
                }
                // Flush packets queued while the handshake was in flight.
                while let TunnResult::WriteToNetwork(out) = session.tunn.decapsulate(None, &[], buf)
                {
                    sink.send_datagram(from, out);
                    self.counters.tx_datagrams += 1;
                }
            }
            TunnResult::WriteToTunnelV4(pkt, _) | TunnResult::WriteToTunnelV6(pkt, _) => {
                let len = pkt.len();
                peer.rx_bytes += len as u64;
                self.inbound(now, node, len, buf, sink);
            }
        }
    }

    /// Enforcement for a decrypted packet at `buf[..len]` from peer `node`.
    fn inbound(
        &mut self,
        now: UnixMillis,
        node: NodeId,
        len: usize,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) {
        let pkt = &buf[..len];
        let p = match packet::parse(pkt) {
            Ok(p) => p,
            Err(_) => {
                self.counters.rx_malformed += 1;
                return;
            }
        };
        // Anti-spoofing: a peer may only send from the addresses its credential names.
        if self.by_addr.get(&p.src) != Some(&node) {
            self.counters.rx_spoofed += 1;
            self.flowlog.record(
                now,
                p.src,
                p.dst,
                p.proto,
                p.filter_port(),
                FlowVerdict::Denied,
            );
            return;
        }
        if !self.is_own(&p.dst) {
            self.counters.rx_not_for_us += 1;
            return;
        }
        if self.allow_inbound(now, pkt, &p) {
            sink.write_tun(&pkt[..p.total_len]);
            self.counters.rx_delivered += 1;
        } else {
            self.counters.rx_denied += 1;
            self.flowlog.record(
                now,
                p.src,
                p.dst,
                p.proto,
                p.filter_port(),
                FlowVerdict::Denied,
            );
        }
    }

    /// The inbound filter with connection tracking.
    fn allow_inbound(&mut self, now: UnixMillis, pkt: &[u8], p: &Parsed) -> bool {
        if let Frag::Later { id } = p.frag {
            return self.frags.allowed(now, p, id);
        }
        let allowed = match p.icmp {
            IcmpKind::Error { quoted } => {
                // An ICMP error about a packet of a tracked flow passes (path MTU, unreachable).
                let about_tracked = pkt
                    .get(quoted..p.total_len)
                    .and_then(|q| packet::parse_quoted(q).ok())
                    .is_some_and(|q| q.src == p.dst && self.conntrack.knows_quoted(now, &q));
                about_tracked || self.filter.allows(p.src, p.dst, p.proto, None)
            }
            _ => match self.conntrack.inbound(now, p) {
                Lookup::Tracked => true,
                Lookup::Cut => false,
                Lookup::Untracked => {
                    if self.filter.allows(p.src, p.dst, p.proto, p.filter_port()) {
                        if self.conntrack.insert_inbound(now, p) {
                            self.flowlog.record(
                                now,
                                p.src,
                                p.dst,
                                p.proto,
                                p.filter_port(),
                                FlowVerdict::Allowed,
                            );
                            true
                        } else {
                            self.counters.conntrack_full += 1;
                            false
                        }
                    } else {
                        false
                    }
                }
            },
        };
        if allowed {
            if let Frag::First { id } = p.frag {
                self.frags.allow(now, p, id);
            }
        }
        allowed
    }

    /// The next instant [`Engine::handle_timeout`] wants to run, if any.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        let mut next: Option<UnixMillis> = None;
        let mut consider = |t: UnixMillis| {
            next = Some(next.map_or(t, |n: UnixMillis| n.min(t)));
        };
        if let Some(id) = &self.identity {
            if self.active {
                consider(id.cred.expires_at);
            }
        }
        if let Some(t) = self.own_wake {
            consider(t);
        }
        if self.active && !self.peers.is_empty() {
            // Also brings up sessions of peers whose credential became valid.
            consider(self.next_wg_tick);
            for p in self.peers.values() {
                consider(p.cred.expires_at);
            }
        }
        if !self.conntrack.is_empty() {
            consider(self.next_sweep);
        }
        next
    }

    /// Drive timers: credential expiry (own and peers), WireGuard timers, table sweeps.
    pub fn handle_timeout(&mut self, now: UnixMillis, sink: &mut impl Sink) {
        let mut buf = std::mem::take(&mut self.scratch);
        self.refresh_activity(now, &mut buf, sink);
        self.expire_peers(now, &mut buf, sink);
        if self.active && now >= self.next_wg_tick {
            self.next_wg_tick = now.saturating_add_ms(WG_TICK_MS);
            self.ensure_sessions(now, &mut buf, sink);
            for peer in self.peers.values_mut() {
                if let Some((_, until)) = &peer.previous {
                    if *until <= now {
                        peer.previous = None;
                    }
                }
                let Some(s) = peer.session.as_mut() else {
                    continue;
                };
                let mut sessions: [Option<&mut Session>; 2] =
                    [Some(s), peer.previous.as_mut().map(|(p, _)| p)];
                for s in sessions.iter_mut().flatten() {
                    if let TunnResult::WriteToNetwork(d) = s.tunn.update_timers(&mut buf) {
                        if let Some(ep) = peer.endpoint {
                            sink.send_datagram(ep, d);
                            self.counters.tx_datagrams += 1;
                        }
                    }
                }
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add_ms(SWEEP_MS);
            self.conntrack.sweep(now);
            self.frags.sweep(now);
        }
        self.scratch = buf;
    }
}
