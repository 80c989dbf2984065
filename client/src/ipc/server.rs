//! The daemon side of the control socket: a unix socket that only root, the daemon's own user
//! or members of a configured group may open, checked twice: by the socket file's mode and by
//! the connecting process's credentials (SO_PEERCRED).

use super::proto::{Reply, Request};
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Longest request line accepted (requests are tiny; this bounds a hostile client).
const MAX_REQUEST: u64 = 64 * 1024;

/// Handles one request, sending its replies to the channel.
pub type Handler = Arc<
    dyn Fn(Request, mpsc::Sender<Reply>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// Who may use the control socket besides root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The daemon's own effective uid (root in production, the test user in tests).
    pub owner_uid: u32,
    /// A group whose members may also connect (socket mode 0660 then).
    pub group: Option<u32>,
}

impl Access {
    /// Whether a peer with these credentials may use the socket.
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.owner_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
    }
}

/// The supplementary groups of a process (from `/proc/PID/status`).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:").map(str::to_owned))
        })
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates the socket at `path` with the access rules applied to the file.
pub fn bind(path: &Path, access: Access) -> io::Result<UnixListener> {
    // Never replace what is not a socket: that file is someone's data, not a dead daemon's.
    if let Some(kind) = super::not_a_socket(path) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("it is a {kind}, not a socket"),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another daemon is listening on it",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // A socket file left by a daemon that died: nobody listens, so it is safe to replace.
        Err(_) => std::fs::remove_file(path)?,
    }
    let listener = UnixListener::bind(path)?;
    let mode = if access.group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = access.group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(io::Error::from)?;
    }
    Ok(listener)
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: UnixListener, access: Access, handler: Handler, path: PathBuf) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials on control socket; refused");
                continue;
            }
        };
        if !access.allows(cred.uid(), cred.gid(), cred.pid()) {
            tracing::warn!(uid = cred.uid(), gid = cred.gid(), socket = %path.display(),
                "control socket connection refused: not root, owner or control group");
            let mut s = stream;
            let _ = write_reply(
                &mut s,
                &Reply::Error {
                    message: "permission denied".into(),
                },
            )
            .await;
            continue;
        }
        tokio::spawn(handle_conn(stream, handler.clone()));
    }
}

async fn handle_conn(stream: UnixStream, handler: Handler) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    if reader.read_line(&mut line).await.is_err() || line.is_empty() {
        return;
    }
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let _ = write_reply(
                &mut w,
                &Reply::Error {
                    message: format!("bad request: {e}"),
                },
            )
            .await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel(16);
    let work = tokio::spawn(handler(req, tx));
    while let Some(reply) = rx.recv().await {
        if write_reply(&mut w, &reply).await.is_err() {
            // The CLI went away (e.g. Ctrl-C on `up`): stop waiting on its behalf.
            work.abort();
            return;
        }
    }
}

async fn write_reply<W: AsyncWriteExt + Unpin>(w: &mut W, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}
