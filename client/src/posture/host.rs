//! Where posture probes read from: the real host (`/`) or a fixture directory that mirrors
//! the same paths, so tests and demos can describe a device without being one.
//!
//! Fixture layout (every file optional; a missing file makes its probe report "not present"):
//! - `etc/os-release`                     os-release(5) of the device
//! - `proc/sys/kernel/osrelease`          kernel version, one line
//! - `proc/mounts`                        mount table; the entry for `/` names the root device
//! - `sys/block/dm-N/dm/{name,uuid}`      device-mapper devices (`uuid` starting `CRYPT-` = dm-crypt)
//! - `sys/block/dm-N/slaves/dm-M`         stacking (LVM on LUKS): empty files or directories
//! - `sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c`
//!   (4 attribute bytes, then 1 = enabled)
//! - `proc/<pid>/comm`                    running processes, for EDR/AV agents
//! - `var/lib/dpkg/status`, `var/log/apt/history.log`  their mtime = last package update
//! - `nft-ruleset`, `iptables-save`, `ip6tables-save`, `iptables-legacy-save`,
//!   `ip6tables-legacy-save`                what those commands would print (fixture only; the
//!   system root runs them itself, see [`super::firewall`])

use super::firewall::FirewallDump;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Read-only access to the files the probes look at.
pub trait HostView: Send + Sync {
    /// Whether this is the real system (`/`) rather than a fixture.
    fn is_system(&self) -> bool;
    /// Contents of an absolute host path (e.g. `/etc/os-release`).
    fn read(&self, path: &str) -> io::Result<Vec<u8>>;
    /// Last modification time of an absolute host path.
    fn mtime(&self, path: &str) -> io::Result<SystemTime>;
    /// Names of the entries of an absolute host directory.
    fn list(&self, path: &str) -> io::Result<Vec<String>>;
    /// A firewall dump (what `nft list ruleset`, `iptables-save`... print), `None` when it
    /// cannot be read (tool missing, no permission).
    fn firewall_dump(&self, dump: FirewallDump) -> Option<String>;

    fn read_string(&self, path: &str) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&self.read(path)?).into_owned())
    }
}

/// A host view rooted at a directory (`/` for the real system).
#[derive(Clone, Debug)]
pub struct RootDir {
    root: PathBuf,
}

impl RootDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootDir { root: root.into() }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

impl HostView for RootDir {
    fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(path))
    }

    fn mtime(&self, path: &str) -> io::Result<SystemTime> {
        std::fs::metadata(self.path(path))?.modified()
    }

    fn list(&self, path: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.path(path))? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    fn firewall_dump(&self, dump: FirewallDump) -> Option<String> {
        if !self.is_system() {
            return self.read_string(dump.fixture_file()).ok();
        }
        // Runs in the daemon's network namespace, which is the one whose traffic we protect.
        let (cmd, args) = dump.command();
        let out = std::process::Command::new(cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
