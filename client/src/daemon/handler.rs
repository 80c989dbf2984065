//! Answers control-socket requests from the CLI.

use super::{ping, status, Daemon};
use crate::control::{Event, Phase};
use crate::ipc::proto::{Reply, Request, StatusReport};
use crate::ipc::server::Handler;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

pub fn handler(d: Arc<Daemon>) -> Handler {
    Arc::new(move |req, tx| {
        let d = d.clone();
        Box::pin(async move { handle(d, req, tx).await })
    })
}

async fn handle(d: Arc<Daemon>, req: Request, tx: mpsc::Sender<Reply>) {
    match req {
        Request::Status => {
            let _ = tx
                .send(Reply::Status {
                    status: Box::new(status_report(&d)),
                })
                .await;
        }
        Request::Posture => {
            let p = d.prober.clone();
            let attrs = tokio::task::spawn_blocking(move || p.collect(SystemTime::now()))
                .await
                .unwrap_or_default();
            let json = attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            let _ = tx
                .send(Reply::Posture {
                    attrs: serde_json::Value::Object(json),
                })
                .await;
        }
        Request::Down => {
            d.stop_session(true).await;
            d.plane.clear();
            d.persist(|p| p.up = false);
            {
                let mut st = d.shared.lock();
                st.phase = Phase::Stopped;
                st.own = None;
                st.peers.clear();
                st.netmap_version = None;
                st.renew_at = None;
                st.login_url = None;
                st.connected_since = None;
            }
            tracing::info!("left the mesh (down)");
            let _ = tx
                .send(Reply::Done {
                    message: "ztmesh is down".into(),
                })
                .await;
        }
        Request::Up {
            coordinator,
            auth_key,
            hostname,
        } => up(&d, coordinator, auth_key, hostname, &tx).await,
        Request::Ping { peer, count } => ping_peer(&d, &peer, count, &tx).await,
    }
}

pub(super) fn status_report(d: &Daemon) -> StatusReport {
    let snap = d.plane.snapshot();
    let st = d.shared.lock();
    status::report(&st, &snap, d.machine.public(), Some(d.plane.local_port()))
}

async fn up(
    d: &Arc<Daemon>,
    coordinator: String,
    auth_key: Option<String>,
    hostname: Option<String>,
    tx: &mpsc::Sender<Reply>,
) {
    // The CLI checks too; the daemon must not take (and show as its own) a name that the
    // coordinator will refuse.
    if let Some(Err(message)) = hostname.as_deref().map(ztmesh_common::wire::check_hostname) {
        let _ = tx.send(Reply::Error { message }).await;
        return;
    }
    let same_name = hostname
        .as_ref()
        .is_none_or(|h| *h == d.shared.lock().hostname);
    let already = d.running_join().await.as_deref() == Some(coordinator.as_str())
        && d.shared.lock().phase == Phase::Running
        && auth_key.is_none()
        && same_name;
    if already {
        let _ = tx
            .send(Reply::Up {
                status: Box::new(status_report(d)),
            })
            .await;
        return;
    }
    // Subscribe before starting, so no event of this join can be missed.
    let mut events = d.shared.subscribe();
    if let Err(e) = d.start_session(&coordinator, hostname, auth_key).await {
        let _ = tx
            .send(Reply::Error {
                message: e.to_string(),
            })
            .await;
        return;
    }
    let mut last_error_sent = None;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            // Connection failures are not events: surface them while the session retries.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let err = d.shared.lock().last_error.clone();
                if let Some(e) = err.as_ref().filter(|_| err != last_error_sent) {
                    let message = format!("{e}; retrying");
                    if tx.send(Reply::Progress { message }).await.is_err() {
                        return;
                    }
                }
                last_error_sent = err;
                continue;
            }
        };
        let reply = match ev {
            Ok(Event::LoginUrl(url)) => {
                if tx.send(Reply::LoginUrl { url }).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Event::Refused(reasons)) => Reply::Refused { reasons },
            Ok(Event::Meshed) => Reply::Up {
                status: Box::new(status_report(d)),
            },
            Ok(Event::Revoked(reason)) => Reply::Error {
                message: format!("access revoked: {reason}"),
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => Reply::Error {
                message: "daemon is shutting down".into(),
            },
        };
        let _ = tx.send(reply).await;
        return;
    }
}

/// A peer by name (hostname, case-insensitive) or overlay address; IPv4 preferred.
fn resolve_peer(d: &Daemon, peer: &str) -> Option<IpAddr> {
    if let Ok(ip) = peer.parse::<IpAddr>() {
        return Some(ip);
    }
    let st = d.shared.lock();
    let p = st
        .peers
        .values()
        .find(|p| p.cred.hostname.eq_ignore_ascii_case(peer))?;
    let mut addrs = p.cred.addresses.clone();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.first().copied()
}

async fn ping_peer(d: &Daemon, peer: &str, count: u32, tx: &mpsc::Sender<Reply>) {
    let Some(dst) = resolve_peer(d, peer) else {
        let _ = tx
            .send(Reply::Error {
                message: format!("no peer named {peer:?} in this node's view"),
            })
            .await;
        return;
    };
    let device = d.opts.tun_name.clone();
    let count = count.clamp(1, 100);
    let (rtx, mut rrx) = mpsc::channel(8);
    // Raw sockets are blocking here; one thread per ping command, bounded by `count`.
    let worker = tokio::task::spawn_blocking(move || {
        let pinger = match ping::Pinger::new(dst, &device) {
            Ok(p) => p,
            Err(e) => {
                let _ = rtx.blocking_send(Reply::Error {
                    message: format!("cannot open an ICMP socket on {device}: {e}"),
                });
                return 0u32;
            }
        };
        let mut ok = 0;
        for seq in 1..=count as u16 {
            let started = std::time::Instant::now();
            let reply = match pinger.echo(seq, Duration::from_secs(1)) {
                Ok(Some(rtt)) => {
                    ok += 1;
                    Reply::Pong {
                        seq,
                        from: dst.to_string(),
                        rtt_us: rtt.as_micros() as u64,
                    }
                }
                Ok(None) => Reply::PingTimeout { seq },
                Err(e) => Reply::Error {
                    message: format!("ping {dst}: {e}"),
                },
            };
            let stop = matches!(reply, Reply::Error { .. });
            if rtx.blocking_send(reply).is_err() || stop {
                return ok;
            }
            if seq as u32 != count {
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
        }
        ok
    });
    while let Some(r) = rrx.recv().await {
        if tx.send(r).await.is_err() {
            return;
        }
    }
    let ok = worker.await.unwrap_or(0);
    let _ = tx
        .send(Reply::Done {
            message: format!("{ok}/{count} replies from {peer} ({dst})"),
        })
        .await;
}
