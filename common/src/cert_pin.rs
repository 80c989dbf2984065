//! Certificate pinning, as the join URL and the admin CLI's `--pin` do it: a coordinator's
//! certificate is self-signed, and its SHA-256 fingerprint (`sha256:HEX`) is how an admin
//! hands its identity to devices and tools.
//!
//! With the `tls-pin` feature, [`PinnedCertVerifier`] makes rustls accept exactly the pinned
//! certificate. The pin replaces the name and chain checks, but the handshake signature is
//! still verified against the certificate's key, so a server that merely replays the
//! certificate without its private key is refused.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Part of the TLS error for a certificate that is not the pinned one, for callers that
/// want to tell that failure from an unreachable server.
pub const PIN_MISMATCH: &str = "does not match the pinned fingerprint";

/// The SHA-256 digest of a DER certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    pub fn of(cert_der: &[u8]) -> Self {
        CertFingerprint(Sha256::digest(cert_der).into())
    }
}

/// Why a `sha256:HEX` pin does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinParseError {
    #[error("fingerprint must start with sha256:")]
    MissingPrefix,
    #[error("fingerprint must be sha256: followed by 64 hex digits")]
    BadDigest,
}

impl FromStr for CertFingerprint {
    type Err = PinParseError;

    /// `sha256:` and exactly 64 hex digits (either case), nothing else: a typo in a pin must
    /// not pass.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or(PinParseError::MissingPrefix)?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PinParseError::BadDigest);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| PinParseError::BadDigest)?;
        Ok(CertFingerprint(out))
    }
}

impl fmt::Display for CertFingerprint {
    /// `sha256:` and lower-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

#[cfg(feature = "tls-pin")]
pub use verifier::PinnedCertVerifier;

#[cfg(feature = "tls-pin")]
mod verifier {
    use super::CertFingerprint;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{
        verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
    };
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts exactly one server certificate, by fingerprint.
    #[derive(Debug)]
    pub struct PinnedCertVerifier {
        pin: CertFingerprint,
        algs: WebPkiSupportedAlgorithms,
    }

    impl PinnedCertVerifier {
        pub fn new(pin: CertFingerprint, provider: &CryptoProvider) -> Self {
            PinnedCertVerifier {
                pin,
                algs: provider.signature_verification_algorithms,
            }
        }
    }

    impl ServerCertVerifier for PinnedCertVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let got = CertFingerprint::of(end_entity.as_ref());
            if got == self.pin {
                Ok(ServerCertVerified::assertion())
            } else {
                // Both fingerprints are public; naming them lets an admin tell a stale pin
                // from an impostor. (A `General` error, because rustls prints the other
                // certificate errors' payloads in debug form.)
                Err(rustls::Error::General(format!(
                    "the server's certificate {got} {} {}",
                    super::PIN_MISMATCH,
                    self.pin
                )))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            // Reached only where the caller's config allows TLS 1.2 (the admin CLI over
            // HTTPS); the QUIC control connection is TLS 1.3 only.
            verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_pin_form() {
        let fp = CertFingerprint::of(b"certificate bytes");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<CertFingerprint>(), Ok(fp));
        assert_eq!(
            text.to_uppercase().replace("SHA256", "sha256").parse(),
            Ok(fp)
        );
    }

    #[test]
    fn refuses_anything_but_sha256_and_64_hex_digits() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            hex64.parse::<CertFingerprint>(),
            Err(PinParseError::MissingPrefix)
        );
        assert_eq!(
            format!("sha1:{hex64}").parse::<CertFingerprint>(),
            Err(PinParseError::MissingPrefix)
        );
        for bad in [
            "sha256:".to_string(),
            format!("sha256:{}", &hex64[..62]),
            format!("sha256:{hex64}00"),
            format!("sha256:{}zz", &hex64[..62]),
            format!("sha256: {}", &hex64[..63]),
        ] {
            assert_eq!(
                bad.parse::<CertFingerprint>(),
                Err(PinParseError::BadDigest),
                "{bad}"
            );
        }
    }
}
