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

#[test]
fn a_malformed_pin_is_refused_before_anything_is_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ztmesh.sock");
    let fp = "ab".repeat(32);
    for pin in [
        "sha256:zz".to_string(),
        format!("sha256:{}", &fp[..62]),
        format!("sha256:{fp}ab"),
        format!("sha256:{}", "zz".repeat(32)),
        format!("sha256:{fp}&fp=sha256:zz"),
    ] {
        let url = format!("ztmesh://127.0.0.1:7443?fp={pin}");
        let (code, err) = ztmesh(&[
            "up",
            "--coordinator",
            &url,
            "--socket",
            sock.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{pin}: {err}");
        assert!(err.contains("invalid join URL"), "{pin}: {err}");
        assert!(!err.contains("daemon is not running"), "{pin}: {err}");
    }
    let (_, err) = ztmesh(&[
        "up",
        "--coordinator",
        "ztmesh://127.0.0.1:7443?fp=sha256:zz",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert!(err.contains("sha256: followed by 64 hex digits"), "{err}");
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    for (path, kind) in [(file.as_path(), "regular file"), (dir.path(), "directory")] {
        let (code, err) = ztmesh(&["status", "--socket", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("{} is not a socket but a {kind}", path.display())),
            "{err}"
        );
        assert!(!err.contains("stale"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn fatal_errors_start_with_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ztmesh.sock");
    let (_, err) = ztmesh(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
