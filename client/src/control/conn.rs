//! One control connection: QUIC to the coordinator, the `Hello` with the machine-key proof
//! bound to this TLS session, then framed messages on one bidirectional stream.

use super::tls;
use super::url::JoinUrl;
use crate::keys::MachineKey;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use ztmesh_common::cert_pin::PIN_MISMATCH;
use ztmesh_common::wire::{
    self, ClientMsg, FrameDecoder, Hello, ServerMsg, Welcome, MACHINE_PROOF_LABEL,
    MACHINE_PROOF_LEN,
};

/// How long connecting plus `Hello`/`Welcome` may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot resolve coordinator {0}")]
    Resolve(String),
    #[error("{0}")]
    Tls(#[from] tls::TlsConfigError),
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("connecting to the coordinator: {0}")]
    Connect(String),
    #[error(
        "the coordinator's certificate is not the one the join URL pins (a stale join URL, \
         or someone intercepting the connection): {0}"
    )]
    NotPinned(String),
    #[error("control connection lost: {0}")]
    Lost(String),
    #[error("coordinator protocol error: {0}")]
    Protocol(String),
    #[error("timed out waiting for the coordinator")]
    Timeout,
}

/// An established, authenticated control connection.
pub struct ControlConn {
    /// Kept so the connection lives as long as this value.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    incoming: mpsc::Receiver<Result<ServerMsg, ConnError>>,
    pub welcome: Welcome,
}

/// Connects, proves the machine key and waits for `Welcome`.
pub async fn connect(join: &JoinUrl, machine: &MachineKey) -> Result<ControlConn, ConnError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_inner(join, machine))
        .await
        .map_err(|_| ConnError::Timeout)?
}

async fn connect_inner(join: &JoinUrl, machine: &MachineKey) -> Result<ControlConn, ConnError> {
    let addr: SocketAddr = tokio::net::lookup_host((join.host.as_str(), join.port))
        .await
        .map_err(|e| ConnError::Resolve(format!("{}: {e}", join.host)))?
        .next()
        .ok_or_else(|| ConnError::Resolve(join.host.clone()))?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(ConnError::Endpoint)?;
    endpoint.set_default_client_config(tls::client_config(join.fingerprint)?);
    let conn = endpoint
        .connect(addr, &join.host)
        .map_err(|e| ConnError::Connect(e.to_string()))?
        .await
        .map_err(|e| {
            let detail = e.to_string();
            if detail.contains(PIN_MISMATCH) {
                ConnError::NotPinned(detail)
            } else {
                ConnError::Connect(detail)
            }
        })?;

    // The proof signs keying material only this TLS session has, so it cannot be replayed.
    let mut ekm = [0u8; MACHINE_PROOF_LEN];
    conn.export_keying_material(&mut ekm, MACHINE_PROOF_LABEL, b"")
        .map_err(|_| ConnError::Protocol("TLS exporter unavailable".into()))?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnError::Lost(e.to_string()))?;
    let hello = ClientMsg::Hello(Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        client_version: env!("CARGO_PKG_VERSION").to_string(),
        machine_key: machine.public(),
        proof: machine.sign(&ekm),
    });
    write_msg(&mut send, &hello).await?;

    let (tx, mut incoming) = mpsc::channel(64);
    tokio::spawn(read_loop(recv, tx));
    let welcome = match incoming.recv().await {
        Some(Ok(ServerMsg::Welcome(w))) => w,
        Some(Ok(ServerMsg::Error { message })) => return Err(ConnError::Protocol(message)),
        Some(Ok(other)) => {
            return Err(ConnError::Protocol(format!(
                "expected Welcome, got {}",
                msg_name(&other)
            )))
        }
        Some(Err(e)) => return Err(e),
        None => return Err(ConnError::Lost("closed before Welcome".into())),
    };
    if welcome.protocol_version != wire::PROTOCOL_VERSION {
        return Err(ConnError::Protocol(format!(
            "coordinator speaks protocol {}, this client {}",
            welcome.protocol_version,
            wire::PROTOCOL_VERSION
        )));
    }
    Ok(ControlConn {
        _endpoint: endpoint,
        conn,
        send,
        incoming,
        welcome,
    })
}

impl ControlConn {
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ConnError> {
        write_msg(&mut self.send, msg).await
    }

    /// The next coordinator message; `None` when the stream ended cleanly. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<ServerMsg, ConnError>> {
        self.incoming.recv().await
    }

    /// The local address the QUIC socket uses (tells which underlay address reaches the coordinator).
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.conn.local_ip()
    }

    /// Finishes the stream and closes the connection, giving the peer a moment to read.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_millis(500), self.send.stopped()).await;
        self.conn.close(0u32.into(), b"bye");
    }
}

async fn write_msg(send: &mut quinn::SendStream, msg: &ClientMsg) -> Result<(), ConnError> {
    let frame = wire::encode_frame(msg).map_err(|e| ConnError::Protocol(e.to_string()))?;
    send.write_all(&frame)
        .await
        .map_err(|e| ConnError::Lost(e.to_string()))
}

/// Reads frames off the stream and forwards decoded messages; ends at the first error.
async fn read_loop(mut recv: quinn::RecvStream, tx: mpsc::Sender<Result<ServerMsg, ConnError>>) {
    let mut dec = FrameDecoder::new(wire::MAX_SERVER_FRAME);
    loop {
        loop {
            match dec.next_msg::<ServerMsg>() {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(ConnError::Protocol(e.to_string()))).await;
                    return;
                }
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(ConnError::Lost(e.to_string()))).await;
                return;
            }
        }
    }
}

/// A message's variant name, for logs (never its contents, which may hold credentials).
pub fn msg_name(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Welcome(_) => "Welcome",
        ServerMsg::LoginUrl { .. } => "LoginUrl",
        ServerMsg::Refused { .. } => "Refused",
        ServerMsg::Credential(_) => "Credential",
        ServerMsg::NetMap(_) => "NetMap",
        ServerMsg::NetMapDelta(_) => "NetMapDelta",
        ServerMsg::Revoked { .. } => "Revoked",
        ServerMsg::ReauthRequired { .. } => "ReauthRequired",
        ServerMsg::Error { .. } => "Error",
    }
}
