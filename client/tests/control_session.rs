//! The control session against the in-test coordinator: login with a pre-auth key, credential
//! and view applied to the data plane, renewal with a new key before expiry, posture reports,
//! flow logs, reconnect (with the device session, not the key) after the coordinator drops
//! the connection, and revocation clearing the data plane.

mod control_support;

use control_support::{credential, start_server, PlaneCall, RecordingPlane, Seen};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use ztmesh_client::control::session::{self, SessionEnd};
use ztmesh_client::control::{Deps, Event, JoinUrl, Phase, SessionConfig, Shared};
use ztmesh_client::keys::{wg_public, KeyStore};
use ztmesh_client::posture::{PostureConfig, Prober};
use ztmesh_common::netmap::{NetMap, PeerEntry};
use ztmesh_common::posture::{attr, AttrValue};
use ztmesh_common::wire::{
    ClientMsg, CredentialGrant, FlowEvent, FlowVerdict, LoginAuth, ServerMsg,
};

struct Client {
    plane: Arc<RecordingPlane>,
    shared: Arc<Shared>,
    keys: KeyStore,
    machine: ztmesh_common::ids::MachinePublicKey,
    cmds: mpsc::Sender<session::SessionCmd>,
    task: tokio::task::JoinHandle<SessionEnd>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn start_client(join: &str, auth_key: Option<&str>) -> Client {
    start_client_probing(join, auth_key, Duration::from_millis(200))
}

fn start_client_probing(join: &str, auth_key: Option<&str>, probe_interval: Duration) -> Client {
    let state = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/os-release"),
        "ID=debian\nVERSION_ID=12\n",
    )
    .unwrap();
    let keys = KeyStore::open(state.path()).unwrap();
    let machine = Arc::new(keys.machine_key().unwrap());
    let plane = Arc::new(RecordingPlane::default());
    let shared = Arc::new(Shared::default());
    let mut cfg = SessionConfig::new(
        JoinUrl::parse(join).unwrap(),
        "laptop".into(),
        auth_key.map(str::to_owned),
    );
    cfg.probe_interval = probe_interval;
    cfg.flow_interval = Duration::from_millis(200);
    cfg.backoff_base = Duration::from_millis(100);
    cfg.backoff_cap = Duration::from_millis(400);
    let deps = Deps {
        machine: machine.clone(),
        keys: keys.clone(),
        prober: Prober::new(root.path(), &PostureConfig::default()),
        plane: plane.clone(),
        shared: shared.clone(),
    };
    let (cmds, rx) = mpsc::channel(4);
    let task = tokio::spawn(session::run(cfg, deps, rx));
    Client {
        plane,
        shared,
        keys,
        machine: machine.public(),
        cmds,
        task,
        _dirs: (state, root),
    }
}

async fn hello(server: &mut control_support::TestServer) -> mpsc::Sender<ServerMsg> {
    loop {
        if let Seen::Hello {
            proof_ok, reply, ..
        } = server.next(10).await
        {
            assert!(proof_ok);
            return reply;
        }
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn login_renew_reconnect_and_revoke() {
    let mut server = start_server();
    let client = start_client(&server.join_url(), Some("tskey-preauth-1"));
    let mut events = client.shared.subscribe();

    // First connection: login with the pre-auth key and a posture report from the fixture.
    let reply = hello(&mut server).await;
    let (_, login) = server
        .next_msg(5, |m| matches!(m, ClientMsg::Login(_)))
        .await;
    let ClientMsg::Login(login) = login else {
        unreachable!()
    };
    assert_eq!(login.auth, LoginAuth::AuthKey("tskey-preauth-1".into()));
    assert_eq!(login.hostname, "laptop");
    assert_eq!(
        login.posture[attr::OS_VERSION],
        AttrValue::String("12".into())
    );
    assert_eq!(
        login.posture[attr::POSTURE_SOURCE],
        AttrValue::String("fixture".into())
    );
    let first_key = login.wg_public_key;
    assert_eq!(first_key, wg_public(&client.keys.node_key().unwrap()));

    // Credential (renew in 1 s) and a view with one peer.
    let cred = credential(
        &server.signing,
        2,
        "laptop",
        client.machine,
        first_key,
        1,
        60_000,
    );
    let peer = credential(
        &server.signing,
        3,
        "server",
        ztmesh_common::ids::MachinePublicKey([9; 32]),
        ztmesh_common::ids::WgPublicKey([8; 32]),
        1,
        60_000,
    );
    reply
        .send(ServerMsg::Credential(CredentialGrant {
            node_id: ztmesh_common::ids::NodeId(2),
            credential: cred,
            renew_at: control_support::now().saturating_add_ms(1_000),
            posture_report_interval_ms: 60_000,
        }))
        .await
        .unwrap();
    reply
        .send(ServerMsg::NetMap(NetMap {
            version: 1,
            peers: vec![PeerEntry {
                credential: peer,
                endpoints: vec!["198.18.0.3:41641".parse().unwrap()],
            }],
            filter: vec![],
        }))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Meshed) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(ev.is_ok(), "Meshed announced");
    {
        let st = client.shared.lock();
        assert_eq!(st.phase, Phase::Running);
        assert_eq!(st.own.as_ref().unwrap().hostname, "laptop");
        assert_eq!(st.peers.len(), 1);
    }
    assert_eq!(
        client.plane.calls()[..2],
        [
            PlaneCall::Identity {
                wg: first_key,
                cred_wg: first_key
            },
            PlaneCall::NetMap {
                version: 1,
                peers: 1
            }
        ]
    );

    // Flow events reach the coordinator as a FlowLog.
    client.plane.flows.lock().unwrap().push(FlowEvent {
        at: control_support::now(),
        src: "100.64.0.3".parse().unwrap(),
        dst: "100.64.0.2".parse().unwrap(),
        proto: 6,
        dst_port: Some(22),
        verdict: FlowVerdict::Denied,
        count: 3,
    });
    let (_, flow) = server
        .next_msg(5, |m| matches!(m, ClientMsg::FlowLog(_)))
        .await;
    assert!(matches!(flow, ClientMsg::FlowLog(v) if v.len() == 1 && v[0].count == 3));

    // At renew_at: Renew with a new key; the data plane keeps the old key until the
    // coordinator issues a credential for the new one.
    let (_, renew) = server
        .next_msg(5, |m| matches!(m, ClientMsg::Renew(_)))
        .await;
    let ClientMsg::Renew(renew) = renew else {
        unreachable!()
    };
    assert_ne!(renew.wg_public_key, first_key);
    assert!(renew.posture.contains_key(attr::CLIENT_VERSION));
    assert_eq!(wg_public(&client.keys.node_key().unwrap()), first_key);
    let new_key = renew.wg_public_key;
    let cred2 = credential(
        &server.signing,
        2,
        "laptop",
        client.machine,
        new_key,
        2,
        60_000,
    );
    reply
        .send(ServerMsg::Credential(CredentialGrant {
            node_id: ztmesh_common::ids::NodeId(2),
            credential: cred2,
            renew_at: control_support::now().saturating_add_ms(50_000),
            posture_report_interval_ms: 60_000,
        }))
        .await
        .unwrap();
    wait_for("the rotated identity", || {
        client.plane.calls().contains(&PlaneCall::Identity {
            wg: new_key,
            cred_wg: new_key,
        })
    })
    .await;
    assert_eq!(wg_public(&client.keys.node_key().unwrap()), new_key);

    // A credential signed by someone else is ignored.
    let forged = credential(
        &ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        2,
        "laptop",
        client.machine,
        new_key,
        3,
        60_000,
    );
    reply
        .send(ServerMsg::Credential(CredentialGrant {
            node_id: ztmesh_common::ids::NodeId(2),
            credential: forged,
            renew_at: control_support::now().saturating_add_ms(50_000),
            posture_report_interval_ms: 60_000,
        }))
        .await
        .unwrap();

    // The coordinator goes away: the client reconnects by itself, with its device session.
    drop(reply);
    let reply = hello(&mut server).await;
    let (_, login2) = server
        .next_msg(5, |m| matches!(m, ClientMsg::Login(_)))
        .await;
    let ClientMsg::Login(login2) = login2 else {
        unreachable!()
    };
    assert_eq!(login2.auth, LoginAuth::Interactive);
    assert_eq!(login2.wg_public_key, new_key);
    assert_eq!(
        client
            .plane
            .calls()
            .iter()
            .filter(|c| matches!(c, PlaneCall::Identity { .. }))
            .count(),
        2,
        "the forged credential never reached the data plane"
    );
    assert!(
        !client.plane.calls().contains(&PlaneCall::Clear),
        "a lost coordinator does not stop the mesh"
    );

    // Revocation: the data plane is cleared and the session ends.
    reply
        .send(ServerMsg::Revoked {
            reason: "admin revoked the device".into(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), client.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, SessionEnd::Revoked("admin revoked the device".into()));
    assert_eq!(client.plane.calls().last(), Some(&PlaneCall::Clear));
    assert_eq!(client.shared.lock().phase, Phase::Revoked);
    drop(client.cmds);
}

#[tokio::test]
async fn interactive_login_url_refusal_and_logout() {
    let mut server = start_server();
    let client = start_client(&server.join_url(), None);
    let mut events = client.shared.subscribe();
    let reply = hello(&mut server).await;
    let (_, login) = server
        .next_msg(5, |m| matches!(m, ClientMsg::Login(_)))
        .await;
    assert!(matches!(login, ClientMsg::Login(l) if l.auth == LoginAuth::Interactive));
    reply
        .send(ServerMsg::LoginUrl {
            url: "http://coordinator.test/login/abc".into(),
        })
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        Event::LoginUrl("http://coordinator.test/login/abc".into())
    );
    assert_eq!(client.shared.lock().phase, Phase::NeedsLogin);
    let reasons = vec![
        "posture:compliant: node:diskEncrypted == true (device reports false)".to_string(),
        "posture:compliant: node:secureBoot == true (device reports false)".to_string(),
    ];
    reply
        .send(ServerMsg::Refused {
            reasons: reasons.clone(),
        })
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Event::Refused(reasons.clone()));
    assert_eq!(client.shared.lock().refused, reasons);
    // `down` while waiting to retry after the refusal ends the session at once.
    client.cmds.send(session::SessionCmd::Logout).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), client.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, SessionEnd::LoggedOut);
}

/// Take the client's login and grant it a one-minute credential, to renew in `renew_in_ms`
/// and to report posture every `report_ms`; returns the channel to the client.
async fn grant_after_login(
    server: &mut control_support::TestServer,
    client: &Client,
    renew_in_ms: u64,
    report_ms: u64,
) -> mpsc::Sender<ServerMsg> {
    let reply = hello(server).await;
    let (_, login) = server
        .next_msg(5, |m| matches!(m, ClientMsg::Login(_)))
        .await;
    let ClientMsg::Login(login) = login else {
        unreachable!()
    };
    let cred = credential(
        &server.signing,
        2,
        "laptop",
        client.machine,
        login.wg_public_key,
        1,
        60_000,
    );
    reply
        .send(ServerMsg::Credential(CredentialGrant {
            node_id: ztmesh_common::ids::NodeId(2),
            credential: cred,
            renew_at: control_support::now().saturating_add_ms(renew_in_ms),
            posture_report_interval_ms: report_ms,
        }))
        .await
        .unwrap();
    reply
}

#[tokio::test]
async fn posture_is_reported_when_due_not_at_the_next_probe() {
    let mut server = start_server();
    // Probes run once a minute; the coordinator wants a report every second.
    let client = start_client_probing(
        &server.join_url(),
        Some("tskey-preauth-1"),
        Duration::from_secs(60),
    );
    let _reply = grant_after_login(&mut server, &client, 50_000, 1_000).await;
    // The coordinator takes a device out once a report is 2 s late: two reports must come
    // long before the first probe tick.
    for _ in 0..2 {
        let (_, report) = server
            .next_msg(3, |m| matches!(m, ClientMsg::PostureReport(_)))
            .await;
        let ClientMsg::PostureReport(attrs) = report else {
            unreachable!()
        };
        assert!(attrs.contains_key(attr::CLIENT_VERSION));
    }
}

#[tokio::test]
async fn a_refused_renewal_keeps_the_credential_and_is_not_retried_at_once() {
    let mut server = start_server();
    let client = start_client(&server.join_url(), Some("tskey-preauth-1"));
    let reply = grant_after_login(&mut server, &client, 300, 60_000).await;
    reply
        .send(ServerMsg::NetMap(NetMap {
            version: 1,
            peers: vec![],
            filter: vec![],
        }))
        .await
        .unwrap();
    server
        .next_msg(5, |m| matches!(m, ClientMsg::Renew(_)))
        .await;
    reply
        .send(ServerMsg::Refused {
            reasons: vec!["renewal refused: a renewal must bring a new WireGuard key".into()],
        })
        .await
        .unwrap();
    // The client shows the refusal, keeps its data plane, and neither renews nor reconnects
    // in a loop (it backs off for at least 30 s).
    wait_for("the refusal shown", || {
        client
            .shared
            .lock()
            .refused
            .iter()
            .any(|r| r.contains("new WireGuard key"))
    })
    .await;
    let quiet = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match server.seen.recv().await {
                Some(Seen::Hello { .. }) => return "a new connection",
                Some(Seen::Msg {
                    msg: ClientMsg::Renew(_),
                    ..
                }) => return "another Renew",
                Some(_) => continue,
                None => return "server gone",
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "after the refusal the client sent {quiet:?}"
    );
    assert!(!client.plane.calls().contains(&PlaneCall::Clear));
}
