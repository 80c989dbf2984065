//! A restarted coordinator (same store, same signing key) puts every device whose credential is
//! still valid back into the mesh before any of them reconnects: the first device back sees its
//! peers, devices that have not reconnected still expire and can still be revoked, and a
//! revoked or expired device is not restored.

mod control_util;

use control_util::*;
use ed25519_dalek::SigningKey;
use std::time::{Duration, Instant};
use ztmesh_common::ids::NodeId;
use ztmesh_common::posture::PostureAttrs;

fn policy(lifetime: &str) -> String {
    policy_with(&format!(r#""credential": "{lifetime}""#))
}

fn policy_with(lifetimes: &str) -> String {
    format!(
        r#"{{
  "tagOwners": {{ "tag:a": [], "tag:b": [] }},
  "acls": [ {{ "action": "accept", "src": ["tag:a"], "dst": ["tag:b:443"] }} ],
  "lifetimes": {{ {lifetimes} }},
}}"#
    )
}

struct Enrolled {
    machine_key: SigningKey,
    auth_key: String,
    node: NodeId,
}

async fn enroll(h: &Harness, hostname: &str, tag: &str) -> Enrolled {
    let machine_key = SigningKey::from_bytes(&rand::random());
    let auth_key = h.preauth(&[tag], false);
    let d = h
        .join_as(
            machine_key.clone(),
            hostname,
            &auth_key,
            PostureAttrs::default(),
        )
        .await;
    Enrolled {
        machine_key,
        auth_key,
        node: d.node,
    }
}

async fn rejoin(h: &Harness, e: &Enrolled, hostname: &str) -> Device {
    h.join_as(
        e.machine_key.clone(),
        hostname,
        &e.auth_key,
        PostureAttrs::default(),
    )
    .await
}

/// Restart the coordinator; `a` comes back and still sees `b`, which has not reconnected.
async fn restart_and_rejoin(h: &mut Harness, a: &Enrolled, b: &Enrolled) -> Device {
    h.restart().await;
    let a_back = rejoin(h, a, "a-1").await;
    assert_eq!(
        peer_ids(&a_back.netmap.peers, &a_back.welcome.coordinator_key),
        vec![b.node]
    );
    a_back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_device_back_after_a_restart_sees_peers_that_have_not_reconnected() {
    let mut h = Harness::start(&policy("1h")).await;
    let a = enroll(&h, "a-1", "tag:a").await;
    let b = enroll(&h, "b-1", "tag:b").await;

    h.restart().await;

    let devices = h.cp.devices().await.unwrap();
    let b_row = devices.iter().find(|d| d.id == b.node).expect("b listed");
    assert!(b_row.admitted, "b is back in the mesh: {b_row:?}");
    assert!(!b_row.online, "b has not reconnected yet: {b_row:?}");

    let a_back = rejoin(&h, &a, "a-1").await;
    assert_eq!(a_back.node, a.node, "same device, same node id");
    assert_eq!(
        peer_ids(&a_back.netmap.peers, &a_back.welcome.coordinator_key),
        vec![b.node],
        "a's first view after the restart still holds b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_device_that_never_reconnects_expires_and_peers_are_told() {
    let mut h = Harness::start(&policy("3s")).await;
    let a = enroll(&h, "a-1", "tag:a").await;
    let b = enroll(&h, "b-1", "tag:b").await;
    let b_expires =
        h.cp.devices()
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.id == b.node)
            .and_then(|d| d.credential_expires_at)
            .expect("b holds a credential");

    let mut a_back = restart_and_rejoin(&mut h, &a, &b).await;

    let (d, _) = next_delta(&mut a_back.client, Duration::from_secs(6))
        .await
        .expect("a is told that b expired");
    assert_eq!(d.remove, vec![b.node]);
    let late = ztmesh_coordinator::control::now()
        .0
        .saturating_sub(b_expires.0);
    assert!(late <= 1000, "b removed {late} ms after its expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_device_that_never_reports_again_leaves_the_mesh() {
    // Reports are due every 2 s, with 2 s of grace; credentials last an hour.
    let mut h = Harness::start(&policy_with(r#""postureReport": "2s""#)).await;
    let a = enroll(&h, "a-1", "tag:a").await;
    let b = enroll(&h, "b-1", "tag:b").await;
    let enrolled = Instant::now();

    let mut a_back = restart_and_rejoin(&mut h, &a, &b).await;
    // b's last report came with its login, before the restart.
    let (d, _) = next_delta(&mut a_back.client, Duration::from_secs(6))
        .await
        .expect("a is told that b went silent");
    assert_eq!(d.remove, vec![b.node]);
    let after = enrolled.elapsed();
    assert!(
        after >= Duration::from_millis(3800) && after < Duration::from_secs(5),
        "b removed {after:?} after its last report"
    );
    // The store records why just after the push (the push does not wait for the disk).
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let devices = h.cp.devices().await.unwrap();
        let b_row = devices.iter().find(|d| d.id == b.node).unwrap();
        assert!(!b_row.admitted && !b_row.revoked, "{b_row:?}");
        if b_row
            .posture_failures
            .iter()
            .any(|f| f.contains("no posture report"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "reason not recorded: {b_row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_restored_offline_device_reaches_its_peers_and_it_cannot_return() {
    let mut h = Harness::start(&policy("1h")).await;
    let a = enroll(&h, "a-1", "tag:a").await;
    let b = enroll(&h, "b-1", "tag:b").await;

    h.restart().await;
    let mut a_back = rejoin(&h, &a, "a-1").await;
    let t0 = Instant::now();
    h.cp.revoke_device(b.node, "stolen").await.unwrap();
    let (d, _) = next_delta(&mut a_back.client, Duration::from_secs(1))
        .await
        .expect("a is told within a second");
    assert_eq!(d.remove, vec![b.node]);
    assert!(t0.elapsed() <= Duration::from_secs(1));

    // Neither a second restart nor b's own return brings it back.
    h.restart().await;
    let devices = h.cp.devices().await.unwrap();
    assert!(!devices.iter().find(|d| d.id == b.node).unwrap().admitted);
    let (mut client, _) = ztmesh_coordinator::control::testkit::TestClient::connect(
        &h.endpoint,
        h.addr,
        b.machine_key.clone(),
    )
    .await
    .unwrap();
    let req = ztmesh_coordinator::control::testkit::login_request(
        "b-1",
        ztmesh_common::wire::LoginAuth::AuthKey(b.auth_key.clone()),
        PostureAttrs::default(),
    );
    client
        .send(&ztmesh_common::wire::ClientMsg::Login(req))
        .await
        .unwrap();
    match client.recv().await.unwrap() {
        ztmesh_common::wire::ServerMsg::Refused { reasons } => {
            assert!(reasons.iter().any(|r| r.contains("revoked")), "{reasons:?}")
        }
        other => panic!("a revoked device was answered {other:?}"),
    }
}
