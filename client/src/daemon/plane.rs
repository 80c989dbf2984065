//! The data plane as the daemon runs it: starts [`crate::dataplane`] and adapts its handle to
//! the control client's [`Plane`] interface.

use super::config::DaemonOptions;
use crate::control::{PeerStats, Plane, PlaneSnapshot};
use crate::dataplane::{self, DataPlane, DataPlaneConfig};
use std::sync::{Arc, Mutex};
use x25519_dalek::StaticSecret;
use ztmesh_common::credential::SignedCredential;
use ztmesh_common::ids::CoordinatorPublicKey;
use ztmesh_common::netmap::{NetMap, NetMapDelta};
use ztmesh_common::wire::FlowEvent;

/// Owns the data plane until shutdown takes it back.
pub struct DaemonPlane {
    dp: Mutex<Option<DataPlane>>,
    port: u16,
}

impl DaemonPlane {
    fn with<R>(&self, f: impl FnOnce(&DataPlane) -> R) -> Option<R> {
        let g = self.dp.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(f)
    }
}

/// Creates the TUN device and binds the WireGuard port.
pub async fn start(opts: &DaemonOptions) -> anyhow::Result<Arc<DaemonPlane>> {
    let dp = dataplane::start(DataPlaneConfig {
        tun_name: opts.tun_name.clone(),
        listen_port: opts.listen_port,
        mtu: opts.mtu,
    })
    .await?;
    let port = dp.local_port();
    Ok(Arc::new(DaemonPlane {
        dp: Mutex::new(Some(dp)),
        port,
    }))
}

/// Stops the data plane (removing the TUN device).
pub async fn shutdown(p: Arc<DaemonPlane>) {
    let dp = p.dp.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(dp) = dp {
        dp.shutdown().await;
    }
}

impl Plane for DaemonPlane {
    fn set_identity(
        &self,
        key: StaticSecret,
        own: SignedCredential,
        coordinator: CoordinatorPublicKey,
    ) -> Result<(), String> {
        self.with(|d| {
            d.set_identity(key, own, coordinator)
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| Err("data plane stopped".into()))
    }

    fn set_netmap(&self, map: NetMap) {
        self.with(|d| d.set_netmap(map));
    }

    fn apply_delta(&self, delta: NetMapDelta) -> Result<(), String> {
        self.with(|d| d.apply_delta(delta).map_err(|e| e.to_string()))
            .unwrap_or_else(|| Err("data plane stopped".into()))
    }

    fn clear(&self) {
        self.with(|d| d.clear());
    }

    fn take_flow_events(&self) -> Vec<FlowEvent> {
        self.with(|d| d.take_flow_events()).unwrap_or_default()
    }

    fn local_port(&self) -> u16 {
        self.port
    }

    fn snapshot(&self) -> PlaneSnapshot {
        self.with(|d| {
            let status = d.status();
            let s = status.engine;
            PlaneSnapshot {
                failure: status.failure,
                peers: s
                    .peers
                    .into_iter()
                    .map(|p| PeerStats {
                        node_id: Some(p.node_id),
                        name: p.name,
                        addresses: p.addresses,
                        endpoint: p.endpoint,
                        last_handshake_ms: p.last_handshake.map(|t| t.0),
                        rx_bytes: p.rx_bytes,
                        tx_bytes: p.tx_bytes,
                    })
                    .collect(),
                recent_denied: s.recent_denied,
            }
        })
        .unwrap_or_default()
    }
}
