//! The sled implementation of [`Store`]: one tree per record kind, JSON values, big-endian
//! integer keys (so iteration order is numeric order), multi-tree transactions for the
//! compound operations, and `flush()` (fsync) before any write is acknowledged.

use super::*;
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use std::path::Path;
use ztmesh_common::addr::MAX_HOST_INDEX;

const T_USERS: &str = "users";
const T_DEVICES: &str = "devices";
const T_MACHINE_KEYS: &str = "machine_keys";
const T_PREAUTH: &str = "preauth";
const T_POLICY: &str = "policy";
const T_AUDIT: &str = "audit";
const T_TOKENS: &str = "tokens";
const T_META: &str = "meta";

const K_NEXT_NODE_ID: &[u8] = b"next_node_id";
const K_NEXT_HOST_INDEX: &[u8] = b"next_host_index";
const K_NEXT_SERIAL: &[u8] = b"next_serial";
const K_AUDIT_HEAD: &[u8] = b"audit_head";

/// sled-backed store in one directory.
pub struct SledStore {
    db: sled::Db,
    users: sled::Tree,
    devices: sled::Tree,
    machine_keys: sled::Tree,
    preauth: sled::Tree,
    policy: sled::Tree,
    audit: sled::Tree,
    tokens: sled::Tree,
    meta: sled::Tree,
}

/// Error raised inside a transaction closure.
enum TxErr {
    Store(StoreError),
    Preauth(PreauthError),
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<TxErr>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(TxErr::Store(e)))
}

fn from_tx(e: TransactionError<TxErr>) -> StoreError {
    match e {
        TransactionError::Abort(TxErr::Store(e)) => e,
        TransactionError::Abort(TxErr::Preauth(e)) => StoreError::Engine(e.to_string()),
        TransactionError::Storage(e) => e.into(),
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always encode as JSON")
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

fn decode_tx<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> TxResult<T> {
    match decode(tree, bytes) {
        Ok(v) => Ok(v),
        Err(e) => abort(e),
    }
}

fn u64_of(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Take the next value of a counter inside a transaction (counters start at 1).
fn take_counter(meta: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    let next = u64_of(meta.get(key)?).max(1);
    meta.insert(key, &(next + 1).to_be_bytes())?;
    Ok(next)
}

/// The store holds password hashes and TOTP secrets. New files are private through `serve`'s
/// umask; this brings a store made before that (under a umask of 022: 0755 and 0644) to
/// 0700/0600 too, so a copy of the data directory does not carry readable secrets.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let want = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o777 != want {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            make_private(&entry?.path())?;
        }
    }
    Ok(())
}

/// Opens sled, waiting a little for the lock when the same process has just dropped the
/// store: sled's background flusher lets go of the file lock a moment after the last handle
/// is gone. (Another process is kept out earlier, by `serve`'s own lock file.)
fn open_db(dir: &Path) -> Result<sled::Db> {
    let config = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match config.open() {
            // sled reports a held lock as `Other` with this text (sled 0.34).
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

impl SledStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<SledStore> {
        make_private(dir.as_ref()).map_err(|e| {
            StoreError::Engine(format!(
                "making {} private (mode 0700/0600): {e}",
                dir.as_ref().display()
            ))
        })?;
        let db = open_db(dir.as_ref())?;
        Ok(SledStore {
            users: db.open_tree(T_USERS)?,
            devices: db.open_tree(T_DEVICES)?,
            machine_keys: db.open_tree(T_MACHINE_KEYS)?,
            preauth: db.open_tree(T_PREAUTH)?,
            policy: db.open_tree(T_POLICY)?,
            audit: db.open_tree(T_AUDIT)?,
            tokens: db.open_tree(T_TOKENS)?,
            meta: db.open_tree(T_META)?,
            db,
        })
    }

    /// The underlying database, for tests that tamper with stored records directly.
    pub fn raw_tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// Make every write so far durable before acknowledging.
    fn durable(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn scan<T: DeserializeOwned>(&self, tree: &sled::Tree, name: &'static str) -> Result<Vec<T>> {
        tree.iter()
            .values()
            .map(|v| decode(name, &v?))
            .collect::<Result<Vec<T>>>()
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        tree.get(key)?.map(|v| decode(name, &v)).transpose()
    }

    /// Insert only when the key is absent, then flush.
    fn insert_new<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        what: String,
        v: &T,
    ) -> Result<()> {
        tree.compare_and_swap(key, None as Option<&[u8]>, Some(encode(v)))?
            .map_err(|_| StoreError::AlreadyExists(what))?;
        self.durable()
    }

    /// Read-modify-write of one record with compare-and-swap, retried on a concurrent change.
    fn modify<T: Serialize + DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
        what: impl Fn() -> String,
        f: &mut dyn FnMut(&mut T),
    ) -> Result<T> {
        loop {
            let Some(old) = tree.get(key)? else {
                return Err(StoreError::NotFound(what()));
            };
            let mut rec: T = decode(name, &old)?;
            f(&mut rec);
            if tree
                .compare_and_swap(key, Some(old), Some(encode(&rec)))?
                .is_ok()
            {
                self.durable()?;
                return Ok(rec);
            }
        }
    }
}

impl Store for SledStore {
    fn create_user(&self, user: &UserRecord) -> Result<()> {
        self.insert_new(
            &self.users,
            user.login.as_bytes(),
            format!("user {}", user.login),
            user,
        )
    }

    fn get_user(&self, login: &str) -> Result<Option<UserRecord>> {
        self.get(&self.users, T_USERS, login.as_bytes())
    }

    fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.scan(&self.users, T_USERS)
    }

    fn update_user(&self, login: &str, f: &mut dyn FnMut(&mut UserRecord)) -> Result<UserRecord> {
        let login_owned = login.to_owned();
        self.modify(
            &self.users,
            T_USERS,
            login.as_bytes(),
            || format!("user {login_owned}"),
            &mut |u: &mut UserRecord| {
                f(u);
                u.login = login_owned.clone();
            },
        )
    }

    fn create_device(&self, new: NewDevice) -> Result<DeviceRecord> {
        let rec = (&self.devices, &self.machine_keys, &self.meta)
            .transaction(|(devices, mkeys, meta)| {
                if mkeys.get(new.machine_key.0)?.is_some() {
                    return abort(StoreError::AlreadyExists(format!(
                        "device with machine key {}",
                        new.machine_key
                    )));
                }
                let id = NodeId(take_counter(meta, K_NEXT_NODE_ID)?);
                let host_index = take_counter(meta, K_NEXT_HOST_INDEX)?;
                let host_index = match u32::try_from(host_index) {
                    Ok(i) if i <= MAX_HOST_INDEX => i,
                    _ => return abort(StoreError::AddressSpaceExhausted),
                };
                let rec = DeviceRecord {
                    id,
                    machine_key: new.machine_key,
                    hostname: new.hostname.clone(),
                    user: new.user.clone(),
                    user_groups: new.user_groups.clone(),
                    tags: new.tags.clone(),
                    host_index,
                    custom_attrs: Default::default(),
                    last_posture: Default::default(),
                    posture_reported_at: None,
                    posture_ok: None,
                    posture_failures: Vec::new(),
                    revoked: false,
                    revoked_reason: None,
                    login_method: None,
                    login_expires_at: None,
                    refresh_token: None,
                    credential_expires_at: None,
                    credential_serial: None,
                    credential: None,
                    endpoints: Vec::new(),
                    created_at: new.created_at,
                    last_seen: None,
                };
                devices.insert(&id.0.to_be_bytes(), encode(&rec))?;
                mkeys.insert(&new.machine_key.0, &id.0.to_be_bytes())?;
                Ok(rec)
            })
            .map_err(from_tx)?;
        self.durable()?;
        Ok(rec)
    }

    fn get_device(&self, id: NodeId) -> Result<Option<DeviceRecord>> {
        self.get(&self.devices, T_DEVICES, &id.0.to_be_bytes())
    }

    fn device_by_machine_key(&self, key: &MachinePublicKey) -> Result<Option<DeviceRecord>> {
        match self.machine_keys.get(key.0)? {
            Some(id) => self.get_device(NodeId(u64_of(Some(id)))),
            None => Ok(None),
        }
    }

    fn list_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.scan(&self.devices, T_DEVICES)
    }

    fn update_device(
        &self,
        id: NodeId,
        f: &mut dyn FnMut(&mut DeviceRecord),
    ) -> Result<DeviceRecord> {
        self.modify(
            &self.devices,
            T_DEVICES,
            &id.0.to_be_bytes(),
            || format!("device {id}"),
            &mut |d: &mut DeviceRecord| {
                let (mk, hi) = (d.machine_key, d.host_index);
                f(d);
                // Identity fields are fixed at creation: the machine-key index depends on them.
                d.id = id;
                d.machine_key = mk;
                d.host_index = hi;
            },
        )
    }

    fn delete_device(&self, id: NodeId) -> Result<()> {
        (&self.devices, &self.machine_keys)
            .transaction(|(devices, mkeys)| {
                let Some(old) = devices.remove(&id.0.to_be_bytes())? else {
                    return abort(StoreError::NotFound(format!("device {id}")));
                };
                let rec: DeviceRecord = decode_tx(T_DEVICES, &old)?;
                mkeys.remove(&rec.machine_key.0)?;
                Ok(())
            })
            .map_err(from_tx)?;
        self.durable()
    }

    fn create_preauth(&self, key: &PreauthKeyRecord) -> Result<()> {
        self.insert_new(
            &self.preauth,
            key.key_hash.as_bytes(),
            format!("pre-auth key {}", key.id),
            key,
        )
    }

    fn list_preauth(&self) -> Result<Vec<PreauthKeyRecord>> {
        let mut keys: Vec<PreauthKeyRecord> = self.scan(&self.preauth, T_PREAUTH)?;
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    fn revoke_preauth(&self, id: &str) -> Result<PreauthKeyRecord> {
        let found = self
            .list_preauth()?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("pre-auth key {id}")))?;
        self.modify(
            &self.preauth,
            T_PREAUTH,
            found.key_hash.as_bytes(),
            || format!("pre-auth key {id}"),
            &mut |k: &mut PreauthKeyRecord| k.revoked = true,
        )
    }

    fn consume_preauth(
        &self,
        key: &str,
        node: NodeId,
        now: UnixMillis,
    ) -> Result<Result<PreauthKeyRecord, PreauthError>> {
        let hash = secret_hash(key);
        // A serializable transaction: of many concurrent consumers of a single-use key, one
        // commits `used = true`; the others are retried by sled and then see it used.
        let res = self.preauth.transaction(|t| {
            let Some(old) = t.get(hash.as_bytes())? else {
                return Err(ConflictableTransactionError::Abort(TxErr::Preauth(
                    PreauthError::Unknown,
                )));
            };
            let mut rec: PreauthKeyRecord = decode_tx(T_PREAUTH, &old)?;
            let refuse = |e| Err(ConflictableTransactionError::Abort(TxErr::Preauth(e)));
            if rec.revoked {
                return refuse(PreauthError::Revoked(rec.id.clone()));
            }
            if now >= rec.expires_at {
                return refuse(PreauthError::Expired(rec.id.clone()));
            }
            if rec.used && !rec.reusable {
                return refuse(PreauthError::AlreadyUsed(rec.id.clone()));
            }
            rec.used = true;
            if !rec.used_by.contains(&node) {
                rec.used_by.push(node);
            }
            t.insert(hash.as_bytes(), encode(&rec))?;
            Ok(rec)
        });
        match res {
            Ok(rec) => {
                self.durable()?;
                Ok(Ok(rec))
            }
            Err(TransactionError::Abort(TxErr::Preauth(e))) => Ok(Err(e)),
            Err(e) => Err(from_tx(e)),
        }
    }

    fn put_policy(&self, text: &str, author: &str, at: UnixMillis) -> Result<PolicyVersion> {
        let v = (&self.policy, &self.meta)
            .transaction(|(policy, _meta)| {
                let version = match policy.get(b"latest")? {
                    Some(b) => u64_of(Some(b)) + 1,
                    None => 1,
                };
                let v = PolicyVersion {
                    version,
                    text: text.to_owned(),
                    author: author.to_owned(),
                    at,
                };
                policy.insert(&version.to_be_bytes(), encode(&v))?;
                policy.insert(b"latest", &version.to_be_bytes())?;
                Ok(v)
            })
            .map_err(from_tx)?;
        self.durable()?;
        Ok(v)
    }

    fn current_policy(&self) -> Result<Option<PolicyVersion>> {
        match self.policy.get(b"latest")? {
            Some(b) => self.get(&self.policy, T_POLICY, &u64_of(Some(b)).to_be_bytes()),
            None => Ok(None),
        }
    }

    fn policy_history(&self) -> Result<Vec<PolicyVersion>> {
        self.policy
            .iter()
            .filter_map(|kv| match kv {
                Ok((k, v)) if k.len() == 8 => Some(decode(T_POLICY, &v)),
                Ok(_) => None,
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let rec = (&self.audit, &self.meta)
            .transaction(|(audit, meta)| {
                let prev: Option<AuditRecord> = match meta.get(K_AUDIT_HEAD)? {
                    Some(seq) => match audit.get(seq)? {
                        Some(b) => Some(decode_tx(T_AUDIT, &b)?),
                        None => {
                            return abort(StoreError::Corrupt {
                                tree: T_AUDIT,
                                detail: "the head record of the audit log is missing".into(),
                            })
                        }
                    },
                    None => None,
                };
                let rec = AuditRecord::chain(entry.clone(), prev.as_ref());
                audit.insert(&rec.seq.to_be_bytes(), encode(&rec))?;
                meta.insert(K_AUDIT_HEAD, &rec.seq.to_be_bytes())?;
                Ok(rec)
            })
            .map_err(from_tx)?;
        self.durable()?;
        Ok(rec)
    }

    fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        self.scan(&self.audit, T_AUDIT)
    }

    fn audit_tail(&self, n: usize) -> Result<Vec<AuditRecord>> {
        let mut out = self
            .audit
            .iter()
            .rev()
            .take(n)
            .map(|kv| decode(T_AUDIT, &kv?.1))
            .collect::<Result<Vec<AuditRecord>>>()?;
        out.reverse();
        Ok(out)
    }

    fn create_token(&self, token: &ApiTokenRecord) -> Result<()> {
        self.insert_new(
            &self.tokens,
            token.id.as_bytes(),
            format!("token {}", token.id),
            token,
        )
    }

    fn list_tokens(&self) -> Result<Vec<ApiTokenRecord>> {
        self.scan(&self.tokens, T_TOKENS)
    }

    fn revoke_token(&self, id: &str) -> Result<ApiTokenRecord> {
        self.modify(
            &self.tokens,
            T_TOKENS,
            id.as_bytes(),
            || format!("token {id}"),
            &mut |t: &mut ApiTokenRecord| t.revoked = true,
        )
    }

    fn audit_head_seq(&self) -> Result<Option<u64>> {
        Ok(self.meta.get(K_AUDIT_HEAD)?.map(|b| u64_of(Some(b))))
    }

    fn next_serial(&self) -> Result<u64> {
        let v = self.meta.update_and_fetch(K_NEXT_SERIAL, |old| {
            let cur = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
                .max(1);
            Some((cur + 1).to_be_bytes().to_vec())
        })?;
        self.durable()?;
        // The stored value is the next one to hand out; this call took the one before it.
        Ok(u64_of(v) - 1)
    }
}
