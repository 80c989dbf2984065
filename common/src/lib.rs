//! `ztmesh-common`: what the coordinator and the client must agree on, and nothing that does I/O.
//!
//! - [`cert_pin`]: certificate fingerprints (`sha256:HEX`) and, with `tls-pin`, the rustls
//!   verifier that accepts only the pinned certificate.
//! - [`ids`]: identifiers and key newtypes.
//! - [`addr`]: overlay address plan and allocation helpers.
//! - [`credential`]: the signed node credential and its verification.
//! - [`netmap`]: a node's view of the mesh (peers + inbound filter), as sent on the wire.
//! - [`posture`]: the posture attribute model.
//! - [`wire`]: control protocol messages and their length-prefixed framing.
//! - [`policy`]: the policy language (parse, validate, test, compile, explain).

pub mod addr;
pub mod cert_pin;
pub mod credential;
pub mod ids;
pub mod netmap;
pub mod policy;
pub mod posture;
pub mod time;
pub mod wire;
