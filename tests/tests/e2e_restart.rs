//! The coordinator crashes (SIGKILL) under a running mesh, with the real binaries in the lab:
//! the mesh keeps carrying traffic while it is gone and after it is back; every device is still
//! registered and admitted (nothing committed was lost), the clients reconnect by themselves
//! with their device sessions (the restarted coordinator answers their old connection with a
//! QUIC stateless reset), and changes are pushed to them again (a policy change that removes
//! access cuts an open connection within a second).

use std::time::Duration;
use ztmesh_tests::mesh::{AdminCli, Posture};
use ztmesh_tests::{now_ms, wait, Lab, Site};

const POLICY: &str = r#"{
  "tagOwners": { "tag:web": [], "tag:laptop": [] },
  "acls": [ { "action": "accept", "src": ["tag:laptop"], "dst": ["tag:web:8443"] } ],
}"#;

const POLICY_CLOSED: &str = r#"{
  "tagOwners": { "tag:web": [], "tag:laptop": [] },
  "acls": [],
}"#;

const PROBE: Duration = Duration::from_millis(700);

/// Creates pre-auth keys one after the other for `span` (the coordinator may die and come back
/// meanwhile); returns the ids of those whose creation was acknowledged.
fn acknowledged_writes(lab: &Lab, admin: &AdminCli, span: Duration) -> Vec<String> {
    let end = std::time::Instant::now() + span;
    let mut acked = Vec::new();
    for _ in 0..500 {
        if std::time::Instant::now() >= end {
            break;
        }
        let Ok(out) = admin.run(lab, &["preauth", "create", "--tags", "tag:web"]) else {
            continue;
        };
        // "pre-auth key ID (single-use, ...)" then the key alone on the last line.
        if let Some(id) = out
            .lines()
            .find_map(|l| l.strip_prefix("pre-auth key "))
            .and_then(|rest| rest.split_whitespace().next())
        {
            acked.push(id.to_string());
        }
    }
    acked
}

#[test]
fn clients_reconnect_after_kill_9_and_receive_pushes_again() {
    let lab = Lab::builder()
        .host("web", Site::Internet)
        .host("laptop", Site::Internet)
        .build()
        .expect("lab");
    let mut coord = lab.start_coordinator(POLICY, None).expect("coordinator");

    let web = lab.start_client("web", Posture::Compliant).unwrap();
    let _svc = lab.serve("web", "web-service", &[8443], &[]).unwrap();
    let laptop = lab.start_client("laptop", Posture::Compliant).unwrap();
    for (c, tag) in [(&web, "tag:web"), (&laptop, "tag:laptop")] {
        let key = coord.preauth_key(&lab, &[tag]).unwrap();
        let (code, out) = c.up_with_key(&lab, &coord.join_url, &key).unwrap();
        assert_eq!(code, 0, "{} did not join: {out}", c.host);
    }
    let web_ip = web.status(&lab).unwrap().overlay_v4().expect("web address");
    let target = format!("{web_ip}:8443");
    wait::until("laptop reaches web:8443", Duration::from_secs(20), || {
        lab.probe_tcp("laptop", &target, PROBE)
            .ok()
            .filter(|o| o.is_ok())
    })
    .unwrap();
    let hold = lab
        .hold("laptop", &target, Duration::from_secs(90))
        .unwrap();

    // A stream of admin writes runs while the coordinator is killed: every write the CLI saw
    // acknowledged must be there after the restart.
    let admin = coord.admin_cli();
    let acked = std::thread::scope(|scope| {
        let writer = scope.spawn(|| acknowledged_writes(&lab, &admin, Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(800));
        let killed_at = now_ms();
        coord.kill_and_restart(&lab, 2).expect("restart");
        (writer.join().expect("writer"), killed_at)
    });
    let (acked, killed_at) = acked;
    eprintln!("{} writes acknowledged across the kill", acked.len());
    assert!(
        acked.len() >= 3,
        "too few writes before the kill: {acked:?}"
    );
    let stored = coord.admin(&lab, &["preauth", "list", "--json"]).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let stored: Vec<&str> = stored
        .as_array()
        .expect("pre-auth list")
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains(&id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost by kill -9: {lost:?}"
    );

    // Nothing committed was lost: both devices are still registered, and back in the mesh
    // with the credentials they hold before either has reconnected.
    let devices = coord.admin(&lab, &["devices", "list", "--json"]).unwrap();
    let devices: serde_json::Value = serde_json::from_str(&devices).unwrap();
    let admitted: Vec<&str> = devices
        .as_array()
        .expect("device list")
        .iter()
        .filter(|d| d["admitted"] == true)
        .filter_map(|d| d["hostname"].as_str())
        .collect();
    assert!(
        admitted.contains(&"web") && admitted.contains(&"laptop"),
        "admitted devices after the restart: {devices}"
    );

    // Both clients reconnect by themselves, without a new login.
    for c in [&web, &laptop] {
        c.wait_status(
            &lab,
            "reconnected to the restarted coordinator",
            Duration::from_secs(30),
            |s| s.state == "running" && s.connected_since_ms.is_some_and(|t| t >= killed_at),
        )
        .unwrap_or_else(|e| panic!("{} did not reconnect: {e}\n{}", c.host, lab.log_tails(20)));
    }
    assert!(
        hold.is_open(),
        "the mesh stopped while the coordinator was down"
    );

    // Pushes reach the reconnected sessions: closing the policy cuts the open connection.
    let t0 = now_ms();
    coord.set_policy(&lab, POLICY_CLOSED).expect("policy set");
    let (last, _) = hold
        .wait_cut(Duration::from_secs(5))
        .expect("the held connection survived a policy that removes it");
    let ms = (last + 50).saturating_sub(t0);
    assert!(ms <= 1000, "policy change to cut took {ms} ms");
    assert!(!lab.probe_tcp("laptop", &target, PROBE).unwrap().is_ok());
    lab.assert_no_panics();
}
