//! The daemon's options (command line) and its optional TOML configuration file.

use crate::posture::PostureConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

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
