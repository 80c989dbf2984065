//! Human-readable rendering of daemon replies.

use crate::ipc::proto::StatusReport;
use std::fmt::Write as _;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "in 5m", "12s ago" relative to `now`.
pub fn relative(at_ms: u64, now_ms: u64) -> String {
    let (d, future) = if at_ms >= now_ms {
        (at_ms - now_ms, true)
    } else {
        (now_ms - at_ms, false)
    };
    let s = d / 1000;
    let span = if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else if s < 172_800 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        other => format!("proto-{other}"),
    }
}

pub fn status(s: &StatusReport, now: u64) -> String {
    let mut o = String::new();
    let conn = match (s.connected, s.connected_since_ms) {
        (true, Some(t)) => format!("connected for {}", relative(t, now).replace(" ago", "")),
        (true, None) => "connected".to_string(),
        (false, _) => "not connected".to_string(),
    };
    let _ = writeln!(
        o,
        "state:       {} ({conn}{})",
        s.state,
        s.coordinator
            .as_deref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    );
    if let Some(u) = &s.login_url {
        let _ = writeln!(o, "login at:    {u}");
    }
    if let Some(u) = &s.reauth_url {
        let _ = writeln!(o, "re-login at: {u}");
    }
    for r in &s.refused {
        let _ = writeln!(o, "refused:     {r}");
    }
    if let Some(r) = &s.revoked {
        let _ = writeln!(o, "revoked:     {r}");
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(o, "last error:  {e}");
    }
    let me = &s.self_;
    // Before admission there are no addresses and no owner yet: then the name alone.
    let owner = me.user.clone().unwrap_or_else(|| me.tags.join(","));
    let mut line = me.name.clone();
    for part in [me.addresses.join(" "), owner] {
        if !part.is_empty() {
            line.push(' ');
            line.push_str(&part);
        }
    }
    let _ = writeln!(o, "self:        {line}");
    if let Some(exp) = me.expires_at_ms {
        let _ = writeln!(o, "credential:  expires {}", relative(exp, now));
    }
    if s.peers.is_empty() {
        let _ = writeln!(o, "peers:       none");
    } else {
        let _ = writeln!(o, "peers:");
        for p in &s.peers {
            let hs = p
                .last_handshake_ms
                .map(|h| relative(h, now))
                .unwrap_or_else(|| "no handshake".into());
            let _ = writeln!(
                o,
                "  {:<16} {:<40} {:<22} {:<14} rx {} tx {}",
                p.name,
                p.addresses.join(" "),
                p.endpoint.as_deref().unwrap_or("-"),
                hs,
                bytes(p.rx_bytes),
                bytes(p.tx_bytes)
            );
        }
    }
    if !s.denied.is_empty() {
        let _ = writeln!(o, "denied flows (latest first):");
        for f in &s.denied {
            let port = f.dst_port.map(|p| format!(":{p}")).unwrap_or_default();
            let _ = writeln!(
                o,
                "  {:<8} {} -> {}{port} {} x{}",
                relative(f.at_ms, now),
                f.src,
                f.dst,
                proto_name(f.proto),
                f.count
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_and_sizes_read_naturally() {
        assert_eq!(relative(65_000, 5_000), "in 60s");
        assert_eq!(relative(0, 3_600_000), "60m ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn status_says_how_long_the_control_connection_has_been_up() {
        let s = StatusReport {
            state: "running".into(),
            connected: true,
            connected_since_ms: Some(1_000),
            ..Default::default()
        };
        assert!(status(&s, 181_000).starts_with("state:       running (connected for 3m)"));
        let down = StatusReport {
            connected: false,
            ..s
        };
        assert!(status(&down, 181_000).contains("(not connected)"));
    }

    #[test]
    fn self_line_shows_only_what_the_device_has() {
        let mut s = StatusReport::default();
        s.self_.name = "vm".into();
        assert!(
            status(&s, 0).contains("self:        vm\n"),
            "{}",
            status(&s, 0)
        );
        s.self_.addresses = vec!["100.64.0.1".into(), "fd5a::1".into()];
        assert!(status(&s, 0).contains("self:        vm 100.64.0.1 fd5a::1\n"));
        s.self_.tags = vec!["tag:web".into(), "tag:db".into()];
        assert!(status(&s, 0).contains("self:        vm 100.64.0.1 fd5a::1 tag:web,tag:db\n"));
        s.self_.user = Some("alice@example.com".into());
        assert!(status(&s, 0).contains("self:        vm 100.64.0.1 fd5a::1 alice@example.com\n"));
    }
}
