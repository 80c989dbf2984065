//! Shared harness of the control-plane tests: a real coordinator control plane over a sled
//! store in a temporary directory, its QUIC endpoint on loopback, and test devices.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use ztmesh_common::credential::NodeCredential;
use ztmesh_common::ids::NodeId;
use ztmesh_common::netmap::{NetMap, NetMapDelta};
use ztmesh_common::posture::{AttrValue, PostureAttrs};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::{ClientMsg, LoginAuth, ServerMsg, Welcome};
use ztmesh_coordinator::control::testkit::{self, TestClient};
use ztmesh_coordinator::control::{now, ControlConfig, ControlPlane, QuicServer};
use ztmesh_coordinator::store::{secret_hash, PreauthKeyRecord, SledStore, Store};

/// Every log line the process wrote, for tests that assert on logged reasons.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b2 = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || Capture(b2.clone()))
            .try_init();
        buf
    });
}

/// Log lines containing `needle`.
pub fn log_lines(needle: &str) -> Vec<String> {
    let buf = LOGS.get().expect("init_logs").lock().unwrap();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

pub struct Harness {
    pub cp: ControlPlane,
    pub server: Option<QuicServer>,
    pub addr: SocketAddr,
    pub store: Arc<SledStore>,
    pub endpoint: quinn::Endpoint,
    pub cert: CertificateDer<'static>,
    /// The coordinator's signing key, kept across [`Harness::restart`].
    pub key: SigningKey,
    _dir: tempfile::TempDir,
}

/// A device that was admitted.
pub struct Device {
    pub client: TestClient,
    pub welcome: Welcome,
    pub node: NodeId,
    pub credential: NodeCredential,
    /// How often the coordinator asked it to report its posture.
    pub posture_report_interval_ms: u64,
    pub netmap: NetMap,
}

impl Harness {
    pub async fn start(policy: &str) -> Harness {
        Self::start_with(policy, ControlConfig::default()).await
    }

    pub async fn start_with(policy: &str, cfg: ControlConfig) -> Harness {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path().join("db")).unwrap());
        store.put_policy(policy, "test", now()).unwrap();
        let signing_key = SigningKey::from_bytes(&rand::random());
        let cp = ControlPlane::new(store.clone(), signing_key.clone(), cfg).unwrap();
        assert!(
            cp.policy().run_tests().is_empty(),
            "test policy must parse and pass"
        );
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let server = cp
            .start_quic("127.0.0.1:0".parse().unwrap(), vec![cert.clone()], key)
            .unwrap();
        let addr = server.local_addr().unwrap();
        let endpoint = testkit::client_endpoint(cert.clone()).unwrap();
        Harness {
            cp,
            server: Some(server),
            addr,
            store,
            endpoint,
            cert,
            key: signing_key,
            _dir: dir,
        }
    }

    /// Stop the control plane (every connection dropped, nothing said) and start a new one on
    /// the same store and signing key, as a restarted coordinator process would.
    pub async fn restart(&mut self) {
        drop(self.server.take());
        let cp = ControlPlane::new(
            self.store.clone(),
            self.key.clone(),
            ControlConfig::default(),
        )
        .unwrap();
        self.cp = cp;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let server = self
            .cp
            .start_quic("127.0.0.1:0".parse().unwrap(), vec![cert.clone()], key)
            .unwrap();
        self.addr = server.local_addr().unwrap();
        self.server = Some(server);
        self.endpoint = testkit::client_endpoint(cert.clone()).unwrap();
        self.cert = cert;
    }

    /// A pre-auth key for `tags`.
    pub fn preauth(&self, tags: &[&str], reusable: bool) -> String {
        let key = format!("zpa-{}", hex::encode(rand::random::<[u8; 16]>()));
        let hash = secret_hash(&key);
        self.store
            .create_preauth(&PreauthKeyRecord {
                id: hash[..16].to_owned(),
                key_hash: hash,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                reusable,
                expires_at: now().saturating_add_ms(3_600_000),
                used: false,
                used_by: vec![],
                revoked: false,
                created_at: now(),
                created_by: "test".into(),
            })
            .unwrap();
        key
    }

    /// Connect a fresh device (new machine key) and complete the Hello.
    pub async fn connect(&self) -> (TestClient, Welcome) {
        TestClient::connect(
            &self.endpoint,
            self.addr,
            SigningKey::from_bytes(&rand::random()),
        )
        .await
        .unwrap()
    }

    /// Connect and log in with a pre-auth key; panics unless admitted.
    pub async fn join(&self, hostname: &str, key: &str, posture: PostureAttrs) -> Device {
        self.join_as(
            SigningKey::from_bytes(&rand::random()),
            hostname,
            key,
            posture,
        )
        .await
    }

    /// [`Harness::join`] with a given machine key (the same device joining again).
    pub async fn join_as(
        &self,
        machine_key: SigningKey,
        hostname: &str,
        key: &str,
        posture: PostureAttrs,
    ) -> Device {
        let (mut client, welcome) = TestClient::connect(&self.endpoint, self.addr, machine_key)
            .await
            .unwrap();
        let req = testkit::login_request(hostname, LoginAuth::AuthKey(key.into()), posture);
        client.send(&ClientMsg::Login(req)).await.unwrap();
        let (node, credential, posture_report_interval_ms) =
            expect_grant(&mut client, &welcome).await;
        let netmap = match client.recv().await.unwrap() {
            ServerMsg::NetMap(m) => m,
            other => panic!("expected NetMap, got {other:?}"),
        };
        Device {
            client,
            welcome,
            node,
            credential,
            posture_report_interval_ms,
            netmap,
        }
    }
}

/// The next message must be a credential that verifies with the coordinator's key.
pub async fn expect_credential(
    client: &mut TestClient,
    welcome: &Welcome,
) -> (NodeId, NodeCredential) {
    let (node, cred, _) = expect_grant(client, welcome).await;
    (node, cred)
}

/// [`expect_credential`], with the posture report interval of the grant.
pub async fn expect_grant(
    client: &mut TestClient,
    welcome: &Welcome,
) -> (NodeId, NodeCredential, u64) {
    match client.recv().await.unwrap() {
        ServerMsg::Credential(g) => {
            let cred = g
                .credential
                .verify(&welcome.coordinator_key, now())
                .expect("credential verifies");
            assert_eq!(cred.node_id, g.node_id);
            (g.node_id, cred, g.posture_report_interval_ms)
        }
        other => panic!("expected Credential, got {other:?}"),
    }
}

/// Wait (at most `within`) for a delta; returns it and how long it took.
pub async fn next_delta(
    client: &mut TestClient,
    within: Duration,
) -> Option<(NetMapDelta, Duration)> {
    let start = std::time::Instant::now();
    loop {
        let left = within.checked_sub(start.elapsed())?;
        match client.recv_within(left).await.unwrap()? {
            ServerMsg::NetMapDelta(d) => return Some((d, start.elapsed())),
            _ => continue,
        }
    }
}

pub fn posture(pairs: &[(&str, AttrValue)]) -> PostureAttrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The node ids of peer entries, each credential verified with the coordinator key.
pub fn peer_ids(
    entries: &[ztmesh_common::netmap::PeerEntry],
    key: &ztmesh_common::ids::CoordinatorPublicKey,
) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = entries
        .iter()
        .map(|e| {
            e.credential
                .verify(key, now())
                .expect("peer credential verifies")
                .node_id
        })
        .collect();
    ids.sort();
    ids
}

pub fn unix(ms: u64) -> UnixMillis {
    UnixMillis(ms)
}
