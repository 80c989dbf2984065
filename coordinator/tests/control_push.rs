//! Live netmaps over real QUIC: revocation, expiry, renewal, posture drift, admin attributes
//! and policy changes reach connected devices within a second (measured).

mod control_util;

use control_util::*;
use std::time::{Duration, Instant};
use ztmesh_common::ids::WgPublicKey;
use ztmesh_common::posture::{attr, AttrValue};
use ztmesh_common::wire::{ClientMsg, LoginAuth, RenewRequest, ServerMsg};
use ztmesh_coordinator::control::now;
use ztmesh_coordinator::control::testkit::login_request;
use ztmesh_coordinator::store::{Decision, Store};

const ONE_SECOND: Duration = Duration::from_secs(1);

fn policy(lifetime: &str, extra_acl: &str) -> String {
    policy_with(&format!(r#""credential": "{lifetime}""#), extra_acl)
}

/// The test policy with these `lifetimes` members.
fn policy_with(lifetimes: &str, extra_acl: &str) -> String {
    format!(
        r#"{{
  "tagOwners": {{ "tag:a": [], "tag:b": [], "tag:c": [] }},
  "postures": {{ "posture:fw": ["node:firewall == true", "custom:compromised NOT SET"] }},
  "defaultSrcPosture": ["posture:fw"],
  "acls": [
    {{ "action": "accept", "src": ["tag:a"], "dst": ["tag:b:443"] }},
    {extra_acl}
  ],
  "lifetimes": {{ {lifetimes} }},
}}"#
    )
}

fn fw() -> ztmesh_common::posture::PostureAttrs {
    posture(&[(attr::FIREWALL, AttrValue::Bool(true))])
}

/// `Renew` with this WireGuard key and a passing posture.
/// Whether the audit log holds a record of `action` with `decision` whose reason contains `reason`.
fn audited(h: &Harness, action: &str, decision: Decision, reason: &str) -> bool {
    h.store
        .audit_records()
        .unwrap()
        .iter()
        .any(|r| r.action == action && r.decision == decision && r.reason.contains(reason))
}

async fn send_renew(d: &mut Device, wg_public_key: WgPublicKey) {
    d.client
        .send(&ClientMsg::Renew(RenewRequest {
            wg_public_key,
            posture: fw(),
        }))
        .await
        .unwrap();
}

/// The enrolled device logs in again on its connection and is admitted.
async fn login_again(d: &mut Device) {
    let auth = LoginAuth::AuthKey("unused: the device is enrolled".into());
    d.client
        .send(&ClientMsg::Login(login_request("b-1", auth, fw())))
        .await
        .unwrap();
    expect_credential(&mut d.client, &d.welcome).await;
}

async fn pair(h: &Harness) -> (Device, Device) {
    let a = h.join("a-1", &h.preauth(&["tag:a"], false), fw()).await;
    let mut b = h.join("b-1", &h.preauth(&["tag:b"], false), fw()).await;
    assert_eq!(
        peer_ids(&b.netmap.peers, &b.welcome.coordinator_key),
        vec![a.node]
    );
    let mut a = a;
    let (d, _) = next_delta(&mut a.client, ONE_SECOND)
        .await
        .expect("a learns b");
    assert_eq!(
        peer_ids(&d.upsert, &a.welcome.coordinator_key),
        vec![b.node]
    );
    // Drain nothing else pending on b.
    assert!(b
        .client
        .recv_within(Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_device_and_its_peers_within_a_second() {
    let h = Harness::start(&policy("1h", "")).await;
    let (mut a, mut b) = pair(&h).await;
    let t0 = Instant::now();
    h.cp.revoke_device(b.node, "lost laptop").await.unwrap();
    let (d, _) = next_delta(&mut a.client, ONE_SECOND).await.expect("a told");
    let a_took = t0.elapsed();
    assert_eq!(d.remove, vec![b.node]);
    let msg = b
        .client
        .recv_within(ONE_SECOND)
        .await
        .unwrap()
        .expect("b told");
    let b_took = t0.elapsed();
    match msg {
        ServerMsg::Revoked { reason } => {
            assert_eq!(reason, "revoked by an administrator: lost laptop")
        }
        other => panic!("expected Revoked, got {other:?}"),
    }
    eprintln!("revocation: peer updated after {a_took:?}, device after {b_took:?}");
    assert!(a_took < ONE_SECOND && b_took < ONE_SECOND);
    // Durable, audited, and the device cannot come back.
    let dev = h.store.get_device(b.node).unwrap().unwrap();
    assert!(dev.revoked);
    assert!(audited(&h, "revocation", Decision::Deny, ""));
    let key = h.preauth(&["tag:b"], false);
    b.client
        .send(&ClientMsg::Login(login_request(
            "b-1",
            LoginAuth::AuthKey(key),
            fw(),
        )))
        .await
        .unwrap();
    match b.client.recv().await.unwrap() {
        // Said once, not "revoked by an administrator: revoked by an administrator: ...".
        ServerMsg::Refused { reasons } => assert_eq!(
            reasons,
            vec![format!(
                "this device ({}) was revoked by an administrator: lost laptop",
                b.node
            )]
        ),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_the_node_everywhere_within_a_second() {
    let h = Harness::start(&policy("3s", "")).await;
    // b joins first, so its credential ends first while a is still there to be told.
    let mut b = h.join("b-1", &h.preauth(&["tag:b"], false), fw()).await;
    let mut a = h.join("a-1", &h.preauth(&["tag:a"], false), fw()).await;
    assert_eq!(
        peer_ids(&a.netmap.peers, &a.welcome.coordinator_key),
        vec![b.node]
    );
    let expires = b.credential.expires_at;
    let (d, _) = next_delta(&mut a.client, Duration::from_secs(6))
        .await
        .expect("a told of b's expiry");
    let late = now().0.saturating_sub(expires.0);
    assert_eq!(d.remove, vec![b.node]);
    eprintln!("expiry: peer updated {late} ms after the credential's expiry");
    assert!(now() >= expires, "not removed before expiry");
    assert!(late < 1000, "removed {late} ms after expiry");
    loop {
        match b.client.recv_within(ONE_SECOND).await.unwrap() {
            Some(ServerMsg::Revoked { reason }) => {
                assert!(reason.contains("expired"));
                break;
            }
            Some(ServerMsg::NetMapDelta(_)) => continue,
            other => panic!("expected Revoked, got {other:?}"),
        }
    }
    // The audit record follows the push (the push is not held up by the store).
    let deadline = Instant::now() + ONE_SECOND;
    while !audited(&h, "expiry", Decision::Deny, "") {
        assert!(Instant::now() < deadline, "expiry audited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let devs = h.cp.devices().await.unwrap();
    let b_state = devs.iter().find(|d| d.id == b.node).unwrap();
    assert!(!b_state.admitted && b_state.credential_expires_at.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_rotates_the_key_and_peers_get_the_new_credential() {
    let h = Harness::start(&policy("3s", "")).await;
    let (mut a, mut b) = pair(&h).await;
    // Renew half-way through the 3 s lifetime.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new_key = WgPublicKey(rand::random());
    send_renew(&mut b, new_key).await;
    let (_, cred) = expect_credential(&mut b.client, &b.welcome).await;
    assert_eq!(cred.wg_public_key, new_key);
    assert!(cred.serial > b.credential.serial);
    assert!(cred.expires_at > b.credential.expires_at);
    let (d, took) = next_delta(&mut a.client, ONE_SECOND).await.expect("a told");
    assert!(took < ONE_SECOND);
    let got = d.upsert[0]
        .credential
        .verify(&a.welcome.coordinator_key, now())
        .unwrap();
    assert_eq!(got.wg_public_key, new_key);
    // The old expiry passes without removing the renewed node (a, not renewed, expires).
    let wait = b.credential.expires_at.0.saturating_sub(now().0) + 300;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let devs = h.cp.devices().await.unwrap();
    let admitted = |id| devs.iter().find(|d| d.id == id).unwrap().admitted;
    assert!(
        admitted(b.node),
        "renewed node must not expire at the old deadline"
    );
    assert!(!admitted(a.node), "the node that did not renew expired");
    match b.client.recv().await.unwrap() {
        ServerMsg::NetMapDelta(d) => assert_eq!(d.remove, vec![a.node]),
        other => panic!("expected a's removal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posture_drift_and_admin_attributes_revoke_with_reasons() {
    let h = Harness::start(&policy("1h", "")).await;
    let (mut a, mut b) = pair(&h).await;
    // The device reports its firewall off: revoked, peers told.
    let t0 = Instant::now();
    b.client
        .send(&ClientMsg::PostureReport(posture(&[(
            attr::FIREWALL,
            AttrValue::Bool(false),
        )])))
        .await
        .unwrap();
    let (d, _) = next_delta(&mut a.client, ONE_SECOND).await.expect("a told");
    assert!(t0.elapsed() < ONE_SECOND);
    assert_eq!(d.remove, vec![b.node]);
    match b.client.recv().await.unwrap() {
        ServerMsg::Revoked { reason } => assert!(reason.contains("node:firewall"), "{reason}"),
        other => panic!("expected Revoked, got {other:?}"),
    }
    // An EDR feed flags `a` as compromised: revoked too.
    h.cp.set_device_attr(a.node, "custom:compromised", Some(AttrValue::Bool(true)))
        .await
        .unwrap();
    match a.client.recv().await.unwrap() {
        ServerMsg::Revoked { reason } => {
            assert!(reason.contains("custom:compromised"), "{reason}")
        }
        other => panic!("expected Revoked, got {other:?}"),
    }
    assert!(h
        .cp
        .set_device_attr(a.node, "node:firewall", Some(AttrValue::Bool(true)))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_pushes_deltas_to_affected_devices() {
    let h = Harness::start(&policy("1h", "")).await;
    let (mut a, mut b) = pair(&h).await;
    let mut c = h.join("c-1", &h.preauth(&["tag:c"], false), fw()).await;
    assert!(c.netmap.peers.is_empty());
    // Let c reach b on 8080 as well.
    let t0 = Instant::now();
    h.cp.set_policy(
        &policy(
            "1h",
            r#"{ "action": "accept", "src": ["tag:c"], "dst": ["tag:b:8080"] },"#,
        ),
        "test",
    )
    .await
    .unwrap();
    let (db, _) = next_delta(&mut b.client, ONE_SECOND).await.expect("b told");
    let (dc, _) = next_delta(&mut c.client, ONE_SECOND).await.expect("c told");
    let took = t0.elapsed();
    eprintln!("policy change: both devices updated after {took:?}");
    assert!(took < ONE_SECOND);
    assert_eq!(
        peer_ids(&db.upsert, &b.welcome.coordinator_key),
        vec![c.node]
    );
    assert!(db.filter.is_some());
    assert_eq!(
        peer_ids(&dc.upsert, &c.welcome.coordinator_key),
        vec![b.node]
    );
    // a's view did not change: nothing is sent to it.
    assert!(a
        .client
        .recv_within(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    // A policy that fails to parse is refused and the running one stays.
    let err =
        h.cp.set_policy("{ \"acls\": [ { ", "test")
            .await
            .unwrap_err();
    assert!(err.to_string().contains("policy.hujson:"), "{err}");
    assert_eq!(h.store.policy_history().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_silent_past_its_posture_interval_is_revoked_and_peers_told() {
    // A report every 2 s, with 2 s of grace: a device is overdue 4 s after its last one.
    let h = Harness::start(&policy_with(r#""postureReport": "2s""#, "")).await;
    let (mut a, mut b) = pair(&h).await;
    assert_eq!(b.posture_report_interval_ms, 2000, "the device is told");
    let joined = Instant::now();
    // a reports every second; b says nothing after its login.
    let mut next_report = joined + ONE_SECOND;
    let removed_after = loop {
        assert!(joined.elapsed() < Duration::from_secs(8), "b never removed");
        let wait = next_report.saturating_duration_since(Instant::now());
        match a.client.recv_within(wait).await.unwrap() {
            Some(ServerMsg::NetMapDelta(d)) => {
                assert_eq!(d.remove, vec![b.node], "{d:?}");
                break joined.elapsed();
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                a.client
                    .send(&ClientMsg::PostureReport(fw()))
                    .await
                    .unwrap();
                next_report += ONE_SECOND;
            }
        }
    };
    eprintln!("silent device removed {removed_after:?} after it joined");
    assert!(
        removed_after >= Duration::from_millis(3800),
        "removed before its report was due: {removed_after:?}"
    );
    assert!(
        removed_after < Duration::from_millis(5000),
        "removed more than a second after its deadline: {removed_after:?}"
    );
    let reason = match b.client.recv().await.unwrap() {
        ServerMsg::Revoked { reason } => reason,
        other => panic!("expected Revoked, got {other:?}"),
    };
    assert!(reason.contains("no posture report for 4 s"), "{reason}");
    // a, which reported in time, stays past its own first deadline.
    while joined.elapsed() < Duration::from_secs(6) {
        a.client
            .send(&ClientMsg::PostureReport(fw()))
            .await
            .unwrap();
        assert!(a.client.recv_within(ONE_SECOND).await.unwrap().is_none());
    }
    let devs = h.cp.devices().await.unwrap();
    let state = |id| devs.iter().find(|d| d.id == id).unwrap();
    assert!(state(a.node).admitted, "the reporting device stays");
    assert!(!state(b.node).admitted && !state(b.node).revoked);
    assert!(state(b.node).posture_failures[0].contains("no posture report"));
    assert!(audited(
        &h,
        "revocation",
        Decision::Deny,
        "no posture report"
    ));
    // Not the durable revoked flag: a fresh login with a fresh report brings it back.
    login_again(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_keeps_the_wireguard_key_is_refused_and_the_credential_stays() {
    let h = Harness::start(&policy("1h", "")).await;
    let (mut a, mut b) = pair(&h).await;
    let same_key = b.credential.wg_public_key;
    send_renew(&mut b, same_key).await;
    match b.client.recv().await.unwrap() {
        ServerMsg::Refused { reasons } => {
            assert!(reasons[0].contains("new WireGuard key"), "{reasons:?}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    // Nothing changed for the peer, and b is still in the mesh on its current credential.
    assert!(a
        .client
        .recv_within(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    let devs = h.cp.devices().await.unwrap();
    let b_row = devs.iter().find(|d| d.id == b.node).unwrap();
    assert!(b_row.admitted);
    assert_eq!(b_row.credential_expires_at, Some(b.credential.expires_at));
    assert!(audited(&h, "renewal", Decision::Deny, "new WireGuard key"));
    // A renewal with a new key goes through on the same connection.
    let new_key = WgPublicKey(rand::random());
    send_renew(&mut b, new_key).await;
    let (_, cred) = expect_credential(&mut b.client, &b.welcome).await;
    assert_eq!(cred.wg_public_key, new_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_from_a_device_no_longer_in_the_mesh_is_answered() {
    let h = Harness::start(&policy("2s", "")).await;
    let mut b = h.join("b-1", &h.preauth(&["tag:b"], false), fw()).await;
    match b.client.recv_within(Duration::from_secs(4)).await.unwrap() {
        Some(ServerMsg::Revoked { reason }) => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("expected the expiry, got {other:?}"),
    }
    // A renewal that was on its way when the credential ended.
    send_renew(&mut b, WgPublicKey(rand::random())).await;
    match b.client.recv().await.unwrap() {
        ServerMsg::Revoked { reason } => {
            assert!(reason.contains("no longer in the mesh"), "{reason}")
        }
        other => panic!("expected Revoked, got {other:?}"),
    }
    // The connection still serves it: the enrolled device logs in again.
    login_again(&mut b).await;
}
