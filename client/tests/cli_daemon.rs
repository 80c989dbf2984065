//! `ztmesh daemon` and `ztmesh up` as a user meets them: bad options are refused before
//! anything starts, with one clear message each; a coordinator that cannot be reached is
//! reported while `up` waits. Every daemon runs in a network namespace of its own
//! (`unshare --net`), so even a daemon that wrongly starts creates its TUN device there, and
//! the namespace goes away with the process.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ztmesh");

fn in_own_netns() -> Command {
    let mut c = Command::new("unshare");
    c.args(["--net", "--", BIN]).env_remove("ZTMESH_SOCKET");
    c
}

/// Waits for `child` at most `limit`; kills it if it is still running then.
fn wait_bounded(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code, err)
}

/// `ztmesh daemon ARGS` that must fail at once; returns its stderr.
fn daemon_refuses(args: &[&str]) -> String {
    let child = in_own_netns()
        .arg("daemon")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{args:?} did not fail: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    err
}

/// Options for a daemon that would start, all inside `dir`.
fn good_options(dir: &Path) -> Vec<String> {
    let posture = dir.join("posture-root");
    std::fs::create_dir_all(&posture).unwrap();
    [
        "--socket",
        dir.join("ztmesh.sock").to_str().unwrap(),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--posture-root",
        posture.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn with<'a>(opts: &'a [String], flag: &'a str, value: &'a str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    let mut it = opts.iter();
    while let Some(k) = it.next() {
        let v = it.next().unwrap();
        out.push(k);
        out.push(if k == flag { value } else { v });
    }
    if !out.contains(&flag) {
        out.extend([flag, value]);
    }
    out
}

#[test]
fn a_bad_config_file_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let opts = good_options(dir.path());
    let cfg = dir.path().join("ztmesh.toml");
    std::fs::write(&cfg, "[control]\ngroup = \n").unwrap();
    let err = daemon_refuses(&with(&opts, "--config", cfg.to_str().unwrap()));
    assert!(
        err.contains(&format!("config file {}", cfg.display())),
        "{err}"
    );
    assert_eq!(err.matches("TOML parse error").count(), 1, "{err}");
    assert_eq!(err.matches("group = ").count(), 1, "{err}");
}

#[test]
fn a_state_dir_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let opts = good_options(dir.path());
    let file = dir.path().join("state-file");
    std::fs::write(&file, "keep me").unwrap();
    let err = daemon_refuses(&with(&opts, "--state-dir", file.to_str().unwrap()));
    assert!(
        err.contains(&format!(
            "state directory {} is not a directory",
            file.display()
        )),
        "{err}"
    );
    assert!(!err.contains("File exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn a_socket_in_a_missing_directory_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let opts = good_options(dir.path());
    let missing = dir.path().join("no-such-dir");
    let sock = missing.join("s.sock");
    let err = daemon_refuses(&with(&opts, "--socket", sock.to_str().unwrap()));
    assert!(
        err.contains(&format!("directory {} does not exist", missing.display())),
        "{err}"
    );
    assert!(
        !missing.exists(),
        "the daemon created {}",
        missing.display()
    );
}

#[test]
fn a_socket_path_that_is_a_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let opts = good_options(dir.path());
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let err = daemon_refuses(&with(&opts, "--socket", file.to_str().unwrap()));
    assert!(err.contains("is a regular file, not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn a_missing_posture_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = good_options(dir.path());
    let missing = dir.path().join("no-such-root");
    let err = daemon_refuses(&with(&opts, "--posture-root", missing.to_str().unwrap()));
    assert!(
        err.contains(&format!(
            "posture root {}: no such directory",
            missing.display()
        )),
        "{err}"
    );
}

/// A daemon that started; stopped (SIGTERM) and reaped on drop.
struct Daemon {
    child: Option<Child>,
    socket: String,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let opts = good_options(dir);
        let socket = dir.join("ztmesh.sock").to_str().unwrap().to_string();
        let child = in_own_netns()
            .arg("daemon")
            .args(&opts)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ztmesh(&["status", "--socket", &d.socket]).0 != 0 {
            assert!(Instant::now() < deadline, "the daemon did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// Stops the daemon; its stderr.
    fn stop(mut self) -> String {
        let child = self.child.take().unwrap();
        // `unshare` execs the daemon, so this pid is the daemon itself.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let (code, err) = wait_bounded(child, Duration::from_secs(10));
        assert_eq!(code, Some(0), "{err}");
        err
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ztmesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("ZTMESH_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn up_says_why_it_waits_and_gives_up_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());

    // Before joining: the name alone, nothing dangling after it.
    let (code, out, err) = ztmesh(&["status", "--socket", &d.socket]);
    assert_eq!(code, 0, "{err}");
    let me = out.lines().find(|l| l.starts_with("self:")).unwrap();
    assert!(!me.ends_with(' ') && !me.ends_with('-'), "{me:?}");

    // The namespace has no network at all: every attempt (several within the timeout) fails
    // at once, for the same reason.
    let fp = "ab".repeat(32);
    let url = format!("ztmesh://coordinator.invalid:7443?fp=sha256:{fp}");
    let started = Instant::now();
    let (code, _, err) = ztmesh(&[
        "up",
        "--coordinator",
        &url,
        "--socket",
        &d.socket,
        "--timeout",
        "5s",
    ]);
    let took = started.elapsed();
    assert_eq!(code, 3, "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let reports: Vec<&str> = err
        .lines()
        .filter(|l| l.ends_with("; retrying") && !l.starts_with("error: "))
        .collect();
    assert_eq!(reports.len(), 1, "each reason once: {err}");
    let reason = reports[0].strip_suffix("; retrying").unwrap();
    let last = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(last.starts_with("error: gave up after 5s"), "{err}");
    assert!(last.contains(reason), "the timeout says what failed: {err}");

    let log = d.stop();
    assert!(log.contains("ztmesh daemon ready"), "{log}");
    // Logs to a pipe carry no colour codes.
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn a_second_daemon_on_a_busy_wireguard_port_fails_with_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let opts = |d: &Path, tun: &str| {
        std::fs::create_dir_all(d).unwrap();
        let mut o = good_options(d);
        o.extend(["--tun", tun, "--port", "41641"].map(String::from));
        o.join(" ")
    };
    // Both daemons in one namespace of their own: the first holds UDP 41641, the second
    // asks for it too. The first is stopped once the second has ended (or after 15 s).
    let script = format!(
        "{BIN} daemon {} >/dev/null 2>&1 & first=$!; \
         for i in $(seq 1 100); do [ -S {a}/ztmesh.sock ] && break; sleep 0.1; done; \
         timeout 15 {BIN} daemon {}; echo \"second exited $?\" >&2; kill $first; wait $first",
        opts(&a, "zt0"),
        opts(&b, "zt1"),
        a = a.display(),
    );
    let child = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, err) = wait_bounded(child, Duration::from_secs(40));
    assert!(err.contains("second exited 1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("error: "), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_and_the_first_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(dir.path());
    // Same state directory (same machine key), its own socket and namespace.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let opts = good_options(dir.path());
    let socket = other.join("ztmesh.sock");
    let err = daemon_refuses(&with(&opts, "--socket", socket.to_str().unwrap()));
    assert!(
        err.contains("is in use by another ztmesh daemon") && err.contains("--state-dir"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "said once: {err}");
    assert!(!socket.exists(), "the refused daemon made nothing");
    let (code, _, stderr) = ztmesh(&["status", "--socket", &first.socket]);
    assert_eq!(code, 0, "the first daemon still answers: {stderr}");
    first.stop();
}

#[test]
fn a_reader_that_went_away_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    // `ztmesh status | head -0`, made deterministic: the pipe's read end is closed before
    // the command writes anything.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let out = Command::new(BIN)
        .args(["status", "--socket", &daemon.socket])
        .env_remove("ZTMESH_SOCKET")
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    daemon.stop();
}

#[test]
fn a_malformed_auth_key_or_hostname_is_refused_before_the_daemon_is_asked() {
    let join = format!("ztmesh://198.18.0.10:7443?fp=sha256:{}", "ab".repeat(32));
    let secret = format!("ztk_{}", "s3cr3t".repeat(20_000));
    let (code, _, err) = ztmesh(&[
        "up",
        "--coordinator",
        &join,
        "--auth-key",
        &secret,
        "--socket",
        "/nonexistent/ztmesh.sock",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a pre-auth key"), "{err}");
    assert!(!err.contains("s3cr3t"), "the key is never shown: {err}");
    let (code, _, err) = ztmesh(&[
        "up",
        "--coordinator",
        &join,
        "--hostname",
        "bad name/../x",
        "--socket",
        "/nonexistent/ztmesh.sock",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("is not valid (1-63 letters"), "{err}");
}
