//! The data directory: made on first start with everything the coordinator needs to prove who
//! it is (Ed25519 signing key, self-signed TLS certificate and key) and the admin token, all
//! mode 0600; and the join URL that carries the certificate's fingerprint to clients.

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use rand::RngCore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use ztmesh_common::cert_pin::CertFingerprint;

pub const SIGNING_KEY_FILE: &str = "signing.key";
pub const TLS_CERT_FILE: &str = "tls.crt.der";
pub const TLS_CERT_PEM_FILE: &str = "tls.crt.pem";
pub const TLS_KEY_FILE: &str = "tls.key.der";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The public address the join URL names, recorded at every `serve` start for `join-url`.
pub const PUBLIC_ADDR_FILE: &str = "public-addr";
/// The HTTP listener's address, recorded at every `serve` start so the admin CLI finds it.
pub const HTTP_ADDR_FILE: &str = "http-addr";
pub const DB_DIR: &str = "db";
/// Locked by the running `serve` (see [`lock`]).
pub const LOCK_FILE: &str = "serve.lock";

/// Prefix of the admin token, so a leaked one is recognisable in scanners.
const ADMIN_TOKEN_PREFIX: &str = "ztm_admin_";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    // The I/O error is part of the message, not a `source`: printed once, not twice by
    // error-chain printers.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "another ztmesh-coordinator is using the data directory {path}: stop it first, or give \
         this one its own --data-dir"
    )]
    InUse { path: PathBuf },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |error| BootstrapError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The coordinator's secrets, loaded from (or made in) the data directory.
pub struct Identity {
    pub signing_key: SigningKey,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    pub admin_token: String,
}

impl Identity {
    /// The TLS private key (a fresh copy: rustls takes it by value).
    pub fn tls_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// `sha256:HEX` of the certificate.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }
}

/// `sha256:HEX` (lower-case) of a DER certificate: what clients pin.
pub fn fingerprint(cert_der: &[u8]) -> String {
    CertFingerprint::of(cert_der).to_string()
}

/// `ztmesh://HOST:PORT?fp=sha256:HEX`.
pub fn join_url(public_addr: &str, cert_der: &[u8]) -> String {
    format!("ztmesh://{public_addr}?fp={}", fingerprint(cert_der))
}

/// Write a file with mode 0600 atomically (temp file, fsync, rename), so a crash never
/// leaves a half-written secret behind.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), BootstrapError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // An existing temp file keeps its old mode; force 0600.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, BootstrapError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// A new admin (or API) token: 256 random bits, URL-safe.
pub fn new_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// Create the data directory (0700) if it is missing.
fn create_dir(dir: &Path) -> Result<(), BootstrapError> {
    if dir.exists() && !dir.is_dir() {
        return Err(BootstrapError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Held by a running `serve` for its data directory: a second coordinator on the same
/// directory is refused before it touches anything (keys, recorded addresses, the store).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// Take the data directory for this process (creating it if missing).
pub fn lock(dir: &Path) -> Result<DirLock, BootstrapError> {
    create_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(BootstrapError::InUse {
            path: dir.to_owned(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

/// Create the data directory (0700) and whatever of the secrets is missing; load the rest.
/// `public_host` goes into the certificate's subject alternative names when it is made.
/// Returns the identity and whether anything was created.
pub fn init(dir: &Path, public_host: &str) -> Result<(Identity, bool), BootstrapError> {
    create_dir(dir)?;
    let mut created = false;

    let key_path = dir.join(SIGNING_KEY_FILE);
    let signing_key = match read(&key_path)? {
        Some(b) => {
            let seed: [u8; 32] = b.try_into().map_err(|_| BootstrapError::Invalid {
                path: key_path.clone(),
                detail: "not a 32-byte Ed25519 seed".into(),
            })?;
            SigningKey::from_bytes(&seed)
        }
        None => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            write_secret(&key_path, &key.to_bytes())?;
            created = true;
            key
        }
    };

    let cert_path = dir.join(TLS_CERT_FILE);
    let tls_key_path = dir.join(TLS_KEY_FILE);
    let (cert_der, key_der) = match (read(&cert_path)?, read(&tls_key_path)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let mut names = vec![public_host.to_owned()];
            for n in ["localhost", "127.0.0.1", "::1"] {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_owned());
                }
            }
            let ck = rcgen::generate_simple_self_signed(names)?;
            let cert = ck.cert.der().to_vec();
            let key = ck.key_pair.serialize_der();
            // Key first: a crash in between leaves a key without a cert, which is remade.
            write_secret(&tls_key_path, &key)?;
            write_secret(&dir.join(TLS_CERT_PEM_FILE), ck.cert.pem().as_bytes())?;
            write_secret(&cert_path, &cert)?;
            created = true;
            (cert, key)
        }
    };

    let token_path = dir.join(ADMIN_TOKEN_FILE);
    let admin_token = match read(&token_path)? {
        Some(b) => String::from_utf8(b)
            .map_err(|_| BootstrapError::Invalid {
                path: token_path.clone(),
                detail: "not UTF-8".into(),
            })?
            .trim()
            .to_owned(),
        None => {
            let t = new_token(ADMIN_TOKEN_PREFIX);
            write_secret(&token_path, format!("{t}\n").as_bytes())?;
            created = true;
            t
        }
    };
    if admin_token.len() < 16 {
        return Err(BootstrapError::Invalid {
            path: token_path,
            detail: "admin token is too short".into(),
        });
    }

    Ok((
        Identity {
            signing_key,
            cert_der: CertificateDer::from(cert_der),
            key_der,
            admin_token,
        },
        created,
    ))
}

/// The join URL of an initialised data directory (for `join-url`).
pub fn stored_join_url(dir: &Path) -> Result<String, BootstrapError> {
    let cert_path = dir.join(TLS_CERT_FILE);
    let cert = read(&cert_path)?.ok_or_else(|| BootstrapError::Invalid {
        path: cert_path,
        detail: "no certificate: run `ztmesh-coordinator serve` first".into(),
    })?;
    let addr_path = dir.join(PUBLIC_ADDR_FILE);
    let addr = read(&addr_path)?.ok_or_else(|| BootstrapError::Invalid {
        path: addr_path.clone(),
        detail: "no public address recorded: run `ztmesh-coordinator serve` first".into(),
    })?;
    let addr = String::from_utf8_lossy(&addr).trim().to_owned();
    Ok(join_url(&addr, &cert))
}

/// Read a small text file written by [`record`].
pub fn read_recorded(dir: &Path, name: &str) -> Result<Option<String>, BootstrapError> {
    Ok(read(&dir.join(name))?.map(|b| String::from_utf8_lossy(&b).trim().to_owned()))
}

/// Record a small fact about the running server (public address, HTTP address) in the dir.
pub fn record(dir: &Path, name: &str, value: &str) -> Result<(), BootstrapError> {
    write_secret(&dir.join(name), format!("{value}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_0600_secrets_and_second_start_reuses_them() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let (a, created) = init(&dir, "coord.example").unwrap();
        assert!(created);
        for f in [
            SIGNING_KEY_FILE,
            TLS_CERT_FILE,
            TLS_KEY_FILE,
            ADMIN_TOKEN_FILE,
        ] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let (b, created) = init(&dir, "other.example").unwrap();
        assert!(!created);
        assert_eq!(a.signing_key.to_bytes(), b.signing_key.to_bytes());
        assert_eq!(a.cert_der, b.cert_der);
        assert_eq!(a.admin_token, b.admin_token);
        let url = join_url("coord.example:7443", &a.cert_der);
        assert!(url.starts_with("ztmesh://coord.example:7443?fp=sha256:"));
        assert_eq!(
            url.len(),
            "ztmesh://coord.example:7443?fp=sha256:".len() + 64
        );
    }
}
