//! The echo/HTTP test service.

use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

pub fn run(name: &str, tcp: &[u16], udp: &[u16], max_secs: u64) {
    for &port in tcp {
        // Dual-stack where possible, so overlay IPv6 addresses work too.
        let listener =
            TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)));
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                crate::emit(json!({"event":"failed","message":format!("tcp {port}: {e}")}));
                std::process::exit(1);
            }
        };
        let name = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || serve_tcp(conn, &name, port));
            }
        });
    }
    for &port in udp {
        let sock = UdpSocket::bind(("::", port)).or_else(|_| UdpSocket::bind(("0.0.0.0", port)));
        let sock = match sock {
            Ok(s) => s,
            Err(e) => {
                crate::emit(json!({"event":"failed","message":format!("udp {port}: {e}")}));
                std::process::exit(1);
            }
        };
        std::thread::spawn(move || serve_udp(sock));
    }
    crate::emit(json!({"event":"ready","name":name,"tcp":tcp,"udp":udp}));
    std::thread::sleep(Duration::from_secs(max_secs));
}

fn serve_tcp(conn: TcpStream, name: &str, port: u16) {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    crate::emit(json!({"event":"accepted","port":port,"peer":peer,"at_ms":crate::now_ms()}));
    let _ = conn.set_read_timeout(Some(Duration::from_secs(600)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.starts_with("GET ") {
            let body = format!("hello from {name}\n");
            let _ = write!(
                writer,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        if writer.write_all(line.as_bytes()).is_err() {
            return;
        }
    }
}

fn serve_udp(sock: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let reply = if &buf[..n] == b"whoami" {
            // The sender as seen here: shows whether (and how) a NAT rewrote it.
            let ip = match from.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map(std::net::IpAddr::V4)
                    .unwrap_or(std::net::IpAddr::V6(v6)),
                v4 => v4,
            };
            std::net::SocketAddr::new(ip, from.port())
                .to_string()
                .into_bytes()
        } else {
            buf[..n].to_vec()
        };
        let _ = sock.send_to(&reply, from);
    }
}
