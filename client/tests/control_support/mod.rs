//! A tiny in-test coordinator: a real QUIC endpoint on loopback with a throwaway rcgen
//! certificate, which verifies the machine-key proof in `Hello` the way the coordinator must,
//! and hands every client message to the test, which scripts the answers.

#![allow(dead_code)]

use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use ztmesh_client::control::{PeerStats, Plane, PlaneSnapshot};
use ztmesh_common::cert_pin::CertFingerprint;
use ztmesh_common::credential::{coordinator_public_key, NodeCredential, SignedCredential};
use ztmesh_common::ids::{CoordinatorPublicKey, MachinePublicKey, NodeId, WgPublicKey};
use ztmesh_common::netmap::{NetMap, NetMapDelta};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::{self, ClientMsg, FlowEvent, FrameDecoder, ServerMsg, Welcome};

/// What the server saw.
#[derive(Debug)]
pub enum Seen {
    /// A client sent `Hello`; `proof_ok` says whether its signature verified over this
    /// session's exported keying material.
    Hello {
        conn: usize,
        machine_key: MachinePublicKey,
        proof: Vec<u8>,
        ekm: [u8; wire::MACHINE_PROOF_LEN],
        proof_ok: bool,
        reply: mpsc::Sender<ServerMsg>,
    },
    Msg {
        conn: usize,
        msg: ClientMsg,
    },
    Closed {
        conn: usize,
    },
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub fingerprint: CertFingerprint,
    pub signing: SigningKey,
    pub seen: mpsc::Receiver<Seen>,
    _endpoint: quinn::Endpoint,
}

impl TestServer {
    pub fn join_url(&self) -> String {
        format!(
            "ztmesh://{}:{}?fp={}",
            self.addr.ip(),
            self.addr.port(),
            self.fingerprint
        )
    }

    pub fn coordinator_key(&self) -> CoordinatorPublicKey {
        coordinator_public_key(&self.signing)
    }

    /// The next thing seen, failing the test after `secs`.
    pub async fn next(&mut self, secs: u64) -> Seen {
        tokio::time::timeout(Duration::from_secs(secs), self.seen.recv())
            .await
            .expect("server saw nothing in time")
            .expect("server stopped")
    }

    /// The next client message (skipping flow logs, posture and endpoint reports unless asked).
    pub async fn next_msg(
        &mut self,
        secs: u64,
        keep: impl Fn(&ClientMsg) -> bool,
    ) -> (usize, ClientMsg) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Ok(Some(Seen::Msg { conn, msg })) if keep(&msg) => return (conn, msg),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("server stopped"),
                Err(_) => panic!("no matching client message within {secs}s"),
            }
        }
    }
}

/// Serves a fixed certificate with a fixed signing key, whether or not they belong together.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Starts the server on 127.0.0.1 with a fresh self-signed certificate.
pub fn start_server() -> TestServer {
    start_server_with(false)
}

/// With `impostor`, the server presents the certificate but signs the handshake with another
/// key: someone who copied the public certificate, not its private key.
pub fn start_server_with(impostor: bool) -> TestServer {
    let ck = rcgen::generate_simple_self_signed(vec!["coordinator.test".to_string()]).unwrap();
    let cert_der = ck.cert.der().clone();
    let fingerprint = CertFingerprint::of(cert_der.as_ref());
    let key_pair = if impostor {
        rcgen::KeyPair::generate().unwrap()
    } else {
        ck.key_pair
    };
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signer = provider.key_provider.load_private_key(key.into()).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert_der], signer);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let qsc = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let sc = quinn::ServerConfig::with_crypto(Arc::new(qsc));
    let endpoint = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let signing = SigningKey::from_bytes(&[42; 32]);
    let (tx, seen) = mpsc::channel(256);
    let ep = endpoint.clone();
    let ck = coordinator_public_key(&signing);
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(inc) = ep.accept().await {
            n += 1;
            tokio::spawn(serve_conn(n, inc, tx.clone(), ck));
        }
    });
    TestServer {
        addr,
        fingerprint,
        signing,
        seen,
        _endpoint: endpoint,
    }
}

async fn serve_conn(
    idx: usize,
    inc: quinn::Incoming,
    tx: mpsc::Sender<Seen>,
    ck: CoordinatorPublicKey,
) {
    let Ok(conn) = inc.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let mut ekm = [0u8; wire::MACHINE_PROOF_LEN];
    conn.export_keying_material(&mut ekm, wire::MACHINE_PROOF_LABEL, b"")
        .unwrap();
    let mut dec = FrameDecoder::new(wire::MAX_CLIENT_FRAME);
    let (reply_tx, mut reply_rx) = mpsc::channel::<ServerMsg>(64);
    // Handed to the test, so that dropping it there closes this connection.
    let mut reply_tx = Some(reply_tx);
    let mut hello_seen = false;
    loop {
        tokio::select! {
            chunk = recv.read_chunk(65536, true) => {
                let Ok(Some(chunk)) = chunk else { break };
                dec.push(&chunk.bytes);
                while let Ok(Some(msg)) = dec.next_msg::<ClientMsg>() {
                    if let (false, ClientMsg::Hello(h)) = (hello_seen, &msg) {
                        hello_seen = true;
                        let proof_ok = verify_proof(&h.machine_key, &h.proof, &ekm);
                        let _ = tx.send(Seen::Hello {
                            conn: idx,
                            machine_key: h.machine_key,
                            proof: h.proof.clone(),
                            ekm,
                            proof_ok,
                            reply: reply_tx.take().expect("one Hello per connection"),
                        }).await;
                        let answer = if proof_ok {
                            ServerMsg::Welcome(Welcome {
                                protocol_version: wire::PROTOCOL_VERSION,
                                coordinator_key: ck,
                                server_time: now(),
                            })
                        } else {
                            ServerMsg::Error { message: "bad machine key proof".into() }
                        };
                        let _ = send.write_all(&wire::encode_frame(&answer).unwrap()).await;
                    } else {
                        let _ = tx.send(Seen::Msg { conn: idx, msg }).await;
                    }
                }
            }
            out = reply_rx.recv() => {
                let Some(out) = out else { break };
                if send.write_all(&wire::encode_frame(&out).unwrap()).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.send(Seen::Closed { conn: idx }).await;
    conn.close(0u32.into(), b"test server done");
}

/// The coordinator-side check of the machine-key proof.
pub fn verify_proof(mk: &MachinePublicKey, proof: &[u8], ekm: &[u8]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(&mk.0) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(proof) else {
        return false;
    };
    vk.verify(ekm, &Signature::from_bytes(&sig)).is_ok()
}

pub fn now() -> UnixMillis {
    UnixMillis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

/// A credential for `wg` issued now, valid for `life_ms`.
pub fn credential(
    signing: &SigningKey,
    id: u64,
    name: &str,
    machine_key: MachinePublicKey,
    wg: WgPublicKey,
    serial: u64,
    life_ms: u64,
) -> SignedCredential {
    let n = now();
    NodeCredential {
        node_id: NodeId(id),
        hostname: name.into(),
        user: Some("alice@example.com".into()),
        tags: vec![],
        machine_key,
        wg_public_key: wg,
        addresses: vec![
            format!("100.64.0.{id}").parse().unwrap(),
            format!("fd5a:746d:6573::{id}").parse().unwrap(),
        ],
        posture_digest: [0; 32],
        not_before: n.saturating_sub_ms(60_000),
        issued_at: n,
        expires_at: n.saturating_add_ms(life_ms),
        serial,
    }
    .sign(signing)
}

/// What the control client did to the data plane.
#[derive(Clone, Debug, PartialEq)]
pub enum PlaneCall {
    Identity {
        wg: WgPublicKey,
        cred_wg: WgPublicKey,
    },
    NetMap {
        version: u64,
        peers: usize,
    },
    Delta {
        version: u64,
    },
    Clear,
}

/// A data plane that records calls and serves queued flow events.
#[derive(Default)]
pub struct RecordingPlane {
    pub calls: Mutex<Vec<PlaneCall>>,
    pub flows: Mutex<Vec<FlowEvent>>,
}

impl RecordingPlane {
    pub fn calls(&self) -> Vec<PlaneCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl Plane for RecordingPlane {
    fn set_identity(
        &self,
        key: x25519_dalek::StaticSecret,
        own: SignedCredential,
        coordinator: CoordinatorPublicKey,
    ) -> Result<(), String> {
        let cred = own
            .verify_signature(&coordinator)
            .map_err(|e| e.to_string())?;
        self.calls.lock().unwrap().push(PlaneCall::Identity {
            wg: WgPublicKey(x25519_dalek::PublicKey::from(&key).to_bytes()),
            cred_wg: cred.wg_public_key,
        });
        Ok(())
    }
    fn set_netmap(&self, map: NetMap) {
        self.calls.lock().unwrap().push(PlaneCall::NetMap {
            version: map.version,
            peers: map.peers.len(),
        });
    }
    fn apply_delta(&self, delta: NetMapDelta) -> Result<(), String> {
        self.calls.lock().unwrap().push(PlaneCall::Delta {
            version: delta.version,
        });
        Ok(())
    }
    fn clear(&self) {
        self.calls.lock().unwrap().push(PlaneCall::Clear);
    }
    fn take_flow_events(&self) -> Vec<FlowEvent> {
        std::mem::take(&mut self.flows.lock().unwrap())
    }
    fn local_port(&self) -> u16 {
        41641
    }
    fn snapshot(&self) -> PlaneSnapshot {
        PlaneSnapshot {
            peers: vec![PeerStats::default()],
            recent_denied: vec![],
            failure: None,
        }
    }
}
