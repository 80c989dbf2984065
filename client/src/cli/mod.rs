//! The `ztmesh` command line: `daemon` runs the daemon; every other command talks to it over
//! the control socket.

mod commands;
mod render;

use crate::control::JoinUrl;
use crate::daemon::config::{DaemonOptions, FileConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::daemon::config::DEFAULT_SOCKET;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ztmesh";

#[derive(Debug, Parser)]
#[command(name = "ztmesh", version, about = "ztmesh zero-trust mesh client")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long, env = "ZTMESH_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (TUN device, data plane, control session, control socket).
    Daemon {
        #[command(flatten)]
        socket: SocketArg,
        /// Where keys and state are kept.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Name of the TUN device.
        #[arg(long, default_value = "ztmesh0")]
        tun: String,
        /// UDP port of the WireGuard data plane.
        #[arg(long, default_value_t = 41641)]
        port: u16,
        /// Overlay (TUN) MTU. The default fits a 1500-byte underlay; larger tunnel packets
        /// than the underlay carries are fragmented, so lower it only to avoid that. IPv6
        /// inside the tunnel needs at least 1280.
        #[arg(long, default_value_t = ztmesh_common::addr::OVERLAY_MTU,
              value_parser = clap::value_parser!(u16).range(1280..=9000))]
        mtu: u16,
        /// Root directory the posture probes read (a fixture directory for tests and demos).
        #[arg(long, default_value = "/")]
        posture_root: PathBuf,
        /// TOML configuration file (control socket group, EDR process names, custom facts).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Join the mesh of a coordinator: prints the login URL and waits, or uses a pre-auth key.
    Up {
        #[command(flatten)]
        socket: SocketArg,
        /// Join URL, ztmesh://HOST:PORT?fp=sha256:HEX
        #[arg(long, value_parser = JoinUrl::parse)]
        coordinator: JoinUrl,
        /// Pre-auth key (servers, connectors); also read from ZTMESH_AUTH_KEY.
        #[arg(long, env = "ZTMESH_AUTH_KEY", hide_env_values = true)]
        auth_key: Option<String>,
        /// Hostname to register (default: the system hostname).
        #[arg(long, value_parser = parse_hostname)]
        hostname: Option<String>,
        /// Give up after this long, e.g. 90s, 5m or 1h30m (a bare number is seconds; default
        /// and 0: wait as long as it takes).
        #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Option<Duration>,
    },
    /// Leave the mesh.
    Down {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show this device, its peers and recently denied flows.
    Status {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Show the posture this device would report.
    Posture {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        json: bool,
    },
    /// ICMP echo to a peer (by name or overlay address) through the tunnel.
    Ping {
        #[command(flatten)]
        socket: SocketArg,
        peer: String,
        /// Number of echo requests.
        #[arg(short = 'c', long, default_value_t = 3)]
        count: u32,
    },
}

/// `--timeout`: a duration such as `90s` or `1h30m`, or plain seconds.
fn parse_hostname(s: &str) -> Result<String, String> {
    ztmesh_common::wire::check_hostname(s).map(|()| s.to_string())
}

/// Pre-auth keys are `ztk_` and a few dozen URL-safe characters; anything far longer or not
/// printable ASCII is a paste gone wrong. The key is a secret, so the error never shows it
/// (which is why this is not a clap value parser: clap's error repeats the value).
pub(crate) fn parse_auth_key(s: &str) -> Result<String, String> {
    const MAX: usize = 256;
    let key = s.trim();
    if key.is_empty() {
        return Err("the pre-auth key is empty".into());
    }
    if key.len() > MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "this is not a pre-auth key ({} bytes; a key is at most {MAX} printable ASCII \
             characters, as `ztmesh-coordinator preauth create` prints it)",
            s.len()
        ));
    }
    Ok(key.to_string())
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => ztmesh_common::policy::parse_duration(s),
    }
}

/// Process exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    /// `up` was refused (posture or identity); the reasons were printed.
    pub const REFUSED: i32 = 2;
    pub const TIMEOUT: i32 = 3;
}

/// A fatal error for the user: the error and its causes, each said once. Many messages
/// already include their source (`config file F: <the TOML error>`); repeating it would print
/// the same text twice.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Daemon {
            socket,
            state_dir,
            tun,
            port,
            mtu,
            posture_root,
            config,
        } => {
            let config = match config {
                Some(p) => FileConfig::load(&p)?,
                None => FileConfig::default(),
            };
            let opts = DaemonOptions {
                state_dir,
                socket: socket.socket,
                tun_name: tun,
                listen_port: port,
                mtu,
                posture_root,
                config,
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::daemon::run(opts))?;
            Ok(exit::OK)
        }
        other => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(commands::run(other))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_report_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(17);
        let keys = crate::keys::KeyError::Io {
            path: "/s/machine.key".into(),
            source: io,
        };
        let e = anyhow::Error::new(keys).context("machine key");
        assert_eq!(
            error_report(&e),
            "machine key: key file /s/machine.key: File exists (os error 17)"
        );
        // A cause that its message does not include is still said.
        let bare = anyhow::Error::new(std::io::Error::from_raw_os_error(2)).context("reading X");
        assert_eq!(
            error_report(&bare),
            "reading X: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn timeouts_read_as_durations_or_seconds() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("-1").is_err());
    }

    #[test]
    fn hostnames_and_auth_keys_are_checked_before_the_daemon_is_asked() {
        assert_eq!(parse_hostname("web-1.lab"), Ok("web-1.lab".into()));
        for bad in [
            "",
            "bad name/../x",
            &"a".repeat(64),
            "caf\u{e9}",
            "x\u{1b}[2J",
        ] {
            let e = parse_hostname(bad).unwrap_err();
            assert!(!e.contains('\u{1b}'), "{e}");
        }
        assert_eq!(
            parse_auth_key(" ztk_abc-DEF_123\n"),
            Ok("ztk_abc-DEF_123".into())
        );
        let secret = format!("ztk_{}", "s".repeat(100_000));
        let e = parse_auth_key(&secret).unwrap_err();
        assert!(e.contains("100004 bytes") && !e.contains("sss"), "{e}");
        assert!(parse_auth_key("ztk_with space").is_err());
        assert!(parse_auth_key("   ").is_err());
    }
}
