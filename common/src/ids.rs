//! Identifiers and public keys as newtypes, so that a node id is never confused with a serial
//! and a WireGuard key never with a machine key.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A device, as numbered by the coordinator. Stable for the device's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

macro_rules! key32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Standard base64, as `wg` prints keys.
            pub fn to_base64(&self) -> String {
                base64::engine::general_purpose::STANDARD.encode(self.0)
            }
            pub fn from_base64(s: &str) -> Option<Self> {
                let v = base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()?;
                Some(Self(v.try_into().ok()?))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_base64())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_base64()[..8])
            }
        }
    };
}

key32!(
    /// Ed25519 public key that identifies a device for its lifetime.
    MachinePublicKey
);
key32!(
    /// X25519 public key of a node's current WireGuard identity (rotated at every renewal).
    WgPublicKey
);
key32!(
    /// Ed25519 public key with which the coordinator signs credentials.
    CoordinatorPublicKey
);
