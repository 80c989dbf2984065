//! IP packet parsing and the few packets the data plane builds itself (TCP RST, ICMP
//! unreachable). Parsing never panics on any input: every length is checked before it is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use ztmesh_common::netmap::proto;

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet too short")]
    Truncated,
    #[error("not an IPv4 or IPv6 packet")]
    BadVersion,
    #[error("inconsistent header length fields")]
    BadLength,
    #[error("too many IPv6 extension headers")]
    TooManyExtensions,
}

/// Fragmentation state of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment: the L4 header is present.
    None,
    /// First fragment (offset 0, more follow): the L4 header is present.
    First { id: u32 },
    /// A later fragment: no L4 header; only the fragment id ties it to its flow.
    Later { id: u32 },
}

/// What kind of ICMP message a packet is, as far as the filter cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    NotIcmp,
    EchoRequest {
        id: u16,
    },
    EchoReply {
        id: u16,
    },
    /// An error (unreachable, time exceeded, ...) quoting the packet that caused it, starting
    /// at `quoted` bytes into the packet.
    Error {
        quoted: usize,
    },
    Other,
}

/// The fields of an IP packet the engine needs, with offsets into the original buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Length of the packet according to its header (may be less than the buffer).
    pub total_len: usize,
    /// Offset of the L4 header (meaningful unless `frag` is `Later`).
    pub l4: usize,
    pub frag: Frag,
    /// Ports for TCP/UDP/SCTP; for ICMP echo both hold the identifier; 0 otherwise.
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp: IcmpKind,
    pub tcp: Option<TcpInfo>,
}

/// The TCP fields connection tracking needs to build a valid RST later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Sequence space this segment occupies (payload, plus one each for SYN and FIN).
    pub seg_len: u32,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

impl Parsed {
    /// The destination port a filter rule matches, for protocols that have ports.
    pub fn filter_port(&self) -> Option<u16> {
        (proto::has_ports(self.proto) && !matches!(self.frag, Frag::Later { .. }))
            .then_some(self.dst_port)
    }
}

/// IPv6 extension headers we skip to find the upper-layer protocol.
const V6_HOP_BY_HOP: u8 = 0;
const V6_ROUTING: u8 = 43;
const V6_FRAGMENT: u8 = 44;
const V6_AUTH: u8 = 51;
const V6_DEST_OPTS: u8 = 60;
/// Bound on extension headers, so a crafted chain cannot make parsing loop long.
const V6_MAX_EXTENSIONS: usize = 8;

/// Parse a packet strictly (as read from the TUN or decrypted from a peer).
pub fn parse(pkt: &[u8]) -> Result<Parsed, ParseError> {
    parse_inner(pkt, false)
}

/// Parse the quoted packet inside an ICMP error: it may be truncated after the first 8 bytes
/// of its L4 header, so length fields are not checked against the buffer.
pub fn parse_quoted(pkt: &[u8]) -> Result<Parsed, ParseError> {
    parse_inner(pkt, true)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_inner(pkt: &[u8], lenient: bool) -> Result<Parsed, ParseError> {
    let first = *pkt.first().ok_or(ParseError::Truncated)?;
    let (src, dst, proto_num, total_len, l4, frag) = match first >> 4 {
        4 => {
            if pkt.len() < 20 {
                return Err(ParseError::Truncated);
            }
            let ihl = usize::from(first & 0x0f) * 4;
            let total = usize::from(be16(pkt, 2));
            if ihl < 20 || pkt.len() < ihl || (!lenient && (total < ihl || total > pkt.len())) {
                return Err(ParseError::BadLength);
            }
            let id = u32::from(be16(pkt, 4));
            let flags_off = be16(pkt, 6);
            let more = flags_off & 0x2000 != 0;
            let offset = flags_off & 0x1fff;
            let frag = match (offset, more) {
                (0, false) => Frag::None,
                (0, true) => Frag::First { id },
                _ => Frag::Later { id },
            };
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let total = if lenient { total.min(pkt.len()) } else { total };
            (IpAddr::V4(src), IpAddr::V4(dst), pkt[9], total, ihl, frag)
        }
        6 => {
            if pkt.len() < 40 {
                return Err(ParseError::Truncated);
            }
            let total = 40 + usize::from(be16(pkt, 4));
            if !lenient && total > pkt.len() {
                return Err(ParseError::BadLength);
            }
            let total = total.min(pkt.len());
            let mut src = [0u8; 16];
            src.copy_from_slice(&pkt[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&pkt[24..40]);
            let mut next = pkt[6];
            let mut at = 40;
            let mut frag = Frag::None;
            let mut n = 0;
            loop {
                match next {
                    V6_HOP_BY_HOP | V6_ROUTING | V6_DEST_OPTS | V6_AUTH => {
                        if at + 2 > total {
                            return Err(ParseError::Truncated);
                        }
                        let len = if next == V6_AUTH {
                            (usize::from(pkt[at + 1]) + 2) * 4
                        } else {
                            (usize::from(pkt[at + 1]) + 1) * 8
                        };
                        next = pkt[at];
                        at += len;
                    }
                    V6_FRAGMENT => {
                        if at + 8 > total {
                            return Err(ParseError::Truncated);
                        }
                        let off_flags = be16(pkt, at + 2);
                        let id = be32(pkt, at + 4);
                        frag = match (off_flags >> 3, off_flags & 1 != 0) {
                            (0, false) => Frag::None,
                            (0, true) => Frag::First { id },
                            _ => Frag::Later { id },
                        };
                        next = pkt[at];
                        at += 8;
                    }
                    _ => break,
                }
                n += 1;
                if n > V6_MAX_EXTENSIONS {
                    return Err(ParseError::TooManyExtensions);
                }
            }
            if at > total {
                return Err(ParseError::Truncated);
            }
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                next,
                total,
                at,
                frag,
            )
        }
        _ => return Err(ParseError::BadVersion),
    };
    let mut p = Parsed {
        src,
        dst,
        proto: proto_num,
        total_len,
        l4,
        frag,
        src_port: 0,
        dst_port: 0,
        icmp: IcmpKind::NotIcmp,
        tcp: None,
    };
    if matches!(frag, Frag::Later { .. }) {
        return Ok(p);
    }
    let end = if lenient { pkt.len() } else { total_len };
    let l4b = &pkt[l4.min(end)..end];
    match proto_num {
        proto::TCP => {
            if l4b.len() < 8 {
                return Err(ParseError::Truncated);
            }
            p.src_port = be16(l4b, 0);
            p.dst_port = be16(l4b, 2);
            if l4b.len() >= 14 {
                let flags = l4b[13];
                let data_off = usize::from(l4b[12] >> 4) * 4;
                let payload = if lenient {
                    0
                } else {
                    if data_off < 20 || data_off > l4b.len() {
                        return Err(ParseError::BadLength);
                    }
                    (l4b.len() - data_off) as u32
                };
                let seg_len =
                    payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
                p.tcp = Some(TcpInfo {
                    seq: be32(l4b, 4),
                    ack: be32(l4b, 8),
                    flags,
                    seg_len,
                });
            } else if !lenient {
                return Err(ParseError::Truncated);
            }
        }
        proto::UDP | 132 => {
            if l4b.len() < 8 {
                return Err(ParseError::Truncated);
            }
            p.src_port = be16(l4b, 0);
            p.dst_port = be16(l4b, 2);
        }
        proto::ICMP | proto::ICMPV6 => {
            if l4b.len() < 8 {
                return Err(ParseError::Truncated);
            }
            let v6 = proto_num == proto::ICMPV6;
            let id = be16(l4b, 4);
            p.icmp = match (v6, l4b[0]) {
                (false, 8) | (true, 128) => IcmpKind::EchoRequest { id },
                (false, 0) | (true, 129) => IcmpKind::EchoReply { id },
                (false, 3 | 11 | 12) | (true, 1..=4) => IcmpKind::Error { quoted: l4 + 8 },
                _ => IcmpKind::Other,
            };
            if let IcmpKind::EchoRequest { id } | IcmpKind::EchoReply { id } = p.icmp {
                p.src_port = id;
                p.dst_port = id;
            }
        }
        _ => {}
    }
    Ok(p)
}

/// Internet checksum: add `data` (as big-endian 16-bit words) to the running `sum`.
pub(super) fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Fold a running sum to 16 bits and complement it: the checksum field's value.
pub(super) fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto_num: u8, len: usize) -> u32 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
        }
        _ => {}
    }
    sum + u32::from(proto_num) + len as u32
}

/// Write an IP header for `payload_len` bytes of `proto_num` into `out`, return its length.
fn write_ip_header(
    out: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    proto_num: u8,
    payload_len: usize,
) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = out.get_mut(..20)?;
            h.fill(0);
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = 64;
            h[9] = proto_num;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum_fold(checksum_add(0, h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            Some(20)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = out.get_mut(..40)?;
            h.fill(0);
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
            h[6] = proto_num;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            Some(40)
        }
        _ => None,
    }
}

/// Fields of a TCP segment to build.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

/// Build a TCP segment (no options) into `out`; returns its length, or `None` if `out` is too
/// small or the address families differ.
pub fn build_tcp(out: &mut [u8], seg: &TcpSegment<'_>) -> Option<usize> {
    let tcp_len = 20 + seg.payload.len();
    let ip_len = write_ip_header(out, seg.src, seg.dst, proto::TCP, tcp_len)?;
    let t = out.get_mut(ip_len..ip_len + tcp_len)?;
    t.fill(0);
    t[0..2].copy_from_slice(&seg.src_port.to_be_bytes());
    t[2..4].copy_from_slice(&seg.dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    t[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = seg.flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t[20..].copy_from_slice(seg.payload);
    let sum = checksum_add(pseudo_header_sum(seg.src, seg.dst, proto::TCP, tcp_len), t);
    t[16..18].copy_from_slice(&checksum_fold(sum).to_be_bytes());
    Some(ip_len + tcp_len)
}

/// Build a UDP datagram into `out`; returns its length.
pub fn build_udp(
    out: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Option<usize> {
    let udp_len = 8 + payload.len();
    let ip_len = write_ip_header(out, src, dst, proto::UDP, udp_len)?;
    let u = out.get_mut(ip_len..ip_len + udp_len)?;
    u[0..2].copy_from_slice(&src_port.to_be_bytes());
    u[2..4].copy_from_slice(&dst_port.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[6..8].fill(0);
    u[8..].copy_from_slice(payload);
    let sum = checksum_add(pseudo_header_sum(src, dst, proto::UDP, udp_len), u);
    let c = match checksum_fold(sum) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    Some(ip_len + udp_len)
}

/// Build an ICMP(v6) message of `icmp_type`/`code` whose 4 "rest of header" bytes are `rest`
/// and whose body is `body`.
pub fn build_icmp(
    out: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Option<usize> {
    let v6 = src.is_ipv6();
    let p = if v6 { proto::ICMPV6 } else { proto::ICMP };
    let len = 8 + body.len();
    let ip_len = write_ip_header(out, src, dst, p, len)?;
    let m = out.get_mut(ip_len..ip_len + len)?;
    m[0] = icmp_type;
    m[1] = code;
    m[2..4].fill(0);
    m[4..8].copy_from_slice(&rest);
    m[8..].copy_from_slice(body);
    let start = if v6 {
        pseudo_header_sum(src, dst, p, len)
    } else {
        0
    };
    let c = checksum_fold(checksum_add(start, m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Some(ip_len + len)
}

/// Build an ICMP echo request or reply.
pub fn build_icmp_echo(
    out: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    reply: bool,
    id: u16,
    seq: u16,
    body: &[u8],
) -> Option<usize> {
    let t = match (src.is_ipv6(), reply) {
        (false, false) => 8,
        (false, true) => 0,
        (true, false) => 128,
        (true, true) => 129,
    };
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    build_icmp(out, src, dst, t, 0, rest, body)
}

/// Build "destination unreachable, administratively prohibited" about `offending`, sent from
/// `from` to the offending packet's source. Quotes as much of the packet as the RFCs ask
/// (IPv4: header + 8 bytes; IPv6: up to the minimum MTU).
pub fn build_unreachable(out: &mut [u8], from: IpAddr, offending: &[u8]) -> Option<usize> {
    let p = parse(offending).ok()?;
    let (t, code, quote) = if p.src.is_ipv6() {
        (1, 1, offending.len().min(1280 - 48))
    } else {
        (3, 13, offending.len().min(p.l4 + 8))
    };
    if from.is_ipv6() != p.src.is_ipv6() {
        return None;
    }
    build_icmp(out, from, p.src, t, code, [0; 4], &offending[..quote])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn builds_and_parses_tcp_both_families() {
        let mut buf = [0u8; 200];
        for (s, d) in [
            ("100.64.0.1", "100.64.0.2"),
            ("fd5a:746d:6573::1", "fd5a:746d:6573::2"),
        ] {
            let n = build_tcp(
                &mut buf,
                &TcpSegment {
                    src: a(s),
                    dst: a(d),
                    src_port: 40000,
                    dst_port: 22,
                    seq: 7,
                    ack: 9,
                    flags: TCP_SYN,
                    payload: b"hi",
                },
            )
            .unwrap();
            let p = parse(&buf[..n]).unwrap();
            assert_eq!((p.src, p.dst, p.proto), (a(s), a(d), proto::TCP));
            assert_eq!((p.src_port, p.dst_port), (40000, 22));
            let t = p.tcp.unwrap();
            assert_eq!((t.seq, t.ack, t.flags, t.seg_len), (7, 9, TCP_SYN, 3));
            assert_eq!(p.filter_port(), Some(22));
        }
    }

    #[test]
    fn ipv4_checksum_of_built_header_verifies() {
        let mut buf = [0u8; 100];
        let n = build_udp(&mut buf, a("100.64.0.1"), a("100.64.0.2"), 1, 2, b"x").unwrap();
        assert_eq!(checksum_fold(checksum_add(0, &buf[..20])), 0);
        // UDP checksum over pseudo header + segment verifies too.
        let sum = checksum_add(
            pseudo_header_sum(a("100.64.0.1"), a("100.64.0.2"), proto::UDP, n - 20),
            &buf[20..n],
        );
        assert_eq!(checksum_fold(sum), 0);
    }

    #[test]
    fn icmp_echo_and_error_kinds() {
        let mut buf = [0u8; 300];
        let n = build_icmp_echo(
            &mut buf,
            a("100.64.0.1"),
            a("100.64.0.2"),
            false,
            77,
            1,
            b"",
        )
        .unwrap();
        let p = parse(&buf[..n]).unwrap();
        assert_eq!(p.icmp, IcmpKind::EchoRequest { id: 77 });
        let orig = buf[..n].to_vec();
        let n2 = build_unreachable(&mut buf, a("100.64.0.2"), &orig).unwrap();
        let e = parse(&buf[..n2]).unwrap();
        let IcmpKind::Error { quoted } = e.icmp else {
            panic!("expected error, got {:?}", e.icmp)
        };
        let q = parse_quoted(&buf[quoted..n2]).unwrap();
        assert_eq!((q.src, q.dst), (a("100.64.0.1"), a("100.64.0.2")));
        assert_eq!(q.icmp, IcmpKind::EchoRequest { id: 77 });
    }

    #[test]
    fn fragments_are_classified() {
        let mut buf = [0u8; 100];
        let n = build_udp(&mut buf, a("100.64.0.1"), a("100.64.0.2"), 1, 2, b"x").unwrap();
        buf[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        buf[6] = 0x20; // MF, offset 0
        assert_eq!(parse(&buf[..n]).unwrap().frag, Frag::First { id: 0x1234 });
        buf[6] = 0x00;
        buf[7] = 0x10; // offset 16*8
        let p = parse(&buf[..n]).unwrap();
        assert_eq!(p.frag, Frag::Later { id: 0x1234 });
        assert_eq!(p.filter_port(), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        let mut buf = [0u8; 128];
        for round in 0..20_000 {
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *b = seed as u8;
            }
            buf[0] = if round % 2 == 0 { 0x45 } else { 0x60 };
            let len = (seed as usize) % buf.len();
            let _ = parse(&buf[..len]);
            let _ = parse_quoted(&buf[..len]);
        }
    }
}
