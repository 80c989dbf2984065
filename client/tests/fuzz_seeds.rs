//! Seed corpora of the fuzz targets `frame_decoder` and `packet_parse`, made from real
//! encodings: every control message as the wire codec frames it, and packets as the data
//! plane builds them. This test checks that the committed seeds are still valid input (so the
//! fuzzers start from the real formats); regenerate them after a format change with
//! `ZTMESH_WRITE_FUZZ_SEEDS=1 cargo test -p ztmesh-client --test fuzz_seeds`.

use ed25519_dalek::SigningKey;
use std::net::IpAddr;
use std::path::PathBuf;
use ztmesh_client::dataplane::packet::{self, TcpSegment, TCP_SYN};
use ztmesh_common::credential::NodeCredential;
use ztmesh_common::ids::{CoordinatorPublicKey, MachinePublicKey, NodeId, WgPublicKey};
use ztmesh_common::netmap::{proto, FilterRule, NetMap, NetMapDelta, PeerEntry, PortRange};
use ztmesh_common::posture::{attr, AttrValue, PostureAttrs};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::*;

/// `fuzz/seeds/TARGET`: kept apart from `fuzz/corpus/TARGET`, which `cargo fuzz cmin` rewrites.
fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn posture() -> PostureAttrs {
    let mut a = PostureAttrs::new();
    a.insert(attr::OS.into(), AttrValue::String("linux".into()));
    a.insert(attr::DISK_ENCRYPTED.into(), AttrValue::Bool(true));
    a.insert(attr::LAST_UPDATE_DAYS.into(), AttrValue::Number(3.0));
    a.insert(attr::EDR.into(), AttrValue::List(vec!["falcon".into()]));
    a
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peer() -> PeerEntry {
    let cred = NodeCredential {
        node_id: NodeId(7),
        hostname: "web-1".into(),
        user: None,
        tags: vec!["tag:web".into()],
        machine_key: MachinePublicKey([3; 32]),
        wg_public_key: WgPublicKey([4; 32]),
        addresses: vec![addr("100.64.0.7"), addr("fd5a:746d:6573::7")],
        posture_digest: [5; 32],
        not_before: UnixMillis(1_000),
        issued_at: UnixMillis(1_000),
        expires_at: UnixMillis(3_601_000),
        serial: 9,
    };
    PeerEntry {
        credential: cred.sign(&SigningKey::from_bytes(&[1; 32])),
        endpoints: vec!["198.18.0.7:41641".parse().unwrap()],
    }
}

fn filter() -> Vec<FilterRule> {
    vec![FilterRule {
        src: vec!["100.64.0.0/24".parse().unwrap()],
        dst: vec!["100.64.0.7/32".parse().unwrap()],
        protos: vec![proto::TCP],
        ports: vec![
            PortRange::single(443),
            PortRange {
                first: 8000,
                last: 8999,
            },
        ],
    }]
}

fn client_msgs() -> Vec<(&'static str, ClientMsg)> {
    vec![
        (
            "hello",
            ClientMsg::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client_version: "0.1.0".into(),
                machine_key: MachinePublicKey([2; 32]),
                proof: vec![9; 64],
            }),
        ),
        (
            "login",
            ClientMsg::Login(LoginRequest {
                hostname: "laptop".into(),
                wg_public_key: WgPublicKey([6; 32]),
                auth: LoginAuth::AuthKey("ztk_example".into()),
                endpoints: vec!["198.18.0.2:41641".parse().unwrap()],
                posture: posture(),
            }),
        ),
        ("posture", ClientMsg::PostureReport(posture())),
        (
            "renew",
            ClientMsg::Renew(RenewRequest {
                wg_public_key: WgPublicKey([8; 32]),
                posture: posture(),
            }),
        ),
        (
            "flowlog",
            ClientMsg::FlowLog(vec![FlowEvent {
                at: UnixMillis(5),
                src: addr("100.64.0.2"),
                dst: addr("100.64.0.7"),
                proto: proto::TCP,
                dst_port: Some(22),
                verdict: FlowVerdict::Denied,
                count: 3,
            }]),
        ),
        ("logout", ClientMsg::Logout),
    ]
}

fn server_msgs() -> Vec<(&'static str, ServerMsg)> {
    vec![
        (
            "welcome",
            ServerMsg::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                coordinator_key: CoordinatorPublicKey([1; 32]),
                server_time: UnixMillis(1_000),
            }),
        ),
        (
            "refused",
            ServerMsg::Refused {
                reasons: vec!["posture:compliant: node:diskEncrypted == true".into()],
            },
        ),
        (
            "credential",
            ServerMsg::Credential(CredentialGrant {
                node_id: NodeId(7),
                credential: peer().credential,
                renew_at: UnixMillis(3_000_000),
                posture_report_interval_ms: 300_000,
            }),
        ),
        (
            "netmap",
            ServerMsg::NetMap(NetMap {
                version: 2,
                peers: vec![peer()],
                filter: filter(),
            }),
        ),
        (
            "delta",
            ServerMsg::NetMapDelta(NetMapDelta {
                base_version: 2,
                version: 3,
                upsert: vec![peer()],
                remove: vec![NodeId(4)],
                filter: Some(filter()),
            }),
        ),
        (
            "revoked",
            ServerMsg::Revoked {
                reason: "revoked by an admin".into(),
            },
        ),
    ]
}

/// A `frame_decoder` input: one byte that chooses how the stream is cut into chunks, then
/// the frames.
fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, m) in client_msgs() {
        out.push((format!("client-{name}"), encode_frame(&m).unwrap()));
    }
    for (name, m) in server_msgs() {
        out.push((format!("server-{name}"), encode_frame(&m).unwrap()));
    }
    let all_client: Vec<u8> = client_msgs()
        .iter()
        .flat_map(|(_, m)| encode_frame(m).unwrap())
        .collect();
    out.push(("client-stream".into(), all_client));
    out.into_iter()
        .enumerate()
        .map(|(i, (n, f))| {
            let mut seed = vec![i as u8];
            seed.extend(f);
            (n, seed)
        })
        .collect()
}

fn packet_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (fam, s, d) in [
        ("v4", "100.64.0.1", "100.64.0.2"),
        ("v6", "fd5a:746d:6573::1", "fd5a:746d:6573::2"),
    ] {
        let (s, d) = (addr(s), addr(d));
        let mut buf = vec![0u8; 1500];
        let seg = TcpSegment {
            src: s,
            dst: d,
            src_port: 40000,
            dst_port: 443,
            seq: 1,
            ack: 0,
            flags: TCP_SYN,
            payload: b"",
        };
        let n = packet::build_tcp(&mut buf, &seg).unwrap();
        let tcp = buf[..n].to_vec();
        out.push((format!("{fam}-tcp-syn"), tcp.clone()));
        let n = packet::build_udp(&mut buf, s, d, 5353, 53, b"query").unwrap();
        out.push((format!("{fam}-udp"), buf[..n].to_vec()));
        let n = packet::build_icmp_echo(&mut buf, s, d, false, 7, 1, b"ping").unwrap();
        out.push((format!("{fam}-echo"), buf[..n].to_vec()));
        let n = packet::build_unreachable(&mut buf, d, &tcp).unwrap();
        out.push((format!("{fam}-unreachable"), buf[..n].to_vec()));
    }
    out
}

#[test]
fn committed_seeds_are_valid_input() {
    let sets = [
        ("frame_decoder", frame_seeds()),
        ("packet_parse", packet_seeds()),
    ];
    if std::env::var_os("ZTMESH_WRITE_FUZZ_SEEDS").is_some() {
        for (target, seeds) in &sets {
            std::fs::create_dir_all(seeds_dir(target)).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(seeds_dir(target).join(format!("seed-{name}")), bytes).unwrap();
            }
        }
    }
    for (name, bytes) in &sets[0].1 {
        let file = seeds_dir("frame_decoder").join(format!("seed-{name}"));
        let seed = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut d = FrameDecoder::new(MAX_SERVER_FRAME);
        d.push(&seed[1..]);
        let mut n = 0;
        loop {
            let got = if name.starts_with("client") {
                d.next_msg::<ClientMsg>().map(|m| m.is_some())
            } else {
                d.next_msg::<ServerMsg>().map(|m| m.is_some())
            };
            match got {
                Ok(true) => n += 1,
                Ok(false) => break,
                Err(e) => panic!(
                    "{}: {e}: the wire format changed; bump PROTOCOL_VERSION and regenerate",
                    file.display()
                ),
            }
        }
        assert!(n >= 1 && d.pending() == 0, "{}", file.display());
        assert!(bytes.len() > 1);
    }
    for (name, bytes) in &sets[1].1 {
        let file = seeds_dir("packet_parse").join(format!("seed-{name}"));
        let seed = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!bytes.is_empty());
        let p = packet::parse(&seed).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(p.total_len, seed.len());
    }
}
