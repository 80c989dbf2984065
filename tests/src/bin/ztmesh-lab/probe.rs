//! One-shot probes: does a TCP connection (or UDP exchange) to an address carry data?

use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

pub fn run(proto: Proto, addr: &str, send: &str, timeout_ms: u64) {
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            crate::emit(json!({"result":"error","message":format!("bad address {addr}: {e}")}));
            return;
        }
    };
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let v = match proto {
        Proto::Tcp => tcp(addr, send, timeout),
        Proto::Udp => udp(addr, send, timeout),
    };
    crate::emit(v);
}

fn tcp(addr: SocketAddr, send: &str, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return connect_error(e),
    };
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    let _ = s.set_read_timeout(Some(left));
    if s.write_all(format!("{send}\n").as_bytes()).is_err() {
        return json!({"result":"error","message":"write failed"});
    }
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => json!({
            "result":"ok",
            "ms": start.elapsed().as_millis() as u64,
            "reply": String::from_utf8_lossy(&buf[..n]).trim_end(),
        }),
        Ok(_) => json!({"result":"error","message":"closed without reply"}),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            json!({"result":"no-reply"})
        }
        Err(e) => json!({"result":"error","message":e.to_string()}),
    }
}

fn connect_error(e: std::io::Error) -> serde_json::Value {
    match e.kind() {
        ErrorKind::ConnectionRefused => json!({"result":"refused"}),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => json!({"result":"timeout"}),
        _ => json!({"result":"error","message":e.to_string()}),
    }
}

fn udp(addr: SocketAddr, send: &str, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|_| s)) {
        Ok(s) => s,
        Err(e) => return json!({"result":"error","message":e.to_string()}),
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 2048];
    // Resend every 200 ms: one lost datagram should not decide the probe.
    while start.elapsed() < timeout {
        let _ = sock.send(send.as_bytes());
        match sock.recv(&mut buf) {
            Ok(n) => {
                return json!({
                    "result":"ok",
                    "ms": start.elapsed().as_millis() as u64,
                    "reply": String::from_utf8_lossy(&buf[..n]),
                })
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return json!({"result":"refused"})
            }
            Err(_) => {}
        }
    }
    json!({"result":"timeout"})
}
