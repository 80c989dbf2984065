//! The node credential: the coordinator's signed statement that a device, with this WireGuard
//! key and these overlay addresses, passed identity and posture checks and may take part in the
//! mesh until `expires_at`. Peers verify signature and validity window themselves, so a forged
//! or expired credential is refused even while the coordinator is unreachable (fail closed).

use crate::ids::{CoordinatorPublicKey, MachinePublicKey, NodeId, WgPublicKey};
use crate::time::UnixMillis;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Domain separation for credential signatures, so that no other signed message of the
/// coordinator can be replayed as a credential.
const SIGNING_CONTEXT: &[u8] = b"ztmesh credential v1\0";

/// What the coordinator asserts about a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeCredential {
    pub node_id: NodeId,
    pub hostname: String,
    /// Login name of the owning user; `None` for tagged devices (servers, connectors).
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub machine_key: MachinePublicKey,
    pub wg_public_key: WgPublicKey,
    /// Overlay addresses, IPv4 and IPv6.
    pub addresses: Vec<IpAddr>,
    /// SHA-256 of the posture report the credential was issued on.
    pub posture_digest: [u8; 32],
    /// Set a little before `issued_at` so that small clock skew does not refuse a fresh credential.
    pub not_before: UnixMillis,
    pub issued_at: UnixMillis,
    pub expires_at: UnixMillis,
    /// Increases with every credential the coordinator issues.
    pub serial: u64,
}

/// A credential with the coordinator's Ed25519 signature over its canonical encoding.
/// The encoded bytes travel as they were signed, so verification never depends on re-encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCredential {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("credential signature does not verify against the coordinator key")]
    BadSignature,
    #[error("credential body is malformed: {0}")]
    Malformed(String),
    #[error("credential is not valid before {not_before} (now {now})")]
    NotYetValid {
        not_before: UnixMillis,
        now: UnixMillis,
    },
    #[error("credential expired at {expires_at} (now {now})")]
    Expired {
        expires_at: UnixMillis,
        now: UnixMillis,
    },
}

impl NodeCredential {
    /// Sign with the coordinator's key.
    pub fn sign(&self, key: &SigningKey) -> SignedCredential {
        let body = postcard::to_allocvec(self).expect("credential encodes");
        let signature = key.sign(&signed_message(&body)).to_bytes().to_vec();
        SignedCredential { body, signature }
    }

    /// Whether `now` lies in `[not_before, expires_at)`.
    pub fn check_validity(&self, now: UnixMillis) -> Result<(), CredentialError> {
        if now < self.not_before {
            return Err(CredentialError::NotYetValid {
                not_before: self.not_before,
                now,
            });
        }
        if now >= self.expires_at {
            return Err(CredentialError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

impl SignedCredential {
    /// Check the signature only, and decode. Use [`SignedCredential::verify`] to also check validity.
    pub fn verify_signature(
        &self,
        coordinator: &CoordinatorPublicKey,
    ) -> Result<NodeCredential, CredentialError> {
        let key =
            VerifyingKey::from_bytes(&coordinator.0).map_err(|_| CredentialError::BadSignature)?;
        let sig_bytes: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| CredentialError::BadSignature)?;
        key.verify(
            &signed_message(&self.body),
            &Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| CredentialError::BadSignature)?;
        postcard::from_bytes(&self.body).map_err(|e| CredentialError::Malformed(e.to_string()))
    }

    /// Check signature and validity window at `now`, and decode.
    pub fn verify(
        &self,
        coordinator: &CoordinatorPublicKey,
        now: UnixMillis,
    ) -> Result<NodeCredential, CredentialError> {
        let cred = self.verify_signature(coordinator)?;
        cred.check_validity(now)?;
        Ok(cred)
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}

/// The public half of a coordinator signing key, in wire form.
pub fn coordinator_public_key(key: &SigningKey) -> CoordinatorPublicKey {
    CoordinatorPublicKey(key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(now: u64) -> NodeCredential {
        NodeCredential {
            node_id: NodeId(7),
            hostname: "laptop".into(),
            user: Some("alice@example.com".into()),
            tags: vec![],
            machine_key: MachinePublicKey([1; 32]),
            wg_public_key: WgPublicKey([2; 32]),
            addresses: vec![
                "100.64.0.7".parse().unwrap(),
                "fd5a:746d:6573::7".parse().unwrap(),
            ],
            posture_digest: [3; 32],
            not_before: UnixMillis(now - 60_000),
            issued_at: UnixMillis(now),
            expires_at: UnixMillis(now + 3_600_000),
            serial: 1,
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn signed_credential_verifies_inside_its_window_only() {
        let now = 1_000_000_000;
        let signed = sample(now).sign(&key(9));
        let pk = coordinator_public_key(&key(9));
        assert_eq!(signed.verify(&pk, UnixMillis(now)).unwrap(), sample(now));
        assert!(matches!(
            signed.verify(&pk, UnixMillis(now + 3_600_000)),
            Err(CredentialError::Expired { .. })
        ));
        assert!(matches!(
            signed.verify(&pk, UnixMillis(now - 61_000)),
            Err(CredentialError::NotYetValid { .. })
        ));
    }

    #[test]
    fn forged_or_tampered_credentials_are_refused() {
        let now = 1_000_000_000;
        let pk = coordinator_public_key(&key(9));
        let forged = sample(now).sign(&key(8));
        assert_eq!(
            forged.verify(&pk, UnixMillis(now)),
            Err(CredentialError::BadSignature)
        );
        let mut tampered = sample(now).sign(&key(9));
        let last = tampered.body.len() - 1;
        tampered.body[last] ^= 1;
        assert_eq!(
            tampered.verify(&pk, UnixMillis(now)),
            Err(CredentialError::BadSignature)
        );
        let mut short_sig = sample(now).sign(&key(9));
        short_sig.signature.truncate(10);
        assert_eq!(
            short_sig.verify(&pk, UnixMillis(now)),
            Err(CredentialError::BadSignature)
        );
    }
}
