//! The CLI side of the control socket.

use super::not_a_socket;
use super::proto::{Reply, Request};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("the ztmesh daemon is not running (no control socket at {0}); start it with `ztmesh daemon`")]
    NotRunning(PathBuf),
    #[error("the ztmesh daemon is not running (stale control socket at {0}); start it with `ztmesh daemon`")]
    Stale(PathBuf),
    #[error("{path} is not a socket but a {kind}; pass the daemon's control socket with --socket")]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("permission denied on the control socket {0}: run as root or as a member of the daemon's control group")]
    Denied(PathBuf),
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon closed the connection without an answer")]
    Closed,
    #[error("unreadable reply from the daemon: {0}")]
    BadReply(String),
}

/// One request in flight.
pub struct Session {
    lines: Lines<BufReader<OwnedReadHalf>>,
    path: PathBuf,
    /// A failed write of the request. The daemon may have answered (a refusal) and closed
    /// before the request went out: its answer is still readable, so the error is reported
    /// only when there is none.
    write_error: Option<io::Error>,
}

/// Connects to the daemon and sends `req`.
pub async fn send(path: &Path, req: &Request) -> Result<Session, IpcError> {
    let stream =
        UnixStream::connect(path)
            .await
            .map_err(|e| match (e.kind(), not_a_socket(path)) {
                (io::ErrorKind::NotFound, _) => IpcError::NotRunning(path.to_path_buf()),
                // Connecting to a file or a directory is refused just like a stale socket.
                (_, Some(kind)) => IpcError::NotASocket {
                    path: path.to_path_buf(),
                    kind,
                },
                (io::ErrorKind::ConnectionRefused, None) => IpcError::Stale(path.to_path_buf()),
                (io::ErrorKind::PermissionDenied, None) => IpcError::Denied(path.to_path_buf()),
                _ => IpcError::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| IpcError::BadReply(e.to_string()))?;
    line.push(b'\n');
    let write_error = match w.write_all(&line).await {
        Ok(()) => None,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Some(e)
        }
        Err(e) => {
            return Err(IpcError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    Ok(Session {
        lines: BufReader::new(r).lines(),
        path: path.to_path_buf(),
        write_error,
    })
}

impl Session {
    /// The next reply; `None` once the daemon has closed the connection.
    pub async fn next(&mut self) -> Result<Option<Reply>, IpcError> {
        let line = match self.lines.next_line().await {
            Ok(line) => line,
            Err(e) => {
                return Err(IpcError::Io {
                    path: self.path.clone(),
                    source: self.write_error.take().unwrap_or(e),
                })
            }
        };
        match line {
            None => match self.write_error.take() {
                Some(e) => Err(IpcError::Io {
                    path: self.path.clone(),
                    source: e,
                }),
                None => Ok(None),
            },
            Some(l) => serde_json::from_str(&l)
                .map(Some)
                .map_err(|e| IpcError::BadReply(e.to_string())),
        }
    }
}

/// Sends `req` and returns its single reply.
pub async fn call(path: &Path, req: &Request) -> Result<Reply, IpcError> {
    let mut s = send(path, req).await?;
    s.next().await?.ok_or(IpcError::Closed)
}
