//! `ztmesh-client`: the ztmesh device side.
//!
//! - [`daemon`]: `ztmesh daemon`, owning keys, data plane and control session.
//! - [`cli`]: the `ztmesh` command line.
//! - [`control`]: the control client (QUIC to the coordinator, login, renewal, reports).
//! - [`posture`]: posture probes.
//! - [`keys`]: machine and node keys on disk.
//! - [`ipc`]: the local control socket between CLI and daemon.

pub mod cli;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod ipc;
pub mod keys;
pub mod posture;
