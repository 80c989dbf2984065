//! The overlay address plan: IPv4 from the shared address space 100.64.0.0/10 (RFC 6598) and
//! IPv6 from the project's ULA /48. A node's two addresses derive from one host index, so that
//! either one identifies the node.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 overlay prefix.
pub const OVERLAY_V4: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 10) {
    Ok(n) => n,
    Err(_) => panic!("constant prefix"),
};

/// The project's ULA /48 (RFC 4193): fd5a:746d:6573::/48.
pub const OVERLAY_V6: Ipv6Net =
    match Ipv6Net::new(Ipv6Addr::new(0xfd5a, 0x746d, 0x6573, 0, 0, 0, 0, 0), 48) {
        Ok(n) => n,
        Err(_) => panic!("constant prefix"),
    };

/// Overlay MTU: fits a 1500-byte underlay with WireGuard's 80 bytes of IPv6 overhead.
pub const OVERLAY_MTU: u16 = 1420;

/// Largest host index that maps into 100.64.0.0/10 (index 0 is never used).
pub const MAX_HOST_INDEX: u32 = (1 << 22) - 2;

/// The addresses of the node with host index `index` (1..=MAX_HOST_INDEX), or `None` when out of range.
pub fn overlay_addrs(index: u32) -> Option<(Ipv4Addr, Ipv6Addr)> {
    if index == 0 || index > MAX_HOST_INDEX {
        return None;
    }
    let v4 = Ipv4Addr::from(u32::from(OVERLAY_V4.network()) + index);
    let v6 = Ipv6Addr::from(u128::from(OVERLAY_V6.network()) + index as u128);
    Some((v4, v6))
}

/// The host index an overlay address belongs to, if it is one.
pub fn host_index(addr: IpAddr) -> Option<u32> {
    let idx = match addr {
        IpAddr::V4(a) if OVERLAY_V4.contains(&a) => u32::from(a) - u32::from(OVERLAY_V4.network()),
        IpAddr::V6(a) if OVERLAY_V6.contains(&a) => {
            let off = u128::from(a) - u128::from(OVERLAY_V6.network());
            u32::try_from(off).ok()?
        }
        _ => return None,
    };
    (1..=MAX_HOST_INDEX).contains(&idx).then_some(idx)
}

/// Host prefixes (/32 and /128) of a node's addresses.
pub fn host_nets(addrs: &[IpAddr]) -> Vec<IpNet> {
    addrs.iter().map(|a| IpNet::from(*a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_through_both_families() {
        for i in [1, 2, 255, 256, 65_000, MAX_HOST_INDEX] {
            let (v4, v6) = overlay_addrs(i).unwrap();
            assert_eq!(host_index(IpAddr::V4(v4)), Some(i));
            assert_eq!(host_index(IpAddr::V6(v6)), Some(i));
        }
        assert_eq!(overlay_addrs(1).unwrap().0, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(overlay_addrs(0), None);
        assert_eq!(overlay_addrs(MAX_HOST_INDEX + 1), None);
        assert_eq!(host_index("10.0.0.1".parse().unwrap()), None);
    }
}
