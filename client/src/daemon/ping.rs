//! `ztmesh ping`: ICMP echo to a peer's overlay address through the TUN device. Runs in the
//! daemon, which is root, over a raw ICMP socket bound to the TUN (so the probe cannot leak
//! onto the underlay); the reply travels the tunnel back, so it shows the path end to end,
//! including the peer's policy (a peer that does not allow ICMP from us will not answer).

use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ICMP_ECHO: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP6_ECHO: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;

/// A raw ICMP socket for one address family, bound to one device.
pub struct Pinger {
    fd: OwnedFd,
    dst: IpAddr,
    id: u16,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn source_ip(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

impl Pinger {
    /// Opens a raw ICMP socket for `dst`, bound to `device` (the TUN).
    pub fn new(dst: IpAddr, device: &str) -> io::Result<Self> {
        let (family, proto) = match dst {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
        };
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let raw =
            check(unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) })?;
        // SAFETY: `raw` is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the option value is the device name bytes with their length.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                device.as_ptr() as *const libc::c_void,
                device.len() as libc::socklen_t,
            )
        })?;
        Ok(Pinger {
            fd,
            dst,
            id: rand::random(),
        })
    }

    /// Sends one echo request and waits up to `timeout` for its reply; `Ok(None)` on timeout.
    pub fn echo(&self, seq: u16, timeout: Duration) -> io::Result<Option<Duration>> {
        let v6 = self.dst.is_ipv6();
        let mut pkt = vec![if v6 { ICMP6_ECHO } else { ICMP_ECHO }, 0, 0, 0];
        pkt.extend_from_slice(&self.id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(b"ztmesh-ping-0123456789abcdef");
        if !v6 {
            // For ICMPv6 raw sockets the kernel fills in the checksum (it covers a pseudo-header).
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        let (ss, len) = sockaddr(self.dst);
        let start = Instant::now();
        // SAFETY: buffer and address pointers are valid for the lengths given.
        check(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &ss as *const _ as *const libc::sockaddr,
                len,
            ) as libc::c_int
        })?;
        let deadline = start + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = check(unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) })?;
            if n == 0 {
                return Ok(None);
            }
            // SAFETY: zeroed sockaddr_storage is valid; recvfrom writes at most its size.
            let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut flen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: buffer and address pointers are valid for the lengths given.
            let got = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut flen,
                )
            };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            let data = &buf[..got as usize];
            // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
            let icmp = if v6 {
                data
            } else {
                let ihl = (data.first().copied().unwrap_or(0) & 0x0f) as usize * 4;
                data.get(ihl..).unwrap_or(&[])
            };
            let want = if v6 {
                ICMP6_ECHO_REPLY
            } else {
                ICMP_ECHO_REPLY
            };
            if icmp.len() >= 8
                && icmp[0] == want
                && icmp[4..6] == self.id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
                && source_ip(&from) == Some(self.dst)
            {
                return Ok(Some(start.elapsed()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::checksum;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example words: 0001 f203 f4f5 f6f7 -> sum ddf2, checksum 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }
}
