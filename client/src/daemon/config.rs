//! The daemon's options (command line) and its optional TOML configuration file.

use crate::posture::PostureConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the control socket lives unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ztmesh/ztmesh.sock";

/// Where the daemon keeps its files and which devices it uses.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub tun_name: String,
    pub listen_port: u16,
    /// Overlay (TUN) MTU.
    pub mtu: u16,
    /// Root the posture probes read from (`/` = this host).
    pub posture_root: PathBuf,
    pub config: FileConfig,
}

/// A path option that does not name what it must.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error("posture root {0}: no such directory")]
    NoPostureRoot(PathBuf),
    #[error("control socket {0}: it is a {1}, not a socket")]
    NotASocket(PathBuf, &'static str),
    #[error("control socket {socket}: directory {dir} does not exist")]
    NoSocketDir { socket: PathBuf, dir: PathBuf },
    #[error("control socket {socket}: cannot create directory {dir}: {source}")]
    SocketDir {
        socket: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl DaemonOptions {
    /// Checks the paths before anything starts, and makes the default socket's directory.
    /// Only the default location is the daemon's to create: another one that is missing is
    /// most likely a typo, which must not leave directories behind.
    pub fn check_paths(&self) -> Result<(), OptionError> {
        if !self.posture_root.is_dir() {
            return Err(OptionError::NoPostureRoot(self.posture_root.clone()));
        }
        if let Some(kind) = crate::ipc::not_a_socket(&self.socket) {
            return Err(OptionError::NotASocket(self.socket.clone(), kind));
        }
        let Some(dir) = self.socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.socket == Path::new(DEFAULT_SOCKET) {
            std::fs::create_dir_all(dir).map_err(|source| OptionError::SocketDir {
                socket: self.socket.clone(),
                dir: dir.to_path_buf(),
                source,
            })
        } else if dir.is_dir() {
            Ok(())
        } else {
            Err(OptionError::NoSocketDir {
                socket: self.socket.clone(),
                dir: dir.to_path_buf(),
            })
        }
    }
}

/// The configuration file, e.g.
/// ```toml
/// [control]
/// group = "ztmesh"            # members may use the control socket (mode 0660)
/// [posture]
/// edr_processes = ["falcon-sensor"]
/// [posture.custom]
/// managed = true              # reported as custom:managed
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub control: ControlSocketConfig,
    #[serde(default)]
    pub posture: PostureConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSocketConfig {
    /// Group name or numeric gid allowed to use the control socket besides root.
    pub group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("control socket group {0:?} does not exist")]
    NoSuchGroup(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The control group's gid, if one is configured.
    pub fn control_gid(&self) -> Result<Option<u32>, ConfigError> {
        let Some(g) = &self.control.group else {
            return Ok(None);
        };
        if let Ok(gid) = g.parse::<u32>() {
            return Ok(Some(gid));
        }
        match nix::unistd::Group::from_name(g) {
            Ok(Some(grp)) => Ok(Some(grp.gid.as_raw())),
            _ => Err(ConfigError::NoSuchGroup(g.clone())),
        }
    }
}
