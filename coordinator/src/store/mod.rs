//! Durable coordinator state behind the [`Store`] trait, so that another engine can follow.
//!
//! Contract of every implementation: a method that changes state returns only after the change
//! is durable (survives `kill -9` of the process), and the compound operations documented as
//! atomic (device creation, pre-auth key consumption, audit append) are atomic under
//! concurrency. Methods are synchronous (sled is); async callers that write in a hot path
//! should use `tokio::task::spawn_blocking`.

mod records;
mod sled_store;

pub use records::*;
pub use sled_store::SledStore;

use ztmesh_common::ids::{MachinePublicKey, NodeId};
use ztmesh_common::time::UnixMillis;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("the overlay address space is exhausted")]
    AddressSpaceExhausted,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// Why a pre-auth key was not accepted. Deliberately coarse towards the client ("invalid"),
/// detailed in the audit log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreauthError {
    #[error("unknown pre-auth key")]
    Unknown,
    #[error("pre-auth key {0} has expired")]
    Expired(String),
    #[error("single-use pre-auth key {0} was already used")]
    AlreadyUsed(String),
    #[error("pre-auth key {0} was revoked")]
    Revoked(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a new device is created with; the store assigns id and host index.
#[derive(Clone, Debug)]
pub struct NewDevice {
    pub machine_key: MachinePublicKey,
    pub hostname: String,
    pub user: Option<String>,
    pub user_groups: Vec<String>,
    pub tags: Vec<String>,
    pub created_at: UnixMillis,
}

/// Durable coordinator state. See the module documentation for the durability contract.
pub trait Store: Send + Sync {
    // --- users ---
    /// Create a user; fails with `AlreadyExists` when the login is taken.
    fn create_user(&self, user: &UserRecord) -> Result<()>;
    fn get_user(&self, login: &str) -> Result<Option<UserRecord>>;
    fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Read-modify-write one user atomically; `NotFound` when absent. Returns the new record.
    fn update_user(&self, login: &str, f: &mut dyn FnMut(&mut UserRecord)) -> Result<UserRecord>;

    // --- devices ---
    /// Create a device with the next node id and host index, atomically with the machine-key
    /// index; `AlreadyExists` when the machine key already has a device.
    fn create_device(&self, new: NewDevice) -> Result<DeviceRecord>;
    fn get_device(&self, id: NodeId) -> Result<Option<DeviceRecord>>;
    fn device_by_machine_key(&self, key: &MachinePublicKey) -> Result<Option<DeviceRecord>>;
    fn list_devices(&self) -> Result<Vec<DeviceRecord>>;
    /// Read-modify-write one device atomically; `NotFound` when absent. Returns the new record.
    /// `id`, `machine_key` and `host_index` changes made by `f` are ignored.
    fn update_device(
        &self,
        id: NodeId,
        f: &mut dyn FnMut(&mut DeviceRecord),
    ) -> Result<DeviceRecord>;
    /// Forget a device entirely (its machine key may join again as a new device).
    fn delete_device(&self, id: NodeId) -> Result<()>;

    // --- pre-auth keys ---
    fn create_preauth(&self, key: &PreauthKeyRecord) -> Result<()>;
    fn list_preauth(&self) -> Result<Vec<PreauthKeyRecord>>;
    /// Mark a key revoked by id; `NotFound` when absent.
    fn revoke_preauth(&self, id: &str) -> Result<PreauthKeyRecord>;
    /// Check and use a key (given in clear; hashed here), atomically: a single-use key
    /// admits exactly one caller even when many race. Returns the key record as updated.
    fn consume_preauth(
        &self,
        key: &str,
        node: NodeId,
        now: UnixMillis,
    ) -> Result<Result<PreauthKeyRecord, PreauthError>>;

    // --- policy ---
    /// Store a new current policy version; returns it with its version number.
    fn put_policy(&self, text: &str, author: &str, at: UnixMillis) -> Result<PolicyVersion>;
    /// The newest version, if any.
    fn current_policy(&self) -> Result<Option<PolicyVersion>>;
    /// Every version, oldest first.
    fn policy_history(&self) -> Result<Vec<PolicyVersion>>;

    // --- audit ---
    /// Append to the hash-chained audit log (atomic with the chain head).
    fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord>;
    /// Every audit record in sequence order, as stored (undecodable records are errors).
    fn audit_records(&self) -> Result<Vec<AuditRecord>>;
    /// Sequence number of the newest record, kept beside the chain so that removing the last
    /// records is detected too.
    fn audit_head_seq(&self) -> Result<Option<u64>>;
    /// The last `n` audit records, oldest first.
    fn audit_tail(&self, n: usize) -> Result<Vec<AuditRecord>>;

    // --- API tokens ---
    fn create_token(&self, token: &ApiTokenRecord) -> Result<()>;
    fn list_tokens(&self) -> Result<Vec<ApiTokenRecord>>;
    fn revoke_token(&self, id: &str) -> Result<ApiTokenRecord>;

    // --- counters ---
    /// The next credential serial (1, 2, ...), durable so serials never repeat across restarts.
    fn next_serial(&self) -> Result<u64>;
}
