//! The network lab: namespaces, NAT routers, an identity provider, and the real binaries.
//!
//! A [`Lab`] builds a small internet out of Linux network namespaces (one per "host"), runs the
//! real `ztmesh-coordinator`, `ztmesh` and IdP processes inside them with `ip netns exec`, and
//! removes everything again when it is dropped, also when a test panics. Nothing is ever
//! configured in the root namespace. See `docs/architecture.md` ("The lab") for the topology.

pub mod bins;
pub mod browser;
pub mod error;
pub mod idp;
pub mod lab;
pub mod mesh;
pub mod netns;
pub mod probe;
pub mod process;
pub mod story;
pub mod totp;
pub mod wait;

pub use error::LabError;
pub use idp::{Idp, IdpUser};
pub use lab::{Host, Lab, LabBuilder, Site};
pub use probe::{BrowseOutcome, HoldHandle, ProbeOutcome};
pub use process::Process;

/// Milliseconds since the Unix epoch; the lab's processes print times in this unit so that a
/// test can compare them with its own clock (one machine, one clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
