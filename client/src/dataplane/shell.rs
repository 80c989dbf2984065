//! The tokio I/O shell: one thread with a current-thread runtime drives the engine from the TUN
//! device, the UDP socket, control calls and timers.
//!
//! Each turn polls every source without blocking, in this order: control calls; a bounded
//! number of received datagrams (`recvmmsg` with UDP GRO) whose decrypted packets go to the
//! TUN as one batch; the TUN drained into the
//! fair queue ([`FairQueue`], so that sparse flows overtake a bulk backlog); up to
//! [`SEND_BATCH`] packets from that queue through the engine; due timers; one GSO flush of the
//! datagrams produced. The loop sleeps only when a turn found nothing to do. The engine is
//! locked once per step, never per packet, and no step allocates per packet.

use super::engine::{Engine, Sink};
use super::fq::{FairQueue, FqConfig};
use super::tundev;
use super::tunio::{PacketBatch, TunIo};
use super::udp::{RecvBufs, TxBatch, Udp};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use ztmesh_common::time::UnixMillis;

/// Packets read from the TUN per turn. Draining the kernel's ring (500 packets) eagerly moves
/// the queue into the fair queue, where it is managed.
const TUN_READ_BATCH: usize = 256;
/// Packets taken from the fair queue per turn: one GSO batch.
const SEND_BATCH: usize = 64;
/// Received datagrams handled per turn. Bounded so that the TUN is drained in between: each
/// ACK written to the TUN lets the local TCP sender put more data packets into the kernel's
/// TUN ring at once, and a thousand ACKs from one GRO receive would overflow it.
const UDP_BUDGET: usize = 64;
/// Decrypted packets written to the TUN per batch.
const TUN_WRITE_BATCH: usize = 256;
/// Bound on queued engine events nobody collected.
const MAX_EVENTS: usize = 1024;
/// Longest sleep without a timer (the loop re-reads the engine's next timer after it).
const MAX_SLEEP_MS: u64 = 1_000;

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
    /// Wakes the loop when it sleeps; `pending` tells a busy loop.
    pub kick: Notify,
    pub pending: AtomicBool,
    /// Packets the TUN-side fair queue dropped: by CoDel, and because it was full.
    pub queue_codel_drops: AtomicU64,
    pub queue_overflow_drops: AtomicU64,
}

impl Shared {
    pub fn new(state: State) -> Self {
        Shared {
            state: Mutex::new(state),
            kick: Notify::new(),
            pending: AtomicBool::new(false),
            queue_codel_drops: AtomicU64::new(0),
            queue_overflow_drops: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tell the loop that control work (deferred output, addresses, shutdown) waits.
    pub fn kick(&self) {
        self.pending.store(true, Ordering::Release);
        self.kick.notify_one();
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

/// Collects decrypted packets into the TUN write batch (written when full and at the end of
/// each step) and datagrams into the GSO batch.
struct IoSink<'a, T: TunIo> {
    tun: &'a T,
    tun_out: &'a mut PacketBatch,
    tx: &'a mut TxBatch,
}

impl<T: TunIo> Sink for IoSink<'_, T> {
    fn send_datagram(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.tx.push(to, datagram);
    }
    fn write_tun(&mut self, packet: &[u8]) {
        self.tun_out.push(packet);
        if self.tun_out.is_full() {
            self.tun.send_batch(self.tun_out);
        }
    }
}

fn trim_events(engine: &mut Engine) {
    while engine.pending_events() > MAX_EVENTS {
        engine.poll_event();
    }
}

struct Shell<T: TunIo> {
    shared: Arc<Shared>,
    tun: T,
    udp: Udp,
    tun_name: String,
    rx: RecvBufs,
    tx: TxBatch,
    tun_in: PacketBatch,
    tun_out: PacketBatch,
    fq: FairQueue,
    /// Origin of the fair queue's microsecond clock.
    epoch: Instant,
}

pub(super) async fn run<T: TunIo>(shared: Arc<Shared>, tun: T, udp: Udp, tun_name: String) {
    let max_gso = udp.max_gso_segments();
    let mut sh = Shell {
        shared,
        tun,
        udp,
        tun_name,
        rx: RecvBufs::new(),
        tx: TxBatch::new(max_gso),
        tun_in: PacketBatch::new(TUN_READ_BATCH, TUN_READ_BATCH * 1500),
        tun_out: PacketBatch::new(TUN_WRITE_BATCH, TUN_WRITE_BATCH * 1500),
        fq: FairQueue::new(FqConfig::default()),
        epoch: Instant::now(),
    };
    loop {
        if sh.shared.pending.swap(false, Ordering::AcqRel) && sh.control() {
            break;
        }
        let mut busy = sh.udp_step();
        busy |= sh.tun_step();
        sh.send_step();
        let next_timer = sh.timer_step();
        if !sh.tun_out.is_empty() {
            sh.tun.send_batch(&mut sh.tun_out);
        }
        if !sh.tx.is_empty() {
            sh.tx.flush(&sh.udp).await;
        }
        if busy || !sh.fq.is_empty() {
            // More may be waiting: let the runtime refresh readiness, then take another turn.
            tokio::task::yield_now().await;
            continue;
        }
        let now = now_ms();
        let wait = next_timer.map_or(MAX_SLEEP_MS, |t| now.until(t).min(MAX_SLEEP_MS));
        tokio::select! {
            _ = sh.shared.kick.notified() => {}
            _ = sh.udp.socket.readable() => {}
            _ = sh.tun.readable() => {}
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    tracing::info!(tun = %sh.tun_name, "data plane stopped");
}

impl<T: TunIo> Shell<T> {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Deferred output of control calls and new TUN addresses. Returns true on shutdown.
    fn control(&mut self) -> bool {
        let (addrs, shutdown) = {
            let mut st = self.shared.lock();
            let st = &mut *st;
            for (to, d) in st.deferred.datagrams.drain(..) {
                self.tx.push(to, &d);
            }
            for p in st.deferred.tun.drain(..) {
                self.tun_out.push(&p);
                if self.tun_out.is_full() {
                    self.tun.send_batch(&mut self.tun_out);
                }
            }
            (st.addresses.take(), st.shutdown)
        };
        if shutdown {
            return true;
        }
        if let Some(a) = addrs {
            match tundev::set_addresses(&self.tun_name, &a) {
                Ok(()) => {
                    tracing::info!(tun = %self.tun_name, addresses = ?a, "TUN addresses set");
                    self.shared.lock().applied_addresses = a;
                }
                Err(e) => tracing::error!(error = %e, "setting TUN addresses failed"),
            }
        }
        false
    }

    /// Up to [`UDP_BUDGET`] received datagrams through the engine (receiving when the last
    /// batch is used up); the decrypted packets are written as one batch. Returns whether
    /// anything was processed.
    fn udp_step(&mut self) -> bool {
        if self.rx.is_drained() {
            match self.rx.recv(&self.udp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    return false;
                }
            }
        }
        let now = now_ms();
        let mut st = self.shared.lock();
        let mut sink = IoSink {
            tun: &self.tun,
            tun_out: &mut self.tun_out,
            tx: &mut self.tx,
        };
        let mut n = 0;
        while n < UDP_BUDGET {
            let Some((from, d)) = self.rx.next_datagram() else {
                break;
            };
            st.engine.handle_datagram(now, from, d, &mut sink);
            n += 1;
        }
        trim_events(&mut st.engine);
        drop(st);
        self.tun.send_batch(&mut self.tun_out);
        n > 0
    }

    /// Drain the TUN into the fair queue. Returns whether anything was read.
    fn tun_step(&mut self) -> bool {
        match self.tun.recv_batch(&mut self.tun_in) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                tracing::warn!(error = %e, "TUN read failed");
                return false;
            }
        }
        let now = self.now_us();
        for p in self.tun_in.iter() {
            self.fq.enqueue(p, now);
        }
        self.tun_in.clear();
        true
    }

    /// Up to [`SEND_BATCH`] packets from the fair queue through the engine.
    fn send_step(&mut self) {
        if self.fq.is_empty() {
            return;
        }
        let (now, now_us) = (now_ms(), self.now_us());
        let mut st = self.shared.lock();
        let engine = &mut st.engine;
        let mut sink = IoSink {
            tun: &self.tun,
            tun_out: &mut self.tun_out,
            tx: &mut self.tx,
        };
        for _ in 0..SEND_BATCH {
            if !self
                .fq
                .dequeue(now_us, |p| engine.handle_tun_packet(now, p, &mut sink))
            {
                break;
            }
        }
        trim_events(engine);
        drop(st);
        let drops = self.fq.drops();
        self.shared
            .queue_codel_drops
            .store(drops.codel, Ordering::Relaxed);
        self.shared
            .queue_overflow_drops
            .store(drops.overflow, Ordering::Relaxed);
    }

    /// Run the engine's timers if due; returns when they next are.
    fn timer_step(&mut self) -> Option<UnixMillis> {
        let now = now_ms();
        let mut st = self.shared.lock();
        if st.engine.poll_timeout().is_some_and(|t| t <= now) {
            let mut sink = IoSink {
                tun: &self.tun,
                tun_out: &mut self.tun_out,
                tx: &mut self.tx,
            };
            st.engine.handle_timeout(now, &mut sink);
            trim_events(&mut st.engine);
        }
        st.engine.poll_timeout()
    }
}
