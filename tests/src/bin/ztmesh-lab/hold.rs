//! A held connection: an echo every `interval` over one TCP connection, to measure the moment
//! it stops carrying data (revocation, expiry).

use serde_json::json;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub fn run(addr: &str, interval_ms: u64, cut_after_ms: u64, max_secs: u64) {
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            crate::emit(json!({"event":"failed","message":format!("bad address {addr}: {e}")}));
            return;
        }
    };
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            crate::emit(json!({"event":"failed","message":format!("connect: {e}")}));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(interval_ms.max(10))));
    let Ok(mut writer) = stream.try_clone() else {
        crate::emit(json!({"event":"failed","message":"clone failed"}));
        return;
    };
    let mut reader = BufReader::new(stream);
    crate::emit(json!({"event":"connected","at_ms":crate::now_ms()}));
    let end = Instant::now() + Duration::from_secs(max_secs);
    let mut last_ok = crate::now_ms();
    let mut seq = 0u64;
    let mut line = String::new();
    while Instant::now() < end {
        seq += 1;
        // A failed write (reset) is a cut too; the read below then reports it.
        let _ = writer.write_all(format!("{seq}\n").as_bytes());
        let sent = Instant::now();
        // Read replies until this round's interval is used up.
        while sent.elapsed() < Duration::from_millis(interval_ms) {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return cut(last_ok, "closed by peer"),
                Ok(_) => {
                    // Partial lines are completed by the next read; only whole echoes count.
                    if line.ends_with('\n') {
                        last_ok = crate::now_ms();
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return cut(last_ok, &e.to_string()),
            }
        }
        if crate::now_ms().saturating_sub(last_ok) >= cut_after_ms {
            return cut(last_ok, "no echo");
        }
    }
    crate::emit(json!({"event":"still-open","at_ms":crate::now_ms()}));
}

fn cut(last_ok: u64, reason: &str) {
    crate::emit(
        json!({"event":"cut","last_ok_ms":last_ok,"at_ms":crate::now_ms(),"reason":reason}),
    );
}
