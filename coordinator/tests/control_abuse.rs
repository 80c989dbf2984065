//! Bad input over real QUIC: garbage, oversized and truncated frames, messages out of order,
//! forged machine-key proofs, and 1,000 concurrent bogus connections. Each ends its connection
//! with a logged reason, and a legitimate device keeps being served throughout.

mod control_util;

use control_util::*;
use std::time::{Duration, Instant};
use ztmesh_common::ids::MachinePublicKey;
use ztmesh_common::posture::{attr, AttrValue};
use ztmesh_common::wire::{self, ClientMsg, LoginAuth, ServerMsg, MAX_CLIENT_FRAME};
use ztmesh_coordinator::control::testkit::{login_request, TestClient};
use ztmesh_coordinator::control::ControlConfig;

const POLICY: &str = r#"{
  "tagOwners": { "tag:a": [], "tag:b": [] },
  "acls": [ { "action": "accept", "src": ["tag:a"], "dst": ["tag:b:443"] } ],
}"#;

const POLICY2: &str = r#"{
  "tagOwners": { "tag:a": [], "tag:b": [] },
  "acls": [ { "action": "accept", "src": ["tag:a"], "dst": ["tag:b:443,8443"] } ],
}"#;

fn fw() -> ztmesh_common::posture::PostureAttrs {
    posture(&[(attr::FIREWALL, AttrValue::Bool(true))])
}

/// A legitimate pair: `b` (returned first, with its join delta consumed) may be reached by `a`.
async fn legit_pair(h: &Harness) -> (Device, Device) {
    let mut b = h.join("b-1", &h.preauth(&["tag:b"], true), fw()).await;
    let a = h.join("a-1", &h.preauth(&["tag:a"], true), fw()).await;
    next_delta(&mut b.client, Duration::from_secs(1))
        .await
        .expect("b learns a");
    (b, a)
}

/// The coordinator must close the connection (with an Error first where it can).
async fn assert_closed(c: &mut TestClient, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "{what}: connection not closed");
        match c.recv_within(Duration::from_secs(5)).await {
            Ok(Some(ServerMsg::Error { .. })) | Ok(Some(ServerMsg::Welcome(_))) => continue,
            Ok(Some(other)) => panic!("{what}: unexpected {other:?}"),
            Ok(None) => panic!("{what}: connection not closed"),
            Err(_) => break,
        }
    }
    assert!(
        c.closed_within(Duration::from_secs(2)).await.is_some(),
        "{what}: connection still open"
    );
}

/// "connection ended" log lines of connections from `client` (one test's client endpoint).
fn ended_lines_from(client: std::net::SocketAddr) -> usize {
    let remote = format!("remote={client}");
    log_lines("control connection ended")
        .iter()
        .filter(|l| l.contains(&remote))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_ends_only_that_connection_with_a_logged_reason() {
    let h = Harness::start(POLICY).await;
    let (mut legit, _peer) = legit_pair(&h).await;
    let before = log_lines("control connection ended").len();

    // Garbage before Hello.
    let mut c = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    c.send_raw(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .await
        .unwrap();
    assert_closed(&mut c, "garbage").await;

    // A length prefix above the maximum: refused before the body arrives.
    let mut c = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    c.send_raw(&((MAX_CLIENT_FRAME as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    assert_closed(&mut c, "oversized").await;

    // A truncated frame, then the stream ends.
    let mut c = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    let hello = c.hello().unwrap();
    let frame = wire::encode_frame(&ClientMsg::Hello(hello)).unwrap();
    c.send_raw(&frame[..frame.len() - 3]).await.unwrap();
    c.send.finish().unwrap();
    assert_closed(&mut c, "truncated").await;

    // Login before Hello.
    let mut c = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    c.send(&ClientMsg::Login(login_request(
        "x",
        LoginAuth::Interactive,
        fw(),
    )))
    .await
    .unwrap();
    assert_closed(&mut c, "login before hello").await;

    // A proof made for another key, and one replayed from another connection.
    let mut c = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    let mut hello = c.hello().unwrap();
    hello.machine_key = MachinePublicKey(rand::random());
    c.send(&ClientMsg::Hello(hello)).await.unwrap();
    assert_closed(&mut c, "foreign key").await;
    let other = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    let replayed = other.hello().unwrap();
    let mut c = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    c.send(&ClientMsg::Hello(replayed)).await.unwrap();
    assert_closed(&mut c, "replayed proof").await;
    drop(other);

    // A wrong protocol version.
    let mut c = TestClient::open(&h.endpoint, h.addr).await.unwrap();
    let mut hello = c.hello().unwrap();
    hello.protocol_version = 999;
    c.send(&ClientMsg::Hello(hello)).await.unwrap();
    assert_closed(&mut c, "protocol version").await;

    // Renew before Login, and a second Hello.
    let (mut c, _) = h.connect().await;
    c.send(&ClientMsg::Renew(ztmesh_common::wire::RenewRequest {
        wg_public_key: ztmesh_common::ids::WgPublicKey([1; 32]),
        posture: fw(),
    }))
    .await
    .unwrap();
    assert_closed(&mut c, "renew before login").await;
    let (mut c, _) = h.connect().await;
    let hello = c.hello().unwrap();
    c.send(&ClientMsg::Hello(hello)).await.unwrap();
    assert_closed(&mut c, "second hello").await;

    // Each of the 9 ended with a logged reason.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = log_lines("control connection ended");
    let new: Vec<_> = lines[before..].to_vec();
    assert!(new.len() >= 9, "{new:#?}");
    for needle in [
        "does not decode",
        "exceeds the maximum",
        "stream ended inside a frame",
        "expected Hello, got Login",
        "machine-key proof does not verify",
        "protocol version 999",
        "Renew before a successful Login",
        "Hello before a successful Login",
    ] {
        assert!(
            new.iter().any(|l| l.contains(needle)),
            "no log line with {needle:?} in {new:#?}"
        );
    }
    // The legitimate device was served throughout.
    h.cp.set_policy(POLICY2, "test").await.unwrap();
    let (d, _) = next_delta(&mut legit.client, Duration::from_secs(1))
        .await
        .expect("legit device still updated");
    assert!(d.filter.is_some(), "b's filter now has 8443");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_bogus_connections_each_end_logged_while_a_device_is_served() {
    let cfg = ControlConfig {
        max_unauthenticated: 256,
        handshake_timeout: Duration::from_secs(3),
        ..ControlConfig::default()
    };
    let h = Harness::start_with(POLICY, cfg).await;
    let (mut legit, _peer) = legit_pair(&h).await;
    let me = h.endpoint.local_addr().unwrap();
    let before = ended_lines_from(me);

    const N: usize = 1000;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let ep = h.endpoint.clone();
        let addr = h.addr;
        tasks.push(tokio::spawn(async move {
            // Bounded in time whatever happens.
            tokio::time::timeout(Duration::from_secs(30), async move {
                let mut c = match TestClient::open(&ep, addr).await {
                    Ok(c) => c,
                    // Refused at the limit: logged by the coordinator.
                    Err(e) => return format!("open failed: {e}"),
                };
                let _ = match i % 4 {
                    0 => c.send_raw(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).await,
                    1 => c.send_raw(&u32::MAX.to_be_bytes()).await,
                    2 => {
                        c.send(&ClientMsg::Login(login_request(
                            "x",
                            LoginAuth::Interactive,
                            fw(),
                        )))
                        .await
                    }
                    _ => {
                        let mut hello = c.hello().unwrap();
                        hello.proof = vec![0; 64];
                        c.send(&ClientMsg::Hello(hello)).await
                    }
                };
                match c.closed_within(Duration::from_secs(10)).await {
                    Some(e) => format!("closed: {e}"),
                    None => "not closed within 10 s".to_string(),
                }
            })
            .await
        }));
    }
    // Meanwhile the legitimate device is served: a policy change reaches it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    h.cp.set_policy(POLICY2, "test").await.unwrap();
    let (_, took) = next_delta(&mut legit.client, Duration::from_secs(2))
        .await
        .expect("legit device updated during the flood");
    eprintln!("during the flood, the legitimate device was updated after {took:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let o = match t.await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => "timed out".to_string(),
            Err(e) => format!("task: {e}"),
        };
        *outcomes.entry(o).or_default() += 1;
    }
    eprintln!("bogus connection outcomes: {outcomes:?}");
    eprintln!("{N} bogus connections handled in {:?}", started.elapsed());
    // Every bogus connection ended with a log line.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ended = ended_lines_from(me) - before;
        if ended >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {ended} of {N} connections logged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a new device can still join afterwards.
    let a = h.join("a-1", &h.preauth(&["tag:a"], false), fw()).await;
    assert_eq!(
        peer_ids(&a.netmap.peers, &a.welcome.coordinator_key),
        vec![legit.node]
    );
}
