//! The individual posture probes: each reads a few host files and returns one fact.

use super::host::HostView;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// EFI variable holding the Secure Boot state (EFI_GLOBAL_VARIABLE GUID).
pub const SECURE_BOOT_VAR: &str =
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Parsed `/etc/os-release` (falls back to `/usr/lib/os-release`, as os-release(5) says).
pub fn os_release(host: &dyn HostView) -> BTreeMap<String, String> {
    let text = host
        .read_string("/etc/os-release")
        .or_else(|_| host.read_string("/usr/lib/os-release"))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// The running kernel's release string.
pub fn kernel_version(host: &dyn HostView) -> Option<String> {
    let s = host.read_string("/proc/sys/kernel/osrelease").ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Whether the file system mounted at `/` sits on dm-crypt (directly or below LVM).
pub fn root_fs_encrypted(host: &dyn HostView) -> bool {
    let Ok(mounts) = host.read_string("/proc/mounts") else {
        return false;
    };
    // The last entry for `/` is the one visible (later mounts stack on earlier ones).
    let Some(dev) = mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let dev = f.next()?;
        (f.next()? == "/").then_some(dev)
    }) else {
        return false;
    };
    match dm_device_of(host, dev) {
        Some(dm) => dm_is_crypt(host, &dm, 0),
        None => false,
    }
}

/// The `dm-N` block device behind a device path from the mount table, if it is one.
fn dm_device_of(host: &dyn HostView, dev: &str) -> Option<String> {
    if let Some(name) = dev.strip_prefix("/dev/") {
        if name.starts_with("dm-") && !name.contains('/') {
            return Some(name.to_string());
        }
    }
    let mapper = dev.strip_prefix("/dev/mapper/")?;
    host.list("/sys/block")
        .ok()?
        .into_iter()
        .filter(|b| b.starts_with("dm-"))
        .find(|b| {
            host.read_string(&format!("/sys/block/{b}/dm/name"))
                .is_ok_and(|n| n.trim() == mapper)
        })
}

fn dm_is_crypt(host: &dyn HostView, dm: &str, depth: u32) -> bool {
    // Device-mapper stacks are shallow; the bound only guards against a cyclic fixture.
    if depth > 8 {
        return false;
    }
    if host
        .read_string(&format!("/sys/block/{dm}/dm/uuid"))
        .is_ok_and(|u| u.trim().starts_with("CRYPT-"))
    {
        return true;
    }
    let slaves = host
        .list(&format!("/sys/block/{dm}/slaves"))
        .unwrap_or_default();
    !slaves.is_empty()
        && slaves
            .iter()
            .all(|s| s.starts_with("dm-") && dm_is_crypt(host, s, depth + 1))
}

/// Whether the firmware booted with Secure Boot enabled.
pub fn secure_boot(host: &dyn HostView) -> bool {
    // efivarfs files start with 4 bytes of attributes; the variable's value is one byte.
    host.read(SECURE_BOOT_VAR)
        .is_ok_and(|b| b.len() >= 5 && b[b.len() - 1] == 1)
}

/// The configured EDR/AV agent names that have a running process.
pub fn running_agents(host: &dyn HostView, names: &[String]) -> Vec<String> {
    let Ok(entries) = host.list("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .iter()
        .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| host.read_string(&format!("/proc/{pid}/comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| names.iter().any(|n| n == c))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Whole days since the package database last changed, `None` when there is none.
pub fn days_since_update(host: &dyn HostView, now: SystemTime) -> Option<u64> {
    let newest = [
        "/var/lib/dpkg/status",
        "/var/log/apt/history.log",
        "/var/lib/rpm/rpmdb.sqlite",
        "/var/lib/pacman/local",
    ]
    .iter()
    .filter_map(|p| host.mtime(p).ok())
    .max()?;
    let age = now.duration_since(newest).unwrap_or(Duration::ZERO);
    Some(age.as_secs() / 86_400)
}
