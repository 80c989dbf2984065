//! The coordinator join URL: `ztmesh://HOST:PORT?fp=sha256:HEX`, where HEX is the SHA-256 of
//! the coordinator's TLS certificate (DER), which the client pins.

use std::fmt;
use ztmesh_common::cert_pin::{CertFingerprint, PinParseError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinUrl {
    /// DNS name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// SHA-256 of the coordinator certificate.
    pub fingerprint: CertFingerprint,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid join URL {url:?}: {why} (expected ztmesh://HOST:PORT?fp=sha256:HEX)")]
pub struct JoinUrlError {
    url: String,
    why: &'static str,
}

impl JoinUrl {
    pub fn parse(url: &str) -> Result<Self, JoinUrlError> {
        let err = |why| JoinUrlError {
            url: url.to_string(),
            why,
        };
        let rest = url
            .trim()
            .strip_prefix("ztmesh://")
            .ok_or_else(|| err("scheme must be ztmesh://"))?;
        let (authority, query) = rest
            .split_once('?')
            .ok_or_else(|| err("missing ?fp=sha256:..."))?;
        let authority = authority.trim_end_matches('/');
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once("]:").ok_or_else(|| err("missing port"))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| err("missing port"))?
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        let port: u16 = port.parse().map_err(|_| err("bad port"))?;
        let mut pins = query.split('&').filter_map(|kv| kv.strip_prefix("fp="));
        let fp_hex = pins.next().ok_or_else(|| err("missing fp parameter"))?;
        if pins.next().is_some() {
            return Err(err("more than one fp parameter"));
        }
        // The colon may arrive percent-encoded from a URL that went through a browser or a
        // shell tool.
        let pin = match fp_hex.strip_prefix("sha256%3A") {
            Some(digest) => format!("sha256:{digest}"),
            None => fp_hex.to_string(),
        };
        let fingerprint: CertFingerprint = pin.parse().map_err(|e| {
            err(match e {
                PinParseError::MissingPrefix => "fingerprint must start with sha256:",
                PinParseError::BadDigest => "fingerprint must be sha256: followed by 64 hex digits",
            })
        })?;
        Ok(JoinUrl {
            host: host.to_string(),
            port,
            fingerprint,
        })
    }
}

impl fmt::Display for JoinUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "ztmesh://{host}:{}?fp={}", self.port, self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_join_urls() {
        let fp = "ab".repeat(32);
        let u = JoinUrl::parse(&format!("ztmesh://198.18.0.10:7443?fp=sha256:{fp}")).unwrap();
        assert_eq!(u.host, "198.18.0.10");
        assert_eq!(u.port, 7443);
        assert_eq!(u.fingerprint, CertFingerprint([0xab; 32]));
        assert_eq!(JoinUrl::parse(&u.to_string()).unwrap(), u);
        let v6 = JoinUrl::parse(&format!("ztmesh://[::1]:7443?fp=sha256:{fp}")).unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(JoinUrl::parse(&v6.to_string()).unwrap(), v6);
        for bad in [
            format!("https://h:1?fp=sha256:{fp}"),
            format!("ztmesh://h?fp=sha256:{fp}"),
            "ztmesh://h:1".to_string(),
            "ztmesh://h:1?fp=sha256:abcd".to_string(),
            "ztmesh://h:1?fp=sha256:zz".to_string(),
            format!("ztmesh://h:1?fp=sha256:{}", "zz".repeat(32)),
            format!("ztmesh://h:1?fp=sha256:{fp}00"),
            format!("ztmesh://h:1?fp=sha256:{fp}&x=1&fp=sha256:zz"),
            format!("ztmesh://h:1?fp=sha256:{}", fp.replace("abab", "ab:ab")),
            format!("ztmesh://h:1?fp=sha256:+{}", &fp[1..]),
            format!("ztmesh://h:1?fp=md5:{fp}"),
            format!("ztmesh://:1?fp=sha256:{fp}"),
        ] {
            assert!(JoinUrl::parse(&bad).is_err(), "{bad}");
        }
    }
}
