//! The underlay endpoints this node reports: every usable address of the host's interfaces
//! with the data plane's UDP port.

use std::net::{IpAddr, SocketAddr};
use ztmesh_common::addr::{OVERLAY_V4, OVERLAY_V6};

/// Whether a peer elsewhere could possibly reach this address.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified() && !OVERLAY_V4.contains(a),
        IpAddr::V6(a) => {
            !a.is_loopback()
                && !a.is_unspecified()
                && (a.segments()[0] & 0xffc0) != 0xfe80
                && !OVERLAY_V6.contains(a)
        }
    }
}

/// Endpoints of all interfaces that are up, IPv4 first.
pub fn local_endpoints(port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in addrs {
        if !ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(sa) = ifa.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if usable(&ip) {
            out.push(SocketAddr::new(ip, port));
        }
    }
    out.sort_by_key(|s| (s.is_ipv6(), *s));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_loopback_and_link_local_are_not_endpoints() {
        for bad in [
            "127.0.0.1",
            "100.64.0.5",
            "::1",
            "fe80::1",
            "fd5a:746d:6573::5",
        ] {
            assert!(!usable(&bad.parse().unwrap()), "{bad}");
        }
        for good in ["198.18.1.2", "203.0.113.7", "2001:db8::1"] {
            assert!(usable(&good.parse().unwrap()), "{good}");
        }
    }
}
