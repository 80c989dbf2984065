//! The device's secret keys on disk: the Ed25519 machine key (made once, kept for the device's
//! lifetime) and the X25519 node key (the WireGuard key, replaced at every renewal).
//!
//! Both live in the state directory as raw 32-byte files of mode 0600, written to a temporary
//! file first and renamed, so a crash never leaves a half-written key behind.

use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::OsRng;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use x25519_dalek::{PublicKey, StaticSecret};
use ztmesh_common::ids::{MachinePublicKey, WgPublicKey};

const MACHINE_KEY_FILE: &str = "machine.key";
const NODE_KEY_FILE: &str = "node.key";
/// Held (flock) by the daemon that owns the state directory.
const LOCK_FILE: &str = "daemon.lock";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("key file {0} is not 32 bytes")]
    BadLength(PathBuf),
    #[error("key file {path} has mode {mode:o}; it must not be readable by group or others")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "state directory {0} is in use by another ztmesh daemon (one daemon per state \
         directory: give this one its own --state-dir)"
    )]
    InUse(PathBuf),
}

/// The state directory's lock, held for as long as the daemon runs: two daemons with one
/// machine key would fight over one device's session and rotate each other's node key.
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

/// The device identity: signs the TLS-bound proof in `Hello`.
pub struct MachineKey(SigningKey);

impl MachineKey {
    pub fn public(&self) -> MachinePublicKey {
        MachinePublicKey(self.0.verifying_key().to_bytes())
    }

    /// Ed25519 signature over `msg` (the exported TLS keying material).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(msg).to_bytes().to_vec()
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MachineKey(SigningKey::from_bytes(&bytes))
    }

    pub fn generate() -> Self {
        MachineKey(SigningKey::generate(&mut OsRng))
    }
}

/// Public half of an X25519 node key, in wire form.
pub fn wg_public(secret: &StaticSecret) -> WgPublicKey {
    WgPublicKey(PublicKey::from(secret).to_bytes())
}

/// The key files of one state directory.
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// Uses `dir`, creating it (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::StateDir {
            path: dir.to_path_buf(),
            source,
        };
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => return Err(KeyError::NotADirectory(dir.to_path_buf())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(KeyStore {
            dir: dir.to_path_buf(),
        })
    }

    /// Takes the directory's lock, or says that another daemon holds it. The lock is the
    /// kernel's (flock), so it goes with the process, however that ends.
    pub fn lock(&self) -> Result<StateLock, KeyError> {
        let path = self.dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| KeyError::StateDir {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(KeyError::InUse(self.dir.clone())),
            Err(fs::TryLockError::Error(source)) => Err(KeyError::StateDir { path, source }),
        }
    }

    /// The machine key, made at the first call.
    pub fn machine_key(&self) -> Result<MachineKey, KeyError> {
        let path = self.dir.join(MACHINE_KEY_FILE);
        if let Some(bytes) = read_key(&path)? {
            return Ok(MachineKey::from_bytes(bytes));
        }
        let key = MachineKey::generate();
        write_key(&path, &key.0.to_bytes())?;
        tracing::info!(machine_key = %key.public(), "made a new machine key");
        Ok(key)
    }

    /// The current node key, made at the first call.
    pub fn node_key(&self) -> Result<StaticSecret, KeyError> {
        let path = self.dir.join(NODE_KEY_FILE);
        if let Some(bytes) = read_key(&path)? {
            return Ok(StaticSecret::from(bytes));
        }
        let key = StaticSecret::random_from_rng(OsRng);
        self.store_node_key(&key)?;
        Ok(key)
    }

    /// Replaces the stored node key (after the coordinator issued a credential for it).
    pub fn store_node_key(&self, key: &StaticSecret) -> Result<(), KeyError> {
        write_key(&self.dir.join(NODE_KEY_FILE), &key.to_bytes())
    }
}

/// A fresh node key for a renewal; stored only once the coordinator accepted it.
pub fn new_node_key() -> StaticSecret {
    StaticSecret::random_from_rng(OsRng)
}

fn read_key(path: &Path) -> Result<Option<[u8; 32]>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // A key others could read may have leaked: refuse rather than silently tighten it.
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = fs::read(path).map_err(io)?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::BadLength(path.to_path_buf()))?;
    Ok(Some(arr))
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file and rename.
pub(crate) fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), std::io::Error> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    Ok(())
}

fn write_key(path: &Path, bytes: &[u8; 32]) -> Result<(), KeyError> {
    write_secret_file(path, bytes).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_holder_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let held = store.lock().unwrap();
        let again = KeyStore::open(dir.path()).unwrap().lock();
        assert!(matches!(again, Err(KeyError::InUse(_))), "{again:?}");
        drop(held);
        store.lock().expect("free once the holder is gone");
    }

    #[test]
    fn keys_persist_with_mode_0600_and_open_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let m1 = store.machine_key().unwrap().public();
        let n1 = wg_public(&store.node_key().unwrap());
        assert_eq!(store.machine_key().unwrap().public(), m1);
        assert_eq!(wg_public(&store.node_key().unwrap()), n1);
        for f in [MACHINE_KEY_FILE, NODE_KEY_FILE] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let rotated = new_node_key();
        store.store_node_key(&rotated).unwrap();
        assert_eq!(wg_public(&store.node_key().unwrap()), wg_public(&rotated));

        fs::set_permissions(
            dir.path().join(MACHINE_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(store.machine_key(), Err(KeyError::TooOpen { .. })));
    }
}
