//! `ztmesh`: the client daemon and its CLI.

use clap::Parser;

fn main() {
    let cli = ztmesh_client::cli::Cli::parse();
    if !matches!(cli.command, ztmesh_client::cli::Command::Daemon { .. }) {
        restore_default_sigpipe();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZTMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match ztmesh_client::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", ztmesh_client::cli::error_report(&e));
            ztmesh_client::cli::exit::ERROR
        }
    };
    std::process::exit(code);
}

/// Rust ignores SIGPIPE, so `ztmesh status | head -1` would make `println!` panic on the
/// closed pipe. A short-lived command should just end there, as other Unix tools do. The
/// daemon keeps SIGPIPE ignored: it must never die because a reader went away.
fn restore_default_sigpipe() {
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
