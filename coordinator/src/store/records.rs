//! The typed records the store keeps. Encoded as JSON in sled so that the data directory can
//! be inspected by hand and so that a new optional field (`#[serde(default)]`) reads old records.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use ztmesh_common::credential::SignedCredential;
use ztmesh_common::ids::{MachinePublicKey, NodeId};
use ztmesh_common::posture::PostureAttrs;
use ztmesh_common::time::UnixMillis;

/// A local account (the embedded identity source: argon2 password + TOTP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub login: String,
    /// PHC string of the argon2id hash of the password.
    pub password_hash: String,
    /// Base32 TOTP secret (RFC 6238). A secret, so `Debug` output of this record must not be logged.
    pub totp_secret: String,
    #[serde(default)]
    pub disabled: bool,
    /// Policy groups, e.g. `group:eng`.
    #[serde(default)]
    pub groups: Vec<String>,
    pub created_at: UnixMillis,
}

/// How a device's current login session was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginMethod {
    LocalTotp,
    Oidc,
    PreauthKey,
}

/// A device known to the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: NodeId,
    pub machine_key: MachinePublicKey,
    pub hostname: String,
    /// Owning user's login; `None` for tagged devices.
    #[serde(default)]
    pub user: Option<String>,
    /// Groups of the owning user at login time (from the IdP or the local account).
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Host index into the overlay address plan (`ztmesh_common::addr::overlay_addrs`).
    pub host_index: u32,
    /// `custom:*` attributes set by admins or an MDM/EDR feed.
    #[serde(default)]
    pub custom_attrs: PostureAttrs,
    /// The last posture report the device sent.
    #[serde(default)]
    pub last_posture: PostureAttrs,
    #[serde(default)]
    pub posture_reported_at: Option<UnixMillis>,
    /// Whether the last admission/posture evaluation passed, and why not.
    #[serde(default)]
    pub posture_ok: Option<bool>,
    #[serde(default)]
    pub posture_failures: Vec<String>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub revoked_reason: Option<String>,
    #[serde(default)]
    pub login_method: Option<LoginMethod>,
    /// End of the current login session (re-authentication needed after it).
    #[serde(default)]
    pub login_expires_at: Option<UnixMillis>,
    /// OIDC refresh token for re-verification. A secret: never logged.
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub credential_expires_at: Option<UnixMillis>,
    #[serde(default)]
    pub credential_serial: Option<u64>,
    /// The signed credential in force (public: every peer receives it), so that a restarted
    /// coordinator puts the node back into its peers' views until it expires.
    #[serde(default)]
    pub credential: Option<SignedCredential>,
    /// Underlay endpoints the device last reported.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    pub created_at: UnixMillis,
    #[serde(default)]
    pub last_seen: Option<UnixMillis>,
}

impl DeviceRecord {
    /// Record the credential just issued to the device.
    pub fn set_credential(
        &mut self,
        signed: &SignedCredential,
        expires_at: UnixMillis,
        serial: u64,
    ) {
        self.credential = Some(signed.clone());
        self.credential_expires_at = Some(expires_at);
        self.credential_serial = Some(serial);
    }

    /// The device holds no credential any more (revoked, expired, logged out).
    pub fn clear_credential(&mut self) {
        self.credential = None;
        self.credential_expires_at = None;
    }
}

/// A pre-auth key. Only the SHA-256 of the key is kept; the key itself is shown once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreauthKeyRecord {
    /// Public identifier (the first 16 hex digits of the hash), for listing and revoking.
    pub id: String,
    /// Hex SHA-256 of the key.
    pub key_hash: String,
    pub tags: Vec<String>,
    pub reusable: bool,
    pub expires_at: UnixMillis,
    #[serde(default)]
    pub used: bool,
    /// Devices admitted with this key.
    #[serde(default)]
    pub used_by: Vec<NodeId>,
    #[serde(default)]
    pub revoked: bool,
    pub created_at: UnixMillis,
    pub created_by: String,
}

/// One stored policy version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// 1, 2, ... in order of storage.
    pub version: u64,
    pub text: String,
    pub author: String,
    pub at: UnixMillis,
}

/// Roles of API bearer tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read and write.
    Admin,
    /// Read only.
    Auditor,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!("unknown role {other:?} (admin or auditor)")),
        }
    }
}

/// An API token created with `tokens create`. Only the hash is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    pub role: Role,
    pub created_at: UnixMillis,
    pub created_by: String,
    #[serde(default)]
    pub revoked: bool,
}

/// Outcome recorded in an audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        })
    }
}

/// What a caller asks to append to the audit log; the store adds sequence, chain and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: UnixMillis,
    /// Who acted: `admin`, `token:<id>`, `user:<login>`, `node:<id>`, `system`.
    pub actor: String,
    /// What was done, e.g. `policy.set`, `device.revoke`, `admission`.
    pub action: String,
    /// What it was done to.
    pub subject: String,
    pub decision: Decision,
    pub reason: String,
}

/// A record of the audit log as stored: the entry, its position and the hash chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, ... without gaps.
    pub seq: u64,
    pub at: UnixMillis,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub decision: Decision,
    pub reason: String,
    /// Hex hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over `prev_hash` and every other field (see [`AuditRecord::compute_hash`]).
    pub hash: String,
}

/// `prev_hash` of the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditRecord {
    /// SHA-256 over a length-prefixed encoding of every field except `hash`, so that no two
    /// different records share an input (no field can bleed into the next).
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"ztmesh audit v1\0");
        h.update(self.seq.to_be_bytes());
        h.update(self.at.0.to_be_bytes());
        let decision = self.decision.to_string();
        for field in [
            &self.prev_hash,
            &self.actor,
            &self.action,
            &self.subject,
            &decision,
            &self.reason,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Build the record that follows `prev` (or the first one when `prev` is `None`).
    pub fn chain(entry: AuditEntry, prev: Option<&AuditRecord>) -> AuditRecord {
        let (seq, prev_hash) = match prev {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (1, GENESIS_HASH.to_owned()),
        };
        let mut rec = AuditRecord {
            seq,
            at: entry.at,
            actor: entry.actor,
            action: entry.action,
            subject: entry.subject,
            decision: entry.decision,
            reason: entry.reason,
            prev_hash,
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        rec
    }
}

/// Hex SHA-256 of a secret (pre-auth key, API token): what the store keeps instead of it.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
