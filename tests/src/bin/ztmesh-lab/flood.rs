//! Hostile traffic at a WireGuard port, bounded in count and time: random datagrams of every
//! size, truncated and oversized WireGuard-looking messages, and a flood of handshake
//! initiations that carry the right type and length but no valid MAC. A ztmesh daemon must
//! drop all of it without panicking and keep serving its real peers.

use rand::{Rng, RngCore};
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Length of a WireGuard handshake initiation (message type 1).
const INITIATION_LEN: usize = 148;

pub fn run(addr: &str, count: u64, max_secs: u64) {
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            crate::emit(json!({"event":"failed","message":format!("bad address {addr}: {e}")}));
            return;
        }
    };
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => {
            crate::emit(json!({"event":"failed","message":format!("bind: {e}")}));
            return;
        }
    };
    let mut rng = rand::thread_rng();
    let end = Instant::now() + Duration::from_secs(max_secs);
    let mut sent = [0u64; 4];
    let mut buf = vec![0u8; 2048];
    for i in 0..count {
        if Instant::now() >= end {
            break;
        }
        let kind = (i % 4) as usize;
        let len = match kind {
            // Random bytes, any length up to a jumbo datagram.
            0 => rng.gen_range(0..buf.len()),
            // A handshake initiation with garbage inside (MACs do not verify).
            1 => INITIATION_LEN,
            // A data message header with a random receiver index and counter.
            2 => rng.gen_range(16..64),
            // Truncated messages of every type.
            _ => rng.gen_range(1..8),
        };
        rng.fill_bytes(&mut buf[..len]);
        if len >= 4 {
            let msg_type = match kind {
                1 => 1,
                2 => 4,
                _ => rng.gen_range(1..5),
            };
            buf[..4].copy_from_slice(&[msg_type, 0, 0, 0]);
        }
        if sock.send_to(&buf[..len], addr).is_ok() {
            sent[kind] += 1;
        }
    }
    crate::emit(json!({
        "event": "done",
        "random": sent[0],
        "initiations": sent[1],
        "data": sent[2],
        "truncated": sent[3],
    }));
}
