//! What the daemon remembers across restarts besides its keys: which coordinator it joined,
//! under which hostname, and whether the user wants it up (so a restart rejoins by itself).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The join URL of the last `ztmesh up`.
    pub coordinator: Option<String>,
    pub hostname: Option<String>,
    /// Whether the device should be joined (`up`) or not (`down`, revoked).
    pub up: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {source}")]
pub struct PersistError {
    path: PathBuf,
    source: std::io::Error,
}

impl Persisted {
    pub fn load(dir: &Path) -> Result<Self, PersistError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| PersistError {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(PersistError { path, source }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), PersistError> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).expect("plain data serializes");
        crate::keys::write_secret_file(&path, &bytes)
            .map_err(|source| PersistError { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_defaults_to_down() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Persisted::load(dir.path()).unwrap(), Persisted::default());
        let p = Persisted {
            coordinator: Some("ztmesh://h:1?fp=sha256:00".into()),
            hostname: Some("alice".into()),
            up: true,
        };
        p.save(dir.path()).unwrap();
        assert_eq!(Persisted::load(dir.path()).unwrap(), p);
    }
}
