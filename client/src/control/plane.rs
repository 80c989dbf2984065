//! What the control client needs from the data plane. The daemon implements it for the real
//! data plane (`crate::dataplane::DataPlane`); tests implement it with a recorder.

use std::net::SocketAddr;
use x25519_dalek::StaticSecret;
use ztmesh_common::credential::SignedCredential;
use ztmesh_common::ids::{CoordinatorPublicKey, NodeId};
use ztmesh_common::netmap::{NetMap, NetMapDelta};
use ztmesh_common::wire::FlowEvent;

/// Live figures of one peer, for `ztmesh status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub node_id: Option<NodeId>,
    pub name: String,
    pub addresses: Vec<std::net::IpAddr>,
    pub endpoint: Option<SocketAddr>,
    /// Unix milliseconds of the last completed handshake.
    pub last_handshake_ms: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// What the data plane shows about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlaneSnapshot {
    pub peers: Vec<PeerStats>,
    /// Most recent denied flows, latest last.
    pub recent_denied: Vec<FlowEvent>,
    /// Why the data plane stopped on its own (its TUN device went away), if it did.
    pub failure: Option<String>,
}

/// The data plane as the control client drives it.
pub trait Plane: Send + Sync + 'static {
    /// (Re)keys the node: its WireGuard secret with the credential issued for it.
    /// Err when the data plane refuses the credential (forged, expired, other key).
    fn set_identity(
        &self,
        key: StaticSecret,
        own: SignedCredential,
        coordinator: CoordinatorPublicKey,
    ) -> Result<(), String>;
    fn set_netmap(&self, map: NetMap);
    /// Err when the delta does not apply (e.g. out of order): the caller fetches a full view.
    fn apply_delta(&self, delta: NetMapDelta) -> Result<(), String>;
    /// Drops every peer and stops all traffic (revoked, or `ztmesh down`).
    fn clear(&self);
    fn take_flow_events(&self) -> Vec<FlowEvent>;
    /// The UDP port the data plane listens on.
    fn local_port(&self) -> u16;
    /// Live figures for `ztmesh status`.
    fn snapshot(&self) -> PlaneSnapshot;
}
