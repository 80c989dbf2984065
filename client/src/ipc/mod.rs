//! The local control socket between `ztmesh` CLI commands and the daemon.

pub mod client;
pub mod proto;
pub mod server;

pub use proto::{Reply, Request, StatusReport};
