//! The QUIC endpoint: accepts connections, bounds the unauthenticated ones, and runs a
//! session task per connection.

use super::{session, tls, ControlPlane};
use ed25519_dalek::SigningKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A running control endpoint. Dropping it closes it at once; [`QuicServer::close`] also
/// waits until connections are closed.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    accept: JoinHandle<()>,
}

impl QuicServer {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Close every connection and stop accepting.
    pub async fn close(self) {
        self.endpoint
            .close(0u32.into(), b"coordinator shutting down");
        self.accept.abort();
        self.endpoint.wait_idle().await;
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        self.endpoint
            .close(0u32.into(), b"coordinator shutting down");
        self.accept.abort();
    }
}

impl ControlPlane {
    /// Bind the QUIC endpoint on `listen` with the coordinator's certificate and key and serve
    /// devices on it.
    pub fn start_quic(
        &self,
        listen: SocketAddr,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> anyhow::Result<QuicServer> {
        let cfg = tls::server_config(cert_chain, key)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(&self.inner.key),
            Some(cfg),
            tls::bind_udp(listen)?,
            Arc::new(quinn::TokioRuntime),
        )?;
        info!(addr = %endpoint.local_addr()?, "control endpoint listening (QUIC, ALPN ztmesh/1)");
        let accept = tokio::spawn(accept_loop(self.clone(), endpoint.clone()));
        Ok(QuicServer { endpoint, accept })
    }
}

/// QUIC stateless resets that survive a restart. Both the reset key and the key that
/// authenticates our connection IDs are derived from the coordinator's signing key, so after a
/// crash the new process recognises a client's packets on its old connection as ours and
/// answers with a reset the client accepts: the client reconnects at once instead of waiting
/// for the idle timeout. (quinn's defaults are random per process, so a restarted endpoint
/// drops those packets as carrying an invalid CID.) The derived keys only authenticate resets
/// and CIDs; neither can be turned back into the signing key.
fn endpoint_config(key: &SigningKey) -> quinn::EndpointConfig {
    let derive = |label: &[u8]| {
        Sha256::new()
            .chain_update(label)
            .chain_update(key.to_bytes())
            .finalize()
    };
    let reset_secret = derive(b"ztmesh/1 QUIC stateless reset key");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_secret);
    let cid_secret = derive(b"ztmesh/1 QUIC connection id key");
    let cid_key = u64::from_le_bytes(cid_secret[..8].try_into().expect("8 bytes"));
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    cfg
}

async fn accept_loop(cp: ControlPlane, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        match cp.inner.unauthenticated.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(session::run(cp.clone(), Box::new(incoming), permit));
            }
            Err(_) => {
                warn!(remote = %incoming.remote_address(), "control connection ended: refused, too many unauthenticated connections");
                incoming.refuse();
            }
        }
    }
}
