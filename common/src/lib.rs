//! `ztmesh-common`: what the coordinator and the client must agree on, and nothing that does I/O.
//!
//! - [`ids`]: identifiers and key newtypes.
//! - [`addr`]: overlay address plan and allocation helpers.
//! - [`credential`]: the signed node credential and its verification.
//! - [`netmap`]: a node's view of the mesh (peers + inbound filter), as sent on the wire.
//! - [`posture`]: the posture attribute model.
//! - [`wire`]: control protocol messages and their length-prefixed framing.
//! - [`policy`]: the policy language (parse, validate, test, compile, explain).

pub mod addr;
pub mod credential;
pub mod ids;
pub mod netmap;
pub mod policy;
pub mod posture;
pub mod time;
pub mod wire;
