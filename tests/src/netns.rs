//! Network namespaces: the `ip` commands that create and delete them, commands run inside
//! them, and the removal of namespaces left behind by test runs that died.
//!
//! Every namespace the lab creates is named `ztm<PID>x<SEQ>-<host>`, so that parallel labs
//! (other processes, or other tests of the same process) never collide, and a namespace whose
//! creating process is gone can be recognised as stale.

use crate::LabError;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Prefix of every namespace the lab creates.
pub const NS_PREFIX: &str = "ztm";

/// Default limit for one setup command; a hung `ip` or `nft` fails the test instead of hanging it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `program args` to completion (bounded by `timeout`) and returns its output, whatever
/// its exit status.
pub fn output(program: &str, args: &[&str], timeout: Duration) -> Result<Output, LabError> {
    let cmd_text = format!("{program} {}", args.join(" "));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Setup(format!("cannot start `{cmd_text}`: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet
            // (the waiting thread still holds it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(LabError::CommandTimeout {
                cmd: cmd_text,
                secs: timeout.as_secs(),
            })
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = output(program, args, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` (in the root namespace: only ever used with `-n NS` or `netns` subcommands).
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// Runs `program args` inside namespace `ns`; must succeed.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Creates namespace `ns` with its loopback up.
pub fn add(ns: &str) -> Result<(), LabError> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// The namespaces that exist (names only).
pub fn list() -> Vec<String> {
    // /run/netns holds one file per named namespace; reading it avoids parsing `ip` output.
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pids of processes running in namespace `ns`.
pub fn pids(ns: &str) -> Vec<libc::pid_t> {
    ip(&["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in `ns` (all of them were started by the lab that owns it), then
/// deletes it, which also destroys its veths, bridges, TUN devices and firewall state.
pub fn delete(ns: &str) {
    for pid in pids(ns) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = ip(&["netns", "del", ns]);
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
}

/// The pid encoded in a lab namespace name (`ztm<PID>x<SEQ>-...`).
pub fn owner_pid(ns: &str) -> Option<libc::pid_t> {
    let rest = ns.strip_prefix(NS_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    rest.split_once('-')?.0.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: libc::pid_t) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces of lab runs whose process is gone. Returns the names removed.
pub fn clean_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in list() {
        if let Some(pid) = owner_pid(&ns) {
            if !pid_alive(pid) {
                delete(&ns);
                removed.push(ns);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("ztm1234x0-coord"), Some(1234));
        assert_eq!(owner_pid("ztm1234x17-r1"), Some(1234));
        assert_eq!(owner_pid("ztm1234-coord"), None);
        assert_eq!(owner_pid("fz-1-c1"), None);
        assert_eq!(owner_pid("ztmAx0-c"), None);
    }
}
