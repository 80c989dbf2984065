//! The posture attribute model: what a device reports about itself (and what admins or an
//! MDM/EDR feed set about it), as typed values the policy's posture conditions compare.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Well-known attribute names reported by the client.
pub mod attr {
    pub const OS: &str = "node:os";
    pub const OS_VERSION: &str = "node:osVersion";
    pub const KERNEL_VERSION: &str = "node:kernelVersion";
    pub const CLIENT_VERSION: &str = "node:clientVersion";
    pub const DISK_ENCRYPTED: &str = "node:diskEncrypted";
    pub const FIREWALL: &str = "node:firewall";
    pub const SECURE_BOOT: &str = "node:secureBoot";
    pub const EDR: &str = "node:edr";
    pub const LAST_UPDATE_DAYS: &str = "node:lastUpdateDays";
    pub const POSTURE_SOURCE: &str = "node:postureSource";
    /// Prefix of attributes set by admins or an MDM/EDR feed, never by the device.
    pub const CUSTOM_PREFIX: &str = "custom:";
}

/// One attribute value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<String>),
}

impl AttrValue {
    /// From a JSON value as written in a policy's tests or an admin request. Nested objects,
    /// nulls and lists of non-strings have no attribute form.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        Some(match v {
            serde_json::Value::Bool(b) => AttrValue::Bool(*b),
            serde_json::Value::Number(n) => AttrValue::Number(n.as_f64()?),
            serde_json::Value::String(s) => AttrValue::String(s.clone()),
            serde_json::Value::Array(xs) => AttrValue::List(
                xs.iter()
                    .map(|x| x.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()?,
            ),
            _ => return None,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AttrValue::Bool(b) => serde_json::Value::Bool(*b),
            // A whole number prints as one (`51`, not `51.0`): attributes like
            // `node:lastUpdateDays` are counts, and admins read them back as they set them.
            AttrValue::Number(n) if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 => {
                serde_json::Value::Number((*n as i64).into())
            }
            AttrValue::Number(n) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            AttrValue::String(s) => serde_json::Value::String(s.clone()),
            AttrValue::List(xs) => serde_json::Value::Array(
                xs.iter().cloned().map(serde_json::Value::String).collect(),
            ),
        }
    }
}

/// A set of attributes, keyed by full name (`node:os`, `custom:managed`).
pub type PostureAttrs = BTreeMap<String, AttrValue>;

/// SHA-256 over the canonical encoding of the attributes: what a credential records of the
/// posture it was issued on.
pub fn digest(attrs: &PostureAttrs) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let bytes = postcard::to_allocvec(attrs).unwrap_or_default();
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_back_as_they_were_written() {
        for text in ["51", "-3", "0", "2.5", "1e300"] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let back = AttrValue::from_json(&v).unwrap().to_json();
            assert_eq!(back, v, "{text}");
        }
        assert_eq!(AttrValue::Number(51.0).to_json().to_string(), "51");
    }
}
