//! A minimal control client for tests and benchmarks: pins the coordinator's certificate,
//! proves a machine key, sends and receives wire messages. Not the real client (that is
//! `ztmesh-client`); it does only what a test needs, including misbehaving on purpose.

use super::proof;
use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use ztmesh_common::cert_pin::{CertFingerprint, PinnedCertVerifier};
use ztmesh_common::ids::{MachinePublicKey, WgPublicKey};
use ztmesh_common::posture::PostureAttrs;
use ztmesh_common::wire::{
    self, ClientMsg, FrameDecoder, Hello, LoginAuth, LoginRequest, ServerMsg, Welcome,
    MACHINE_PROOF_LABEL, MACHINE_PROOF_LEN, MAX_SERVER_FRAME, PROTOCOL_VERSION,
};

/// A QUIC client configuration that trusts only `cert`, with ALPN `ztmesh/1`.
pub fn client_config(cert: CertificateDer<'static>) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pin = CertFingerprint::of(cert.as_ref());
    let verifier = Arc::new(PinnedCertVerifier::new(pin, &provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// A client endpoint on loopback; many clients can share one.
pub fn client_endpoint(cert: CertificateDer<'static>) -> anyhow::Result<quinn::Endpoint> {
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        super::tls::bind_udp("127.0.0.1:0".parse()?)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(client_config(cert)?);
    Ok(ep)
}

/// One test device.
pub struct TestClient {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    pub machine_key: SigningKey,
}

impl TestClient {
    /// Connect and open the control stream, without saying anything yet.
    pub async fn open(endpoint: &quinn::Endpoint, addr: SocketAddr) -> anyhow::Result<Self> {
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(TestClient {
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(MAX_SERVER_FRAME),
            machine_key: SigningKey::from_bytes(&rand::random()),
        })
    }

    /// Connect, prove the machine key and wait for `Welcome`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        machine_key: SigningKey,
    ) -> anyhow::Result<(Self, Welcome)> {
        let mut c = Self::open(endpoint, addr).await?;
        c.machine_key = machine_key;
        let hello = c.hello()?;
        c.send(&ClientMsg::Hello(hello)).await?;
        match c.recv().await? {
            ServerMsg::Welcome(w) => Ok((c, w)),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    /// A correct `Hello` for this connection.
    pub fn hello(&self) -> anyhow::Result<Hello> {
        let mut ekm = [0u8; MACHINE_PROOF_LEN];
        self.conn
            .export_keying_material(&mut ekm, MACHINE_PROOF_LABEL, b"")
            .map_err(|_| anyhow::anyhow!("exporter failed"))?;
        Ok(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_version: "testkit".into(),
            machine_key: MachinePublicKey(self.machine_key.verifying_key().to_bytes()),
            proof: proof::sign(&self.machine_key, &ekm),
        })
    }

    pub async fn send(&mut self, msg: &ClientMsg) -> anyhow::Result<()> {
        self.send_raw(&wire::encode_frame(msg)?).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// The next message (waits at most 10 s).
    pub async fn recv(&mut self) -> anyhow::Result<ServerMsg> {
        self.recv_within(Duration::from_secs(10))
            .await?
            .context("no message within 10 s")
    }

    /// The next message, or `None` if none arrives within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> anyhow::Result<Option<ServerMsg>> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(m) = self.decoder.next_msg::<ServerMsg>()? {
                return Ok(Some(m));
            }
            let chunk = match tokio::time::timeout_at(
                deadline,
                self.recv.read_chunk(64 * 1024, true),
            )
            .await
            {
                Err(_) => return Ok(None),
                Ok(r) => r?,
            };
            match chunk {
                Some(c) => self.decoder.push(&c.bytes),
                None => bail!("stream finished"),
            }
        }
    }

    /// Wait for the connection to be closed by the coordinator (or `d` to pass).
    pub async fn closed_within(&self, d: Duration) -> Option<quinn::ConnectionError> {
        tokio::time::timeout(d, self.conn.closed()).await.ok()
    }
}

/// A login request with a random WireGuard key and the given posture.
pub fn login_request(hostname: &str, auth: LoginAuth, posture: PostureAttrs) -> LoginRequest {
    LoginRequest {
        hostname: hostname.into(),
        wg_public_key: WgPublicKey(rand::random()),
        auth,
        endpoints: vec![],
        posture,
    }
}
