//! `ztmesh-coordinator`: the coordinator library behind the `ztmesh-coordinator` binary.
//!
//! - [`store`]: durable state (sled) behind the [`store::Store`] trait.
//! - [`audit`]: the append-only, hash-chained audit log.
//! - [`bootstrap`]: the data directory, signing key, TLS certificate, admin token, join URL.
//! - [`config`]: serve configuration (flags, `ZTMESH_*` variables, TOML file).
//! - [`control`]: the control plane (QUIC, sessions, admission, credentials, netmaps).
//! - [`identity`]: the OIDC relying party.
//! - [`accounts`]: local accounts (argon2 + TOTP) and the login pages.
//! - [`api`]: the admin HTTP JSON API.
//! - [`admin_cli`]: the admin CLI over that API.
//! - [`policy_cli`]: policy subcommands.
//! - [`serve`]: wires everything together and runs until SIGTERM.
//! - [`web_page`]: the HTML frame of the login pages.

pub mod accounts;
pub mod admin_cli;
pub mod api;
pub mod audit;
pub mod bootstrap;
pub mod config;
pub mod control;
pub mod identity;
pub mod policy_cli;
pub mod serve;
pub mod store;
pub mod web_page;
