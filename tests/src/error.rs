//! The lab's error type: what failed while building a topology or supervising a process.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}` did not finish within {secs} s")]
    CommandTimeout { cmd: String, secs: u64 },
    #[error("binary `{name}` not found (looked in {searched:?}); build it first: cargo build --workspace --bins")]
    MissingBinary {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("timed out after {secs:.1} s waiting for {what}")]
    Timeout { what: String, secs: f64 },
    #[error("unknown lab host `{0}`")]
    UnknownHost(String),
    #[error("lab setup: {0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
