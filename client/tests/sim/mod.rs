//! The simulated network shared by the in-memory tests: data plane engines on virtual time,
//! loss and reordering, and a test coordinator key that signs their credentials.
//!
//! Limit: boringtun's `Tunn` keeps its own WireGuard timers on the real clock, so handshake
//! retransmission does not follow virtual time; the simulator therefore applies loss to data
//! messages only (handshakes are reordered/delayed but not dropped).

#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub use ed25519_dalek::SigningKey;
pub use rand::rngs::StdRng;
pub use rand::{Rng, SeedableRng};
pub use std::collections::BTreeMap;
pub use std::net::{IpAddr, SocketAddr};
pub use x25519_dalek::{PublicKey, StaticSecret};
pub use ztmesh_client::dataplane::packet::{self, TcpSegment, TCP_ACK, TCP_RST, TCP_SYN};
pub use ztmesh_client::dataplane::{Engine, EngineConfig, EngineEvent, RemovalReason, Sink};
pub use ztmesh_common::addr::{host_nets, overlay_addrs};
pub use ztmesh_common::credential::{coordinator_public_key, NodeCredential, SignedCredential};
pub use ztmesh_common::ids::{CoordinatorPublicKey, MachinePublicKey, NodeId, WgPublicKey};
pub use ztmesh_common::netmap::{proto, FilterRule, NetMap, NetMapDelta, PeerEntry, PortRange};
pub use ztmesh_common::time::UnixMillis;
pub use ztmesh_common::wire::FlowVerdict;

pub const T0: u64 = 1_900_000_000_000;
pub const HOUR: u64 = 3_600_000;

pub struct Node {
    pub engine: Engine,
    pub udp: SocketAddr,
    pub secret: StaticSecret,
    pub cred: NodeCredential,
    /// Packets the engine wrote to its TUN.
    pub tun: Vec<Vec<u8>>,
}

impl Node {
    pub fn v4(&self) -> IpAddr {
        self.cred.addresses[0]
    }
    pub fn v6(&self) -> IpAddr {
        self.cred.addresses[1]
    }
    pub fn take_tun(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.tun)
    }
}

pub struct InFlight {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Collects one engine call's outputs.
#[derive(Default)]
pub struct Rec {
    pub out: Vec<(SocketAddr, Vec<u8>)>,
    pub tun: Vec<Vec<u8>>,
}

impl Sink for Rec {
    fn send_datagram(&mut self, to: SocketAddr, d: &[u8]) {
        self.out.push((to, d.to_vec()));
    }
    fn write_tun(&mut self, p: &[u8]) {
        self.tun.push(p.to_vec());
    }
}

pub struct Sim {
    pub key: SigningKey,
    pub coord: CoordinatorPublicKey,
    pub now: UnixMillis,
    pub nodes: Vec<Node>,
    /// Delivery time -> datagrams (BTreeMap keeps virtual-time order; jitter reorders).
    pub net: BTreeMap<(u64, u64), InFlight>,
    pub seq: u64,
    pub rng: StdRng,
    /// Percent of data messages lost.
    pub loss: u32,
    /// Max extra delay in ms (reordering).
    pub jitter: u64,
    /// Datagrams sent to addresses no simulated node has (for a test's rogue endpoint).
    pub captured: Vec<InFlight>,
}

pub fn wg_public(s: &StaticSecret) -> WgPublicKey {
    WgPublicKey(PublicKey::from(s).to_bytes())
}

impl Sim {
    pub fn new(n: usize, seed: u64) -> Sim {
        Sim::with_config(
            n,
            seed,
            EngineConfig {
                persistent_keepalive: None,
                ..EngineConfig::default()
            },
        )
    }

    pub fn with_config(n: usize, seed: u64, cfg: EngineConfig) -> Sim {
        let key = SigningKey::from_bytes(&[42; 32]);
        let coord = coordinator_public_key(&key);
        let mut sim = Sim {
            key,
            coord,
            now: UnixMillis(T0),
            nodes: Vec::new(),
            net: BTreeMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            loss: 0,
            jitter: 0,
            captured: Vec::new(),
        };
        for i in 0..n {
            let secret = StaticSecret::random_from_rng(&mut sim.rng);
            let (v4, v6) = overlay_addrs(i as u32 + 1).unwrap();
            let cred = NodeCredential {
                node_id: NodeId(i as u64 + 1),
                hostname: format!("node{}", i + 1),
                user: Some(format!("user{}", i + 1)),
                tags: vec![],
                machine_key: MachinePublicKey([i as u8; 32]),
                wg_public_key: wg_public(&secret),
                addresses: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
                posture_digest: [0; 32],
                not_before: UnixMillis(T0 - 60_000),
                issued_at: UnixMillis(T0),
                expires_at: UnixMillis(T0 + HOUR),
                serial: 1,
            };
            let engine = Engine::new(cfg.clone());
            sim.nodes.push(Node {
                engine,
                udp: SocketAddr::new(format!("198.18.0.{}", i + 1).parse().unwrap(), 51820),
                secret,
                cred,
                tun: Vec::new(),
            });
        }
        for i in 0..n {
            sim.install_identity(i);
        }
        sim
    }

    pub fn sign(&self, c: &NodeCredential) -> SignedCredential {
        c.sign(&self.key)
    }

    pub fn install_identity(&mut self, i: usize) {
        let signed = self.sign(&self.nodes[i].cred);
        let secret = self.nodes[i].secret.clone();
        let coord = self.coord;
        let now = self.now;
        self.call(i, |e, s| {
            e.set_identity(now, secret, signed, coord, s).unwrap()
        });
    }

    pub fn entry(&self, j: usize) -> PeerEntry {
        PeerEntry {
            credential: self.sign(&self.nodes[j].cred),
            endpoints: vec![self.nodes[j].udp],
        }
    }

    /// Rule: `from` nodes may reach node `to` with `protos` on `ports`.
    pub fn rule(&self, from: &[usize], to: usize, protos: &[u8], ports: &[u16]) -> FilterRule {
        FilterRule {
            src: from
                .iter()
                .flat_map(|&f| host_nets(&self.nodes[f].cred.addresses))
                .collect(),
            dst: host_nets(&self.nodes[to].cred.addresses),
            protos: protos.to_vec(),
            ports: ports.iter().map(|&p| PortRange::single(p)).collect(),
        }
    }

    pub fn set_view(&mut self, i: usize, peers: &[usize], filter: Vec<FilterRule>, version: u64) {
        let map = NetMap {
            version,
            peers: peers.iter().map(|&j| self.entry(j)).collect(),
            filter,
        };
        let now = self.now;
        self.call(i, |e, s| e.set_netmap(now, map, s));
    }

    /// Run an engine call and route its outputs.
    pub fn call(&mut self, i: usize, f: impl FnOnce(&mut Engine, &mut Rec)) {
        let mut rec = Rec::default();
        f(&mut self.nodes[i].engine, &mut rec);
        self.route(i, rec);
    }

    pub fn route(&mut self, i: usize, rec: Rec) {
        self.nodes[i].tun.extend(rec.tun);
        let from = self.nodes[i].udp;
        for (to, data) in rec.out {
            let is_data = data.first() == Some(&4);
            if is_data && self.loss > 0 && self.rng.gen_range(0..100) < self.loss {
                continue;
            }
            let delay = 1 + if self.jitter > 0 {
                self.rng.gen_range(0..=self.jitter)
            } else {
                0
            };
            self.seq += 1;
            self.net
                .insert((self.now.0 + delay, self.seq), InFlight { from, to, data });
        }
    }

    /// Inject a datagram from an arbitrary source.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.seq += 1;
        self.net
            .insert((self.now.0 + 1, self.seq), InFlight { from, to, data });
    }

    pub fn send_tun(&mut self, i: usize, pkt: &[u8]) {
        let now = self.now;
        self.call(i, |e, s| e.handle_tun_packet(now, pkt, s));
    }

    /// Advance virtual time by `ms`, delivering datagrams and firing timers on the way.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now.0 + ms;
        loop {
            let next_net = self.net.keys().next().map(|k| k.0);
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|n| n.engine.poll_timeout())
                .map(|t| t.0)
                .min();
            let next = [next_net, next_timer, Some(end)]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            if next > end {
                break;
            }
            self.now = UnixMillis(next.max(self.now.0));
            if next_net == Some(next) {
                let key = *self.net.keys().next().unwrap();
                let d = self.net.remove(&key).unwrap();
                if let Some(i) = self.nodes.iter().position(|n| n.udp == d.to) {
                    let now = self.now;
                    self.call(i, |e, s| e.handle_datagram(now, d.from, &d.data, s));
                } else {
                    self.captured.push(d);
                }
                continue;
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i]
                    .engine
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    let now = self.now;
                    self.call(i, |e, s| e.handle_timeout(now, s));
                }
            }
            if next == end {
                break;
            }
        }
        self.now = UnixMillis(end);
    }

    pub fn events(&mut self, i: usize) -> Vec<EngineEvent> {
        std::iter::from_fn(|| self.nodes[i].engine.poll_event()).collect()
    }
}

#[allow(clippy::too_many_arguments)] // mirrors the TCP header fields
pub fn tcp(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 2000];
    let n = packet::build_tcp(
        &mut buf,
        &TcpSegment {
            src,
            dst,
            src_port: sport,
            dst_port: dport,
            seq,
            ack,
            flags,
            payload,
        },
    )
    .unwrap();
    buf.truncate(n);
    buf
}

pub fn ping(src: IpAddr, dst: IpAddr, reply: bool, id: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 200];
    let n = packet::build_icmp_echo(&mut buf, src, dst, reply, id, 1, b"ping").unwrap();
    buf.truncate(n);
    buf
}

pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2000];
    let n = packet::build_udp(&mut buf, src, dst, sport, dport, payload).unwrap();
    buf.truncate(n);
    buf
}

/// Three nodes: 0 and 1 may reach 2 on TCP 22 and ICMP; 2 may reach nobody; all peered.
pub fn three() -> Sim {
    let mut sim = Sim::new(3, 7);
    let rule = sim.rule(&[0, 1], 2, &[proto::TCP, proto::ICMP, proto::ICMPV6], &[22]);
    sim.set_view(0, &[2], vec![], 1);
    sim.set_view(1, &[2], vec![], 1);
    sim.set_view(2, &[0, 1], vec![rule], 1);
    sim
}

/// Open a TCP connection 0 -> 2:22 and exchange the handshake; returns (client seq, server seq).
pub fn open_ssh(sim: &mut Sim, c: usize, s: usize, sport: u16) {
    let (a, b) = (sim.nodes[c].v4(), sim.nodes[s].v4());
    sim.send_tun(c, &tcp(a, b, sport, 22, 1000, 0, TCP_SYN, b""));
    sim.advance(50);
    assert_eq!(sim.nodes[s].take_tun().len(), 1, "SYN delivered");
    sim.send_tun(s, &tcp(b, a, 22, sport, 5000, 1001, TCP_SYN | TCP_ACK, b""));
    sim.advance(50);
    assert_eq!(sim.nodes[c].take_tun().len(), 1, "SYN-ACK delivered");
    sim.send_tun(c, &tcp(a, b, sport, 22, 1001, 5001, TCP_ACK, b"hello"));
    sim.advance(50);
    assert_eq!(sim.nodes[s].take_tun().len(), 1, "data delivered");
}
