//! The control protocol between client and coordinator (ALPN `ztmesh/1` over QUIC).
//!
//! One long-lived bidirectional stream per client. Each message is a frame: a 4-byte
//! big-endian length, then the message in postcard encoding. Frames above the direction's
//! hard maximum, or that do not decode, end the connection with a logged reason.
//!
//! Message flow: client `Hello` -> coordinator `Welcome`; client `Login` -> coordinator
//! `LoginUrl` (interactive, until the user finishes) or `Refused` or `Credential` + `NetMap`;
//! then `NetMapDelta`s on every change; client `PostureReport`/`Renew`/`Endpoints`/`FlowLog`
//! at any time; coordinator `Revoked`/`ReauthRequired` when access ends.

use crate::credential::SignedCredential;
use crate::ids::{CoordinatorPublicKey, MachinePublicKey, NodeId, WgPublicKey};
use crate::netmap::{NetMap, NetMapDelta};
use crate::posture::PostureAttrs;
use crate::time::UnixMillis;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// ALPN protocol id of the control connection.
pub const ALPN: &[u8] = b"ztmesh/1";

/// Protocol version, raised on every change of the messages below.
/// - 1: first version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Label for the TLS exporter (RFC 8446 §7.5) whose output the client signs with its machine
/// key in `Hello`: the proof is bound to this very TLS session and cannot be replayed.
pub const MACHINE_PROOF_LABEL: &[u8] = b"EXPORTER-ztmesh-machine-key-proof";
/// Length of the exported keying material that is signed.
pub const MACHINE_PROOF_LEN: usize = 32;

/// Hard maximum of a client -> coordinator frame.
pub const MAX_CLIENT_FRAME: usize = 256 * 1024;
/// Hard maximum of a coordinator -> client frame (a full view of a large mesh).
pub const MAX_SERVER_FRAME: usize = 16 * 1024 * 1024;

/// Messages from client to coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    Hello(Hello),
    Login(LoginRequest),
    /// A fresh posture report (periodic, or because a probe result changed).
    PostureReport(PostureAttrs),
    /// A new WireGuard key and a fresh posture report, before the credential expires.
    Renew(RenewRequest),
    /// UDP endpoints where this node can be reached.
    Endpoints(Vec<SocketAddr>),
    FlowLog(Vec<FlowEvent>),
    /// The user asked to leave the mesh: end this device's session.
    Logout,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub client_version: String,
    pub machine_key: MachinePublicKey,
    /// Ed25519 signature by the machine key over the TLS exporter output
    /// ([`MACHINE_PROOF_LABEL`], [`MACHINE_PROOF_LEN`] bytes, no context).
    pub proof: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// As [`check_hostname`] allows.
    pub hostname: String,
    pub wg_public_key: WgPublicKey,
    pub auth: LoginAuth,
    /// UDP endpoints where this node can be reached.
    pub endpoints: Vec<SocketAddr>,
    pub posture: PostureAttrs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginAuth {
    /// Use the device's still-valid login session, or start an interactive login
    /// (the coordinator answers `LoginUrl`).
    Interactive,
    /// A pre-auth key (servers, connectors): the device joins with the key's tags.
    AuthKey(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub wg_public_key: WgPublicKey,
    pub posture: PostureAttrs,
}

/// (On the wire variants travel by index; the names are for JSON: `denied`, `allowed`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowVerdict {
    Denied,
    Allowed,
}

/// A (rate-limited, aggregated) flow event seen by a node's packet filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEvent {
    pub at: UnixMillis,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dst_port: Option<u16>,
    pub verdict: FlowVerdict,
    /// Packets aggregated into this event.
    pub count: u32,
}

/// Messages from coordinator to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    Welcome(Welcome),
    /// Open this URL in a browser to log in; the coordinator continues when it is done.
    LoginUrl {
        url: String,
    },
    /// Admission refused; every reason is a sentence for the user (e.g. a failed posture condition).
    Refused {
        reasons: Vec<String>,
    },
    Credential(CredentialGrant),
    NetMap(NetMap),
    NetMapDelta(NetMapDelta),
    /// Access ended (admin action, posture drift, risk, expiry): drop all peers now.
    Revoked {
        reason: String,
    },
    /// The login session ended; log in again at this URL.
    ReauthRequired {
        url: String,
    },
    /// A protocol error; the coordinator closes the connection after sending it.
    Error {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub coordinator_key: CoordinatorPublicKey,
    pub server_time: UnixMillis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialGrant {
    pub node_id: NodeId,
    pub credential: SignedCredential,
    /// When the client should send `Renew` (before expiry).
    pub renew_at: UnixMillis,
    /// How often the client must send a fresh posture report.
    pub posture_report_interval_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversized { len: usize, max: usize },
    #[error("frame does not decode: {0}")]
    Malformed(String),
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// Encode one message as a frame (length prefix + body).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; 4];
    let out = postcard::to_extend(msg, std::mem::take(&mut out))
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let mut out = out;
    let len =
        u32::try_from(out.len() - 4).map_err(|_| WireError::Encode("frame too large".into()))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Incremental frame decoder: feed bytes as they arrive, take whole messages out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The length the next frame announces, once its prefix has arrived; refuses it at once
    /// when oversized, before any of its body is buffered.
    pub fn announced_len(&self) -> Result<Option<usize>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(WireError::Oversized { len, max: self.max });
        }
        Ok(Some(len))
    }

    /// The next complete message, if one has arrived.
    pub fn next_msg<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let Some(len) = self.announced_len()? else {
            return Ok(None);
        };
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = postcard::from_bytes(&self.buf[4..4 + len])
            .map_err(|e| WireError::Malformed(e.to_string()));
        self.buf.drain(..4 + len);
        msg.map(Some)
    }

    /// Bytes buffered but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Hostnames become DNS labels, log fields and `ztmesh ping` names: 1-63 ASCII letters,
/// digits, `-`, `_` and `.`. Both sides check: the CLI before it asks, the coordinator
/// whatever a client sends.
pub fn check_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        // Debug form: a control character in the name is shown escaped, not sent to the
        // terminal.
        Err(format!(
            "hostname {:?} is not valid (1-63 letters, digits, '-', '_', '.')",
            h.chars().take(64).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_when_split_anywhere() {
        let msgs = vec![
            ClientMsg::Logout,
            ClientMsg::Endpoints(vec!["198.18.1.2:41641".parse().unwrap()]),
            ClientMsg::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client_version: "0.1.0".into(),
                machine_key: MachinePublicKey([5; 32]),
                proof: vec![1, 2, 3],
            }),
        ];
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        for split in 0..bytes.len() {
            let mut d = FrameDecoder::new(MAX_CLIENT_FRAME);
            let mut got = Vec::new();
            for chunk in [&bytes[..split], &bytes[split..]] {
                d.push(chunk);
                while let Some(m) = d.next_msg::<ClientMsg>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs);
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut d = FrameDecoder::new(16);
        d.push(&1000u32.to_be_bytes());
        assert_eq!(
            d.next_msg::<ClientMsg>(),
            Err(WireError::Oversized { len: 1000, max: 16 })
        );
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next_msg::<ClientMsg>(),
            Err(WireError::Malformed(_))
        ));
    }
}
