//! One device connection: QUIC handshake, `Hello` with the machine-key proof, then the login
//! state machine and the forwarding of queued updates. Any protocol violation ends the
//! connection with a logged reason; every connection ends with exactly one log line.

use super::admission::{LoginStep, RenewOutcome, NOT_IN_MESH};
use super::core::Outbox;
use super::frames::{FrameReader, ReadError};
use super::login::JoinOutcome;
use super::{now, proof, ControlPlane};
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::timeout;
use tracing::{debug, info, warn};
use ztmesh_common::ids::{MachinePublicKey, NodeId};
use ztmesh_common::wire::{
    self, ClientMsg, LoginRequest, ServerMsg, Welcome, MACHINE_PROOF_LABEL, MACHINE_PROOF_LEN,
    PROTOCOL_VERSION,
};

/// How long a write to a client may block (flow control) before the client counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC application close codes.
mod code {
    pub const NORMAL: u32 = 0;
    pub const PROTOCOL: u32 = 1;
    pub const AUTH: u32 = 2;
    pub const REPLACED: u32 = 3;
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("{0}")]
    Normal(&'static str),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("connection: {0}")]
    Connection(String),
    #[error("replaced by a newer connection of the same device, or too slow to read updates")]
    Replaced,
}

impl From<ReadError> for End {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Finished => End::Normal("client closed its stream"),
            ReadError::Stream(quinn::ReadError::ConnectionLost(c)) => {
                End::Connection(c.to_string())
            }
            other => End::Protocol(other.to_string()),
        }
    }
}

fn msg_name(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Hello(_) => "Hello",
        ClientMsg::Login(_) => "Login",
        ClientMsg::PostureReport(_) => "PostureReport",
        ClientMsg::Renew(_) => "Renew",
        ClientMsg::Endpoints(_) => "Endpoints",
        ClientMsg::FlowLog(_) => "FlowLog",
        ClientMsg::Logout => "Logout",
    }
}

/// Serve one incoming connection until it ends.
/// `incoming` comes boxed: an argument stays part of the task's state for its whole life.
pub(super) async fn run(
    cp: ControlPlane,
    incoming: Box<quinn::Incoming>,
    permit: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let conn_id = cp.next_conn_id();
    let mut s = Session {
        cp,
        conn_id,
        node: None,
        was_admitted: false,
        conn: None,
        send: None,
    };
    let result = s.drive(incoming, permit).await;
    let node = s.node.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    if let Some(id) = s.node {
        s.cp.session_closed(id, conn_id);
    }
    let (code, reason) = match &result {
        Ok(()) | Err(End::Normal(_)) => (code::NORMAL, "bye"),
        Err(End::Replaced) => (code::REPLACED, "replaced"),
        Err(End::Auth(_)) => (code::AUTH, "authentication failed"),
        Err(_) => (code::PROTOCOL, "protocol error"),
    };
    if let Some(conn) = &s.conn {
        conn.close(code.into(), reason.as_bytes());
    }
    match result {
        Ok(()) | Err(End::Normal(_)) | Err(End::Connection(_)) | Err(End::Replaced) => info!(
            conn = conn_id, %remote, node, reason = %result.err().map(|e| e.to_string()).unwrap_or_else(|| "logout".into()),
            "control connection ended"
        ),
        Err(e) => warn!(conn = conn_id, %remote, node, reason = %e, "control connection ended"),
    }
}

/// Where the login stands on this connection.
enum State {
    /// Authenticated; no login yet (or revoked, and may log in again).
    AwaitLogin,
    /// The user is logging in in a browser.
    Pending {
        req: Box<LoginRequest>,
        wait: oneshot::Receiver<JoinOutcome>,
        login_id: String,
    },
    /// In the mesh; updates arrive on `rx`.
    Admitted { node: NodeId, rx: Outbox },
    /// The device logged out.
    Done,
}

struct Session {
    cp: ControlPlane,
    conn_id: u64,
    node: Option<NodeId>,
    /// Whether a login on this connection was admitted (the device may since have left).
    was_admitted: bool,
    conn: Option<quinn::Connection>,
    send: Option<quinn::SendStream>,
}

impl Session {
    async fn drive(
        &mut self,
        incoming: Box<quinn::Incoming>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), End> {
        // Every step but the admitted loop is boxed: they are over within seconds, and inline
        // their largest state would stay part of every idle session task for its lifetime.
        let (mk, mut reader) = Box::pin(self.handshake(incoming)).await?;
        // Authenticated: no longer counts against the unauthenticated limit.
        drop(permit);
        let result = self.serve(mk, &mut reader).await;
        match result {
            Err(e @ End::Protocol(_)) => Err(Box::pin(self.fail(e)).await),
            other => other,
        }
    }

    /// QUIC handshake, the control stream, `Hello` with a valid machine-key proof, `Welcome`.
    async fn handshake(
        &mut self,
        incoming: Box<quinn::Incoming>,
    ) -> Result<(MachinePublicKey, FrameReader), End> {
        let hs = self.cp.inner.cfg.handshake_timeout;
        let connecting = incoming
            .accept()
            .map_err(|e| End::Connection(e.to_string()))?;
        let conn = timeout(hs, connecting)
            .await
            .map_err(|_| End::Timeout("QUIC handshake"))?
            .map_err(|e| End::Connection(e.to_string()))?;
        self.conn = Some(conn.clone());
        let (send, recv) = timeout(hs, conn.accept_bi())
            .await
            .map_err(|_| End::Timeout("waiting for the control stream"))?
            .map_err(|e| End::Connection(e.to_string()))?;
        self.send = Some(send);
        let mut reader = FrameReader::new(recv);
        let first = timeout(hs, reader.next())
            .await
            .map_err(|_| End::Timeout("waiting for Hello"))??;
        let ClientMsg::Hello(hello) = first else {
            return Err(self
                .fail(End::Protocol(format!(
                    "expected Hello, got {}",
                    msg_name(&first)
                )))
                .await);
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(self
                .fail(End::Protocol(format!(
                    "protocol version {} is not supported (this coordinator speaks {PROTOCOL_VERSION})",
                    hello.protocol_version
                )))
                .await);
        }
        let mut ekm = [0u8; MACHINE_PROOF_LEN];
        conn.export_keying_material(&mut ekm, MACHINE_PROOF_LABEL, b"")
            .map_err(|_| End::Connection("TLS exporter unavailable".into()))?;
        if let Err(e) = proof::verify(&hello.machine_key, &ekm, &hello.proof) {
            return Err(self.fail(End::Auth(e.to_string())).await);
        }
        let mk = hello.machine_key;
        debug!(conn = self.conn_id, machine_key = %mk, client = %hello.client_version.chars().take(64).collect::<String>(), "machine key proven");
        self.write(&ServerMsg::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            coordinator_key: self.cp.coordinator_key(),
            server_time: now(),
        }))
        .await?;
        Ok((mk, reader))
    }

    async fn serve(&mut self, mk: MachinePublicKey, reader: &mut FrameReader) -> Result<(), End> {
        let mut state = State::AwaitLogin;
        loop {
            state = match state {
                State::AwaitLogin => Box::pin(self.await_login(mk, reader)).await?,
                State::Pending {
                    req,
                    wait,
                    login_id,
                } => Box::pin(self.pending(mk, reader, req, wait, login_id)).await?,
                State::Admitted { node, rx } => self.admitted(node, rx, reader).await?,
                State::Done => return Ok(()),
            };
        }
    }

    async fn await_login(
        &mut self,
        mk: MachinePublicKey,
        reader: &mut FrameReader,
    ) -> Result<State, End> {
        match reader.next().await? {
            ClientMsg::Login(req) => self.login(mk, req).await,
            ClientMsg::Logout => Ok(State::Done),
            // Its access ended on this connection (revoked, expired) while a renewal was on
            // the way: an answer, not a protocol violation.
            ClientMsg::Renew(_) if self.was_admitted => {
                self.write(&ServerMsg::Revoked {
                    reason: NOT_IN_MESH.into(),
                })
                .await?;
                Ok(State::AwaitLogin)
            }
            other => Err(End::Protocol(format!(
                "{} before a successful Login",
                msg_name(&other)
            ))),
        }
    }

    /// The user is logging in in a browser: wait for the identity, the device, or the end of
    /// the login's lifetime.
    async fn pending(
        &mut self,
        mk: MachinePublicKey,
        reader: &mut FrameReader,
        req: Box<LoginRequest>,
        mut wait: oneshot::Receiver<JoinOutcome>,
        login_id: String,
    ) -> Result<State, End> {
        tokio::select! {
            msg = reader.next() => {
                self.cp.inner.logins.forget(&login_id);
                match msg? {
                    ClientMsg::Logout => Ok(State::Done),
                    other => Err(End::Protocol(format!(
                        "{} while the interactive login is pending", msg_name(&other)))),
                }
            }
            identity = &mut wait => match identity {
                Ok(Ok(identity)) => {
                    let step = self.cp.finish_login(self.conn_id, mk, &req, identity).await;
                    self.step(step).await
                }
                Ok(Err(reason)) => {
                    self.write(&ServerMsg::Refused { reasons: vec![reason] }).await?;
                    Ok(State::AwaitLogin)
                }
                Err(_) => {
                    self.write(&ServerMsg::Refused { reasons: vec!["the login expired".into()] }).await?;
                    Ok(State::AwaitLogin)
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(super::login::LOGIN_TTL_MS)) => {
                self.cp.inner.logins.forget(&login_id);
                self.write(&ServerMsg::Refused { reasons: vec!["the login was not completed in time".into()] }).await?;
                Ok(State::AwaitLogin)
            }
        }
    }

    /// In the mesh: forward queued updates, serve the device's requests. This is where a
    /// session spends its life, so its own state is kept small.
    async fn admitted(
        &mut self,
        node: NodeId,
        mut rx: Outbox,
        reader: &mut FrameReader,
    ) -> Result<State, End> {
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(msg) => {
                        let revoked = matches!(*msg, ServerMsg::Revoked { .. });
                        self.write(&msg).await?;
                        if revoked {
                            // Back to the start: the device may log in again.
                            self.node = None;
                            return Ok(State::AwaitLogin);
                        }
                    }
                    None => return Err(End::Replaced),
                },
                msg = reader.next() => match msg? {
                    ClientMsg::Renew(r) => match Box::pin(self.cp.renew(node, self.conn_id, r)).await {
                        RenewOutcome::Queued => {}
                        RenewOutcome::Refused(reasons) => {
                            self.write(&ServerMsg::Refused { reasons }).await?
                        }
                        RenewOutcome::NotInMesh(reason) => {
                            self.write(&ServerMsg::Revoked { reason }).await?;
                            self.node = None;
                            return Ok(State::AwaitLogin);
                        }
                        RenewOutcome::Replaced => return Err(End::Replaced),
                    },
                    ClientMsg::PostureReport(p) => Box::pin(self.cp.posture_report(node, self.conn_id, p)).await,
                    ClientMsg::Endpoints(e) => self.cp.endpoints(node, self.conn_id, e),
                    ClientMsg::FlowLog(events) => self.cp.record_flows(node, events),
                    ClientMsg::Logout => {
                        Box::pin(self.cp.logout(node, self.conn_id)).await;
                        // Deliver what is queued (the `Revoked`), then end.
                        while let Ok(m) = rx.try_recv() {
                            self.write(&m).await?;
                        }
                        return Ok(State::Done);
                    }
                    other => return Err(End::Protocol(format!(
                        "{} from an admitted device", msg_name(&other)))),
                }
            }
        }
    }

    async fn login(&mut self, mk: MachinePublicKey, req: LoginRequest) -> Result<State, End> {
        let step = self.cp.login(self.conn_id, mk, &req).await;
        match step {
            LoginStep::Interactive {
                login_id,
                url,
                wait,
            } => {
                self.write(&ServerMsg::LoginUrl { url }).await?;
                Ok(State::Pending {
                    req: Box::new(req),
                    wait,
                    login_id,
                })
            }
            other => self.step(other).await,
        }
    }

    async fn step(&mut self, step: LoginStep) -> Result<State, End> {
        match step {
            LoginStep::Refused(reasons) => {
                self.write(&ServerMsg::Refused { reasons }).await?;
                Ok(State::AwaitLogin)
            }
            LoginStep::Admitted { node, rx } => {
                self.node = Some(node);
                self.was_admitted = true;
                Ok(State::Admitted { node, rx })
            }
            LoginStep::Interactive { .. } => Err(End::Protocol(
                "a second interactive login was required".into(),
            )),
        }
    }

    async fn write(&mut self, msg: &ServerMsg) -> Result<(), End> {
        let frame = wire::encode_frame(msg).map_err(|e| End::Protocol(e.to_string()))?;
        let send = self
            .send
            .as_mut()
            .ok_or(End::Connection("no stream".into()))?;
        timeout(WRITE_TIMEOUT, send.write_all(&frame))
            .await
            .map_err(|_| End::Timeout("client does not read"))?
            .map_err(|e| End::Connection(e.to_string()))
    }

    /// Tell the client why (best effort, briefly); returns `e` to end with.
    async fn fail(&mut self, e: End) -> End {
        let message = e.to_string();
        if let Some(send) = self.send.as_mut() {
            if let Ok(frame) = wire::encode_frame(&ServerMsg::Error { message }) {
                let _ = timeout(Duration::from_millis(500), async {
                    send.write_all(&frame).await.ok()?;
                    send.finish().ok()?;
                    send.stopped().await.ok()
                })
                .await;
            }
        }
        e
    }
}
