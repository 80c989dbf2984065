//! QUIC + TLS configuration of the control endpoint: TLS 1.3 only, ALPN `ztmesh/1`, one
//! bidirectional stream per client, receive windows sized to the largest client frame.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use ztmesh_common::wire;

/// How long a connection may stay silent before it is closed (clients send keep-alives).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
}

/// The server configuration for the given certificate chain and key.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport()));
    // Bound the handshakes quinn keeps state for before we even see them.
    cfg.max_incoming(4096);
    Ok(cfg)
}

/// Socket buffer asked for on the control endpoint: a burst of 1,000 handshakes (each
/// Initial is >= 1,200 bytes) overflows the kernel default and costs clients seconds of
/// retransmission back-off. The kernel caps it at `net.core.rmem_max`/`wmem_max`.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket for a QUIC endpoint with enlarged buffers (best effort).
pub fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let sock = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&sock).into())?;
    if let Err(e) = state.set_recv_buffer_size((&sock).into(), SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = state.set_send_buffer_size((&sock).into(), SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
    Ok(sock)
}

/// Transport parameters: one stream, windows just above one maximal client frame.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    let window = (wire::MAX_CLIENT_FRAME + 16 * 1024) as u32;
    t.stream_receive_window(window.into());
    t.receive_window(window.into());
    t.send_window(4 * 1024 * 1024);
    t.datagram_receive_buffer_size(None);
    // Without segmentation offload every connection keeps a send buffer of one datagram
    // instead of ten (about 13 KiB less per connected device); control traffic is light.
    t.enable_segmentation_offload(false);
    t
}
