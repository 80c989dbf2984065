//! The tokio I/O shell: one thread with a current-thread runtime drives the engine from the TUN
//! device, the UDP socket, control calls and timers. Packets are handled in batches (up to
//! [`TUN_BATCH`] TUN reads, `recvmmsg` + GRO on UDP) with the engine locked once per batch, and
//! outgoing datagrams are flushed per batch with GSO. No allocation per packet.

use super::engine::{Engine, Sink};
use super::tundev;
use super::udp::{canonical, RecvBufs, TxBatch, Udp};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use ztmesh_common::time::UnixMillis;

/// TUN reads per wake-up before the loop looks at the other sources again.
const TUN_BATCH: usize = 64;
/// `recvmmsg` rounds per wake-up.
const UDP_ROUNDS: usize = 4;
/// Bound on queued engine events nobody collected.
const MAX_EVENTS: usize = 1024;

/// Outputs of control calls (made from other threads), flushed by the loop.
#[derive(Default)]
pub(super) struct QueueSink {
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
    pub tun: Vec<Vec<u8>>,
}

impl Sink for QueueSink {
    fn send_datagram(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.datagrams.push((to, datagram.to_vec()));
    }
    fn write_tun(&mut self, packet: &[u8]) {
        self.tun.push(packet.to_vec());
    }
}

pub(super) struct State {
    pub engine: Engine,
    pub deferred: QueueSink,
    /// Addresses to put on the TUN device (set by a new identity).
    pub addresses: Option<Vec<IpAddr>>,
    pub applied_addresses: Vec<IpAddr>,
    pub shutdown: bool,
}

pub(super) struct Shared {
    pub state: Mutex<State>,
    pub kick: Notify,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) fn now_ms() -> UnixMillis {
    UnixMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// Writes decrypted packets straight to the TUN and collects datagrams for the batch send.
struct IoSink<'a> {
    tun: &'a tun::Device,
    tx: &'a mut TxBatch,
}

impl Sink for IoSink<'_> {
    fn send_datagram(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.tx.push(to, datagram);
    }
    fn write_tun(&mut self, packet: &[u8]) {
        if let Err(e) = self.tun.send(packet) {
            tracing::trace!(error = %e, "TUN write failed");
        }
    }
}

fn trim_events(engine: &mut Engine) {
    while engine.pending_events() > MAX_EVENTS {
        engine.poll_event();
    }
}

pub(super) async fn run(
    shared: Arc<Shared>,
    tun: AsyncFd<tun::Device>,
    udp: Udp,
    tun_name: String,
) {
    let mut rx = RecvBufs::new();
    let mut tx = TxBatch::new(udp.max_gso_segments());
    let mut pkt = vec![0u8; 65_536];
    loop {
        let timeout = shared.lock().engine.poll_timeout();
        let now = now_ms();
        let wait = timeout.map(|t| now.until(t)).unwrap_or(1_000).min(1_000);
        let sleep = tokio::time::sleep(Duration::from_millis(wait));
        tokio::select! {
            _ = shared.kick.notified() => {
                let (addrs, shutdown) = {
                    let mut st = shared.lock();
                    let st = &mut *st;
                    for (to, d) in st.deferred.datagrams.drain(..) {
                        tx.push(to, &d);
                    }
                    for p in st.deferred.tun.drain(..) {
                        let _ = tun.get_ref().send(&p);
                    }
                    (st.addresses.take(), st.shutdown)
                };
                if shutdown {
                    break;
                }
                if let Some(a) = addrs {
                    match tundev::set_addresses(&tun_name, &a) {
                        Ok(()) => {
                            tracing::info!(tun = %tun_name, addresses = ?a, "TUN addresses set");
                            shared.lock().applied_addresses = a;
                        }
                        Err(e) => tracing::error!(error = %e, "setting TUN addresses failed"),
                    }
                }
            }
            r = udp.socket.readable() => {
                if r.is_ok() {
                    udp_batch(&shared, &udp, tun.get_ref(), &mut rx, &mut tx);
                }
            }
            r = tun.readable() => {
                if let Ok(mut guard) = r {
                    let mut st = shared.lock();
                    let now = now_ms();
                    let mut sink = IoSink { tun: tun.get_ref(), tx: &mut tx };
                    for _ in 0..TUN_BATCH {
                        match sink.tun.recv(&mut pkt) {
                            Ok(n) => st.engine.handle_tun_packet(now, &pkt[..n], &mut sink),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                guard.clear_ready();
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "TUN read failed");
                                break;
                            }
                        }
                    }
                    trim_events(&mut st.engine);
                }
            }
            _ = sleep => {
                let mut st = shared.lock();
                let mut sink = IoSink { tun: tun.get_ref(), tx: &mut tx };
                st.engine.handle_timeout(now_ms(), &mut sink);
                trim_events(&mut st.engine);
            }
        }
        if !tx.is_empty() {
            tx.flush(&udp).await;
        }
    }
    tracing::info!(tun = %tun_name, "data plane stopped");
}

fn udp_batch(shared: &Shared, udp: &Udp, tun: &tun::Device, rx: &mut RecvBufs, tx: &mut TxBatch) {
    for _ in 0..UDP_ROUNDS {
        let n = {
            let mut slices: Vec<IoSliceMut<'_>> = Vec::new();
            slices.extend(rx.bufs.iter_mut().map(|b| IoSliceMut::new(&mut b[..])));
            match udp.try_recv(&mut slices, &mut rx.meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    return;
                }
            }
        };
        let now = now_ms();
        let mut st = shared.lock();
        let mut sink = IoSink { tun, tx };
        for (meta, buf) in rx.meta.iter().zip(rx.bufs.iter()).take(n) {
            let from = canonical(meta.addr);
            let stride = meta.stride.max(1);
            for seg in buf[..meta.len].chunks(stride) {
                st.engine.handle_datagram(now, from, seg, &mut sink);
            }
        }
        trim_events(&mut st.engine);
        if n < rx.meta.len() {
            return;
        }
    }
}
