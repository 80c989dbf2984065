//! `ztmesh-coordinator`: the control server (`serve`) and its admin CLI.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::{error, info};
use ztmesh_coordinator::admin_cli::client::ApiArgs;
use ztmesh_coordinator::admin_cli::{
    self, AdminCmd, AuditCmd, DevicesCmd, FlowsArgs, PolicyCmd, PreauthCmd, TokensCmd, UsersCmd,
};
use ztmesh_coordinator::config::{Config, ServeArgs};
use ztmesh_coordinator::{bootstrap, serve};

#[derive(Debug, Parser)]
#[command(name = "ztmesh-coordinator", version, about = "ztmesh coordinator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the coordinator (QUIC control endpoint + HTTP admin API and login pages).
    Serve(Box<ServeArgs>),
    /// Print the join URL of a data directory again.
    JoinUrl {
        #[arg(long, env = "ZTMESH_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// The policy: get|set|history over the API; check|explain on a file.
    Policy {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Devices: list|show|revoke|set-attr|unset-attr.
    Devices {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Local accounts: add|list|disable.
    Users {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Pre-auth keys: create|list|revoke.
    Preauth {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: PreauthCmd,
    },
    /// The audit log: tail|verify.
    Audit {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Flow events the devices' packet filters reported (denied and allowed), newest first.
    Flows {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        args: FlowsArgs,
    },
    /// API tokens: create|list|revoke.
    Tokens {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: TokensCmd,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZTMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in log files.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("cannot install signal handlers; stop with kill -9");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

/// Threads for blocking work (store writes, each ending in an fsync). tokio's default of 512
/// lets a burst of logins start hundreds of threads, each with its own stack and allocator
/// state; beyond a few dozen the disk, not the thread count, is the limit.
const BLOCKING_THREADS: usize = 32;

/// glibc gives threads that allocate arenas of their own (up to eight per core), and each
/// arena keeps what is freed into it. Two arenas serve the coordinator as fast and keep about
/// 6 KiB less resident per connected device (docs/benchmarks.md). An explicit
/// `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator tunable; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// Everything `serve` creates in the data directory holds secrets or what guards them (the
/// signing key, the admin token, the database with TOTP secrets and password hashes): private
/// to the service user whatever umask it was started with. Set first, before any file or
/// directory is made (by us or by sled), so no file is ever briefly readable by others.
fn private_umask() {
    // SAFETY: umask only sets this process's file-mode mask; no thread has started yet.
    unsafe {
        libc::umask(0o077);
    }
}

/// Short-lived commands die quietly of SIGPIPE, as Unix tools do, when the reader of their
/// output goes away (`... | head -1`). Rust ignores SIGPIPE, so without this every print to
/// a closed pipe panics. Restoring the default covers every write (println!, eprintln!, the
/// libraries') where handling `BrokenPipe` at each print would miss some; socket writes are
/// unaffected (std and tokio send with MSG_NOSIGNAL and see EPIPE as an error). Not for
/// `serve`: a long-running server must never be killed by a client that disconnected.
fn default_sigpipe() {
    // SAFETY: resets one signal's disposition to the default; no thread has started yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn serve_cmd(args: ServeArgs) -> ExitCode {
    private_umask();
    let cfg = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let log_json = cfg.log_json;
    init_logging(log_json);
    limit_malloc_arenas();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: as a structured record for JSON log collectors, else as plain text.
            if log_json {
                error!("{e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        default_sigpipe();
    }
    let (api, cmd) = match cli.cmd {
        Cmd::Serve(args) => return serve_cmd(*args),
        Cmd::JoinUrl { data_dir } => {
            return match bootstrap::stored_join_url(&data_dir) {
                Ok(url) => {
                    println!("{url}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Policy { api, cmd } => (api, AdminCmd::Policy(cmd)),
        Cmd::Devices { api, cmd } => (api, AdminCmd::Devices(cmd)),
        Cmd::Users { api, cmd } => (api, AdminCmd::Users(cmd)),
        Cmd::Preauth { api, cmd } => (api, AdminCmd::Preauth(cmd)),
        Cmd::Audit { api, cmd } => (api, AdminCmd::Audit(cmd)),
        Cmd::Tokens { api, cmd } => (api, AdminCmd::Tokens(cmd)),
        Cmd::Flows { api, args } => (api, AdminCmd::Flows(args)),
    };
    admin_cli::run(&api, cmd)
}
