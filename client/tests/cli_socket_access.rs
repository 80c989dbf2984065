//! The control socket admits only root, the daemon's own user, or members of the configured
//! group: by the socket file's mode, and again by the peer's credentials (SO_PEERCRED) so a
//! loosened file mode alone does not open it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use ztmesh_client::ipc::client;
use ztmesh_client::ipc::proto::{Reply, Request};
use ztmesh_client::ipc::server::{self, Access, Handler};

/// An unprivileged uid/gid ("nobody"/"nogroup" on Debian).
const NOBODY: u32 = 65534;

fn handler() -> Handler {
    Arc::new(|req, tx| {
        Box::pin(async move {
            let _ = tx
                .send(Reply::Done {
                    message: format!("handled {req:?}"),
                })
                .await;
        })
    })
}

fn start(path: &Path, access: Access) -> tokio::task::JoinHandle<()> {
    let l = server::bind(path, access).unwrap();
    tokio::spawn(server::serve(l, access, handler(), path.to_path_buf()))
}

/// Runs `ztmesh status` against `sock` as `uid`/`gid`; returns (exit code, stderr).
async fn status_as(sock: &Path, uid: u32, gid: u32) -> (i32, String) {
    let sock = sock.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_ztmesh"))
            .args(["status", "--socket", sock.to_str().unwrap()])
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn access_rules() {
    let a = Access {
        owner_uid: 0,
        group: None,
    };
    assert!(a.allows(0, 0, None));
    assert!(!a.allows(1000, 1000, None));
    let g = Access {
        owner_uid: 0,
        group: Some(4242),
    };
    assert!(g.allows(1000, 4242, None));
    assert!(!g.allows(1000, 1000, None));
    let own = Access {
        owner_uid: 1000,
        group: None,
    };
    assert!(own.allows(1000, 1000, None));
}

#[tokio::test]
async fn socket_is_0600_and_other_users_are_refused_even_with_an_open_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("ztmesh.sock");
    let me = nix::unistd::geteuid().as_raw();
    let task = start(
        &sock,
        Access {
            owner_uid: me,
            group: None,
        },
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The owner is served.
    let r = client::call(&sock, &Request::Status).await.unwrap();
    assert!(matches!(r, Reply::Done { .. }), "{r:?}");
    if !is_root() {
        // Switching users needs root (CI runs as root); the rest cannot be exercised here.
        task.abort();
        return;
    }
    // Another user cannot even open the 0600 socket.
    let (code, err) = status_as(&sock, NOBODY, NOBODY).await;
    assert_ne!(code, 0);
    assert!(err.contains("permission denied"), "{err}");
    // Even with the file mode opened up, the peer-credential check refuses the connection.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = status_as(&sock, NOBODY, NOBODY).await;
    assert_ne!(code, 0);
    assert!(err.contains("permission denied"), "{err}");
    task.abort();
}

#[tokio::test]
async fn members_of_the_control_group_are_admitted() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("ztmesh.sock");
    let group = 4242;
    let task = start(
        &sock,
        Access {
            owner_uid: 0,
            group: Some(group),
        },
    );
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), group);
    let (code, err) = status_as(&sock, NOBODY, group).await;
    assert_eq!(code, 1, "the fake handler's reply is not a status: {err}");
    assert!(
        err.contains("unexpected reply"),
        "admitted past the socket: {err}"
    );
    let (code, err) = status_as(&sock, NOBODY, NOBODY).await;
    assert_ne!(code, 0);
    assert!(err.contains("permission denied"), "{err}");
    task.abort();
}

#[test]
fn bind_never_replaces_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let access = Access {
        owner_uid: 0,
        group: None,
    };
    let err = server::bind(&file, access).unwrap_err();
    assert!(
        err.to_string().contains("regular file, not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}
