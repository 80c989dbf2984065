//! The local control protocol between the CLI and the daemon: one JSON object per line. The
//! CLI sends one request; the daemon answers with one or more replies and closes.

use serde::{Deserialize, Serialize};

/// A CLI request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Join (or rejoin) the mesh of this coordinator.
    Up {
        coordinator: String,
        auth_key: Option<String>,
        hostname: Option<String>,
    },
    /// Leave the mesh.
    Down,
    Status,
    /// The posture the device would report now.
    Posture,
    /// ICMP echo to a peer through the tunnel.
    Ping {
        peer: String,
        count: u32,
    },
}

/// A daemon reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Reply {
    /// Interactive login: the user must open this URL.
    LoginUrl {
        url: String,
    },
    /// Something the user may want to know while waiting (e.g. coordinator unreachable).
    Progress {
        message: String,
    },
    /// Admission refused, with every reason.
    Refused {
        reasons: Vec<String>,
    },
    /// Admitted and meshed.
    Up {
        status: Box<StatusReport>,
    },
    Status {
        status: Box<StatusReport>,
    },
    Posture {
        attrs: serde_json::Value,
    },
    /// One echo reply.
    Pong {
        seq: u16,
        from: String,
        rtt_us: u64,
    },
    /// No reply to one echo request within the timeout.
    PingTimeout {
        seq: u16,
    },
    /// The request finished.
    Done {
        message: String,
    },
    /// The request failed.
    Error {
        message: String,
    },
}

/// What `ztmesh status` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `stopped`, `connecting`, `needs_login`, `running`, `expired` (running, but the credential
    /// ran out while the coordinator was unreachable), `refused`, `revoked`.
    pub state: String,
    pub coordinator: Option<String>,
    /// Whether the control connection is up right now.
    pub connected: bool,
    /// Unix milliseconds at which the current control connection came up (a reconnect
    /// moves it forward).
    pub connected_since_ms: Option<u64>,
    pub login_url: Option<String>,
    pub reauth_url: Option<String>,
    pub refused: Vec<String>,
    pub revoked: Option<String>,
    pub last_error: Option<String>,
    #[serde(rename = "self")]
    pub self_: SelfStatus,
    pub peers: Vec<PeerStatus>,
    /// Most recent denied flows seen by this node's filter.
    pub denied: Vec<FlowStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SelfStatus {
    pub name: String,
    pub node_id: Option<u64>,
    /// Overlay addresses (IPv4 and IPv6) as strings.
    pub addresses: Vec<String>,
    pub user: Option<String>,
    pub tags: Vec<String>,
    /// Credential expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
    pub renew_at_ms: Option<u64>,
    pub machine_key: String,
    pub wg_public_key: Option<String>,
    pub listen_port: Option<u16>,
    /// Underlay endpoints reported to the coordinator.
    pub endpoints: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub node_id: u64,
    pub addresses: Vec<String>,
    pub user: Option<String>,
    pub tags: Vec<String>,
    /// The peer's current WireGuard public key (it changes at every credential renewal).
    pub wg_public_key: String,
    pub endpoint: Option<String>,
    /// Unix milliseconds of the last completed WireGuard handshake.
    pub last_handshake_ms: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    pub at_ms: u64,
    pub src: String,
    pub dst: String,
    pub proto: u8,
    pub dst_port: Option<u16>,
    pub count: u32,
}
