//! The gate in front of WireGuard handshake processing: mac1 check, then a limit of handshake
//! messages per second over all peers, beyond which a message must carry a valid mac2 (proof
//! that its sender receives at its source address) or is answered with a cookie reply
//! (WireGuard whitepaper section 5.3, "under load").
//!
//! boringtun's `RateLimiter` does the cryptography (mac1, mac2, cookie replies) but keeps its
//! own count, reset from the wall clock "ideally once per second", and every `Tunn` sharing it
//! counts the same initiation a second time. The count lives here instead, in a one-second
//! window of the engine's `now`, so the configured limit is the real limit and tests can drive
//! it in virtual time. Two boringtun limiters are used as tools: one that never reports load
//! (mac1 only; also handed to every `Tunn`, whose own check then only repeats mac1), and one
//! that always does (mac2 / cookie reply).

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::TunnResult;
use std::net::IpAddr;
use std::sync::Arc;
use ztmesh_common::time::UnixMillis;

const WINDOW_MS: u64 = 1_000;

/// What to do with a handshake message.
#[derive(Debug)]
pub enum Admission<'a> {
    /// Process it.
    Pass,
    /// Over the limit without a valid mac2: send this cookie reply instead.
    Cookie(&'a [u8]),
    /// Bad mac1 or mac2 (not ours, or forged): drop.
    Invalid,
}

pub struct HandshakeGate {
    mac_only: Arc<RateLimiter>,
    under_load: RateLimiter,
    limit: u64,
    window_start: UnixMillis,
    count: u64,
}

impl HandshakeGate {
    /// A gate for handshakes to `own` (our static public key), passing `limit` per second.
    pub fn new(own: &x25519_dalek::PublicKey, limit: u64) -> Self {
        HandshakeGate {
            mac_only: Arc::new(RateLimiter::new(own, u64::MAX)),
            under_load: RateLimiter::new(own, 0),
            limit,
            window_start: UnixMillis(0),
            count: 0,
        }
    }

    /// The limiter to give each `Tunn`: it checks mac1 and never demands cookies, since the
    /// gate has already decided.
    pub fn for_tunn(&self) -> Arc<RateLimiter> {
        self.mac_only.clone()
    }

    /// Decide on a handshake initiation or response `data` from `from`; `buf` receives a
    /// cookie reply.
    pub fn admit<'b>(
        &mut self,
        now: UnixMillis,
        from: IpAddr,
        data: &[u8],
        buf: &'b mut [u8],
    ) -> Admission<'b> {
        if self.mac_only.verify_packet(Some(from), data, buf).is_err() {
            return Admission::Invalid;
        }
        if now.0 >= self.window_start.0.saturating_add(WINDOW_MS) || now < self.window_start {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count <= self.limit {
            return Admission::Pass;
        }
        match self.under_load.verify_packet(Some(from), data, buf) {
            Ok(_) => Admission::Pass,
            Err(TunnResult::WriteToNetwork(cookie)) => Admission::Cookie(cookie),
            Err(_) => Admission::Invalid,
        }
    }
}
