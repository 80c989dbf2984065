//! Fuzz target: the client's IP packet parser (what arrives from the TUN device or from a
//! peer) must never panic, and what it reports must lie inside the buffer. A packet it
//! accepts can be answered with an ICMP unreachable that itself parses and, when the quote
//! holds the start of the L4 header, quotes a packet with the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztmesh_client::dataplane::packet::{self, Frag, IcmpKind};

fuzz_target!(|data: &[u8]| {
    let _ = packet::parse_quoted(data);
    let Ok(p) = packet::parse(data) else {
        return;
    };
    assert!(p.total_len <= data.len());
    assert!(p.l4 <= p.total_len);
    let _ = p.filter_port();
    if let IcmpKind::Error { quoted } = p.icmp {
        assert!(quoted <= data.len());
        let _ = packet::parse_quoted(&data[quoted..]);
    }
    let mut out = [0u8; 1500];
    if let Some(n) = packet::build_unreachable(&mut out, p.dst, data) {
        let reply = packet::parse(&out[..n]).expect("the unreachable we build parses");
        assert_eq!(reply.dst, p.src);
        let IcmpKind::Error { quoted } = reply.icmp else {
            panic!("an unreachable is an ICMP error: {:?}", reply.icmp);
        };
        let has_l4 = !matches!(p.frag, Frag::Later { .. });
        if has_l4 && p.l4 + 8 <= n - quoted {
            let inner = packet::parse_quoted(&out[quoted..n]).expect("the quote parses");
            assert_eq!((inner.src, inner.dst), (p.src, p.dst));
        }
    }
});
