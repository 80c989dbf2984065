//! Userspace GRO for TUN writes: consecutive TCP segments of one flow are merged into one
//! super-packet behind a `virtio_net_hdr` (TUN with `IFF_VNET_HDR`), so that the kernel takes
//! one write and one pass through its TCP receive path per up to 64 KiB instead of per
//! segment. Everything else is written as it is, behind an empty header.
//!
//! Segments merge when the kernel's own GRO would merge them: IPv4 without options or
//! fragmentation, or IPv6 without extension headers; identical IP header fields (except length,
//! ID and checksum) and TCP header (except sequence number and checksum, so options too); only
//! ACK set, PSH on the last; contiguous sequence numbers; equal payload sizes, the last may be
//! shorter. The super-packet is marked `NEEDS_CSUM` with the pseudo-header sum in its TCP
//! checksum field, as offloading NICs deliver them. (The segments' integrity is already
//! guaranteed by WireGuard's AEAD.)

use super::packet::{checksum_add, checksum_fold, TCP_ACK, TCP_PSH};

/// `sizeof(struct virtio_net_hdr)`, the TUN default.
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
/// Largest IP packet (IPv4 total length, IPv6 payload length plus header).
const MAX_SUPER: usize = 65_535;

/// A `virtio_net_hdr`, in the TUN's native byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    pub fn read(b: &[u8]) -> VnetHdr {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }
}

/// Where the headers of a coalescable TCP segment are.
#[derive(Debug, Clone, Copy)]
struct Seg {
    v6: bool,
    /// IP header length.
    ip: usize,
    /// IP + TCP header length.
    hdr: usize,
    seq: u32,
    flags: u8,
}

impl Seg {
    fn payload(&self, p: &[u8]) -> usize {
        p.len() - self.hdr
    }
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// The segment's layout if it may be merged at all.
fn parse(p: &[u8]) -> Option<Seg> {
    let (v6, ip) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let frag = be16(p, 6) & 0x3fff; // MF and offset
            if p[0] & 0x0f != 5 || p[9] != 6 || frag != 0 || usize::from(be16(p, 2)) != p.len() {
                return None;
            }
            (false, 20)
        }
        6 if p.len() >= 40 => {
            if p[6] != 6 || usize::from(be16(p, 4)) + 40 != p.len() {
                return None;
            }
            (true, 40)
        }
        _ => return None,
    };
    let tcp = p.get(ip..ip + 20)?;
    let hdr = ip + usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if hdr < ip + 20 || hdr >= p.len() || flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0
    {
        return None;
    }
    Some(Seg {
        v6,
        ip,
        hdr,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags,
    })
}

/// Whether `q` continues the flow of `p` (headers equal where they must be).
fn same_flow(p: &[u8], ps: &Seg, q: &[u8], qs: &Seg) -> bool {
    if ps.v6 != qs.v6 || ps.hdr != qs.hdr {
        return false;
    }
    let ip_equal = if ps.v6 {
        p[..4] == q[..4] && p[6..40] == q[6..40]
    } else {
        p[..2] == q[..2] && p[6..10] == q[6..10] && p[12..20] == q[12..20]
    };
    let t = ps.ip;
    // Ports, ack, data offset, window, urgent pointer, options; flags are checked apart.
    ip_equal
        && p[t..t + 4] == q[t..t + 4]
        && p[t + 8..t + 13] == q[t + 8..t + 13]
        && p[t + 14..t + 16] == q[t + 14..t + 16]
        && p[t + 18..ps.hdr] == q[t + 18..qs.hdr]
}

/// The TCP pseudo-header sum (folded, not complemented) for a segment of `tcp_len` bytes.
fn pseudo_sum(p: &[u8], v6: bool, tcp_len: usize) -> u16 {
    let addrs = if v6 { &p[8..40] } else { &p[12..20] };
    !checksum_fold(checksum_add(6 + tcp_len as u32, addrs))
}

/// Builds the writes for a batch of packets: each call to [`Coalescer::push`] may emit a
/// finished write (vnet header included) through `emit`.
pub struct Coalescer {
    /// The write being built: vnet header, then the first segment's headers, then payloads.
    buf: Vec<u8>,
    /// The open run: first segment's layout, segment size, next sequence number, segments.
    run: Option<(Seg, usize, u32, usize)>,
    /// The run ended (short or PSH segment): the next packet starts a new one.
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: Vec::with_capacity(VNET_HDR_LEN + MAX_SUPER),
            run: None,
            closed: false,
        }
    }
}

impl Coalescer {
    /// Add the next packet of the batch.
    pub fn push(&mut self, p: &[u8], emit: &mut impl FnMut(&[u8])) {
        let seg = parse(p);
        if let (Some(qs), Some((ps, size, next, n))) = (seg, self.run) {
            let first = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + ps.hdr];
            let len = qs.payload(p);
            if !self.closed
                && qs.seq == next
                && len <= size
                && self.buf.len() - VNET_HDR_LEN + len <= MAX_SUPER
                && same_flow(first, &ps, p, &qs)
            {
                self.buf.extend_from_slice(&p[qs.hdr..]);
                self.run = Some((ps, size, next.wrapping_add(len as u32), n + 1));
                if len < size || qs.flags & TCP_PSH != 0 {
                    self.closed = true;
                    if qs.flags & TCP_PSH != 0 {
                        let f = VNET_HDR_LEN + ps.ip + 13;
                        self.buf[f] |= TCP_PSH;
                    }
                }
                return;
            }
        }
        self.flush(emit);
        match seg {
            Some(s) if s.flags & TCP_PSH == 0 => {
                self.buf.clear();
                self.buf.resize(VNET_HDR_LEN, 0);
                self.buf.extend_from_slice(p);
                let len = s.payload(p);
                self.run = Some((s, len, s.seq.wrapping_add(len as u32), 1));
                self.closed = false;
            }
            _ => {
                self.buf.clear();
                self.buf.resize(VNET_HDR_LEN, 0);
                self.buf.extend_from_slice(p);
                emit(&self.buf);
                self.buf.clear();
            }
        }
    }

    /// Emit the open run, if any (at the end of a batch).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        let Some((s, size, _, n)) = self.run.take() else {
            return;
        };
        if n > 1 {
            let total = self.buf.len() - VNET_HDR_LEN;
            let pkt = &mut self.buf[VNET_HDR_LEN..];
            if s.v6 {
                pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            } else {
                pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                pkt[10..12].copy_from_slice(&[0, 0]);
                let c = checksum_fold(checksum_add(0, &pkt[..20]));
                pkt[10..12].copy_from_slice(&c.to_be_bytes());
            }
            let ps = pseudo_sum(pkt, s.v6, total - s.ip);
            pkt[s.ip + 16..s.ip + 18].copy_from_slice(&ps.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: s.hdr as u16,
                gso_size: size as u16,
                csum_start: s.ip as u16,
                csum_offset: 16,
            }
            .write(&mut self.buf[..VNET_HDR_LEN]);
        } else {
            VnetHdr::default().write(&mut self.buf[..VNET_HDR_LEN]);
        }
        emit(&self.buf);
        self.buf.clear();
        self.closed = false;
    }
}

/// Complete a packet read from the TUN: if the kernel left its transport checksum to us
/// (`NEEDS_CSUM`), compute it. Returns false for a packet we cannot take (a GSO super-packet,
/// which the device only hands out when offloads are enabled).
pub fn finish_read(hdr: &VnetHdr, pkt: &mut [u8]) -> bool {
    if hdr.gso_type != GSO_NONE {
        return false;
    }
    if hdr.flags & F_NEEDS_CSUM != 0 {
        let (start, at) = (
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_start) + usize::from(hdr.csum_offset),
        );
        if at + 2 > pkt.len() || start > pkt.len() {
            return false;
        }
        // The field holds the pseudo-header sum; add the data and complement.
        let c = checksum_fold(checksum_add(0, &pkt[start..]));
        pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::packet::{self, TcpSegment, TCP_SYN};
    use std::net::IpAddr;

    fn seg(v6: bool, sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (a, b): (IpAddr, IpAddr) = if v6 {
            (
                "fd5a:746d:6573::1".parse().unwrap(),
                "fd5a:746d:6573::2".parse().unwrap(),
            )
        } else {
            ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap())
        };
        let mut buf = vec![0u8; 2000];
        let n = packet::build_tcp(
            &mut buf,
            &TcpSegment {
                src: a,
                dst: b,
                src_port: sport,
                dst_port: 80,
                seq,
                ack: 7,
                flags,
                payload,
            },
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    fn writes(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut emit = |w: &[u8]| out.push(w.to_vec());
        for p in pkts {
            c.push(p, &mut emit);
        }
        c.flush(&mut emit);
        out
    }

    /// The segments the kernel would cut a super-packet into (as its GSO does).
    fn resegment(w: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let h = VnetHdr::read(w);
        let pkt = &w[VNET_HDR_LEN..];
        if h.gso_type == GSO_NONE {
            let s = parse(pkt).unwrap();
            return vec![(s.seq, pkt[s.hdr..].to_vec())];
        }
        let s = parse(pkt).unwrap();
        pkt[usize::from(h.hdr_len)..]
            .chunks(usize::from(h.gso_size))
            .scan(s.seq, |seq, c| {
                let r = (*seq, c.to_vec());
                *seq = seq.wrapping_add(c.len() as u32);
                Some(r)
            })
            .collect()
    }

    #[test]
    fn contiguous_segments_merge_into_one_valid_super_packet() {
        for v6 in [false, true] {
            let pkts: Vec<_> = (0..10u32)
                .map(|i| seg(v6, 1000, 5000 + i * 1000, TCP_ACK, &[i as u8; 1000]))
                .chain([seg(v6, 1000, 15_000, TCP_ACK | TCP_PSH, &[99; 300])])
                .collect();
            let out = writes(&pkts);
            assert_eq!(out.len(), 1, "v6={v6}");
            let h = VnetHdr::read(&out[0]);
            assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!((h.gso_size, h.flags), (1000, F_NEEDS_CSUM));
            let pkt = &out[0][VNET_HDR_LEN..];
            if !v6 {
                assert_eq!(usize::from(be16(pkt, 2)), pkt.len());
                assert_eq!(
                    checksum_fold(checksum_add(0, &pkt[..20])),
                    0,
                    "IPv4 header checksum"
                );
            } else {
                assert_eq!(usize::from(be16(pkt, 4)) + 40, pkt.len());
            }
            // Completing the checksum as the kernel would gives a valid TCP checksum.
            let mut full = pkt.to_vec();
            let ip = if v6 { 40 } else { 20 };
            let c = checksum_fold(checksum_add(0, &full[ip..]));
            full[ip + 16..ip + 18].copy_from_slice(&c.to_be_bytes());
            let tcp_len = full.len() - ip;
            let addrs = if v6 { &full[8..40] } else { &full[12..20] };
            let pseudo = checksum_add(6 + tcp_len as u32, addrs);
            assert_eq!(
                checksum_fold(checksum_add(pseudo, &full[ip..])),
                0,
                "TCP checksum"
            );
            assert_eq!(pkt[ip + 13] & TCP_PSH, TCP_PSH);
            let segs = resegment(&out[0]);
            let expect: Vec<_> = pkts
                .iter()
                .map(|p| {
                    let s = parse(p).unwrap();
                    (s.seq, p[s.hdr..].to_vec())
                })
                .collect();
            assert_eq!(segs, expect, "the same bytes at the same sequence numbers");
        }
    }

    #[test]
    fn anything_else_is_written_as_it_is() {
        let a = seg(false, 1000, 0, TCP_ACK, &[1; 500]);
        let gap = seg(false, 1000, 600, TCP_ACK, &[2; 500]); // not contiguous
        let other = seg(false, 2000, 1100, TCP_ACK, &[3; 500]); // another flow
        let syn = seg(false, 1000, 1100, TCP_SYN, b"");
        let pure_ack = seg(false, 1000, 1100, TCP_ACK, b"");
        let bigger = seg(false, 1000, 1100, TCP_ACK, &[4; 600]); // larger than the segment size
        let v6 = seg(true, 1000, 1100, TCP_ACK, &[5; 500]);
        let mut udp = vec![0u8; 100];
        let n = packet::build_udp(
            &mut udp,
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            1,
            2,
            b"x",
        )
        .unwrap();
        udp.truncate(n);
        let pkts = vec![a, gap, other, syn, pure_ack, bigger, v6, udp];
        let out = writes(&pkts);
        assert_eq!(out.len(), pkts.len());
        for (w, p) in out.iter().zip(&pkts) {
            assert_eq!(VnetHdr::read(w), VnetHdr::default());
            assert_eq!(&w[VNET_HDR_LEN..], &p[..]);
        }
    }

    #[test]
    fn a_shorter_segment_ends_the_run() {
        let pkts = vec![
            seg(false, 1000, 0, TCP_ACK, &[1; 1000]),
            seg(false, 1000, 1000, TCP_ACK, &[2; 400]),
            seg(false, 1000, 1400, TCP_ACK, &[3; 1000]),
        ];
        let out = writes(&pkts);
        assert_eq!(out.len(), 2);
        assert_eq!(resegment(&out[0]).len(), 2);
        assert_eq!(resegment(&out[1]), vec![(1400, vec![3; 1000])]);
    }

    #[test]
    fn reads_needing_a_checksum_get_one() {
        let mut p = seg(false, 1000, 0, TCP_ACK, &[9; 100]);
        let good = p.clone();
        let ps = pseudo_sum(&p, false, p.len() - 20);
        p[36..38].copy_from_slice(&ps.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert!(finish_read(&h, &mut p));
        assert_eq!(p, good);
        let gso = VnetHdr {
            gso_type: GSO_TCPV4,
            ..VnetHdr::default()
        };
        assert!(!finish_read(&gso, &mut p));
    }
}
