//! The client as its users meet it, with the real binaries in the lab: credentials (and so
//! WireGuard keys) rotate under a running TCP stream without breaking it; hostile datagrams at
//! the WireGuard port and malformed packets from the TUN hurt nobody; and the CLI's `ping`,
//! `posture` and `down` do what they say against a live daemon.

use std::collections::BTreeSet;
use std::time::Duration;
use ztmesh_tests::mesh::{Client, Posture};
use ztmesh_tests::{wait, Lab, Site};

const PROBE: Duration = Duration::from_millis(700);

/// `lifetime`: the credential lifetime; clients renew (with a new WireGuard key) at 2/3 of it.
fn policy(lifetime: &str) -> String {
    format!(
        r#"{{
  "tagOwners": {{ "tag:web": [], "tag:laptop": [] }},
  "acls": [ {{ "action": "accept", "src": ["tag:laptop"], "dst": ["tag:web:8443"] }} ],
  "lifetimes": {{ "credential": "{lifetime}" }},
}}"#
    )
}

fn join(lab: &Lab, coord: &ztmesh_tests::mesh::Coordinator, c: &Client, tag: &str) {
    let key = coord.preauth_key(lab, &[tag]).unwrap();
    let (code, out) = c.up_with_key(lab, &coord.join_url, &key).unwrap();
    assert_eq!(code, 0, "{} did not join: {out}", c.host);
}

/// `web` (tag:web, serving 8443) and `laptop` (tag:laptop) joined to a fresh coordinator;
/// returns once the laptop reaches web:8443 through the mesh.
struct TwoNodes {
    coord: ztmesh_tests::mesh::Coordinator,
    web: Client,
    laptop: Client,
    _svc: ztmesh_tests::Process,
    web_ip: String,
    /// `web_ip:8443`.
    target: String,
}

fn two_nodes(lab: &Lab, lifetime: &str) -> TwoNodes {
    let coord = lab.start_coordinator(&policy(lifetime), None).unwrap();
    let web = lab.start_client("web", Posture::Compliant).unwrap();
    let svc = lab.serve("web", "web-service", &[8443], &[]).unwrap();
    let laptop = lab.start_client("laptop", Posture::Compliant).unwrap();
    join(lab, &coord, &web, "tag:web");
    join(lab, &coord, &laptop, "tag:laptop");
    let web_ip = web.status(lab).unwrap().overlay_v4().unwrap();
    let target = format!("{web_ip}:8443");
    reach(lab, "laptop", &target);
    TwoNodes {
        coord,
        web,
        laptop,
        _svc: svc,
        web_ip,
        target,
    }
}

fn reach(lab: &Lab, from: &str, target: &str) {
    wait::until(
        &format!("{from} reaches {target}"),
        Duration::from_secs(20),
        || {
            lab.probe_tcp(from, target, PROBE)
                .ok()
                .filter(|o| o.is_ok())
        },
    )
    .unwrap();
}

#[test]
fn key_rotation_under_a_running_tcp_stream_does_not_break_it() {
    let lab = Lab::builder()
        .host("web", Site::Internet)
        .host("laptop", Site::Lan(1))
        .build()
        .expect("lab");
    // Bound whole: the coordinator and the service live as long as the test.
    let mesh = two_nodes(&lab, "6s");
    let (web, laptop, target) = (&mesh.web, &mesh.laptop, &mesh.target);

    // One echo every 50 ms; a gap of 300 ms counts as a break.
    let hold = lab.hold("laptop", target, Duration::from_secs(30)).unwrap();
    let mut own_keys = BTreeSet::new();
    let mut seen_by_web = BTreeSet::new();
    wait::until(
        "three key rotations on both sides",
        Duration::from_secs(25),
        || {
            if let Some(k) = laptop.status(&lab).ok().and_then(|s| s.self_.wg_public_key) {
                own_keys.insert(k);
            }
            if let Some(p) = web
                .status(&lab)
                .ok()
                .and_then(|s| s.peers.into_iter().find(|p| p.name == "laptop"))
            {
                seen_by_web.insert(p.wg_public_key);
            }
            std::thread::sleep(Duration::from_millis(200));
            (own_keys.len() >= 4 && seen_by_web.len() >= 4).then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "keys of laptop {own_keys:?}, as web saw them {seen_by_web:?}: {e}\n{}",
            lab.log_tails(20)
        )
    });
    assert!(
        hold.is_open(),
        "the stream broke during key rotation: {:?}\n{}",
        hold.events(),
        lab.log_tails(20)
    );
    assert!(lab.probe_tcp("laptop", target, PROBE).unwrap().is_ok());
    lab.assert_no_panics();
}

#[test]
fn hostile_datagrams_and_malformed_tun_packets_hurt_no_legitimate_peer() {
    let lab = Lab::builder()
        .host("web", Site::Internet)
        .host("laptop", Site::Internet)
        .host("mallory", Site::Internet)
        .build()
        .expect("lab");
    let mesh = two_nodes(&lab, "1h");
    let (web, laptop, web_ip, target) = (&mesh.web, &mesh.laptop, &mesh.web_ip, &mesh.target);
    let laptop_ip = laptop.status(&lab).unwrap().overlay_v4().unwrap();
    // The flood may fill web's socket buffer, so a segment may need a retransmission; the
    // connection must survive (no reset, no gap of seconds).
    let hold = lab
        .hold_tolerant(
            "laptop",
            target,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .unwrap();

    // Mallory knows web's public WireGuard endpoint and throws everything at it.
    let web_underlay = lab.host("web").unwrap().addr;
    let summary = lab
        .flood("mallory", &format!("{web_underlay}:41641"), 20_000)
        .unwrap();
    assert!(summary.contains("\"done\""), "flood: {summary}");
    // The laptop's own stack sends malformed packets at web through the tunnel, and web's
    // stack sends them back towards the laptop.
    for (from, dst, src) in [
        ("laptop", web_ip.as_str(), laptop_ip.as_str()),
        ("web", laptop_ip.as_str(), web_ip.as_str()),
    ] {
        let out = lab.malformed(from, dst, src, 2_000).unwrap();
        let done: serde_json::Value = serde_json::from_str(&out).expect("malformed summary");
        assert!(
            done["sent"].as_u64().is_some_and(|n| n >= 1_000),
            "most malformed packets must reach the TUN: {out}"
        );
    }
    let from_laptop = "malformed packets both ways";

    assert!(
        hold.is_open(),
        "the legitimate connection broke under hostile input ({summary}; {from_laptop}): {:?}\n{}",
        hold.events(),
        lab.log_tails(20)
    );
    // New connections work too (a few tries: CI runs several labs at once on two cores).
    wait::until(
        "a new connection after the hostile input",
        Duration::from_secs(5),
        || {
            lab.probe_tcp("laptop", target, PROBE)
                .ok()
                .filter(|o| o.is_ok())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tails(30)));
    for c in [&web, &laptop] {
        let st = c.status(&lab).unwrap();
        assert_eq!(st.state, "running", "{} after the flood: {st:?}", c.host);
    }
    // Both daemons still run and nothing panicked.
    let mut mesh = mesh;
    assert!(mesh.web.daemon.is_running() && mesh.laptop.daemon.is_running());
    lab.assert_no_panics();
}

#[test]
fn cli_ping_posture_and_down_against_a_live_daemon() {
    let lab = Lab::builder()
        .host("web", Site::Internet)
        .host("laptop", Site::Lan(2))
        .build()
        .expect("lab");
    let mesh = two_nodes(&lab, "1h");
    let (web, laptop, target) = (&mesh.web, &mesh.laptop, &mesh.target);

    // `ztmesh ping` by name reaches the peer (ICMP is granted: the acl names no protocol).
    let (code, out) = laptop
        .run_cli(&lab, &["ping", "web", "--count", "2"])
        .unwrap();
    assert_eq!(code, 0, "ping web: {out}");
    assert!(out.contains("2/2"), "ping web: {out}");
    // A name that is not in the view is refused with a clear message, not a hang.
    let (code, out) = laptop
        .run_cli(&lab, &["ping", "nosuchpeer", "--count", "1"])
        .unwrap();
    assert_ne!(code, 0, "ping to an unknown peer: {out}");
    assert!(out.contains("nosuchpeer"), "ping to an unknown peer: {out}");
    // The other way the policy grants nothing: laptop's filter drops web's echo, and the
    // CLI says what silence can mean.
    let (code, out) = web
        .run_cli(&lab, &["ping", "laptop", "--count", "1"])
        .unwrap();
    assert_ne!(code, 0, "a denied ping: {out}");
    assert!(
        out.contains("0/1") && out.contains("policy does not admit ICMP"),
        "a denied ping: {out}"
    );

    // `ztmesh posture --json` says what would be reported, and that it came from a fixture.
    let (code, out) = laptop.run_cli(&lab, &["posture", "--json"]).unwrap();
    assert_eq!(code, 0, "posture: {out}");
    let attrs: serde_json::Value = serde_json::from_str(&out).expect("posture --json parses");
    assert_eq!(attrs["node:postureSource"], "fixture", "{attrs}");
    assert_eq!(attrs["node:diskEncrypted"], true, "{attrs}");
    assert!(attrs["node:os"].is_string(), "{attrs}");

    // A connection the policy denies is dropped by web's filter, which reports it; the
    // coordinator shows it to admins (and logs it for a SIEM).
    let denied_port = format!("{}:9999", mesh.web_ip);
    assert!(!lab
        .probe_tcp("laptop", &denied_port, PROBE)
        .unwrap()
        .is_ok());
    let flows = wait::until(
        "web's report of the denied flow",
        Duration::from_secs(10),
        || {
            let out = mesh
                .coord
                .admin(&lab, &["flows", "--device", "web", "--json"])
                .ok()?;
            let hit = out.lines().find(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["dst_port"] == 9999 && v["verdict"] == "denied" && v["hostname"] == "web"
                })
            });
            hit.map(str::to_string)
        },
    )
    .unwrap();
    let laptop_v4 = laptop.status(&lab).unwrap().overlay_v4().unwrap();
    assert!(
        flows.contains(&laptop_v4),
        "the report names the source: {flows}"
    );

    // `ztmesh down` leaves the mesh: no addresses, no peers, no traffic, in both directions.
    let (code, out) = laptop.run_cli(&lab, &["down"]).unwrap();
    assert_eq!(code, 0, "down: {out}");
    let st = laptop.status(&lab).unwrap();
    assert_eq!(st.state, "stopped", "{st:?}");
    assert!(
        st.self_.addresses.is_empty() && st.peers.is_empty(),
        "{st:?}"
    );
    let addrs = lab
        .exec(
            "laptop",
            std::path::Path::new("ip"),
            &["-o", "addr", "show"],
            Duration::from_secs(5),
        )
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).to_string();
    assert!(
        !addrs.contains("100.64."),
        "overlay address left on the host after down: {addrs}"
    );
    assert!(!lab.probe_tcp("laptop", target, PROBE).unwrap().is_ok());
    web.wait_status(
        &lab,
        "laptop gone from web's view",
        Duration::from_secs(5),
        |s| !s.has_peer("laptop"),
    )
    .unwrap();
    lab.assert_no_panics();
}
