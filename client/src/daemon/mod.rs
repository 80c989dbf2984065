//! `ztmesh daemon`: owns the keys, the data plane and the control session, and serves the
//! local control socket for the CLI.

pub mod config;
mod handler;
pub mod persist;
pub mod ping;
pub mod plane;
pub mod status;

use crate::control::session::{self, SessionEnd};
use crate::control::{Deps, JoinUrl, Phase, Plane, SessionCmd, SessionConfig, Shared};
use crate::ipc::server::{self, Access};
use crate::keys::{KeyStore, MachineKey};
use crate::posture::Prober;
use anyhow::Context as _;
use config::DaemonOptions;
use persist::Persisted;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A running control session.
struct Running {
    join: String,
    cmds: mpsc::Sender<SessionCmd>,
    task: JoinHandle<()>,
}

/// The daemon's parts, shared by the control-socket handlers.
pub struct Daemon {
    opts: DaemonOptions,
    machine: Arc<MachineKey>,
    keys: KeyStore,
    prober: Prober,
    plane: Arc<dyn Plane>,
    shared: Arc<Shared>,
    persisted: Mutex<Persisted>,
    session: tokio::sync::Mutex<Option<Running>>,
}

impl Daemon {
    /// Loads keys and state; `plane` is the data plane the session drives.
    pub fn new(opts: DaemonOptions, plane: Arc<dyn Plane>) -> anyhow::Result<Arc<Self>> {
        let keys = KeyStore::open(&opts.state_dir)?;
        let machine = Arc::new(keys.machine_key()?);
        keys.node_key()?;
        let persisted = Persisted::load(&opts.state_dir)?;
        let prober = Prober::new(opts.posture_root.clone(), &opts.config.posture);
        let shared = Arc::new(Shared::default());
        {
            let mut st = shared.lock();
            st.hostname = persisted.hostname.clone().unwrap_or_else(default_hostname);
            st.coordinator = persisted.coordinator.clone();
        }
        Ok(Arc::new(Daemon {
            opts,
            machine,
            keys,
            prober,
            plane,
            shared,
            persisted: Mutex::new(persisted),
            session: tokio::sync::Mutex::new(None),
        }))
    }

    fn persist(&self, f: impl FnOnce(&mut Persisted)) {
        let mut p = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p);
        if let Err(e) = p.save(&self.opts.state_dir) {
            tracing::error!(error = %e, "cannot save daemon state");
        }
    }

    /// Starts (or restarts) the session for `join_url`.
    async fn start_session(
        self: &Arc<Self>,
        join_url: &str,
        hostname: Option<String>,
        auth_key: Option<String>,
    ) -> anyhow::Result<()> {
        let join = JoinUrl::parse(join_url)?;
        self.stop_session(false).await;
        let hostname = hostname
            .or_else(|| self.persisted.lock().ok().and_then(|p| p.hostname.clone()))
            .unwrap_or_else(default_hostname);
        self.persist(|p| {
            p.coordinator = Some(join_url.to_string());
            p.hostname = Some(hostname.clone());
            p.up = true;
        });
        {
            let mut st = self.shared.lock();
            let keep = st.coordinator.as_deref() == Some(join_url) && st.own.is_some();
            if !keep {
                // Another coordinator: nothing of the old mesh applies.
                self.plane.clear();
                st.own = None;
                st.peers.clear();
                st.netmap_version = None;
                st.renew_at = None;
            }
            st.coordinator = Some(join_url.to_string());
            st.hostname = hostname.clone();
            st.phase = Phase::Connecting;
            st.connected_since = None;
            st.refused.clear();
            st.revoked = None;
            st.login_url = None;
            st.last_error = None;
        }
        let cfg = SessionConfig::new(join, hostname, auth_key);
        let deps = Deps {
            machine: self.machine.clone(),
            keys: self.keys.clone(),
            prober: self.prober.clone(),
            plane: self.plane.clone(),
            shared: self.shared.clone(),
        };
        let (tx, rx) = mpsc::channel(4);
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let end = session::run(cfg, deps, rx).await;
            if let (SessionEnd::Revoked(reason), Some(d)) = (end, me.upgrade()) {
                // Rejoining needs the user again; a restart must not retry on its own.
                tracing::warn!(reason = %reason, "session ended by revocation");
                d.persist(|p| p.up = false);
            }
        });
        *self.session.lock().await = Some(Running {
            join: join_url.to_string(),
            cmds: tx,
            task,
        });
        Ok(())
    }

    /// Stops the session; with `logout`, tells the coordinator first.
    async fn stop_session(&self, logout: bool) {
        let Some(r) = self.session.lock().await.take() else {
            return;
        };
        let mut task = r.task;
        if logout
            && r.cmds.send(SessionCmd::Logout).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_ok()
        {
            return;
        }
        task.abort();
        let _ = task.await;
    }

    /// The join URL of the running session, if any.
    async fn running_join(&self) -> Option<String> {
        self.session
            .lock()
            .await
            .as_ref()
            .filter(|r| !r.task.is_finished())
            .map(|r| r.join.clone())
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ztmesh-node".into())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    opts.check_paths()?;
    let access = Access {
        owner_uid: nix::unistd::geteuid().as_raw(),
        group: opts.config.control_gid()?,
    };
    // The state directory and its keys first: a daemon that cannot own its identity must
    // not start anything else. Then the control socket, which says at once whether another
    // daemon runs there, before a TUN device and a UDP port are taken.
    let keys = KeyStore::open(&opts.state_dir)?;
    let _state_lock = keys.lock()?;
    keys.machine_key()?;
    let listener = server::bind(&opts.socket, access)
        .with_context(|| format!("control socket {}", opts.socket.display()))?;
    let dp = match plane::start(&opts).await {
        Ok(dp) => dp,
        Err(e) => {
            let _ = std::fs::remove_file(&opts.socket);
            return Err(e).context("starting the data plane");
        }
    };
    let daemon = Daemon::new(opts.clone(), dp.clone())?;
    tracing::info!(socket = %opts.socket.display(), machine_key = %daemon.machine.public(),
        "ztmesh daemon ready");
    let serve = tokio::spawn(server::serve(
        listener,
        access,
        handler::handler(daemon.clone()),
        opts.socket.clone(),
    ));
    let resume = daemon
        .persisted
        .lock()
        .ok()
        .and_then(|p| p.up.then(|| p.coordinator.clone()).flatten());
    if let Some(url) = resume {
        tracing::info!("rejoining the mesh joined before the restart");
        if let Err(e) = daemon.start_session(&url, None, None).await {
            tracing::error!(error = %e, "cannot rejoin");
        }
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    serve.abort();
    // No Logout: a restarted daemon should come back on the same device session.
    daemon.stop_session(false).await;
    let _ = std::fs::remove_file(&opts.socket);
    drop(daemon);
    plane::shutdown(dp).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
