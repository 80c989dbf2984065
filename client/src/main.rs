//! `ztmesh`: the client daemon and its CLI.

use clap::Parser;

fn main() {
    let cli = ztmesh_client::cli::Cli::parse();
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
