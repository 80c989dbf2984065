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
            let req = Request::Up {
                coordinator,
                auth_key,
                hostname,
            };
            if timeout == 0 {
                up(&socket.socket, &req).await
            } else {
                match tokio::time::timeout(Duration::from_secs(timeout), up(&socket.socket, &req))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        eprintln!("timed out after {timeout}s; the daemon keeps trying (see `ztmesh status`)");
                        Ok(exit::TIMEOUT)
                    }
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

async fn up(socket: &Path, req: &Request) -> anyhow::Result<i32> {
    let mut s = client::send(socket, req).await?;
    while let Some(reply) = s.next().await? {
        match reply {
            Reply::LoginUrl { url } => {
                println!("To log in, open this URL in a browser:\n\n    {url}\n");
                println!("Waiting for the login to finish...");
            }
            Reply::Progress { message } => eprintln!("{message}"),
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
