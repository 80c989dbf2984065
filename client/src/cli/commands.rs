//! The CLI commands that talk to the daemon.

use super::{exit, render, Command};
use crate::ipc::client::{self, IpcError};
use crate::ipc::proto::{Reply, Request};
use std::path::Path;
use std::time::Duration;

pub async fn run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Daemon { .. } => unreachable!("the daemon is not a client command"),
        Command::Up {
            socket,
            coordinator,
            auth_key,
            hostname,
            timeout,
        } => {
            let auth_key = auth_key
                .as_deref()
                .map(super::parse_auth_key)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let req = Request::Up {
                coordinator: coordinator.to_string(),
                auth_key,
                hostname,
            };
            let mut waiting_for = UpWait::Answer;
            let Some(limit) = timeout.filter(|t| !t.is_zero()) else {
                return up(&socket.socket, &req, &mut waiting_for).await;
            };
            match tokio::time::timeout(limit, up(&socket.socket, &req, &mut waiting_for)).await {
                Ok(r) => r,
                Err(_) => {
                    eprintln!("error: gave up after {}: {waiting_for}", humanize(limit));
                    eprintln!(
                        "the daemon keeps trying: `ztmesh status` shows how it goes, \
                         `ztmesh down` stops it"
                    );
                    Ok(exit::TIMEOUT)
                }
            }
        }
        Command::Down { socket } => match call(&socket.socket, &Request::Down).await? {
            Reply::Done { message } => {
                println!("{message}");
                Ok(exit::OK)
            }
            other => unexpected(other),
        },
        Command::Status { socket, json } => match call(&socket.socket, &Request::Status).await? {
            Reply::Status { status } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", render::status(&status, render::now_ms()));
                }
                Ok(exit::OK)
            }
            other => unexpected(other),
        },
        Command::Posture { socket, json } => match call(&socket.socket, &Request::Posture).await? {
            Reply::Posture { attrs } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&attrs)?);
                } else if let Some(map) = attrs.as_object() {
                    for (k, v) in map {
                        println!("{k} = {v}");
                    }
                }
                Ok(exit::OK)
            }
            other => unexpected(other),
        },
        Command::Ping {
            socket,
            peer,
            count,
        } => ping(&socket.socket, peer, count).await,
    }
}

async fn call(socket: &Path, req: &Request) -> anyhow::Result<Reply> {
    Ok(client::call(socket, req).await?)
}

fn unexpected(r: Reply) -> anyhow::Result<i32> {
    match r {
        Reply::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// What a running `up` waits for, for the message when it gives up.
enum UpWait {
    /// The daemon connects; no failure reported yet.
    Answer,
    Login,
    /// The latest report of the daemon, e.g. why it cannot reach the coordinator.
    Report(String),
}

impl std::fmt::Display for UpWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpWait::Answer => f.write_str("no answer from the coordinator yet"),
            UpWait::Login => f.write_str("the login did not finish"),
            UpWait::Report(message) => write!(f, "last report: {message}"),
        }
    }
}

/// `90s`, `5m`, `1h30m`: as the user would write it.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut o = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            o.push_str(&format!("{n}{unit}"));
        }
    }
    if o.is_empty() {
        o.push_str("0s");
    }
    o
}

async fn up(socket: &Path, req: &Request, waiting_for: &mut UpWait) -> anyhow::Result<i32> {
    let mut s = client::send(socket, req).await?;
    while let Some(reply) = s.next().await? {
        match reply {
            Reply::LoginUrl { url } => {
                println!("To log in, open this URL in a browser:\n\n    {url}\n");
                println!("Waiting for the login to finish...");
                *waiting_for = UpWait::Login;
            }
            Reply::Progress { message } => {
                eprintln!("{message}");
                *waiting_for = UpWait::Report(message);
            }
            Reply::Refused { reasons } => {
                eprintln!("The coordinator refused this device:");
                for r in &reasons {
                    eprintln!("  - {r}");
                }
                return Ok(exit::REFUSED);
            }
            Reply::Up { status } => {
                println!(
                    "Connected as {} ({}) with {} peer(s).",
                    status.self_.name,
                    status.self_.addresses.join(", "),
                    status.peers.len()
                );
                return Ok(exit::OK);
            }
            Reply::Error { message } => anyhow::bail!("{message}"),
            other => return unexpected(other),
        }
    }
    Err(IpcError::Closed.into())
}

async fn ping(socket: &Path, peer: String, count: u32) -> anyhow::Result<i32> {
    let mut s = client::send(socket, &Request::Ping { peer, count }).await?;
    let mut failed = false;
    let mut got = 0;
    while let Some(reply) = s.next().await? {
        match reply {
            Reply::Pong { seq, from, rtt_us } => {
                got += 1;
                println!(
                    "reply from {from}: seq={seq} time={:.2} ms (ICMP echo via the tunnel)",
                    rtt_us as f64 / 1000.0
                );
            }
            Reply::PingTimeout { seq } => println!("seq={seq}: no reply within 1 s"),
            Reply::Done { message } => {
                println!("{message}");
                if got == 0 && !failed {
                    // Each side enforces its own inbound filter, so silence is what a denied
                    // echo looks like from here.
                    eprintln!(
                        "no reply: either the peer's policy does not admit ICMP from this \
                         device, or the peer is offline (`ztmesh status` shows its last \
                         handshake)"
                    );
                }
                return Ok(if got > 0 && !failed {
                    exit::OK
                } else {
                    exit::ERROR
                });
            }
            Reply::Error { message } => {
                eprintln!("error: {message}");
                failed = true;
            }
            other => return unexpected(other),
        }
    }
    Ok(if failed { exit::ERROR } else { exit::OK })
}
