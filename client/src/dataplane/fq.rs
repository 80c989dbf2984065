//! The queue between the TUN device and the engine: flow queueing with CoDel, after
//! fq_codel (RFC 8290) and CoDel (RFC 8289). Sans-IO: the caller passes `now` in microseconds.
//!
//! Why it exists: when the data plane is the bottleneck, a bulk TCP sender keeps the kernel's
//! TUN ring (500 packets, tail drop) full, and every other packet waits behind it (about 8 ms at
//! 0.7 Gbit/s). The shell therefore drains the ring eagerly into this queue, where a sparse
//! flow (ping, DNS, an interactive session) is served ahead of bulk flows (deficit round robin
//! with new-flow priority), and CoDel drops from a flow whose packets keep waiting longer than
//! the target, so that TCP backs off before the queue grows deep.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};

/// Tunables.
#[derive(Debug, Clone)]
pub struct FqConfig {
    /// Hash buckets (flows sharing a bucket share a queue).
    pub buckets: usize,
    /// Packets queued in total before the fattest flow loses its oldest packet.
    pub limit: usize,
    /// Bytes a flow may send per round.
    pub quantum: usize,
    /// CoDel: acceptable standing queue delay.
    pub target_us: u64,
    /// CoDel: how long the delay must stay above target before dropping starts.
    pub interval_us: u64,
}

impl Default for FqConfig {
    fn default() -> Self {
        // fq_codel's defaults, except a smaller packet limit: this queue is in front of one
        // tunnel, not a 10 Gbit/s NIC.
        FqConfig {
            buckets: 256,
            limit: 4096,
            quantum: 1514,
            target_us: 5_000,
            interval_us: 100_000,
        }
    }
}

struct Queued {
    pkt: Vec<u8>,
    enqueued_us: u64,
}

/// CoDel state of one flow queue (RFC 8289 section 5).
#[derive(Default)]
struct Codel {
    first_above_us: u64,
    drop_next_us: u64,
    count: u32,
    last_count: u32,
    dropping: bool,
}

#[derive(Default)]
struct Bucket {
    q: VecDeque<Queued>,
    bytes: usize,
    deficit: i64,
    /// On the new or the old list.
    listed: bool,
    codel: Codel,
}

/// Drop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FqDrops {
    /// Dropped by CoDel (standing queue above target).
    pub codel: u64,
    /// Dropped because the queue was full.
    pub overflow: u64,
}

pub struct FairQueue {
    cfg: FqConfig,
    buckets: Vec<Bucket>,
    new_flows: VecDeque<usize>,
    old_flows: VecDeque<usize>,
    len: usize,
    /// Buffers of dequeued packets, reused so that steady state allocates nothing.
    spare: Vec<Vec<u8>>,
    hasher: std::collections::hash_map::RandomState,
    drops: FqDrops,
}

impl FairQueue {
    pub fn new(cfg: FqConfig) -> Self {
        let buckets = (0..cfg.buckets.max(1)).map(|_| Bucket::default()).collect();
        FairQueue {
            cfg,
            buckets,
            new_flows: VecDeque::new(),
            old_flows: VecDeque::new(),
            len: 0,
            spare: Vec::new(),
            hasher: Default::default(),
            drops: FqDrops::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn drops(&self) -> FqDrops {
        self.drops
    }

    /// The bucket a packet's flow hashes to (the hash is seeded per queue).
    pub(crate) fn bucket_of(&self, pkt: &[u8]) -> usize {
        let mut h = self.hasher.build_hasher();
        flow_key(pkt, &mut h);
        (h.finish() % self.buckets.len() as u64) as usize
    }

    /// Queue a packet read from the TUN at `now_us`.
    pub fn enqueue(&mut self, pkt: &[u8], now_us: u64) {
        if self.len >= self.cfg.limit {
            self.drop_from_fattest();
        }
        let b = self.bucket_of(pkt);
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(pkt);
        let bucket = &mut self.buckets[b];
        bucket.bytes += buf.len();
        bucket.q.push_back(Queued {
            pkt: buf,
            enqueued_us: now_us,
        });
        self.len += 1;
        if !bucket.listed {
            bucket.listed = true;
            bucket.deficit = self.cfg.quantum as i64;
            self.new_flows.push_back(b);
        }
    }

    fn drop_from_fattest(&mut self) {
        let Some((b, _)) = self.buckets.iter().enumerate().max_by_key(|(_, b)| b.bytes) else {
            return;
        };
        if let Some(q) = self.pop_head(b) {
            self.spare.push(q.pkt);
            self.drops.overflow += 1;
        }
    }

    fn pop_head(&mut self, b: usize) -> Option<Queued> {
        let bucket = &mut self.buckets[b];
        let q = bucket.q.pop_front()?;
        bucket.bytes -= q.pkt.len();
        self.len -= 1;
        Some(q)
    }

    /// The next packet to send, by deficit round robin over the flows (new flows first), with
    /// CoDel applied to the flow it comes from. `f` sees the packet; its buffer is kept for
    /// reuse. Returns false when the queue is empty.
    pub fn dequeue(&mut self, now_us: u64, f: impl FnOnce(&[u8])) -> bool {
        loop {
            let (b, from_new) = match (self.new_flows.front(), self.old_flows.front()) {
                (Some(&b), _) => (b, true),
                (None, Some(&b)) => (b, false),
                (None, None) => return false,
            };
            if self.buckets[b].deficit <= 0 {
                self.buckets[b].deficit += self.cfg.quantum as i64;
                self.rotate_to_old(from_new);
                continue;
            }
            match self.codel_dequeue(b, now_us) {
                Some(q) => {
                    self.buckets[b].deficit -= q.pkt.len() as i64;
                    f(&q.pkt);
                    self.spare.push(q.pkt);
                    return true;
                }
                None => {
                    // Empty: a new flow goes to the old list once (so a flow cannot stay
                    // "new" by sending one packet at a time); an old one leaves.
                    if from_new && !self.old_flows.is_empty() {
                        self.rotate_to_old(true);
                    } else {
                        if from_new {
                            self.new_flows.pop_front();
                        } else {
                            self.old_flows.pop_front();
                        }
                        self.buckets[b].listed = false;
                    }
                }
            }
        }
    }

    fn rotate_to_old(&mut self, from_new: bool) {
        let b = if from_new {
            self.new_flows.pop_front()
        } else {
            self.old_flows.pop_front()
        };
        if let Some(b) = b {
            self.old_flows.push_back(b);
        }
    }

    /// CoDel's dequeue for one flow: the head packet, after dropping what the control law says.
    fn codel_dequeue(&mut self, b: usize, now: u64) -> Option<Queued> {
        let interval = self.cfg.interval_us;
        let mut q = self.pop_head(b)?;
        let mut ok_to_drop = self.above_target(b, &q, now);
        let c = &mut self.buckets[b].codel;
        if c.dropping {
            if !ok_to_drop {
                c.dropping = false;
            }
            while self.buckets[b].codel.dropping && now >= self.buckets[b].codel.drop_next_us {
                self.spare.push(q.pkt);
                self.drops.codel += 1;
                let c = &mut self.buckets[b].codel;
                c.count += 1;
                c.drop_next_us = control_law(c.drop_next_us, interval, c.count);
                q = self.pop_head(b)?;
                ok_to_drop = self.above_target(b, &q, now);
                if !ok_to_drop {
                    self.buckets[b].codel.dropping = false;
                }
            }
        } else if ok_to_drop {
            self.spare.push(q.pkt);
            self.drops.codel += 1;
            let next = self.pop_head(b);
            let c = &mut self.buckets[b].codel;
            c.dropping = true;
            // Resume near the last drop rate if dropping stopped only recently.
            let delta = c.count.saturating_sub(c.last_count);
            c.count = if delta > 1 && now.saturating_sub(c.drop_next_us) < 16 * interval {
                delta
            } else {
                1
            };
            c.drop_next_us = control_law(now, interval, c.count);
            c.last_count = c.count;
            q = next?;
            if !self.above_target(b, &q, now) {
                self.buckets[b].codel.dropping = false;
            }
        }
        Some(q)
    }

    /// Whether the flow's delay has been above target for an interval, as seen at packet `q`.
    fn above_target(&mut self, b: usize, q: &Queued, now: u64) -> bool {
        let (target, interval, mtu) = (self.cfg.target_us, self.cfg.interval_us, self.cfg.quantum);
        let bucket = &mut self.buckets[b];
        let sojourn = now.saturating_sub(q.enqueued_us);
        if sojourn < target || bucket.bytes <= mtu {
            bucket.codel.first_above_us = 0;
            return false;
        }
        if bucket.codel.first_above_us == 0 {
            bucket.codel.first_above_us = now + interval;
            return false;
        }
        now >= bucket.codel.first_above_us
    }
}

fn control_law(t: u64, interval: u64, count: u32) -> u64 {
    t + (interval as f64 / (count.max(1) as f64).sqrt()) as u64
}

/// Feed what identifies a packet's flow into `h`: addresses, protocol and, for TCP/UDP, the
/// ports. Cheap and tolerant: a malformed packet still hashes (the engine drops it later).
fn flow_key(pkt: &[u8], h: &mut impl Hasher) {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let proto = pkt[9];
            h.write(&pkt[12..20]);
            h.write_u8(proto);
            let first_fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff == 0;
            if first_fragment && matches!(proto, 6 | 17) {
                if let Some(ports) = pkt.get(ihl..ihl + 4) {
                    h.write(ports);
                }
            }
        }
        Some(6) if pkt.len() >= 40 => {
            let next = pkt[6];
            h.write(&pkt[8..40]);
            h.write_u8(next);
            if matches!(next, 6 | 17) {
                h.write(&pkt[40..pkt.len().min(44)]);
            }
        }
        _ => h.write(&pkt[..pkt.len().min(20)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::packet;
    use std::net::IpAddr;

    fn udp(sport: u16, len: usize) -> Vec<u8> {
        let (a, b): (IpAddr, IpAddr) =
            ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap());
        let mut buf = vec![0u8; 2000];
        let n = packet::build_udp(&mut buf, a, b, sport, 9, &vec![7u8; len]).unwrap();
        buf.truncate(n);
        buf
    }

    fn drain(fq: &mut FairQueue, now: u64) -> Vec<u16> {
        let mut out = Vec::new();
        while fq.dequeue(now, |p| out.push(u16::from_be_bytes([p[20], p[21]]))) {}
        out
    }

    /// A queue whose random seed puts each of these UDP flows in a bucket of its own: flows
    /// that share a bucket share its queue by design (1 in 256 for two flows), and the tests
    /// that use this are about distinct flows.
    fn separating(ports: &[u16]) -> FairQueue {
        (0..100)
            .map(|_| FairQueue::new(FqConfig::default()))
            .find(|q| {
                let buckets: std::collections::HashSet<usize> =
                    ports.iter().map(|p| q.bucket_of(&udp(*p, 50))).collect();
                buckets.len() == ports.len()
            })
            .expect("a seed that separates the flows")
    }

    #[test]
    fn a_sparse_flow_overtakes_a_bulk_backlog() {
        let mut fq = separating(&[1000, 2000]);
        for _ in 0..500 {
            fq.enqueue(&udp(1000, 1400), 0);
        }
        // The first bulk packet goes out, then the ping-like packet arrives.
        let mut first = 0;
        assert!(fq.dequeue(10, |p| first = u16::from_be_bytes([p[20], p[21]])));
        fq.enqueue(&udp(2000, 50), 10);
        let order = drain(&mut fq, 20);
        let pos = order.iter().position(|&p| p == 2000).unwrap();
        assert!(
            pos <= 1,
            "sparse packet at position {pos} of {}",
            order.len()
        );
        assert_eq!(order.len(), 500);
        assert_eq!(fq.drops(), FqDrops::default());
    }

    #[test]
    fn packets_of_one_flow_keep_their_order() {
        let mut fq = FairQueue::new(FqConfig::default());
        for i in 0..100u16 {
            let mut p = udp(1000, 100);
            p[28] = i as u8;
            fq.enqueue(&p, 0);
            fq.enqueue(&udp(3000 + i, 60), 0);
        }
        let mut seen = Vec::new();
        while fq.dequeue(0, |p| {
            if u16::from_be_bytes([p[20], p[21]]) == 1000 {
                seen.push(p[28]);
            }
        }) {}
        assert_eq!(seen, (0..100).collect::<Vec<u8>>());
    }

    #[test]
    fn a_full_queue_drops_from_the_fattest_flow() {
        let mut fq = FairQueue::new(FqConfig {
            limit: 10,
            ..FqConfig::default()
        });
        for _ in 0..10 {
            fq.enqueue(&udp(1000, 1000), 0);
        }
        fq.enqueue(&udp(2000, 50), 0);
        assert_eq!(fq.len(), 10);
        assert_eq!(fq.drops().overflow, 1);
        let order = drain(&mut fq, 0);
        assert!(order.contains(&2000));
    }

    #[test]
    fn codel_drops_only_when_the_delay_stands_above_target() {
        let cfg = FqConfig::default();
        let mut fq = FairQueue::new(cfg.clone());
        // Arrivals outpace departures: every packet has waited 20 ms when it leaves.
        let mut now = 0;
        for _ in 0..100 {
            fq.enqueue(&udp(1000, 1400), now);
        }
        let mut sent = 0;
        while now < 1_000_000 {
            now += 1_000;
            fq.enqueue(&udp(1000, 1400), now.saturating_sub(20_000));
            if fq.dequeue(now, |_| {}) {
                sent += 1;
            }
        }
        let d = fq.drops().codel;
        assert!(d > 0, "a standing 20 ms queue must be cut");
        assert!(d < sent / 4, "CoDel drops gently: {d} of {sent}");
        // A queue that drains within target is never dropped from.
        let mut fq = FairQueue::new(cfg);
        for t in 0..10_000u64 {
            fq.enqueue(&udp(1000, 1400), t * 100);
            fq.enqueue(&udp(1000, 1400), t * 100);
            fq.dequeue(t * 100 + 1_000, |_| {});
            fq.dequeue(t * 100 + 1_000, |_| {});
        }
        assert_eq!(fq.drops().codel, 0);
    }
}
