//! The tokio I/O shell: two threads, each with a current-thread runtime, drive the engine.
//! The send thread reads the TUN and encrypts (and runs control calls and timers); the
//! receive thread reads the UDP socket, decrypts and writes the TUN. The system calls, most of
//! the cost, thus run in parallel; the engine is locked once per batch, never per packet, and
//! no step allocates per packet.
//!
//! Both directions pass a fair queue with CoDel ([`FairQueue`]): packets read from the TUN wait
//! in one before encryption, decrypted packets in another before they are written to the TUN.
//! When the data plane is the bottleneck, the standing queue thus forms where it is managed
//! (sparse flows such as ping or an interactive session overtake a bulk transfer, and CoDel
//! makes TCP back off early) instead of in the kernel's FIFOs, the TUN ring (500 packets) and
//! the UDP receive buffer, which each thread drains eagerly while its queue is short.

use super::engine::{Engine, Sink};
use super::fq::{FairQueue, FqConfig};
use super::tundev;
use super::tunio::{PacketBatch, TunIo};
use super::udp::{RecvBufs, TxBatch, Udp};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use ztmesh_common::time::UnixMillis;

/// Packets read from the TUN per turn while the outbound queue is short: the whole kernel
/// ring, so that it empties into the managed queue.
const TUN_READ_BATCH: usize = 512;
/// Packets encrypted per turn (and per engine lock): one GSO batch.
const SEND_BATCH: usize = 64;
/// Datagrams decrypted per engine lock.
const RECV_BATCH: usize = 64;
/// Datagrams decrypted per turn while the inbound queue is short. Small, because a packet
/// decrypted early in a turn waits for the rest of the turn's decryptions before its TUN
/// write (about 3 µs each).
const RECV_BUDGET: usize = 128;
/// Decrypted packets written to the TUN per turn (same-flow TCP segments among them become
/// one write, see [`super::gro`]).
const TUN_WRITE_BATCH: usize = 64;
/// Bytes a flow of the inbound queue passes per round: about 16 full segments, so that a TCP
/// flow's segments leave the queue back to back and become one TUN write (GRO) even when
/// several bulk flows share the queue. Sparse flows still go first (new-flow priority).
const INBOUND_QUANTUM: usize = 16 * 1514;
/// Above this many queued packets a direction takes in only as much as it passes on per turn:
/// draining further would spend reads and decryptions on packets CoDel is about to drop.
const QUEUE_HIGH: usize = 2048;
/// Busy turns between yields to the runtime (which refreshes readiness and timers).
const TURNS_PER_YIELD: u32 = 32;
/// Bound on queued engine events nobody collected.
const MAX_EVENTS: usize = 1024;
/// Longest sleep without a timer (the loop re-reads the engine's next timer after it).
const MAX_SLEEP_MS: u64 = 1_000;
/// Pause after the first failed TUN read of a streak; it doubles up to [`TUN_RETRY_MAX`]
/// while reads keep failing (the device stays readable, so waiting on it would spin).
const TUN_RETRY_MIN: Duration = Duration::from_millis(1);
const TUN_RETRY_MAX: Duration = Duration::from_secs(1);

/// Outputs of control calls (made from other threads), flushed by the send thread.
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

/// Drop counters of one fair queue, published for `status`.
#[derive(Default)]
pub(super) struct QueueDrops {
    pub codel: AtomicU64,
    pub overflow: AtomicU64,
}

impl QueueDrops {
    fn publish(&self, q: &FairQueue) {
        let d = q.drops();
        self.codel.store(d.codel, Ordering::Relaxed);
        self.overflow.store(d.overflow, Ordering::Relaxed);
    }
}

pub(super) struct Shared {
    pub state: Mutex<State>,
    /// Wakes the send thread when it sleeps; `pending` tells it when busy.
    pub kick: Notify,
    pub pending: AtomicBool,
    /// Set by the send thread when it stops; `stop` wakes the receive thread.
    pub stopped: AtomicBool,
    pub stop: Notify,
    pub outbound_drops: QueueDrops,
    pub inbound_drops: QueueDrops,
    /// Why the data plane stopped on its own, if it did.
    pub failure: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(state: State) -> Self {
        Shared {
            state: Mutex::new(state),
            kick: Notify::new(),
            pending: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
            outbound_drops: QueueDrops::default(),
            inbound_drops: QueueDrops::default(),
            failure: Mutex::new(None),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tell the send thread that control work (deferred output, addresses, shutdown) waits.
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

fn trim_events(engine: &mut Engine) {
    while engine.pending_events() > MAX_EVENTS {
        engine.poll_event();
    }
}

/// Account a turn that found more work: every [`TURNS_PER_YIELD`]th yields to the runtime
/// (which refreshes readiness and timers); the others go straight on.
async fn busy_turn(turns: &mut u32) {
    *turns = turns.wrapping_add(1);
    if turns.is_multiple_of(TURNS_PER_YIELD) {
        tokio::task::yield_now().await;
    }
}

/// Whether a TUN read error means the device is gone (deleted, or the descriptor detached
/// from it) rather than a passing fault.
fn tun_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::ENODEV | libc::ENXIO)
    )
}

/// The pause before the next TUN read after one more failure.
fn next_retry(pause: Option<Duration>) -> Duration {
    pause.map_or(TUN_RETRY_MIN, |p| (p * 2).min(TUN_RETRY_MAX))
}

/// Microseconds since `epoch`: the fair queues' clock.
fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The send thread's sink: datagrams into the GSO batch; the rare packets the engine writes
/// to the TUN on this path (ICMP unreachable, resets of cut flows) into a small batch.
struct SendSink<'a> {
    tx: &'a mut TxBatch,
    local: &'a mut PacketBatch,
}

impl Sink for SendSink<'_> {
    fn send_datagram(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.tx.push(to, datagram);
    }
    fn write_tun(&mut self, packet: &[u8]) {
        self.local.push(packet);
    }
}

/// The receive thread's sink: decrypted packets into the inbound queue, datagrams (handshake
/// responses, packets queued during a handshake) into its GSO batch.
struct RecvSink<'a> {
    inbound: &'a mut FairQueue,
    now_us: u64,
    tx: &'a mut TxBatch,
}

impl Sink for RecvSink<'_> {
    fn send_datagram(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.tx.push(to, datagram);
    }
    fn write_tun(&mut self, packet: &[u8]) {
        self.inbound.enqueue(packet, self.now_us);
    }
}

/// TUN -> engine -> UDP, plus control calls and timers.
pub(super) struct SendLoop<T: TunIo> {
    shared: Arc<Shared>,
    tun: Arc<T>,
    udp: Arc<Udp>,
    tun_name: String,
    tun_in: PacketBatch,
    local: PacketBatch,
    tx: TxBatch,
    outbound: FairQueue,
    epoch: Instant,
    /// TUN reads dropped as malformed, not yet added to the engine's counters.
    malformed: u64,
    /// Set while TUN reads fail: the pause before the next read.
    retry: Option<Duration>,
}

/// The TUN device went away: the data plane cannot go on.
struct TunGone(io::Error);

impl TunGone {
    /// A failed probe: `Some` when it says the device is gone.
    fn from_probe(e: io::Error) -> Option<TunGone> {
        tun_gone(&e).then_some(TunGone(e))
    }
}

impl<T: TunIo> SendLoop<T> {
    pub fn new(shared: Arc<Shared>, tun: Arc<T>, udp: Arc<Udp>, tun_name: String) -> Self {
        let max_gso = udp.max_gso_segments();
        SendLoop {
            shared,
            tun,
            udp,
            tun_name,
            tun_in: PacketBatch::new(TUN_READ_BATCH, TUN_READ_BATCH * 1500),
            local: PacketBatch::new(64, 64 * 1500),
            tx: TxBatch::new(max_gso),
            outbound: FairQueue::new(FqConfig::default()),
            epoch: Instant::now(),
            malformed: 0,
            retry: None,
        }
    }

    pub async fn run(mut self) {
        let mut turns = 0u32;
        loop {
            if self.shared.pending.swap(false, Ordering::AcqRel) && self.control() {
                break;
            }
            let more = match self.read_tun() {
                Ok(more) => more,
                Err(gone) => {
                    self.fail(gone);
                    break;
                }
            };
            self.encrypt();
            let next_timer = self.timers();
            if !self.local.is_empty() {
                self.tun.send_batch(&mut self.local);
            }
            self.tx.flush(&self.udp);
            self.shared.outbound_drops.publish(&self.outbound);
            if more || !self.outbound.is_empty() {
                busy_turn(&mut turns).await;
                continue;
            }
            // The TUN read ended in WouldBlock (readiness cleared): sleep until it has more.
            let now = now_ms();
            let wait = next_timer.map_or(MAX_SLEEP_MS, |t| now.until(t).min(MAX_SLEEP_MS));
            let wait = Duration::from_millis(wait);
            if let Some(pause) = self.retry {
                tokio::select! {
                    _ = self.shared.kick.notified() => {}
                    _ = tokio::time::sleep(pause.min(wait)) => {}
                }
                continue;
            }
            let idle = tokio::select! {
                _ = self.shared.kick.notified() => false,
                _ = self.tun.readable() => false,
                _ = tokio::time::sleep(wait) => true,
            };
            // Quiet for a while: make sure the device is still there (its deletion may have
            // woken nobody).
            if idle {
                if let Some(gone) = self.tun.probe().err().and_then(TunGone::from_probe) {
                    self.fail(gone);
                    break;
                }
            }
        }
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.stop.notify_one();
        tracing::info!(tun = %self.tun_name, "data plane stopped");
    }

    /// Record why the data plane stops on its own.
    fn fail(&self, TunGone(e): TunGone) {
        let why = format!("TUN device {} is gone: {e}", self.tun_name);
        tracing::error!("{why}; the data plane stops");
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(why);
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
                self.local.push(&p);
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

    /// Drain the TUN into the outbound queue. Returns whether more may be waiting (the read
    /// stopped at its limit rather than at an empty device). A failed read is logged once
    /// per streak and sets [`Self::retry`]; a device that is gone ends the loop.
    fn read_tun(&mut self) -> Result<bool, TunGone> {
        let max = if self.outbound.len() < QUEUE_HIGH {
            TUN_READ_BATCH
        } else {
            SEND_BATCH
        };
        let read = self.tun.recv_batch(&mut self.tun_in, max);
        self.malformed += self.tun.take_malformed();
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if tun_gone(&e) => return Err(TunGone(e)),
            Err(e) => {
                if self.retry.is_none() {
                    tracing::warn!(error = %e, "TUN read failed; retrying with back-off");
                }
                self.retry = Some(next_retry(self.retry));
                return Ok(false);
            }
        };
        if self.retry.take().is_some() {
            tracing::info!("TUN reads work again");
        }
        let now = micros(self.epoch);
        for p in self.tun_in.iter() {
            self.outbound.enqueue(p, now);
        }
        self.tun_in.clear();
        Ok(n >= max)
    }

    /// Up to [`SEND_BATCH`] packets from the outbound queue through the engine.
    fn encrypt(&mut self) {
        if self.outbound.is_empty() {
            return;
        }
        let (now, now_us) = (now_ms(), micros(self.epoch));
        let mut st = self.shared.lock();
        let engine = &mut st.engine;
        let mut sink = SendSink {
            tx: &mut self.tx,
            local: &mut self.local,
        };
        for _ in 0..SEND_BATCH {
            if !self
                .outbound
                .dequeue(now_us, |p| engine.handle_tun_packet(now, p, &mut sink))
            {
                break;
            }
        }
        trim_events(engine);
    }

    /// Run the engine's timers if due; returns when they next are.
    fn timers(&mut self) -> Option<UnixMillis> {
        let now = now_ms();
        let mut st = self.shared.lock();
        st.engine.counters.tun_dropped_malformed += std::mem::take(&mut self.malformed);
        if st.engine.poll_timeout().is_some_and(|t| t <= now) {
            let mut sink = SendSink {
                tx: &mut self.tx,
                local: &mut self.local,
            };
            st.engine.handle_timeout(now, &mut sink);
            trim_events(&mut st.engine);
        }
        st.engine.poll_timeout()
    }
}

/// The UDP socket's descriptor for readiness registration (the socket itself is shared).
struct UdpFd(RawFd);

impl AsRawFd for UdpFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// UDP -> engine -> TUN.
pub(super) struct RecvLoop<T: TunIo> {
    shared: Arc<Shared>,
    tun: Arc<T>,
    udp: Arc<Udp>,
    readable: AsyncFd<UdpFd>,
    rx: RecvBufs,
    tun_out: PacketBatch,
    tx: TxBatch,
    inbound: FairQueue,
    epoch: Instant,
    /// When the datagrams in `rx` were received (the fair queues' clock).
    received_us: u64,
}

impl<T: TunIo> RecvLoop<T> {
    /// Call within the runtime that will run the loop: it registers the socket there.
    pub fn new(shared: Arc<Shared>, tun: Arc<T>, udp: Arc<Udp>) -> io::Result<Self> {
        // SAFETY: the descriptor belongs to `udp`, which this loop keeps alive (Arc) for as
        // long as the registration exists; both are dropped together with the loop.
        let readable =
            unsafe { AsyncFd::register_with_interest(UdpFd(udp.as_raw_fd()), Interest::READABLE) }
                .map_err(io::Error::from)?;
        let max_gso = udp.max_gso_segments();
        Ok(RecvLoop {
            shared,
            tun,
            udp,
            readable,
            rx: RecvBufs::new(),
            tun_out: PacketBatch::new(TUN_WRITE_BATCH, TUN_WRITE_BATCH * 1500),
            tx: TxBatch::new(max_gso),
            inbound: FairQueue::new(FqConfig {
                quantum: INBOUND_QUANTUM,
                ..FqConfig::default()
            }),
            epoch: Instant::now(),
            received_us: 0,
        })
    }

    pub async fn run(mut self) {
        let mut turns = 0u32;
        while !self.shared.stopped.load(Ordering::Acquire) {
            let more = self.decrypt();
            self.write_tun();
            self.tx.flush(&self.udp);
            self.shared.inbound_drops.publish(&self.inbound);
            if more || !self.inbound.is_empty() {
                busy_turn(&mut turns).await;
                continue;
            }
            tokio::select! {
                _ = self.readable.readable() => {}
                _ = self.shared.stop.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(MAX_SLEEP_MS)) => {}
            }
        }
    }

    /// Received datagrams through the engine into the inbound queue, receiving when the last
    /// batch is used up. Returns whether more may be waiting (the budget ran out before the
    /// socket was empty).
    fn decrypt(&mut self) -> bool {
        let budget = if self.inbound.len() < QUEUE_HIGH {
            RECV_BUDGET
        } else {
            TUN_WRITE_BATCH
        };
        let mut done = 0;
        while done < budget {
            if self.rx.is_drained() {
                let (rx, udp) = (&mut self.rx, &self.udp);
                match self.readable.try_io(Interest::READABLE, |_| rx.recv(udp)) {
                    Ok(_) => self.received_us = micros(self.epoch),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        break;
                    }
                }
            }
            let now = now_ms();
            let mut st = self.shared.lock();
            let mut sink = RecvSink {
                inbound: &mut self.inbound,
                // CoDel's clock starts at the receive: a batch of GRO buffers holds up to
                // ~1,400 datagrams, and their wait for decryption is queueing delay too.
                now_us: self.received_us,
                tx: &mut self.tx,
            };
            let mut n = 0;
            while n < RECV_BATCH {
                let Some((from, d)) = self.rx.next_datagram() else {
                    break;
                };
                st.engine.handle_datagram(now, from, d, &mut sink);
                n += 1;
            }
            trim_events(&mut st.engine);
            drop(st);
            done += n;
            if n == 0 {
                break;
            }
        }
        done >= budget
    }

    /// Up to [`TUN_WRITE_BATCH`] packets from the inbound queue written to the TUN.
    fn write_tun(&mut self) {
        let now_us = micros(self.epoch);
        let out = &mut self.tun_out;
        for _ in 0..TUN_WRITE_BATCH {
            if !self.inbound.dequeue(now_us, |p| out.push(p)) {
                break;
            }
        }
        if !self.tun_out.is_empty() {
            self.tun.send_batch(&mut self.tun_out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::gro::{Coalescer, VnetHdr, VNET_HDR_LEN};
    use crate::dataplane::packet::{self, TcpSegment};

    fn segment(port: u16, seq: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let n = packet::build_tcp(
            &mut buf,
            &TcpSegment {
                src: "100.64.0.1".parse().unwrap(),
                dst: "100.64.0.2".parse().unwrap(),
                src_port: port,
                dst_port: 5201,
                seq,
                ack: 1,
                flags: 0x10,
                payload: &[0; 1368],
            },
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    /// Failing TUN reads are retried ever more slowly, but at least once a second.
    #[test]
    fn tun_read_retries_back_off_within_bounds() {
        let mut pause = None;
        let pauses: Vec<Duration> = (0..16).map(|_| *pause.insert(next_retry(pause))).collect();
        assert_eq!(pauses[0], TUN_RETRY_MIN);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert!(pauses[1] > pauses[0]);
        assert_eq!(pauses[15], TUN_RETRY_MAX);
        assert!(!tun_gone(&io::ErrorKind::WouldBlock.into()));
        assert!(!tun_gone(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(tun_gone(&io::Error::from_raw_os_error(libc::EBADFD)));
    }

    /// Four bulk TCP flows arrive interleaved (as their datagrams do); one turn's worth of
    /// writes leaves the inbound queue in per-flow runs that GRO turns into a few writes.
    #[test]
    fn interleaved_bulk_flows_still_coalesce_on_the_way_to_the_tun() {
        // Flows that hash to one bucket share its queue and interleave by design; this test is
        // about distinct flows, so take a queue whose random seed keeps the four apart.
        let new_queue = || {
            FairQueue::new(FqConfig {
                quantum: INBOUND_QUANTUM,
                ..FqConfig::default()
            })
        };
        let mut inbound = (0..100)
            .map(|_| new_queue())
            .find(|q| {
                let buckets: std::collections::HashSet<usize> =
                    (1000..1004).map(|p| q.bucket_of(&segment(p, 0))).collect();
                buckets.len() == 4
            })
            .expect("a seed that separates four flows");
        for i in 0..64u32 {
            for port in 1000..1004 {
                inbound.enqueue(&segment(port, i * 1368), 0);
            }
        }
        let mut gro = Coalescer::default();
        let mut writes = Vec::new();
        let mut emit = |w: &[u8]| writes.push(VnetHdr::read(&w[..VNET_HDR_LEN]).gso_size);
        for _ in 0..TUN_WRITE_BATCH {
            assert!(inbound.dequeue(0, |p| gro.push(p, &mut emit)));
        }
        gro.flush(&mut emit);
        assert!(
            writes.len() <= 8 && writes.iter().all(|&g| g == 1368),
            "{} writes for {TUN_WRITE_BATCH} segments of 4 flows: {writes:?}",
            writes.len()
        );
    }
}
