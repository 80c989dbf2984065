//! `ztmesh-lab`: the small tools the lab runs inside its hosts: an echo/HTTP service, probes
//! that report ok / refused / timeout as one JSON line, and a held connection that reports
//! when it is cut. Every mode ends by itself within its time limit.

mod browse;
mod flood;
mod hold;
mod malformed;
mod probe;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ztmesh network lab tools (run inside lab namespaces)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo service: TCP lines are echoed (an HTTP GET gets a small page), UDP datagrams are
    /// echoed ("whoami" is answered with the sender's address as seen here).
    Serve {
        #[arg(long, default_value = "service")]
        name: String,
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// One probe; prints {"result":"ok"|"refused"|"timeout"|"no-reply"|"error",...}.
    Probe {
        #[arg(value_enum)]
        proto: probe::Proto,
        addr: String,
        #[arg(long, default_value = "ping")]
        send: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Headless login: follow redirects and fill the login form(s) from URL on.
    Browse {
        url: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        totp_secret: Option<String>,
        /// Take the "Sign in with SSO" link of the coordinator's login page.
        #[arg(long)]
        sso: bool,
    },
    /// Connects and echoes every 50 ms; prints "connected", then "cut" when no echo came back
    /// for `cut_after_ms`, or "still-open" at `max_secs`.
    Hold {
        addr: String,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        #[arg(long, default_value_t = 300)]
        cut_after_ms: u64,
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
    },
    /// Sends `count` hostile datagrams (random, fake handshake initiations, bogus data
    /// messages, truncated) to a WireGuard port as fast as it can, for at most `max_secs`.
    Flood {
        addr: String,
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        #[arg(long, default_value_t = 10)]
        max_secs: u64,
    },
    /// Sends `count` malformed IPv4 packets from `src` to `dst` through the local stack (a raw
    /// socket), so that they leave through whatever device routes `dst`: the ztmesh TUN.
    Malformed {
        dst: String,
        #[arg(long)]
        src: String,
        #[arg(long, default_value_t = 2_000)]
        count: u64,
    },
}

/// Milliseconds since the Unix epoch, comparable with the test's clock.
pub fn now_ms() -> u64 {
    ztmesh_tests::now_ms()
}

/// Prints one JSON event line and flushes it (the lab reads the log while we run).
pub fn emit(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            name,
            tcp,
            udp,
            max_secs,
        } => serve::run(&name, &tcp, &udp, max_secs),
        Cmd::Probe {
            proto,
            addr,
            send,
            timeout_ms,
        } => probe::run(proto, &addr, &send, timeout_ms),
        Cmd::Browse {
            url,
            user,
            password,
            totp_secret,
            sso,
        } => browse::run(browse::Login {
            url,
            user,
            password,
            totp_secret,
            sso,
        }),
        Cmd::Hold {
            addr,
            interval_ms,
            cut_after_ms,
            max_secs,
        } => hold::run(&addr, interval_ms, cut_after_ms, max_secs),
        Cmd::Flood {
            addr,
            count,
            max_secs,
        } => flood::run(&addr, count, max_secs),
        Cmd::Malformed { dst, src, count } => malformed::run(&dst, &src, count.min(100_000)),
    }
}
