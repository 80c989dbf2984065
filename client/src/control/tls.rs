//! TLS for the control connection: TLS 1.3 only, and the coordinator's certificate is accepted
//! only if its SHA-256 fingerprint equals the join URL's pin ([`PinnedCertVerifier`]).

use std::sync::Arc;
use std::time::Duration;
use ztmesh_common::cert_pin::{CertFingerprint, PinnedCertVerifier};
use ztmesh_common::wire;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The quinn client configuration for a coordinator with this certificate fingerprint.
pub fn client_config(pin: CertFingerprint) -> Result<quinn::ClientConfig, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertVerifier::new(pin, &provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsConfigError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // Keepalives hold NAT mappings open and detect a dead coordinator within the idle timeout.
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(20)
            .try_into()
            .expect("20 s is a valid idle timeout"),
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}
