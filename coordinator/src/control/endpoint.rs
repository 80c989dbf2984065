//! The QUIC endpoint: accepts connections, bounds the unauthenticated ones, and runs a
//! session task per connection.

use super::{session, tls, ControlPlane};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
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
            quinn::EndpointConfig::default(),
            Some(cfg),
            tls::bind_udp(listen)?,
            std::sync::Arc::new(quinn::TokioRuntime),
        )?;
        info!(addr = %endpoint.local_addr()?, "control endpoint listening (QUIC, ALPN ztmesh/1)");
        let accept = tokio::spawn(accept_loop(self.clone(), endpoint.clone()));
        Ok(QuicServer { endpoint, accept })
    }
}

async fn accept_loop(cp: ControlPlane, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        match cp.inner.unauthenticated.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(session::run(cp.clone(), incoming, permit));
            }
            Err(_) => {
                warn!(remote = %incoming.remote_address(), "control connection ended: refused, too many unauthenticated connections");
                incoming.refuse();
            }
        }
    }
}
