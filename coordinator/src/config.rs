//! Configuration of `serve`: every field is a flag, a `ZTMESH_*` environment variable (clap
//! `env`) and a key of the TOML file given with `--config`. Flags and variables win over the
//! file; the file wins over the defaults. The `[oidc]` table's flags are in [`oidc`].

mod oidc;

pub use oidc::OidcArgs;

use crate::identity::oidc::OidcConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONTROL_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:7080";

/// `serve` flags. Every field optional here so that the file can supply it.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Data directory (keys, certificate, admin token, database).
    #[arg(long, env = "ZTMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "ZTMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// UDP address of the QUIC control endpoint [default: 0.0.0.0:7443].
    #[arg(long, env = "ZTMESH_CONTROL_LISTEN")]
    pub control_listen: Option<SocketAddr>,
    /// TCP address of the HTTP listener (admin API, login pages) [default: 0.0.0.0:7080].
    #[arg(long, env = "ZTMESH_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// HOST:PORT clients reach the control endpoint at (goes into the join URL)
    /// [default: this machine's host name and the control port].
    #[arg(long, env = "ZTMESH_PUBLIC_ADDR")]
    pub public_addr: Option<String>,
    /// Public base URL of the HTTP listener, for login links
    /// [default: https://HOST:HTTP_PORT, or http:// when HTTP is plain].
    #[arg(long, env = "ZTMESH_HTTP_BASE_URL")]
    pub http_base_url: Option<String>,
    /// Serve plain HTTP on a non-loopback address, because a TLS-terminating proxy is in front.
    #[arg(long, env = "ZTMESH_HTTP_INSECURE_BEHIND_PROXY")]
    pub http_insecure_behind_proxy: bool,
    /// Serve plain HTTP on a loopback address instead of TLS (tests, a local proxy).
    #[arg(long, env = "ZTMESH_HTTP_PLAIN_LOOPBACK")]
    pub http_plain_loopback: bool,
    /// Policy file installed on first start (when no policy is stored yet).
    #[arg(long, env = "ZTMESH_POLICY")]
    pub policy: Option<PathBuf>,
    /// PEM certificate chain for the HTTP listener (e.g. from a public CA, so browsers trust the
    /// login pages) [default: the coordinator's self-signed certificate].
    #[arg(long, env = "ZTMESH_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of --http-tls-cert.
    #[arg(long, env = "ZTMESH_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "ZTMESH_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub oidc: OidcArgs,
}

/// The TOML file. Unknown keys are errors, so a typo does not silently fall back to a default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub control_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub public_addr: Option<String>,
    pub http_base_url: Option<String>,
    #[serde(default)]
    pub http_insecure_behind_proxy: bool,
    #[serde(default)]
    pub http_plain_loopback: bool,
    pub policy: Option<PathBuf>,
    pub http_tls_cert: Option<PathBuf>,
    pub http_tls_key: Option<PathBuf>,
    #[serde(default)]
    pub log_json: bool,
    /// `[oidc]`: the OpenID Connect relying party; absent = local accounts only.
    pub oidc: Option<OidcConfig>,
}

/// Whether the HTTP listener speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMode {
    Tls,
    Plain,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub control_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub public_addr: String,
    pub http_base_url: String,
    /// Whether `http_base_url` was derived (then `serve` fixes its port once bound, for port 0).
    pub http_base_derived: bool,
    pub http_mode: HttpMode,
    pub initial_policy: Option<PathBuf>,
    /// A configured certificate chain + key (PEM) for the HTTP listener, instead of the
    /// coordinator's own.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    pub log_json: bool,
    pub oidc: Option<OidcConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Parse a TOML configuration file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// This machine's host name (for the default public address).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The host part of `HOST:PORT` (IPv6 in brackets allowed).
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// A DNS name: dot-separated labels of letters, digits, `-` (not at a label's ends) and `_`
/// (found in internal host names), at most 253 characters. A trailing dot is allowed.
fn is_dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The public address goes verbatim into the join URL every client is given, so it must be
/// `HOST:PORT` (a DNS name or an IPv4 address) or `[IPv6]:PORT`, with a port other than 0.
pub fn check_public_addr(addr: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        ConfigError::Invalid(format!(
            "public address {addr:?} {why}: give HOST:PORT (a DNS name or an IP address; \
             IPv6 as [ADDR]:PORT), e.g. coord.example.com:7443"
        ))
    };
    let port = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| bad("has no port after the bracketed IPv6 address"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("has an invalid IPv6 address in brackets"));
        }
        p
    } else {
        let (h, p) = addr.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        if h.contains(':') {
            return Err(bad("is an IPv6 address without brackets"));
        }
        if !is_dns_name(h) {
            return Err(bad("has an invalid host name"));
        }
        p
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(bad("has an invalid port (1-65535)")),
    }
}

/// The base URL is the start of every login link sent to users: an absolute `http` or
/// `https` URL with a host, and no credentials, query or fragment (the path is appended to).
pub fn check_base_url(url: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        ConfigError::Invalid(format!(
            "HTTP base URL {url:?} {why}: give an absolute http(s) URL without query or \
             fragment, e.g. https://coord.example.com or https://example.com/ztmesh"
        ))
    };
    let u = reqwest::Url::parse(url).map_err(|e| bad(&format!("does not parse ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("is not http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("has credentials in it"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    Ok(())
}

impl Config {
    /// Merge flags/variables over the file over the defaults, and check the result.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .ok_or_else(|| ConfigError::Invalid("--data-dir is required".into()))?;
        let control_listen = args
            .control_listen
            .or(file.control_listen)
            .unwrap_or_else(|| DEFAULT_CONTROL_LISTEN.parse().expect("valid default"));
        let http_listen = args
            .http_listen
            .or(file.http_listen)
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.parse().expect("valid default"));
        let explicit_public = args.public_addr.clone().or(file.public_addr);
        // Only a given value is checked: the derived one is built from a socket address (its
        // port may be 0 in tests that bind any port) or this machine's host name.
        if let Some(a) = &explicit_public {
            check_public_addr(a)?;
        }
        let public_addr = explicit_public.unwrap_or_else(|| {
            if control_listen.ip().is_unspecified() {
                format!("{}:{}", host_name(), control_listen.port())
            } else {
                control_listen.to_string()
            }
        });
        let behind_proxy = args.http_insecure_behind_proxy || file.http_insecure_behind_proxy;
        let plain_loopback = args.http_plain_loopback || file.http_plain_loopback;
        let http_mode = if behind_proxy {
            HttpMode::Plain
        } else if plain_loopback {
            if !http_listen.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "plain HTTP is allowed only on a loopback address ({http_listen} is not); \
                     use --http-insecure-behind-proxy when a TLS-terminating proxy is in front"
                )));
            }
            HttpMode::Plain
        } else {
            HttpMode::Tls
        };
        let explicit_base = args.http_base_url.clone().or(file.http_base_url);
        if let Some(b) = &explicit_base {
            check_base_url(b)?;
        }
        let http_base_derived = explicit_base.is_none();
        let http_base_url = explicit_base
            .unwrap_or_else(|| {
                let scheme = match http_mode {
                    HttpMode::Tls => "https",
                    HttpMode::Plain => "http",
                };
                let host = if http_listen.ip().is_unspecified() {
                    host_of(&public_addr).to_owned()
                } else {
                    http_listen.ip().to_string()
                };
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("{scheme}://{host}:{}", http_listen.port())
            })
            .trim_end_matches('/')
            .to_owned();
        let http_tls = match (
            args.http_tls_cert.clone().or(file.http_tls_cert),
            args.http_tls_key.clone().or(file.http_tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "http_tls_cert and http_tls_key go together".into(),
                ))
            }
        };
        let oidc = args.oidc.merge(file.oidc, &http_base_url)?;
        Ok(Config {
            data_dir,
            http_tls,
            control_listen,
            http_listen,
            public_addr,
            http_base_url,
            http_base_derived,
            http_mode,
            initial_policy: args.policy.clone().or(file.policy),
            log_json: args.log_json || file.log_json,
            oidc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_apply() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(
            &f,
            "data_dir = \"/tmp/x\"\nhttp_listen = \"127.0.0.1:9000\"\npublic_addr = \"coord:7443\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(f),
            public_addr: Some("flag.example:1".into()),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.public_addr, "flag.example:1");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.control_listen.to_string(), DEFAULT_CONTROL_LISTEN);
        assert_eq!(c.http_mode, HttpMode::Tls);
        assert_eq!(c.http_base_url, "https://127.0.0.1:9000");
    }

    #[test]
    fn plain_http_only_on_loopback_or_behind_proxy() {
        let mut args = ServeArgs {
            data_dir: Some("/d".into()),
            http_listen: Some("0.0.0.0:7080".parse().unwrap()),
            http_plain_loopback: true,
            ..Default::default()
        };
        assert!(Config::resolve(&args).is_err());
        args.http_listen = Some("127.0.0.1:7080".parse().unwrap());
        assert_eq!(Config::resolve(&args).unwrap().http_mode, HttpMode::Plain);
        args.http_listen = Some("0.0.0.0:7080".parse().unwrap());
        args.http_plain_loopback = false;
        args.http_insecure_behind_proxy = true;
        assert_eq!(Config::resolve(&args).unwrap().http_mode, HttpMode::Plain);
    }

    #[test]
    fn public_addr_must_be_host_port() {
        for ok in [
            "coord.example.com:7443",
            "coord:1",
            "10.0.0.1:7443",
            "[::1]:7443",
            "[fd00::5]:65535",
            "my_host.lan.:7443",
        ] {
            assert!(check_public_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "bad host:port",
            "bad host:7443",
            "host",
            "host:",
            "host:0",
            "host:70000",
            "host:+1",
            ":7443",
            "::1:7443",
            "[::1]",
            "[nothex]:7443",
            "-a.example:7443",
            "a..b:7443",
            "a/b:7443",
            "a?fp=x:7443",
        ] {
            assert!(check_public_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_url_must_be_absolute_http_without_query() {
        for ok in [
            "https://coord.example.com",
            "http://127.0.0.1:7080",
            "https://[::1]:7080/",
            "https://example.com/ztmesh",
        ] {
            assert!(check_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "coord.example.com",
            "/login",
            "ftp://coord.example.com",
            "https://coord.example.com/?a=b",
            "https://coord.example.com/#x",
            "https://user:pw@coord.example.com",
            "https://",
            "",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_addresses_in_the_file_are_refused_too() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(&f, "data_dir = \"/tmp/x\"\npublic_addr = \"bad host:1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(f.clone()),
            ..Default::default()
        };
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("public address"), "{e}");
        std::fs::write(
            &f,
            "data_dir = \"/tmp/x\"\nhttp_base_url = \"javascript:alert(1)\"\n",
        )
        .unwrap();
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("HTTP base URL"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(&f, "data_dri = \"/tmp/x\"\n").unwrap();
        assert!(read_file(&f).is_err());
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("a.b:7443"), "a.b");
    }
}
