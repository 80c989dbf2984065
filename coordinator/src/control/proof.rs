//! The machine-key proof of `Hello`: an Ed25519 signature by the device's machine key over
//! keying material exported from this very TLS session (RFC 8446 §7.5), so a proof cannot be
//! replayed on another connection. The device's identity comes only from this proof.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ztmesh_common::ids::MachinePublicKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("machine key is not a valid Ed25519 public key")]
    BadKey,
    #[error("machine-key proof has {0} bytes, not 64")]
    BadLength(usize),
    #[error("machine-key proof does not verify for this TLS session")]
    BadSignature,
}

/// Check that `proof` is the machine key's signature over `exporter`.
pub fn verify(
    machine_key: &MachinePublicKey,
    exporter: &[u8],
    proof: &[u8],
) -> Result<(), ProofError> {
    let key = VerifyingKey::from_bytes(&machine_key.0).map_err(|_| ProofError::BadKey)?;
    let sig: [u8; 64] = proof
        .try_into()
        .map_err(|_| ProofError::BadLength(proof.len()))?;
    // verify_strict refuses small-order keys and malleable signatures.
    key.verify_strict(exporter, &Signature::from_bytes(&sig))
        .map_err(|_| ProofError::BadSignature)
}

/// The device side: sign the exported keying material with the machine key.
pub fn sign(machine_key: &SigningKey, exporter: &[u8]) -> Vec<u8> {
    machine_key.sign(exporter).to_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_binds_key_and_session() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let pk = MachinePublicKey(k.verifying_key().to_bytes());
        let p = sign(&k, &[1; 32]);
        assert_eq!(verify(&pk, &[1; 32], &p), Ok(()));
        assert_eq!(verify(&pk, &[2; 32], &p), Err(ProofError::BadSignature));
        let other = MachinePublicKey(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes());
        assert_eq!(verify(&other, &[1; 32], &p), Err(ProofError::BadSignature));
        assert_eq!(
            verify(&pk, &[1; 32], &p[..10]),
            Err(ProofError::BadLength(10))
        );
    }
}
