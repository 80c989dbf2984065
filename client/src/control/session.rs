//! The control session: keeps one device joined to one coordinator. Connects (with backoff),
//! logs in, applies credentials and views to the data plane, renews with a fresh key before
//! expiry, and reports posture, endpoints and flow events. The data plane keeps running on its
//! current credential while the coordinator is unreachable; its engine enforces expiry.

use super::backoff::Backoff;
use super::conn::{self, ConnError, ControlConn};
use super::endpoints::local_endpoints;
use super::plane::Plane;
use super::state::{Event, PeerView, Phase, Shared};
use super::url::JoinUrl;
use crate::keys::{self, KeyStore, MachineKey};
use crate::posture::Prober;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use x25519_dalek::StaticSecret;
use ztmesh_common::credential::NodeCredential;
use ztmesh_common::ids::CoordinatorPublicKey;
use ztmesh_common::netmap::{NetMap, NetMapDelta};
use ztmesh_common::posture::PostureAttrs;
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::{
    ClientMsg, CredentialGrant, LoginAuth, LoginRequest, RenewRequest, ServerMsg,
};

/// Most flow events in one `FlowLog` message (keeps it far below the frame limit).
const FLOW_BATCH: usize = 2000;
/// If no credential answers a `Renew` within this time, send it again.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// What to join and how often to do the periodic work.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub join: JoinUrl,
    pub hostname: String,
    /// Pre-auth key for the first login; later logins use the device session.
    pub auth_key: Option<String>,
    /// How often probes run to notice a posture change.
    pub probe_interval: Duration,
    /// How often flow events are collected and sent.
    pub flow_interval: Duration,
    /// How often the host's addresses are checked.
    pub endpoint_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl SessionConfig {
    pub fn new(join: JoinUrl, hostname: String, auth_key: Option<String>) -> Self {
        SessionConfig {
            join,
            hostname,
            auth_key,
            probe_interval: Duration::from_secs(15),
            flow_interval: Duration::from_secs(2),
            endpoint_interval: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
        }
    }
}

/// What the session works with.
#[derive(Clone)]
pub struct Deps {
    pub machine: Arc<MachineKey>,
    pub keys: KeyStore,
    pub prober: Prober,
    pub plane: Arc<dyn Plane>,
    pub shared: Arc<Shared>,
}

/// Commands from the daemon to a running session.
#[derive(Debug)]
pub enum SessionCmd {
    /// `ztmesh down`: tell the coordinator and stop.
    Logout,
}

/// Why a session ended by itself.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    LoggedOut,
    Revoked(String),
}

/// How one connection ended.
enum ConnEnd {
    LoggedOut,
    Revoked(String),
    Refused,
    /// The connection failed; `admitted` says whether it got as far as a credential.
    Failed {
        error: String,
        admitted: bool,
    },
}

fn now_ms() -> UnixMillis {
    UnixMillis(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// The instant `at` (wall clock) corresponds to, at least `min` from now.
fn instant_at(at: UnixMillis, min: Duration) -> Instant {
    Instant::now() + Duration::from_millis(now_ms().until(at)).max(min)
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn collect_posture(prober: &Prober) -> PostureAttrs {
    let p = prober.clone();
    // Probes read files and may run `nft`: keep them off the async workers.
    tokio::task::spawn_blocking(move || p.collect(SystemTime::now()))
        .await
        .unwrap_or_default()
}

/// Runs until logged out or revoked; reconnects with backoff on every failure.
pub async fn run(
    mut cfg: SessionConfig,
    deps: Deps,
    mut cmds: mpsc::Receiver<SessionCmd>,
) -> SessionEnd {
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap);
    let mut refused_backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(300));
    loop {
        {
            let mut st = deps.shared.lock();
            st.phase = if st.own.is_some() && st.phase == Phase::Running {
                Phase::Running
            } else {
                Phase::Connecting
            };
        }
        let end = match conn::connect(&cfg.join, &deps.machine).await {
            Ok(c) => {
                tracing::info!(coordinator = %cfg.join.host, "control connection established");
                run_conn(&mut cfg, &deps, c, &mut cmds).await
            }
            Err(e) => ConnEnd::Failed {
                error: e.to_string(),
                admitted: false,
            },
        };
        deps.shared.lock().connected_since = None;
        let delay = match end {
            ConnEnd::LoggedOut => return SessionEnd::LoggedOut,
            ConnEnd::Revoked(r) => return SessionEnd::Revoked(r),
            ConnEnd::Refused => refused_backoff.next_delay(),
            ConnEnd::Failed { error, admitted } => {
                tracing::warn!(error = %error, "control connection failed; will retry");
                deps.shared.lock().last_error = Some(error);
                if admitted {
                    backoff.reset();
                    refused_backoff.reset();
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            cmd = cmds.recv() => match cmd {
                Some(SessionCmd::Logout) | None => return SessionEnd::LoggedOut,
            },
        }
    }
}

/// Per-connection state.
struct Conn<'a> {
    cfg: &'a mut SessionConfig,
    deps: &'a Deps,
    c: ControlConn,
    coordinator: CoordinatorPublicKey,
    current: StaticSecret,
    pending: Option<StaticSecret>,
    admitted: bool,
    meshed: bool,
    renew_deadline: Option<Instant>,
    report_interval: Option<Duration>,
    last_report: Option<(PostureAttrs, Instant)>,
    endpoints: Vec<std::net::SocketAddr>,
}

async fn run_conn(
    cfg: &mut SessionConfig,
    deps: &Deps,
    c: ControlConn,
    cmds: &mut mpsc::Receiver<SessionCmd>,
) -> ConnEnd {
    let current = match deps.keys.node_key() {
        Ok(k) => k,
        Err(e) => {
            return ConnEnd::Failed {
                error: e.to_string(),
                admitted: false,
            }
        }
    };
    let coordinator = c.welcome.coordinator_key;
    {
        let mut st = deps.shared.lock();
        st.connected_since = Some(now_ms());
        st.last_error = None;
        st.coordinator_key = Some(coordinator);
    }
    let mut s = Conn {
        cfg,
        deps,
        c,
        coordinator,
        current,
        pending: None,
        admitted: false,
        meshed: false,
        renew_deadline: None,
        report_interval: None,
        last_report: None,
        endpoints: Vec::new(),
    };
    let end = s.drive(cmds).await;
    match &end {
        ConnEnd::LoggedOut | ConnEnd::Revoked(_) => s.c.close().await,
        _ => {}
    }
    end
}

impl Conn<'_> {
    fn fail(&self, error: impl ToString) -> ConnEnd {
        ConnEnd::Failed {
            error: error.to_string(),
            admitted: self.admitted,
        }
    }

    async fn drive(&mut self, cmds: &mut mpsc::Receiver<SessionCmd>) -> ConnEnd {
        if let Err(e) = self.login().await {
            return self.fail(e);
        }
        let mut probe = tokio::time::interval(self.cfg.probe_interval);
        let mut flows = tokio::time::interval(self.cfg.flow_interval);
        let mut eps = tokio::time::interval(self.cfg.endpoint_interval);
        for t in [&mut probe, &mut flows, &mut eps] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.reset();
        }
        loop {
            let report_due = self.report_due();
            let step = tokio::select! {
                msg = self.c.recv() => match msg {
                    Some(Ok(m)) => self.on_msg(m).await,
                    Some(Err(e)) => Err(self.fail(e)),
                    None => Err(self.fail("coordinator closed the control stream")),
                },
                cmd = cmds.recv() => match cmd {
                    Some(SessionCmd::Logout) | None => {
                        let _ = self.c.send(&ClientMsg::Logout).await;
                        return ConnEnd::LoggedOut;
                    }
                },
                _ = sleep_opt(self.renew_deadline) => self.renew().await,
                _ = sleep_opt(report_due) => self.maybe_report_posture().await,
                _ = probe.tick() => self.maybe_report_posture().await,
                _ = flows.tick() => self.send_flows().await,
                _ = eps.tick() => self.maybe_send_endpoints().await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), ConnEnd> {
        let r = self.c.send(msg).await;
        r.map_err(|e| self.fail(e))
    }

    async fn login(&mut self) -> Result<(), ConnError> {
        let posture = collect_posture(&self.deps.prober).await;
        self.endpoints = local_endpoints(self.deps.plane.local_port());
        self.deps.shared.lock().endpoints = self.endpoints.clone();
        let auth = match &self.cfg.auth_key {
            Some(k) => LoginAuth::AuthKey(k.clone()),
            None => LoginAuth::Interactive,
        };
        let req = LoginRequest {
            hostname: self.cfg.hostname.clone(),
            wg_public_key: keys::wg_public(&self.current),
            auth,
            endpoints: self.endpoints.clone(),
            posture: posture.clone(),
        };
        self.last_report = Some((posture, Instant::now()));
        self.c.send(&ClientMsg::Login(req)).await
    }

    async fn on_msg(&mut self, m: ServerMsg) -> Result<(), ConnEnd> {
        tracing::debug!(msg = conn::msg_name(&m), "coordinator message");
        match m {
            ServerMsg::Welcome(_) => {}
            ServerMsg::LoginUrl { url } => {
                {
                    let mut st = self.deps.shared.lock();
                    st.login_url = Some(url.clone());
                    st.phase = Phase::NeedsLogin;
                }
                tracing::info!("interactive login required; waiting for the user");
                self.deps.shared.announce(Event::LoginUrl(url));
            }
            ServerMsg::ReauthRequired { url } => {
                tracing::warn!("login session ended; re-authentication required");
                self.deps.shared.lock().reauth_url = Some(url.clone());
                self.deps.shared.announce(Event::LoginUrl(url));
            }
            ServerMsg::Refused { reasons } => {
                tracing::warn!(reasons = ?reasons, "admission refused");
                {
                    let mut st = self.deps.shared.lock();
                    st.phase = Phase::Refused;
                    st.refused = reasons.clone();
                }
                self.deps.shared.announce(Event::Refused(reasons));
                return Err(ConnEnd::Refused);
            }
            ServerMsg::Credential(grant) => self.on_credential(grant).await?,
            ServerMsg::NetMap(map) => self.on_netmap(map),
            ServerMsg::NetMapDelta(delta) => self.on_delta(delta)?,
            ServerMsg::Revoked { reason } => {
                tracing::warn!(reason = %reason, "access revoked by the coordinator");
                self.deps.plane.clear();
                {
                    let mut st = self.deps.shared.lock();
                    st.phase = Phase::Revoked;
                    st.revoked = Some(reason.clone());
                    st.own = None;
                    st.peers.clear();
                    st.netmap_version = None;
                }
                self.deps.shared.announce(Event::Revoked(reason.clone()));
                return Err(ConnEnd::Revoked(reason));
            }
            ServerMsg::Error { message } => {
                return Err(self.fail(format!("coordinator error: {message}")))
            }
        }
        Ok(())
    }

    async fn on_credential(&mut self, grant: CredentialGrant) -> Result<(), ConnEnd> {
        let now = now_ms();
        let cred = match grant.credential.verify(&self.coordinator, now) {
            Ok(c) => c,
            Err(e) => {
                // A credential we cannot verify is useless to peers too; keep the old one.
                tracing::error!(error = %e, "coordinator sent an invalid credential; ignored");
                self.deps.shared.lock().last_error = Some(format!("invalid credential: {e}"));
                return Ok(());
            }
        };
        if cred.machine_key != self.deps.machine.public() {
            tracing::error!("credential names another machine key; ignored");
            return Ok(());
        }
        let key = match self.pending.take() {
            Some(p) if keys::wg_public(&p) == cred.wg_public_key => {
                if let Err(e) = self.deps.keys.store_node_key(&p) {
                    tracing::error!(error = %e, "cannot store the rotated node key");
                }
                tracing::info!(serial = cred.serial, "node key rotated");
                self.current = p.clone();
                p
            }
            other => {
                self.pending = other;
                if keys::wg_public(&self.current) != cred.wg_public_key {
                    tracing::error!(
                        "credential is for a WireGuard key this node does not hold; ignored"
                    );
                    return Ok(());
                }
                self.current.clone()
            }
        };
        if let Err(e) =
            self.deps
                .plane
                .set_identity(key, grant.credential.clone(), self.coordinator)
        {
            tracing::error!(error = %e, "data plane refused the credential");
            self.deps.shared.lock().last_error =
                Some(format!("data plane refused the credential: {e}"));
            return Ok(());
        }
        self.admitted = true;
        // Later logins on this device use its session, not the (maybe single-use) key.
        self.cfg.auth_key = None;
        self.renew_deadline = Some(instant_at(grant.renew_at, Duration::from_secs(1)));
        self.report_interval = Some(Duration::from_millis(
            grant.posture_report_interval_ms.max(1000),
        ));
        tracing::info!(node = %cred.node_id, serial = cred.serial, expires_at = cred.expires_at.0,
            "credential applied");
        {
            let mut st = self.deps.shared.lock();
            st.own = Some(cred);
            st.renew_at = Some(grant.renew_at);
            st.login_url = None;
            st.reauth_url = None;
            st.refused.clear();
            st.revoked = None;
        }
        self.check_meshed();
        Ok(())
    }

    fn verified_peers(&self, entries: &[ztmesh_common::netmap::PeerEntry]) -> Vec<PeerView> {
        entries
            .iter()
            .filter_map(|p| match p.credential.verify_signature(&self.coordinator) {
                Ok(cred) => Some(PeerView {
                    cred,
                    endpoints: p.endpoints.clone(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "peer credential does not verify; not shown");
                    None
                }
            })
            .collect()
    }

    fn on_netmap(&mut self, map: NetMap) {
        let peers = self.verified_peers(&map.peers);
        tracing::info!(version = map.version, peers = peers.len(), "view received");
        {
            let mut st = self.deps.shared.lock();
            st.peers = peers.into_iter().map(|p| (p.cred.node_id, p)).collect();
            st.netmap_version = Some(map.version);
        }
        self.deps.plane.set_netmap(map);
        self.check_meshed();
    }

    fn on_delta(&mut self, delta: NetMapDelta) -> Result<(), ConnEnd> {
        let upserts = self.verified_peers(&delta.upsert);
        {
            let mut st = self.deps.shared.lock();
            for id in &delta.remove {
                st.peers.remove(id);
            }
            for p in upserts {
                st.peers.insert(p.cred.node_id, p);
            }
            st.netmap_version = Some(delta.version);
        }
        let version = delta.version;
        if let Err(e) = self.deps.plane.apply_delta(delta) {
            // The protocol sends a full view after every login: reconnecting resynchronises.
            return Err(self.fail(format!(
                "view delta refused ({e}); reconnecting for a full view"
            )));
        }
        tracing::info!(version, "view delta applied");
        Ok(())
    }

    fn check_meshed(&mut self) {
        let ready = {
            let mut st = self.deps.shared.lock();
            let ready = st.own.is_some() && st.netmap_version.is_some();
            if ready {
                st.phase = Phase::Running;
            }
            ready
        };
        if ready && !self.meshed {
            self.meshed = true;
            self.deps.shared.announce(Event::Meshed);
        }
    }

    /// Sends `Renew` with a new key and a fresh posture report; the key is used only once the
    /// coordinator answers with a credential for it.
    async fn renew(&mut self) -> Result<(), ConnEnd> {
        let key = keys::new_node_key();
        let posture = collect_posture(&self.deps.prober).await;
        let msg = ClientMsg::Renew(RenewRequest {
            wg_public_key: keys::wg_public(&key),
            posture: posture.clone(),
        });
        tracing::info!("renewing credential with a new node key");
        self.pending = Some(key);
        self.last_report = Some((posture, Instant::now()));
        self.renew_deadline = Some(Instant::now() + RENEW_RETRY);
        self.send(&msg).await
    }

    /// When the coordinator expects the next posture report: it takes a device that stays
    /// silent past its interval out of the mesh, so the report may not wait for a probe tick.
    fn report_due(&self) -> Option<Instant> {
        let interval = self.report_interval?;
        self.last_report.as_ref().map(|(_, at)| *at + interval)
    }

    async fn maybe_report_posture(&mut self) -> Result<(), ConnEnd> {
        let Some(interval) = self.report_interval else {
            return Ok(());
        };
        let attrs = collect_posture(&self.deps.prober).await;
        let due = match &self.last_report {
            None => true,
            Some((last, at)) => *last != attrs || at.elapsed() >= interval,
        };
        if !due {
            return Ok(());
        }
        if self.last_report.as_ref().is_some_and(|(l, _)| *l != attrs) {
            tracing::info!("posture changed; reporting at once");
        }
        self.last_report = Some((attrs.clone(), Instant::now()));
        self.send(&ClientMsg::PostureReport(attrs)).await
    }

    async fn send_flows(&mut self) -> Result<(), ConnEnd> {
        let events = self.deps.plane.take_flow_events();
        if events.is_empty() {
            return Ok(());
        }
        for batch in events.chunks(FLOW_BATCH) {
            self.send(&ClientMsg::FlowLog(batch.to_vec())).await?;
        }
        Ok(())
    }

    async fn maybe_send_endpoints(&mut self) -> Result<(), ConnEnd> {
        let eps = local_endpoints(self.deps.plane.local_port());
        if eps == self.endpoints {
            return Ok(());
        }
        tracing::info!(endpoints = ?eps, "underlay endpoints changed");
        self.endpoints = eps.clone();
        self.deps.shared.lock().endpoints = eps.clone();
        self.send(&ClientMsg::Endpoints(eps)).await
    }
}

/// The credential a state holds, for callers that only need to know whether one is valid now.
pub fn credential_valid(cred: &NodeCredential) -> bool {
    cred.check_validity(now_ms()).is_ok()
}
