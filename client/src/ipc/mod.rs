//! The local control socket between `ztmesh` CLI commands and the daemon.

pub mod client;
pub mod proto;
pub mod server;

pub use proto::{Reply, Request, StatusReport};

/// What `path` is instead, if it exists and is not a socket.
pub(crate) fn not_a_socket(path: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_socket() {
        None
    } else if t.is_dir() {
        Some("directory")
    } else if t.is_file() {
        Some("regular file")
    } else {
        Some("special file")
    }
}
