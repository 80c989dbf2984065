//! Control plane over real QUIC on loopback: pre-auth and interactive logins, posture
//! refusals, and the single-use pre-auth key raced by 20 devices.

mod control_util;

use control_util::*;
use std::time::Duration;
use ztmesh_common::addr::{host_index, OVERLAY_V4};
use ztmesh_common::posture::{attr, AttrValue};
use ztmesh_common::wire::{ClientMsg, LoginAuth, ServerMsg};
use ztmesh_coordinator::control::testkit::login_request;
use ztmesh_coordinator::control::{now, LoginStatus};
use ztmesh_coordinator::identity::Identity;
use ztmesh_coordinator::store::{Decision, Store};

const POLICY: &str = r#"{
  "groups": { "group:eng": ["alice@example.com"] },
  "tagOwners": { "tag:web": [], "tag:db": [] },
  "postures": {
    "posture:baseline": ["node:firewall == true", "node:diskEncrypted == true"],
  },
  "defaultSrcPosture": ["posture:baseline"],
  "acls": [
    { "action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"] },
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"] },
  ],
}"#;

fn good() -> ztmesh_common::posture::PostureAttrs {
    posture(&[
        (attr::FIREWALL, AttrValue::Bool(true)),
        (attr::DISK_ENCRYPTED, AttrValue::Bool(true)),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_login_issues_a_verifiable_credential_and_the_view() {
    let h = Harness::start(POLICY).await;
    let db_key = h.preauth(&["tag:db"], false);
    let web_key = h.preauth(&["tag:web"], false);

    let mut db = h.join("db-1", &db_key, good()).await;
    // The credential verifies with the key from Welcome, which is the coordinator's.
    assert_eq!(db.welcome.coordinator_key, h.cp.coordinator_key());
    let c = &db.credential;
    assert_eq!(c.tags, vec!["tag:db".to_string()]);
    assert_eq!(c.user, None);
    assert_eq!(c.hostname, "db-1");
    assert_eq!(c.addresses.len(), 2);
    assert!(OVERLAY_V4.contains(&match c.addresses[0] {
        std::net::IpAddr::V4(a) => a,
        _ => panic!("IPv4 first"),
    }));
    assert_eq!(host_index(c.addresses[0]), host_index(c.addresses[1]));
    assert!(c.not_before < c.issued_at && c.issued_at <= now());
    let lifetime = c.expires_at.0 - c.issued_at.0;
    assert_eq!(lifetime, 3_600_000, "default credential lifetime is 1 h");
    // Nobody else yet: an empty view.
    assert!(db.netmap.peers.is_empty());

    let web = h.join("web-1", &web_key, good()).await;
    assert!(
        web.credential.serial > db.credential.serial,
        "serials increase"
    );
    assert_eq!(
        peer_ids(&web.netmap.peers, &web.welcome.coordinator_key),
        vec![db.node]
    );
    // db learns about web (its only permitted peer) and gets an inbound filter for 5432.
    let (delta, took) = next_delta(&mut db.client, Duration::from_secs(1))
        .await
        .expect("db gets a delta when web joins");
    assert!(took < Duration::from_secs(1));
    assert_eq!(delta.base_version, db.netmap.version);
    assert_eq!(
        peer_ids(&delta.upsert, &db.welcome.coordinator_key),
        vec![web.node]
    );
    let filter = delta.filter.expect("db's filter changed");
    assert!(filter.iter().any(|r| r.allows(
        web.credential.addresses[0],
        db.credential.addresses[0],
        6,
        Some(5432)
    )));
    assert!(!filter.iter().any(|r| r.allows(
        web.credential.addresses[0],
        db.credential.addresses[0],
        6,
        Some(22)
    )));

    // Every admission decision is audited.
    let audits = h.store.audit_records().unwrap();
    assert_eq!(
        audits
            .iter()
            .filter(|a| a.action == "admission" && a.decision == Decision::Allow)
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posture_refusal_names_every_failed_condition() {
    let h = Harness::start(POLICY).await;
    let key = h.preauth(&["tag:web"], true);
    let (mut c, _) = h.connect().await;
    let bad = posture(&[
        (attr::FIREWALL, AttrValue::Bool(false)),
        (attr::DISK_ENCRYPTED, AttrValue::Bool(false)),
        // A device cannot vouch for itself with admin-only attributes.
        ("custom:trusted", AttrValue::Bool(true)),
    ]);
    c.send(&ClientMsg::Login(login_request(
        "web-x",
        LoginAuth::AuthKey(key.clone()),
        bad,
    )))
    .await
    .unwrap();
    let reasons = match c.recv().await.unwrap() {
        ServerMsg::Refused { reasons } => reasons,
        other => panic!("expected Refused, got {other:?}"),
    };
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("node:firewall")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("node:diskEncrypted")),
        "{reasons:?}"
    );
    let denied = h
        .store
        .audit_records()
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "admission" && a.decision == Decision::Deny)
        .collect::<Vec<_>>();
    assert_eq!(denied.len(), 1);
    assert!(denied[0].reason.contains("node:firewall"));
    assert!(denied[0].reason.contains("node:diskEncrypted"));
    // The device may fix its posture and log in again on the same connection.
    c.send(&ClientMsg::Login(login_request(
        "web-x",
        LoginAuth::AuthKey(key),
        good(),
    )))
    .await
    .unwrap();
    let welcome_key = h.cp.coordinator_key();
    match c.recv().await.unwrap() {
        ServerMsg::Credential(g) => {
            g.credential.verify(&welcome_key, now()).unwrap();
        }
        other => panic!("expected Credential, got {other:?}"),
    }
    let devices = h.cp.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].posture_ok, Some(true));
    assert!(devices[0].online && devices[0].admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_hostname_is_refused_saying_why_and_audited() {
    let h = Harness::start(POLICY).await;
    let key = h.preauth(&["tag:web"], true);
    let (mut c, _) = h.connect().await;
    c.send(&ClientMsg::Login(login_request(
        "web x; rm -rf /",
        LoginAuth::AuthKey(key),
        good(),
    )))
    .await
    .unwrap();
    let reasons = match c.recv().await.unwrap() {
        ServerMsg::Refused { reasons } => reasons,
        other => panic!("expected Refused, got {other:?}"),
    };
    assert!(reasons[0].contains("is not valid"), "{reasons:?}");
    let records = h.store.audit_records().unwrap();
    let rec = records
        .iter()
        .find(|a| a.action == "admission" && a.decision == Decision::Deny)
        .unwrap_or_else(|| panic!("refusal not audited: {records:?}"));
    assert!(rec.actor.starts_with("machine:"), "{rec:?}");
    assert!(rec.reason.contains("is not valid"), "{rec:?}");
    assert!(h.store.list_devices().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_key_raced_by_20_devices_admits_exactly_one() {
    let h = Harness::start(POLICY).await;
    let key = h.preauth(&["tag:web"], false);
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(h.connect().await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, _))| {
            let key = key.clone();
            tokio::spawn(async move {
                c.send(&ClientMsg::Login(login_request(
                    &format!("racer-{i}"),
                    LoginAuth::AuthKey(key),
                    good(),
                )))
                .await
                .unwrap();
                let reply = c.recv().await.unwrap();
                (c, reply)
            })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (c, reply) = t.await.unwrap();
        match reply {
            ServerMsg::Credential(_) => admitted += 1,
            ServerMsg::Refused { reasons } => {
                assert!(reasons[0].contains("pre-auth key"), "{reasons:?}");
                refused += 1
            }
            other => panic!("unexpected {other:?}"),
        }
        keep.push(c);
    }
    assert_eq!((admitted, refused), (1, 19));
    // Refused devices leave no enrolled device behind.
    assert_eq!(h.store.list_devices().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_login_waits_for_the_browser_and_the_session_is_reused() {
    let h = Harness::start(POLICY).await;
    let (mut c, welcome) = h.connect().await;
    let machine_key = c.machine_key.clone();
    c.send(&ClientMsg::Login(login_request(
        "laptop",
        LoginAuth::Interactive,
        good(),
    )))
    .await
    .unwrap();
    let url = match c.recv().await.unwrap() {
        ServerMsg::LoginUrl { url } => url,
        other => panic!("expected LoginUrl, got {other:?}"),
    };
    let id = url
        .strip_prefix("http://127.0.0.1:7080/login/")
        .expect("url under http_base/login/")
        .to_owned();
    assert!(id.len() >= 40, "login ids are unguessable");
    assert_eq!(h.cp.login_status(&id), Some(LoginStatus::Pending));
    assert_eq!(h.cp.login_status("made-up"), None);
    // Nothing arrives until the user finishes.
    assert!(c
        .recv_within(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    h.cp.complete_login(
        &id,
        Identity::local("alice@example.com", vec!["group:eng".into()]),
    )
    .await
    .unwrap();
    let (node, cred) = expect_credential(&mut c, &welcome).await;
    assert_eq!(cred.user.as_deref(), Some("alice@example.com"));
    assert!(matches!(c.recv().await.unwrap(), ServerMsg::NetMap(_)));
    assert!(matches!(
        h.cp.login_status(&id),
        Some(LoginStatus::Completed { .. })
    ));
    // A second completion of the same id is refused.
    assert!(h
        .cp
        .complete_login(&id, Identity::local("mallory", vec![]))
        .await
        .is_err());

    // Reconnect with the same machine key: the login session is still valid.
    drop(c);
    let (mut c2, welcome2) =
        ztmesh_coordinator::control::testkit::TestClient::connect(&h.endpoint, h.addr, machine_key)
            .await
            .unwrap();
    c2.send(&ClientMsg::Login(login_request(
        "laptop",
        LoginAuth::Interactive,
        good(),
    )))
    .await
    .unwrap();
    let (node2, cred2) = expect_credential(&mut c2, &welcome2).await;
    assert_eq!(node2, node, "the node id is stable");
    assert_eq!(cred2.addresses, cred.addresses, "so are its addresses");
    let dev = h.store.get_device(node).unwrap().unwrap();
    assert_eq!(dev.user.as_deref(), Some("alice@example.com"));
    assert!(dev.login_expires_at.unwrap().0 > now().0 + 11 * 3_600_000);
}
