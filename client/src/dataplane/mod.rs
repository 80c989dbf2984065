//! The client data plane: a userspace WireGuard mesh that enforces the policy on every packet.
//!
//! - [`engine`] + [`view`]: the sans-IO [`Engine`] (WireGuard via boringtun `Tunn` per peer,
//!   routing, roaming, credential checks, enforcement).
//! - [`filter`], [`conntrack`], [`flowlog`], [`packet`]: the pieces of enforcement.
//! - `shell`, `fq`, `tunio`, `tundev`, `udp`: the tokio I/O shell behind the [`DataPlane`]
//!   handle: batched TUN I/O, a fair queue with CoDel on the TUN side, batched UDP with GRO/GSO.
//!
//! The daemon uses [`start`] and the [`DataPlane`] handle; tests drive the [`Engine`] directly.

pub mod conntrack;
pub mod engine;
pub mod filter;
pub mod flowlog;
mod fq;
mod gro;
mod hsgate;
pub mod packet;
mod shell;
mod tundev;
mod tunio;
mod udp;
pub mod view;

pub use engine::{Counters, Engine, EngineConfig, EngineError, EngineEvent, RemovalReason, Sink};
pub use view::{EngineStatus, OwnStatus, PeerStatus};

use shell::{now_ms, QueueSink, Shared, State};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use ztmesh_common::credential::SignedCredential;
use ztmesh_common::ids::CoordinatorPublicKey;
use ztmesh_common::netmap::{NetMap, NetMapDelta};
use ztmesh_common::wire::FlowEvent;

/// How to start the data plane.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// Name of the TUN device to create.
    pub tun_name: String,
    /// UDP port for WireGuard; 0 picks a free one (see [`DataPlane::local_port`]).
    pub listen_port: u16,
    /// Overlay MTU (normally [`ztmesh_common::addr::OVERLAY_MTU`]).
    pub mtu: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error(transparent)]
    Tun(#[from] tundev::TunError),
    #[error("binding the WireGuard UDP socket: {0}")]
    Udp(std::io::Error),
    #[error("starting the data plane thread: {0}")]
    Thread(std::io::Error),
}

/// What `ztmesh status` shows about the data plane.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DataPlaneStatus {
    pub tun_name: String,
    pub listen_port: u16,
    #[serde(flatten)]
    pub engine: EngineStatus,
    /// Packets the fair queues dropped, per direction.
    pub queues: QueuesStatus,
    /// Why the data plane stopped on its own (its TUN device went away), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueuesStatus {
    /// Read from the TUN, waiting for encryption.
    pub outbound: QueueStatus,
    /// Decrypted, waiting to be written to the TUN.
    pub inbound: QueueStatus,
}

/// Drops in one fair queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStatus {
    /// Dropped by CoDel because the flow's packets kept waiting longer than the target.
    pub codel_drops: u64,
    /// Dropped (from the fattest flow) because the queue was full.
    pub overflow_drops: u64,
}

impl From<&shell::QueueDrops> for QueueStatus {
    fn from(d: &shell::QueueDrops) -> Self {
        QueueStatus {
            codel_drops: d.codel.load(Ordering::Relaxed),
            overflow_drops: d.overflow.load(Ordering::Relaxed),
        }
    }
}

/// Handle to a running data plane. Cheap calls: each locks the engine briefly.
pub struct DataPlane {
    shared: Arc<Shared>,
    tun_name: String,
    local_port: u16,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// An I/O thread's runtime until its thread takes it. `start` runs inside the daemon's async
/// context, where dropping a runtime normally panics; if starting fails half-way, this one is
/// shut down without blocking instead.
struct LoopRuntime(Option<tokio::runtime::Runtime>);

impl LoopRuntime {
    fn new(rt: tokio::runtime::Runtime) -> Self {
        LoopRuntime(Some(rt))
    }

    fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.0.as_ref().expect("runtime not yet taken").enter()
    }

    fn into_inner(mut self) -> tokio::runtime::Runtime {
        self.0.take().expect("runtime not yet taken")
    }
}

impl Drop for LoopRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Create the TUN device (no address yet), bind the UDP socket, and start the I/O threads.
pub async fn start(cfg: DataPlaneConfig) -> Result<DataPlane, DataPlaneError> {
    start_with(cfg, EngineConfig::default())
}

/// [`start`] with engine tunables.
pub fn start_with(
    cfg: DataPlaneConfig,
    engine_cfg: EngineConfig,
) -> Result<DataPlane, DataPlaneError> {
    let engine_cfg = EngineConfig {
        mtu: cfg.mtu,
        ..engine_cfg
    };
    let dev = tundev::create(&cfg.tun_name, cfg.mtu, true)?;
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(LoopRuntime::new)
            .map_err(DataPlaneError::Thread)
    };
    let (send_rt, recv_rt) = (runtime()?, runtime()?);
    let udp = Arc::new(udp::Udp::bind(cfg.listen_port).map_err(DataPlaneError::Udp)?);
    let tun = {
        let _guard = send_rt.enter();
        // SAFETY: the device owns its file descriptor and keeps it open and unchanged until
        // it is dropped, which happens only when the AsyncFd that owns it is dropped.
        let dev = unsafe { AsyncFd::register_with_interest(dev, tokio::io::Interest::READABLE) }
            .map_err(|e| DataPlaneError::Tun(std::io::Error::from(e).into()))?;
        Arc::new(tunio::VnetTun::new(dev))
    };
    let local_port = udp.local_port;
    let shared = Arc::new(Shared::new(State {
        engine: Engine::new(engine_cfg),
        deferred: QueueSink::default(),
        addresses: None,
        applied_addresses: Vec::new(),
        shutdown: false,
    }));
    let send = shell::SendLoop::new(
        shared.clone(),
        tun.clone(),
        udp.clone(),
        cfg.tun_name.clone(),
    );
    let recv = {
        let _guard = recv_rt.enter();
        shell::RecvLoop::new(shared.clone(), tun, udp).map_err(DataPlaneError::Udp)?
    };
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map_err(DataPlaneError::Thread)
    };
    let recv_rt = recv_rt.into_inner();
    let recv_thread = spawn(
        format!("dp-rx-{}", cfg.tun_name),
        Box::new(move || recv_rt.block_on(recv.run())),
    )?;
    let send_rt = send_rt.into_inner();
    let send_thread = spawn(
        format!("dp-tx-{}", cfg.tun_name),
        Box::new(move || send_rt.block_on(send.run())),
    )?;
    tracing::info!(tun = %cfg.tun_name, port = local_port, "data plane started");
    Ok(DataPlane {
        shared,
        tun_name: cfg.tun_name,
        local_port,
        threads: vec![send_thread, recv_thread],
    })
}

impl DataPlane {
    fn with_engine<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.shared.lock());
        self.shared.kick();
        r
    }

    /// (Re)key: own WireGuard secret, own signed credential and the coordinator key that signs
    /// every credential. Sets the TUN addresses from the credential. Refused (and nothing
    /// changes) if the credential is forged, expired or for another key.
    pub fn set_identity(
        &self,
        private_key: x25519_dalek::StaticSecret,
        own: SignedCredential,
        coordinator: CoordinatorPublicKey,
    ) -> Result<(), EngineError> {
        self.with_engine(|st| {
            let r =
                st.engine
                    .set_identity(now_ms(), private_key, own, coordinator, &mut st.deferred);
            let addrs = st.engine.own_addresses();
            if r.is_ok() && addrs != st.applied_addresses {
                st.addresses = Some(addrs);
            }
            if let Err(e) = &r {
                tracing::warn!(error = %e, "identity refused by the data plane");
            }
            r
        })
    }

    /// Replace the view (peers are verified by the engine itself).
    pub fn set_netmap(&self, map: NetMap) {
        self.with_engine(|st| st.engine.set_netmap(now_ms(), map, &mut st.deferred))
    }

    /// Apply a view change. Out of order deltas are refused (the engine reports
    /// [`EngineEvent::NetMapOutOfSync`]; the daemon should then fetch a full map).
    pub fn apply_delta(&self, delta: NetMapDelta) -> Result<(), EngineError> {
        self.with_engine(|st| st.engine.apply_delta(now_ms(), delta, &mut st.deferred))
    }

    /// Revoked or down: drop all peers and the identity; all traffic stops, and the overlay
    /// addresses leave the TUN device (nothing on the host may still bind or answer on them).
    pub fn clear(&self) {
        self.with_engine(|st| {
            st.engine.clear(now_ms(), &mut st.deferred);
            if !st.applied_addresses.is_empty() {
                st.addresses = Some(Vec::new());
            }
        })
    }

    pub fn status(&self) -> DataPlaneStatus {
        let engine = self.shared.lock().engine.status(now_ms());
        DataPlaneStatus {
            tun_name: self.tun_name.clone(),
            listen_port: self.local_port,
            engine,
            queues: QueuesStatus {
                outbound: (&self.shared.outbound_drops).into(),
                inbound: (&self.shared.inbound_drops).into(),
            },
            failure: self
                .shared
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Aggregated flow events since the last call, for the coordinator's flow log.
    pub fn take_flow_events(&self) -> Vec<FlowEvent> {
        self.shared.lock().engine.take_flow_events()
    }

    /// Engine events since the last call (peers added/removed, handshakes, expiry).
    pub fn take_events(&self) -> Vec<EngineEvent> {
        let mut st = self.shared.lock();
        std::iter::from_fn(|| st.engine.poll_event()).collect()
    }

    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    /// Stop the I/O threads and close the TUN device and socket.
    pub async fn shutdown(mut self) {
        self.stop();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }

    fn stop(&self) {
        self.shared.lock().shutdown = true;
        self.shared.kick();
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
