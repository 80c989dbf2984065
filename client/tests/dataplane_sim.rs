//! The in-memory mesh: several data plane engines on a simulated network with virtual time,
//! loss and reordering, and a test coordinator key that signs their credentials. Fast and
//! deterministic tests of handshakes, traffic, filter, conntrack, expiry, rotation, revocation,
//! forged credentials, roaming (only authenticated packets move an endpoint) and bad input.
//!
//! Limit: boringtun's `Tunn` keeps its own WireGuard timers on the real clock, so handshake
//! retransmission does not follow virtual time; the simulator therefore applies loss to data
//! messages only (handshakes are reordered/delayed but not dropped).

mod sim;
use sim::*;

#[test]
fn handshake_and_traffic_both_ways_v4_and_v6() {
    let mut sim = three();
    open_ssh(&mut sim, 0, 2, 40000);
    // IPv6 inside the tunnel, and ICMP echo both ways through conntrack.
    let (a6, c6) = (sim.nodes[0].v6(), sim.nodes[2].v6());
    sim.send_tun(0, &ping(a6, c6, false, 9));
    sim.advance(20);
    assert_eq!(sim.nodes[2].take_tun().len(), 1);
    sim.send_tun(2, &ping(c6, a6, true, 9));
    sim.advance(20);
    assert_eq!(
        sim.nodes[0].take_tun().len(),
        1,
        "echo reply passes as a tracked reply"
    );
    let st = sim.nodes[0].engine.status(sim.now);
    assert!(st.peers[0].last_handshake.is_some());
    assert!(st.peers[0].tx_bytes > 0 && st.peers[0].rx_bytes > 0);
    assert!(st.peers[0].endpoint_authenticated);
}

#[test]
fn filter_denies_unallowed_ports_and_directions_and_reports_them() {
    let mut sim = three();
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    // Warm up the session.
    sim.send_tun(0, &ping(a, c, false, 1));
    sim.advance(50);
    sim.nodes[2].take_tun();
    // Denied port, many times: dropped, counted, aggregated into one flow event.
    for i in 0..50 {
        sim.send_tun(0, &tcp(a, c, 40000 + i, 23, 1, 0, TCP_SYN, b""));
    }
    sim.send_tun(0, &udp(a, c, 5000, 53, b"q"));
    sim.advance(50);
    assert!(sim.nodes[2].take_tun().is_empty());
    let st = sim.nodes[2].engine.status(sim.now);
    assert_eq!(st.counters.rx_denied, 51);
    let evs = sim.nodes[2].engine.take_flow_events();
    let denied: Vec<_> = evs
        .iter()
        .filter(|e| e.verdict == FlowVerdict::Denied)
        .collect();
    assert_eq!(denied.len(), 2, "{evs:?}");
    assert_eq!(denied.iter().map(|e| e.count).sum::<u32>(), 51);
    // Node 2 may not open flows to 0 (0 has no rule allowing it): 0 drops them.
    sim.send_tun(2, &tcp(c, a, 41000, 22, 1, 0, TCP_SYN, b""));
    sim.advance(50);
    assert!(sim.nodes[0].take_tun().is_empty());
    // But 0's own flows get replies (conntrack), including an ICMP error about them.
    sim.send_tun(0, &tcp(a, c, 40100, 22, 1, 0, TCP_SYN, b""));
    sim.advance(50);
    let syn = sim.nodes[2].take_tun().pop().unwrap();
    let mut buf = vec![0u8; 2000];
    let n = packet::build_unreachable(&mut buf, c, &syn).unwrap();
    sim.send_tun(2, &buf[..n]);
    sim.send_tun(2, &tcp(c, a, 22, 40100, 9, 2, TCP_SYN | TCP_ACK, b""));
    sim.advance(50);
    assert_eq!(
        sim.nodes[0].take_tun().len(),
        2,
        "ICMP error and SYN-ACK pass"
    );
}

#[test]
fn unrelated_peer_is_unreachable_and_outside_view_gets_icmp() {
    let mut sim = three();
    let (a, b) = (sim.nodes[0].v4(), sim.nodes[1].v4());
    // 1 is not in 0's view: dropped locally with ICMP admin-prohibited back to the TUN.
    sim.send_tun(0, &ping(a, b, false, 3));
    sim.advance(50);
    let back = sim.nodes[0].take_tun();
    assert_eq!(back.len(), 1);
    let p = packet::parse(&back[0]).unwrap();
    assert!(matches!(p.icmp, packet::IcmpKind::Error { .. }));
    assert!(sim.nodes[1].take_tun().is_empty());
    assert_eq!(sim.nodes[0].engine.counters().tun_dropped_no_route, 1);
}

#[test]
fn peer_is_dropped_at_credential_expiry_without_the_coordinator() {
    let mut sim = three();
    sim.nodes[0].cred.expires_at = UnixMillis(T0 + 10_000);
    let e0 = sim.entry(0);
    let now = sim.now;
    sim.call(2, |e, s| {
        e.apply_delta(
            now,
            NetMapDelta {
                base_version: 1,
                version: 2,
                upsert: vec![e0],
                remove: vec![],
                filter: None,
            },
            s,
        )
        .unwrap()
    });
    open_ssh(&mut sim, 0, 2, 40000);
    sim.events(2);
    sim.advance(10_000 - 150 - 1);
    assert_eq!(sim.nodes[2].engine.status(sim.now).peers.len(), 2);
    sim.advance(1);
    let evs = sim.events(2);
    assert!(
        evs.contains(&EngineEvent::PeerRemoved {
            node: NodeId(1),
            reason: RemovalReason::Expired
        }),
        "{evs:?}"
    );
    // The established flow was cut: the server's app got a RST.
    let rst = sim.nodes[2].take_tun();
    assert_eq!(rst.len(), 1);
    let p = packet::parse(&rst[0]).unwrap();
    assert_eq!(p.tcp.unwrap().flags & TCP_RST, TCP_RST);
    assert_eq!(
        p.tcp.unwrap().seq,
        1006,
        "RST carries the next expected sequence number"
    );
    // Further packets from 0 are refused.
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1006, 5001, TCP_ACK, b"more"));
    sim.advance(50);
    assert!(sim.nodes[2].take_tun().is_empty());
}

#[test]
fn own_expired_credential_stops_all_traffic() {
    let mut sim = three();
    open_ssh(&mut sim, 0, 2, 40000);
    sim.advance(HOUR); // every credential expires at T0 + 1h
    assert!(!sim.nodes[0].engine.is_active());
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    // Fail closed resets the local ends of tracked connections on both sides.
    assert_eq!(sim.nodes[0].take_tun().len(), 1);
    assert_eq!(sim.nodes[2].take_tun().len(), 1);
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1006, 5001, TCP_ACK, b"late"));
    sim.advance(50);
    assert!(sim.nodes[2].take_tun().is_empty());
    assert!(sim.nodes[0].engine.counters().tun_dropped_inactive >= 1);
    // A renewed credential brings it back.
    for i in 0..3 {
        sim.nodes[i].cred.not_before = sim.now;
        sim.nodes[i].cred.expires_at = UnixMillis(sim.now.0 + HOUR);
        sim.install_identity(i);
    }
    let rule = sim.rule(&[0, 1], 2, &[proto::TCP], &[22]);
    sim.set_view(0, &[2], vec![], 5);
    sim.set_view(2, &[0, 1], vec![rule], 5);
    open_ssh(&mut sim, 0, 2, 40001);
}

#[test]
fn expired_and_forged_credentials_are_refused() {
    let mut sim = three();
    // Own identity: forged and expired.
    let mut forged = sim.nodes[0].cred.clone();
    forged.addresses = vec!["100.64.9.9".parse().unwrap()];
    let bad = forged.sign(&SigningKey::from_bytes(&[1; 32]));
    let (secret, coord, now) = (sim.nodes[0].secret.clone(), sim.coord, sim.now);
    assert!(sim.nodes[0]
        .engine
        .set_identity(now, secret.clone(), bad.clone(), coord, &mut Rec::default())
        .is_err());
    let mut old = sim.nodes[0].cred.clone();
    old.expires_at = UnixMillis(T0 - 1);
    let expired = sim.sign(&old);
    assert!(sim.nodes[0]
        .engine
        .set_identity(now, secret, expired.clone(), coord, &mut Rec::default())
        .is_err());
    assert!(sim.nodes[0].engine.is_active(), "previous identity kept");
    // Peers: a forged and an expired one in node 2's view are refused; the good one stays.
    sim.events(2);
    let rule = sim.rule(&[0, 1], 2, &[proto::TCP], &[22]);
    let map = NetMap {
        version: 2,
        peers: vec![
            PeerEntry {
                credential: bad,
                endpoints: vec![sim.nodes[0].udp],
            },
            PeerEntry {
                credential: expired,
                endpoints: vec![sim.nodes[0].udp],
            },
            sim.entry(1),
        ],
        filter: vec![rule],
    };
    sim.call(2, |e, s| e.set_netmap(now, map, s));
    let st = sim.nodes[2].engine.status(sim.now);
    assert_eq!(st.peers.len(), 1);
    assert_eq!(st.peers[0].node_id, NodeId(2));
    let refused = sim
        .events(2)
        .into_iter()
        .filter(|e| matches!(e, EngineEvent::PeerRefused { .. }))
        .count();
    assert_eq!(refused, 2);
    // Node 0 (forged on 2's side) cannot get traffic through.
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1, 0, TCP_SYN, b""));
    sim.advance(100);
    assert!(sim.nodes[2].take_tun().is_empty());
}

#[test]
fn revocation_cuts_open_connection_with_rst() {
    let mut sim = three();
    open_ssh(&mut sim, 0, 2, 40000);
    open_ssh(&mut sim, 1, 2, 40001);
    // Node 0 revoked: node 2's new view lacks it.
    let rule = sim.rule(&[1], 2, &[proto::TCP], &[22]);
    sim.set_view(2, &[1], vec![rule], 2);
    let rst = sim.nodes[2].take_tun();
    assert_eq!(rst.len(), 1, "exactly the revoked peer's flow is reset");
    let p = packet::parse(&rst[0]).unwrap();
    assert_eq!(p.src, sim.nodes[0].v4());
    // Node 1's flow continues.
    let (b, c) = (sim.nodes[1].v4(), sim.nodes[2].v4());
    sim.send_tun(1, &tcp(b, c, 40001, 22, 1006, 5001, TCP_ACK, b"still"));
    sim.advance(50);
    assert_eq!(sim.nodes[2].take_tun().len(), 1);
}

#[test]
fn policy_change_cuts_flow_it_no_longer_allows() {
    let mut sim = three();
    open_ssh(&mut sim, 0, 2, 40000);
    // New filter: only ICMP from 0. Peer stays, flow is cut at once.
    let rule = sim.rule(&[0, 1], 2, &[proto::ICMP], &[]);
    sim.set_view(2, &[0, 1], vec![rule], 2);
    let rst = sim.nodes[2].take_tun();
    assert_eq!(rst.len(), 1);
    // The local server's next segment on that flow is dropped too (no revival).
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    sim.send_tun(2, &tcp(c, a, 22, 40000, 5001, 1006, TCP_ACK, b"x"));
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1006, 5001, TCP_ACK, b"y"));
    sim.advance(50);
    assert!(sim.nodes[0].take_tun().is_empty());
    assert!(sim.nodes[2].take_tun().is_empty());
    assert!(sim.nodes[2].engine.counters().flows_cut >= 1);
}

#[test]
fn key_rotation_keeps_established_flow() {
    let mut sim = three();
    open_ssh(&mut sim, 0, 2, 40000);
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    // Node 0 rotates: new key + credential locally first, the coordinator's delta to node 2
    // arrives later. Traffic keeps flowing in between on the old session.
    sim.nodes[0].secret = StaticSecret::random_from_rng(&mut sim.rng);
    sim.nodes[0].cred.wg_public_key = wg_public(&sim.nodes[0].secret);
    sim.nodes[0].cred.serial = 2;
    sim.install_identity(0);
    let mut seq = 1006u32;
    let mut delivered = 0;
    for round in 0..40 {
        if round == 10 {
            let e0 = sim.entry(0);
            let now = sim.now;
            sim.call(2, |e, s| {
                e.apply_delta(
                    now,
                    NetMapDelta {
                        base_version: 1,
                        version: 2,
                        upsert: vec![e0],
                        remove: vec![],
                        filter: None,
                    },
                    s,
                )
                .unwrap()
            });
        }
        sim.send_tun(0, &tcp(a, c, 40000, 22, seq, 5001, TCP_ACK, b"abc"));
        seq += 3;
        sim.advance(20);
        delivered += sim.nodes[2].take_tun().len();
    }
    assert_eq!(delivered, 40, "no segment lost across the rotation");
    let st = sim.nodes[2].engine.status(sim.now);
    assert_eq!(
        st.peers
            .iter()
            .find(|p| p.node_id == NodeId(1))
            .unwrap()
            .wg_public_key,
        sim.nodes[0].cred.wg_public_key
    );
    // Replies flow back on the new session too.
    sim.send_tun(2, &tcp(c, a, 22, 40000, 5001, seq, TCP_ACK, b"ok"));
    sim.advance(20);
    assert_eq!(sim.nodes[0].take_tun().len(), 1);
    assert_eq!(sim.nodes[2].engine.counters().flows_cut, 0);
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let mut sim = three();
    open_ssh(&mut sim, 1, 2, 40001);
    // A rogue sender with node 1's real WireGuard key, but claiming node 0's address inside.
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    let mut rogue = boringtun::noise::Tunn::new(
        sim.nodes[1].secret.clone(),
        PublicKey::from(sim.nodes[2].cred.wg_public_key.0),
        None,
        None,
        77,
        None,
    );
    let mut buf = vec![0u8; 2000];
    let rogue_addr: SocketAddr = "198.18.9.9:1111".parse().unwrap();
    let to = sim.nodes[2].udp;
    if let boringtun::noise::TunnResult::WriteToNetwork(init) =
        rogue.format_handshake_initiation(&mut buf, false)
    {
        let init = init.to_vec();
        sim.inject(rogue_addr, to, init);
    }
    // Deliver the initiation and collect the response the engine sends back to the rogue.
    sim.advance(10);
    let resp = sim
        .captured
        .iter()
        .find(|d| d.to == rogue_addr)
        .map(|d| d.data.clone());
    let resp = resp.expect("handshake response to the rogue");
    let mut out = vec![0u8; 2000];
    let _ = rogue.decapsulate(None, &resp, &mut out);
    let pkt = tcp(a, c, 40000, 22, 1, 0, TCP_SYN, b"");
    if let boringtun::noise::TunnResult::WriteToNetwork(d) = rogue.encapsulate(&pkt, &mut out) {
        let d = d.to_vec();
        sim.inject(rogue_addr, to, d);
    }
    sim.advance(10);
    assert!(sim.nodes[2].take_tun().is_empty());
    assert_eq!(sim.nodes[2].engine.counters().rx_spoofed, 1);
}

#[test]
fn garbage_malformed_and_handshake_flood_do_not_hurt_legit_peers() {
    let mut sim = three();
    open_ssh(&mut sim, 0, 2, 40000);
    let to = sim.nodes[2].udp;
    let mut rng = StdRng::seed_from_u64(99);
    // Random datagrams, including ones with valid WireGuard type bytes and lengths.
    for i in 0..3000u32 {
        let len = match i % 4 {
            0 => 148,
            1 => 92,
            2 => 32 + rng.gen_range(0..1500),
            _ => rng.gen_range(0..2000),
        };
        let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if len >= 4 && i % 4 != 3 {
            d[..4].copy_from_slice(&[(i % 4 + 1) as u8, 0, 0, 0]);
        }
        let from = SocketAddr::new(format!("198.18.7.{}", i % 250).parse().unwrap(), 9999);
        sim.inject(from, to, d);
    }
    // A flood of well-formed initiations from an unknown key (valid mac1: it knows our key).
    let target = PublicKey::from(sim.nodes[2].cred.wg_public_key.0);
    for i in 0..300u32 {
        let s = StaticSecret::random_from_rng(&mut rng);
        let mut t = boringtun::noise::Tunn::new(s, target, None, None, i, None);
        let mut buf = vec![0u8; 256];
        if let boringtun::noise::TunnResult::WriteToNetwork(init) =
            t.format_handshake_initiation(&mut buf, false)
        {
            let init = init.to_vec();
            sim.inject("198.18.8.8:1234".parse().unwrap(), to, init);
        }
    }
    // Malformed packets from the TUN.
    for i in 0..2000u32 {
        let len = rng.gen_range(0..120);
        let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if len > 0 {
            p[0] = if i % 2 == 0 { 0x45 } else { 0x60 };
        }
        sim.send_tun(0, &p);
        sim.send_tun(2, &p);
    }
    sim.advance(200);
    sim.nodes[2].take_tun();
    sim.nodes[0].take_tun();
    let st = sim.nodes[2].engine.status(sim.now);
    assert!(
        st.counters.rx_invalid + st.counters.rx_unknown_peer + st.counters.cookies_sent >= 3000
    );
    assert!(
        st.counters.cookies_sent > 0,
        "the flood was met with cookies"
    );
    // The legit flow still works both ways.
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1006, 5001, TCP_ACK, b"after"));
    sim.advance(20);
    assert_eq!(sim.nodes[2].take_tun().len(), 1);
    sim.send_tun(2, &tcp(c, a, 22, 40000, 5001, 1011, TCP_ACK, b"fine"));
    sim.advance(20);
    assert_eq!(sim.nodes[0].take_tun().len(), 1);
}

#[test]
fn lossy_reordering_network_still_carries_traffic() {
    let mut sim = three();
    open_ssh(&mut sim, 0, 2, 40000);
    sim.loss = 20;
    sim.jitter = 10;
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    for seq in 1006u32..1506 {
        sim.send_tun(0, &tcp(a, c, 40000, 22, seq, 5001, TCP_ACK, b"x"));
        sim.advance(1);
    }
    sim.advance(100);
    let got = sim.nodes[2].take_tun().len();
    // About 80 % arrive; WireGuard's replay window accepts the reordered ones.
    assert!((330..=470).contains(&got), "got {got}");
    assert_eq!(sim.nodes[2].engine.counters().rx_wireguard_errors, 0);
}

#[test]
fn fragments_of_allowed_datagrams_pass_others_do_not() {
    let mut sim = Sim::new(2, 3);
    let rule = sim.rule(&[0], 1, &[proto::UDP], &[53]);
    sim.set_view(0, &[1], vec![], 1);
    sim.set_view(1, &[0], vec![rule], 1);
    let (a, b) = (sim.nodes[0].v4(), sim.nodes[1].v4());
    let frag = |dport: u16, id: u16, first: bool| {
        let mut p = udp(a, b, 5000, dport, &[7u8; 64]);
        p[4..6].copy_from_slice(&id.to_be_bytes());
        if first {
            p[6] = 0x20; // MF
        } else {
            p[6] = 0;
            p[7] = 10; // offset 80 bytes
        }
        // Fix the IPv4 header checksum is not needed: the engine does not verify it.
        p
    };
    sim.send_tun(0, &frag(53, 1, true));
    sim.send_tun(0, &frag(53, 1, false));
    sim.send_tun(0, &frag(54, 2, true));
    sim.send_tun(0, &frag(54, 2, false));
    sim.send_tun(0, &frag(53, 3, false)); // later fragment whose first never passed
    sim.advance(50);
    assert_eq!(sim.nodes[1].take_tun().len(), 2);
    assert_eq!(sim.nodes[1].engine.counters().rx_denied, 3);
}

/// The endpoint node 2 has for peer `node` (1-based node id).
fn endpoint_at(sim: &Sim, at: usize, node: u64) -> Option<SocketAddr> {
    sim.nodes[at]
        .engine
        .status(sim.now)
        .peers
        .iter()
        .find(|p| p.node_id == NodeId(node))
        .and_then(|p| p.endpoint)
}

/// The first in-flight datagram from `from` to `to` whose WireGuard type is `kind`.
fn in_flight(sim: &Sim, from: SocketAddr, to: SocketAddr, kind: u8) -> Option<Vec<u8>> {
    sim.net
        .values()
        .find(|d| d.from == from && d.to == to && d.data.first() == Some(&kind))
        .map(|d| d.data.clone())
}

#[test]
fn only_authenticated_packets_move_a_peer_endpoint() {
    let mut sim = three();
    let (home, to) = (sim.nodes[0].udp, sim.nodes[2].udp);
    let (a, c) = (sim.nodes[0].v4(), sim.nodes[2].v4());
    // Capture node 0's handshake initiation and first data message on their way.
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1000, 0, TCP_SYN, b""));
    let init = in_flight(&sim, home, to, 1).expect("handshake initiation in flight");
    sim.advance(50);
    sim.nodes[2].take_tun();
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1001, 0, TCP_ACK, b"data"));
    let data = in_flight(&sim, home, to, 4).expect("data message in flight");
    sim.advance(50);
    assert_eq!(sim.nodes[2].take_tun().len(), 1);
    assert_eq!(endpoint_at(&sim, 2, 1), Some(home));

    // From a new address: replays of both, a forged data message under the live receiver
    // index, a cookie reply, an initiation from an unknown key, and random bytes.
    let rogue: SocketAddr = "203.0.113.66:4444".parse().unwrap();
    let mut forged = data.clone();
    for b in &mut forged[16..] {
        *b ^= 0x5a;
    }
    let mut cookie = vec![3u8, 0, 0, 0];
    cookie.extend_from_slice(&data[4..8]);
    cookie.resize(64, 0xab);
    let stranger = StaticSecret::random_from_rng(&mut sim.rng);
    let mut t = boringtun::noise::Tunn::new(
        stranger,
        PublicKey::from(sim.nodes[2].cred.wg_public_key.0),
        None,
        None,
        5,
        None,
    );
    let mut buf = vec![0u8; 256];
    let boringtun::noise::TunnResult::WriteToNetwork(unknown_init) =
        t.format_handshake_initiation(&mut buf, false)
    else {
        panic!("initiation");
    };
    let unknown_init = unknown_init.to_vec();
    let noise: Vec<u8> = (0..200).map(|_| sim.rng.gen()).collect();
    for d in [init, data, forged, cookie, unknown_init, noise] {
        sim.inject(rogue, to, d);
    }
    sim.advance(50);
    assert!(sim.nodes[2].take_tun().is_empty(), "nothing delivered");
    assert_eq!(endpoint_at(&sim, 2, 1), Some(home), "endpoint unmoved");
    // Replies still go home, and nothing went to the rogue address.
    sim.send_tun(2, &tcp(c, a, 22, 40000, 5000, 1005, TCP_ACK, b"reply"));
    sim.advance(50);
    assert_eq!(sim.nodes[0].take_tun().len(), 1);
    assert!(sim.captured.iter().all(|d| d.to != rogue), "sent to rogue");

    // Node 0 really moves: its next authenticated packet moves the endpoint, and replies
    // follow it.
    let roamed: SocketAddr = "198.18.0.101:40001".parse().unwrap();
    sim.nodes[0].udp = roamed;
    sim.send_tun(0, &tcp(a, c, 40000, 22, 1005, 5005, TCP_ACK, b"moved"));
    sim.advance(50);
    assert_eq!(sim.nodes[2].take_tun().len(), 1);
    assert_eq!(endpoint_at(&sim, 2, 1), Some(roamed));
    sim.send_tun(2, &tcp(c, a, 22, 40000, 5005, 1010, TCP_ACK, b"follow"));
    sim.advance(50);
    assert_eq!(
        sim.nodes[0].take_tun().len(),
        1,
        "reply reached the new address"
    );
    assert!(
        sim.captured.iter().all(|d| d.to != home),
        "nothing sent to the old address"
    );
}

/// A WireGuard sender with `secret`'s key towards node `to` (fresh, as after a restart).
fn sender(sim: &Sim, secret: &StaticSecret, to: usize, index: u32) -> boringtun::noise::Tunn {
    boringtun::noise::Tunn::new(
        secret.clone(),
        PublicKey::from(sim.nodes[to].cred.wg_public_key.0),
        None,
        None,
        index,
        None,
    )
}

fn initiate(t: &mut boringtun::noise::Tunn) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    match t.format_handshake_initiation(&mut buf, true) {
        boringtun::noise::TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("no initiation"),
    }
}

fn initiation(sim: &Sim, secret: &StaticSecret, to: usize, index: u32) -> Vec<u8> {
    initiate(&mut sender(sim, secret, to, index))
}

#[test]
fn handshake_rate_limit_is_the_configured_number_per_second() {
    const LIMIT: u64 = 5;
    let mut sim = Sim::with_config(
        3,
        11,
        EngineConfig {
            persistent_keepalive: None,
            handshake_rate_limit: LIMIT,
            ..EngineConfig::default()
        },
    );
    sim.set_view(2, &[0, 1], vec![], 1);
    let to = sim.nodes[2].udp;
    let from: SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let (s0, s1) = (sim.nodes[0].secret.clone(), sim.nodes[1].secret.clone());
    let sent = |sim: &Sim, kind: u8| {
        sim.captured
            .iter()
            .filter(|d| d.to == from && d.data.first() == Some(&kind))
            .count()
    };
    // Initiations from known peers, all within one second: exactly LIMIT get a response.
    for i in 0..LIMIT as u32 {
        let s = if i % 2 == 0 { &s0 } else { &s1 };
        let d = initiation(&sim, s, 2, 100 + i);
        sim.inject(from, to, d);
    }
    sim.advance(10);
    assert_eq!(sent(&sim, 2), LIMIT as usize, "responses within the limit");
    assert_eq!(sim.nodes[2].engine.counters().cookies_sent, 0);
    let mut late = sender(&sim, &s0, 2, 200);
    let d = initiate(&mut late);
    sim.inject(from, to, d);
    sim.advance(10);
    assert_eq!(sent(&sim, 2), LIMIT as usize, "over the limit: no response");
    assert_eq!(sent(&sim, 3), 1, "a cookie reply instead");
    assert_eq!(sim.nodes[2].engine.counters().cookies_sent, 1);
    // The sender proves its address with the cookie (mac2): served though still over the limit.
    let cookie = sim.captured.iter().rev().find(|d| d.data[0] == 3).unwrap();
    let mut out = vec![0u8; 256];
    let _ = late.decapsulate(None, &cookie.data.clone(), &mut out);
    let d = initiate(&mut late);
    sim.inject(from, to, d);
    sim.advance(10);
    assert_eq!(sent(&sim, 2), LIMIT as usize + 1, "a valid mac2 passes");
    assert_eq!(sim.nodes[2].engine.counters().cookies_sent, 1);
    // The next second starts a new window.
    sim.advance(1_000);
    let d = initiation(&sim, &s1, 2, 300);
    sim.inject(from, to, d);
    sim.advance(10);
    assert_eq!(sent(&sim, 2), LIMIT as usize + 2);
    assert_eq!(sim.nodes[2].engine.counters().cookies_sent, 1);
}
