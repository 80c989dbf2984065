//! The CLI without a daemon: every command fails with a clear message and a non-zero exit.

use std::process::Command;

fn ztmesh(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ztmesh"))
        .args(args)
        .env_remove("ZTMESH_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_says_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ztmesh.sock");
    let sock = sock.to_str().unwrap();
    let fp = "ab".repeat(32);
    let url = format!("ztmesh://127.0.0.1:7443?fp=sha256:{fp}");
    for args in [
        vec!["status", "--socket", sock],
        vec!["status", "--json", "--socket", sock],
        vec!["down", "--socket", sock],
        vec!["posture", "--socket", sock],
        vec!["ping", "peer", "--socket", sock],
        vec!["up", "--coordinator", &url, "--socket", sock],
    ] {
        let (code, err) = ztmesh(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("daemon is not running") && err.contains(sock),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_stale_socket_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ztmesh.sock");
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let (code, err) = ztmesh(&["status", "--socket", sock.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("stale control socket"), "{err}");
}

#[test]
fn bad_arguments_are_refused_by_the_parser() {
    let (code, err) = ztmesh(&["up"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--coordinator"), "{err}");
}
