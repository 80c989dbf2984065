//! Test services and probes run inside lab hosts through the `ztmesh-lab` tool: an echo/HTTP
//! service, one-shot TCP/UDP probes (ok / refused / timeout), and a held connection that
//! reports the moment it is cut.

use crate::{wait, Lab, LabError, Process};
use serde::Deserialize;
use std::time::Duration;

/// What a one-shot probe saw.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ProbeOutcome {
    /// Connected and got the echo (or UDP reply) back; `ms` = connect to reply.
    Ok { ms: u64, reply: String },
    /// Actively refused (RST / ICMP unreachable).
    Refused,
    /// No answer at all within the timeout (dropped).
    Timeout,
    /// Connected but no data came back within the timeout.
    NoReply,
    /// Anything else (unreachable network, reset mid-way, ...).
    Error { message: String },
}

impl ProbeOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, ProbeOutcome::Ok { .. })
    }
}

impl std::fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeOutcome::Ok { ms, .. } => write!(f, "answered in {ms} ms"),
            ProbeOutcome::Refused => f.write_str("refused"),
            ProbeOutcome::Timeout => f.write_str("no answer (dropped)"),
            ProbeOutcome::NoReply => f.write_str("connected, but no reply"),
            ProbeOutcome::Error { message } => f.write_str(message),
        }
    }
}

/// A probe that was retried until it held (or not), for narration.
pub fn describe(r: &Result<ProbeOutcome, LabError>) -> String {
    match r {
        Ok(o) => o.to_string(),
        Err(e) => e.to_string(),
    }
}

/// One event line of `ztmesh-lab hold`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HoldEvent {
    Connected {
        at_ms: u64,
    },
    /// The connection stopped carrying data: `last_ok_ms` is the last echo received,
    /// `at_ms` when the tool gave up on it.
    Cut {
        last_ok_ms: u64,
        at_ms: u64,
        reason: String,
    },
    /// Still carrying data when the tool's own time limit ended.
    StillOpen {
        at_ms: u64,
    },
    Failed {
        message: String,
    },
}

/// A long-lived connection held open by `ztmesh-lab hold` on a lab host.
#[derive(Debug)]
pub struct HoldHandle {
    pub process: Process,
}

impl HoldHandle {
    /// The events printed so far.
    pub fn events(&self) -> Vec<HoldEvent> {
        parse_lines(&self.process.log())
    }

    /// Whether the connection is established and not (yet) cut.
    pub fn is_open(&self) -> bool {
        let ev = self.events();
        ev.iter().any(|e| matches!(e, HoldEvent::Connected { .. }))
            && !ev.iter().any(|e| !matches!(e, HoldEvent::Connected { .. }))
    }

    /// Waits for the cut; returns (last successful echo, detection time) in Unix ms.
    pub fn wait_cut(&self, timeout: Duration) -> Result<(u64, u64), LabError> {
        wait::until("the held connection to be cut", timeout, || {
            self.events().into_iter().find_map(|e| match e {
                HoldEvent::Cut {
                    last_ok_ms, at_ms, ..
                } => Some(Ok((last_ok_ms, at_ms))),
                HoldEvent::StillOpen { .. } => Some(Err(LabError::Setup(
                    "held connection outlived its time limit without being cut".into(),
                ))),
                HoldEvent::Failed { message } => Some(Err(LabError::Setup(message))),
                HoldEvent::Connected { .. } => None,
            })
        })?
    }
}

fn parse_lines<T: for<'de> Deserialize<'de>>(text: &str) -> Vec<T> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Lab {
    /// Starts the echo/HTTP service on `host` listening on the given TCP and UDP ports (all
    /// addresses, so also on overlay addresses once they exist); returns when it listens.
    pub fn serve(
        &self,
        host: &str,
        name: &str,
        tcp: &[u16],
        udp: &[u16],
    ) -> Result<Process, LabError> {
        let mut args = vec!["serve".to_string(), "--name".into(), name.to_string()];
        for p in tcp {
            args.extend(["--tcp".into(), p.to_string()]);
        }
        for p in udp {
            args.extend(["--udp".into(), p.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = self.spawn(host, name, &Lab::tool()?, &args)?;
        p.wait_for_log("{\"event\":\"ready\"", Duration::from_secs(10))?;
        Ok(p)
    }

    /// One TCP connection from `from` to `addr` ("IP:PORT"): sends a line, expects it back.
    pub fn probe_tcp(
        &self,
        from: &str,
        addr: &str,
        timeout: Duration,
    ) -> Result<ProbeOutcome, LabError> {
        self.probe(from, &["probe", "tcp", addr], timeout)
    }

    /// One UDP datagram `payload` from `from` to `addr`; the reply, if any.
    pub fn probe_udp(
        &self,
        from: &str,
        addr: &str,
        payload: &str,
        timeout: Duration,
    ) -> Result<ProbeOutcome, LabError> {
        self.probe(from, &["probe", "udp", addr, "--send", payload], timeout)
    }

    fn probe(
        &self,
        from: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<ProbeOutcome, LabError> {
        let ms = timeout.as_millis().to_string();
        let mut full = args.to_vec();
        full.extend(["--timeout-ms", &ms]);
        let out = self.exec(
            from,
            &Lab::tool()?,
            &full,
            timeout + Duration::from_secs(10),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_lines::<ProbeOutcome>(&text)
            .pop()
            .ok_or_else(|| LabError::Setup(format!("probe printed no result: {text}")))
    }

    /// `count` ICMP echoes (v4 or v6 by the address) from `from` to `ip`, 200 ms apart, each
    /// waiting at most a second; whether any reply came back.
    pub fn ping(&self, from: &str, ip: &str, count: u32) -> Result<bool, LabError> {
        let n = count.max(1).to_string();
        let out = self.exec(
            from,
            std::path::Path::new("ping"),
            &["-n", "-q", "-c", &n, "-i", "0.2", "-W", "1", ip],
            Duration::from_secs(u64::from(count) + 5),
        )?;
        Ok(out.status.success())
    }

    /// Runs `ztmesh-lab flood` from `from` at `addr` (bounded: `count` datagrams, 10 s);
    /// returns its summary line.
    pub fn flood(&self, from: &str, addr: &str, count: u64) -> Result<String, LabError> {
        let n = count.to_string();
        let out = self.exec(
            from,
            &Lab::tool()?,
            &["flood", addr, "--count", &n, "--max-secs", "10"],
            Duration::from_secs(20),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `ztmesh-lab malformed` on `from`: `count` malformed IPv4 packets from `src` to
    /// `dst` through its stack (and so through its TUN device); returns the summary line.
    pub fn malformed(
        &self,
        from: &str,
        dst: &str,
        src: &str,
        count: u64,
    ) -> Result<String, LabError> {
        let n = count.to_string();
        let out = self.exec(
            from,
            &Lab::tool()?,
            &["malformed", dst, "--src", src, "--count", &n],
            Duration::from_secs(20),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Opens a connection from `from` to the echo service at `addr` and keeps it carrying a
    /// small echo every 50 ms (for at most `max`); returns once it is established.
    pub fn hold(&self, from: &str, addr: &str, max: Duration) -> Result<HoldHandle, LabError> {
        self.hold_tolerant(from, addr, max, Duration::from_millis(300))
    }

    /// [`Lab::hold`] that reports a cut only after `gap` without an echo (a connection that
    /// must survive, not necessarily without a retransmission).
    pub fn hold_tolerant(
        &self,
        from: &str,
        addr: &str,
        max: Duration,
        gap: Duration,
    ) -> Result<HoldHandle, LabError> {
        let secs = max.as_secs().max(1).to_string();
        let gap = gap.as_millis().to_string();
        let process = self.spawn(
            from,
            &format!("hold-{from}"),
            &Lab::tool()?,
            &["hold", addr, "--max-secs", &secs, "--cut-after-ms", &gap],
        )?;
        let h = HoldHandle { process };
        wait::until(
            "the held connection to open",
            Duration::from_secs(10),
            || {
                let ev = h.events();
                if ev.iter().any(|e| matches!(e, HoldEvent::Connected { .. })) {
                    Some(Ok(()))
                } else {
                    ev.into_iter()
                        .next()
                        .map(|e| Err(LabError::Setup(format!("hold failed: {e:?}"))))
                }
            },
        )??;
        Ok(h)
    }
}

/// What a headless login ended with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum BrowseOutcome {
    /// The last page reached without a login form on it.
    Ok {
        final_url: String,
        page: String,
    },
    Error {
        message: String,
    },
}

impl Lab {
    /// Headless login from host `from`: opens `url`, takes the SSO link if `sso`, and fills
    /// the login form(s) with `user`'s password and current TOTP code.
    pub fn browse(
        &self,
        from: &str,
        url: &str,
        user: &crate::IdpUser,
        sso: bool,
    ) -> Result<BrowseOutcome, LabError> {
        let mut args = vec![
            "browse",
            url,
            "--user",
            &user.login,
            "--password",
            &user.password,
        ];
        if let Some(t) = &user.totp_secret {
            args.extend(["--totp-secret", t]);
        }
        if sso {
            args.push("--sso");
        }
        let out = self.exec(from, &Lab::tool()?, &args, Duration::from_secs(60))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_lines::<BrowseOutcome>(&text)
            .pop()
            .ok_or_else(|| LabError::Setup(format!("browse printed no result: {text}")))
    }
}
