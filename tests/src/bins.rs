//! Where the binaries under test are: `target/debug/` next to the running test executable
//! (or `$ZTMESH_BIN_DIR`, or `$CARGO_TARGET_DIR/debug`). The test command builds them first.

use crate::LabError;
use std::path::{Path, PathBuf};

/// The directories searched for binaries, most specific first.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("ZTMESH_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    // A test runs as target/debug/deps/NAME-HASH, a binary as target/debug/NAME.
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            dirs.push(dir.to_path_buf());
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(Path::new(&t).join("debug"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    dirs
}

/// The path of binary `name`, or an error that says how to build it.
pub fn binary(name: &str) -> Result<PathBuf, LabError> {
    let searched = search_dirs();
    for dir in &searched {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p.canonicalize().unwrap_or(p));
        }
    }
    Err(LabError::MissingBinary {
        name: name.to_string(),
        searched,
    })
}

/// The repository root (for `tests/idp` and fixtures).
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    p.canonicalize().unwrap_or(p)
}
