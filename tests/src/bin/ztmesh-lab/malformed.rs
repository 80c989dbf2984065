//! Malformed IPv4 packets written into the local stack with a raw socket (`IP_HDRINCL`), so
//! that a route through the ztmesh TUN device delivers them to the daemon as if an
//! application or a broken driver had sent them: truncated transport headers, odd IP
//! options, fragments, unknown protocols, lying length fields, ICMP errors quoting garbage.
//! The daemon must drop or forward each without panicking.

use rand::Rng;
use serde_json::json;
use std::net::Ipv4Addr;

pub fn run(dst: &str, src: &str, count: u64) {
    let (Ok(dst), Ok(src)) = (dst.parse::<Ipv4Addr>(), src.parse::<Ipv4Addr>()) else {
        crate::emit(json!({"event":"failed","message":"addresses must be IPv4"}));
        return;
    };
    // SAFETY: plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        crate::emit(json!({"event":"failed","message":format!("raw socket: {e}")}));
        return;
    }
    let mut rng = rand::thread_rng();
    let (mut sent, mut refused) = (0u64, 0u64);
    for i in 0..count {
        let pkt = craft(&mut rng, i, src, dst);
        if send(fd, &pkt, dst) {
            sent += 1;
        } else {
            refused += 1;
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    crate::emit(json!({"event":"done","sent":sent,"refused_by_kernel":refused}));
}

/// One malformed packet; the kind rotates with `i` so every kind is sent.
fn craft(rng: &mut impl Rng, i: u64, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let kind = i % 8;
    let (proto, ihl_words, body_len, frag) = match kind {
        0 => (6, 5, rng.gen_range(0..20), 0u16), // TCP header cut short
        1 => (17, 5, rng.gen_range(0..8), 0),    // UDP header cut short
        2 => (6, rng.gen_range(6..16), 40, 0),   // IP options of random bytes
        3 => (17, 5, 64, 0x2000 | rng.gen_range(1..0x1fff)), // a middle fragment
        4 => (6, 5, 40, 0x2000),                 // a first fragment, never completed
        5 => (rng.gen_range(140..=255), 5, 32, 0), // unknown protocol
        6 => (1, 5, rng.gen_range(8..64), 0),    // ICMP error quoting garbage
        _ => (rng.gen_range(0..=255), 5, rng.gen_range(0..200), 0), // anything
    };
    let ihl = ihl_words as usize * 4;
    let mut p = vec![0u8; ihl + body_len];
    rng.fill_bytes(&mut p[20..]);
    p[0] = 0x40 | ihl_words as u8;
    p[8] = 64;
    p[9] = proto;
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    if kind == 6 && body_len >= 8 {
        // Destination unreachable, with random "quoted" bytes after the ICMP header.
        p[ihl] = 3;
        p[ihl + 1] = rng.gen_range(0..16);
    }
    if kind == 1 && body_len >= 6 {
        // A UDP length that claims more than is there.
        p[ihl + 4..ihl + 6].copy_from_slice(&u16::MAX.to_be_bytes());
    }
    p
}

fn send(fd: libc::c_int, pkt: &[u8], dst: Ipv4Addr) -> bool {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `pkt` and `addr` are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    n >= 0
}
