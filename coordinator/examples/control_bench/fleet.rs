//! The simulated devices: one `TestClient` per device (its own machine key and QUIC
//! connection), many connections per client endpoint, each device a task that logs in with
//! its group's pre-auth key and then reads its updates until told to stop.

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use ztmesh_common::netmap::NetMapDelta;
use ztmesh_common::posture::{attr, AttrValue, PostureAttrs};
use ztmesh_common::wire::{ClientMsg, LoginAuth, ServerMsg};
use ztmesh_coordinator::control::testkit::{self, TestClient};

/// How long one device may take from connecting to holding its credential and view.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// What a policy change is expected to send every device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A new inbound filter.
    Filter,
    /// New peers.
    Peers,
}

impl Expect {
    fn matches(self, d: &NetMapDelta) -> bool {
        match self {
            Expect::Filter => d.filter.is_some(),
            Expect::Peers => !d.upsert.is_empty(),
        }
    }
}

/// State the device tasks share with the driver. Times are nanoseconds since `epoch`
/// (0 = not yet).
struct Shared {
    epoch: Instant,
    admitted_at: Vec<AtomicU64>,
    /// The first delta of the current measured change, per device.
    changed_at: Vec<AtomicU64>,
    expect: Mutex<Option<Expect>>,
    last_message: AtomicU64,
    messages: AtomicU64,
    failures: AtomicUsize,
    first_failures: Mutex<Vec<String>>,
}

impl Shared {
    fn stamp(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn fail(&self, i: usize, e: impl std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_failures.lock().unwrap();
        if f.len() < 5 {
            f.push(format!("device {i}: {e}"));
        }
    }
}

pub struct Fleet {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    endpoints: Vec<quinn::Endpoint>,
    per_endpoint: usize,
}

/// One device's login: which group it joins and with which key.
pub struct Seat {
    pub hostname: String,
    pub key: String,
}

fn posture() -> PostureAttrs {
    [(attr::FIREWALL.to_owned(), AttrValue::Bool(true))]
        .into_iter()
        .collect()
}

impl Fleet {
    /// Room for `n` devices, `per_endpoint` of them sharing one client UDP socket.
    pub fn new(
        n: usize,
        cert: CertificateDer<'static>,
        per_endpoint: usize,
    ) -> anyhow::Result<Fleet> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            admitted_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            changed_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            expect: Mutex::new(None),
            last_message: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            failures: AtomicUsize::new(0),
            first_failures: Mutex::new(Vec::new()),
        });
        let endpoints = (0..n.div_ceil(per_endpoint))
            .map(|_| testkit::client_endpoint(cert.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (stop, _) = watch::channel(false);
        Ok(Fleet {
            shared,
            tasks: JoinSet::new(),
            stop,
            endpoints,
            per_endpoint,
        })
    }

    /// Start the devices `first..first + seats.len()` (at most `concurrency` connecting at
    /// once) and wait until all of them hold a credential and a view, or `deadline` passes.
    /// Returns the time from the first connect to the last view.
    pub async fn join(
        &mut self,
        first: usize,
        seats: Vec<Seat>,
        addr: SocketAddr,
        concurrency: usize,
        deadline: Duration,
    ) -> anyhow::Result<Duration> {
        let n = seats.len();
        let gate = Arc::new(Semaphore::new(concurrency));
        let start = Instant::now();
        for (k, seat) in seats.into_iter().enumerate() {
            let i = first + k;
            let permit =
                tokio::time::timeout_at((start + deadline).into(), gate.clone().acquire_owned())
                    .await
                    .context("devices did not get through the login gate in time")??;
            let ep = self.endpoints[i / self.per_endpoint].clone();
            let (shared, stop_rx) = (self.shared.clone(), self.stop.subscribe());
            self.tasks.spawn(async move {
                let joined = tokio::time::timeout(JOIN_TIMEOUT, login(&ep, addr, &seat)).await;
                drop(permit);
                let client = match joined {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return shared.fail(i, format!("{e:#}")),
                    Err(_) => return shared.fail(i, "no credential and view within the timeout"),
                };
                shared.admitted_at[i].store(shared.stamp(), Ordering::Release);
                listen(i, client, &shared, stop_rx).await;
            });
        }
        let range = first..first + n;
        loop {
            let done = self.admitted(range.clone()) + self.shared.failures.load(Ordering::Relaxed);
            if done == n {
                break;
            }
            if start.elapsed() > deadline {
                bail!(
                    "only {} of {n} devices joined within {deadline:?}",
                    self.admitted(range.clone())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.check_failures()?;
        let last = self.shared.admitted_at[range]
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .max()
            .unwrap_or(0);
        Ok(Duration::from_nanos(last).saturating_sub(start - self.shared.epoch))
    }

    fn admitted(&self, range: std::ops::Range<usize>) -> usize {
        self.shared.admitted_at[range]
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count()
    }

    fn check_failures(&self) -> anyhow::Result<()> {
        let n = self.shared.failures.load(Ordering::Relaxed);
        if n > 0 {
            bail!(
                "{n} devices failed; first: {:?}",
                self.shared.first_failures.lock().unwrap()
            );
        }
        Ok(())
    }

    /// Wait until no device received anything for `quiet` (at most `limit`).
    pub async fn settle(&self, quiet: Duration, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let last = Duration::from_nanos(self.shared.last_message.load(Ordering::Acquire));
            if self.shared.epoch.elapsed().saturating_sub(last) >= quiet {
                return self.check_failures();
            }
            if start.elapsed() > limit {
                bail!("updates still flowing after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages received by all devices so far.
    pub fn messages(&self) -> u64 {
        self.shared.messages.load(Ordering::Relaxed)
    }

    /// Arm the measurement of one change: every device's next delta must look like `expect`.
    pub fn expect(&self, expect: Expect) -> Instant {
        for t in &self.shared.changed_at {
            t.store(0, Ordering::Relaxed);
        }
        *self.shared.expect.lock().unwrap() = Some(expect);
        Instant::now()
    }

    /// Wait until every device got the change armed at `t0`; returns each device's latency,
    /// sorted. Every device must have joined.
    pub async fn updated(&self, t0: Instant, limit: Duration) -> anyhow::Result<Vec<Duration>> {
        let base = t0 - self.shared.epoch;
        loop {
            let got: Vec<u64> = self
                .shared
                .changed_at
                .iter()
                .map(|t| t.load(Ordering::Acquire))
                .collect();
            let missing = got.iter().filter(|t| **t == 0).count();
            if missing == 0 {
                *self.shared.expect.lock().unwrap() = None;
                self.check_failures()?;
                let mut lat: Vec<Duration> = got
                    .into_iter()
                    .map(|t| Duration::from_nanos(t).saturating_sub(base))
                    .collect();
                lat.sort();
                return Ok(lat);
            }
            if t0.elapsed() > limit {
                bail!("{missing} devices were not updated within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Close every connection and wait (bounded) for the tasks to end.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        for ep in &self.endpoints {
            ep.close(0u32.into(), b"bench done");
        }
        for ep in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(5), ep.wait_idle()).await;
        }
    }
}

/// Connect, prove a fresh machine key, log in with the pre-auth key, and take the credential
/// and the full view.
async fn login(ep: &quinn::Endpoint, addr: SocketAddr, seat: &Seat) -> anyhow::Result<TestClient> {
    let (mut c, _welcome) =
        TestClient::connect(ep, addr, SigningKey::from_bytes(&rand::random())).await?;
    let req = testkit::login_request(
        &seat.hostname,
        LoginAuth::AuthKey(seat.key.clone()),
        posture(),
    );
    c.send(&ClientMsg::Login(req)).await?;
    match c.recv().await? {
        ServerMsg::Credential(_) => {}
        other => bail!("expected Credential, got {other:?}"),
    }
    match c.recv().await? {
        ServerMsg::NetMap(_) => Ok(c),
        other => bail!("expected NetMap, got {other:?}"),
    }
}

/// Read updates until stopped, stamping the first delta of each measured change.
async fn listen(i: usize, mut c: TestClient, shared: &Shared, mut stop: watch::Receiver<bool>) {
    loop {
        let msg = tokio::select! {
            m = c.recv_within(Duration::from_secs(3600)) => m,
            _ = stop.changed() => break,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => return shared.fail(i, format!("connection: {e:#}")),
        };
        shared.last_message.store(shared.stamp(), Ordering::Release);
        shared.messages.fetch_add(1, Ordering::Relaxed);
        match msg {
            ServerMsg::NetMapDelta(d) => {
                let expect = *shared.expect.lock().unwrap();
                if let Some(expect) = expect {
                    let slot = &shared.changed_at[i];
                    if slot.load(Ordering::Relaxed) == 0 {
                        if !expect.matches(&d) {
                            shared.fail(i, format!("unexpected delta for {expect:?}: {d:?}"));
                        }
                        slot.store(shared.stamp(), Ordering::Release);
                    }
                }
            }
            other => shared.fail(i, format!("unexpected message {other:?}")),
        }
    }
    c.conn.close(0u32.into(), b"bench done");
}
