//! `ztmesh-coordinator`: the control server and its admin CLI.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use ztmesh_coordinator::policy_cli::{self, PolicyFileCmd};

#[derive(Debug, Parser)]
#[command(name = "ztmesh-coordinator", version, about = "ztmesh coordinator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a policy file or explain a decision.
    Policy {
        #[command(subcommand)]
        cmd: PolicyFileCmd,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Policy { cmd } => policy_cli::run(cmd),
    }
}
