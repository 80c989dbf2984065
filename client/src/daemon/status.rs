//! Builds the `ztmesh status` report from the control state and the data plane's figures.

use crate::control::session::credential_valid;
use crate::control::state::ControlState;
use crate::control::{Phase, PlaneSnapshot};
use crate::ipc::proto::{FlowStatus, PeerStatus, SelfStatus, StatusReport};
use ztmesh_common::ids::MachinePublicKey;

pub fn report(
    st: &ControlState,
    snap: &PlaneSnapshot,
    machine_key: MachinePublicKey,
    listen_port: Option<u16>,
) -> StatusReport {
    let own = st.own.as_ref();
    let self_ = SelfStatus {
        name: own
            .map(|c| c.hostname.clone())
            .unwrap_or_else(|| st.hostname.clone()),
        node_id: own.map(|c| c.node_id.0),
        addresses: own
            .map(|c| c.addresses.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
        user: own.and_then(|c| c.user.clone()),
        tags: own.map(|c| c.tags.clone()).unwrap_or_default(),
        expires_at_ms: own.map(|c| c.expires_at.0),
        renew_at_ms: st.renew_at.map(|r| r.0),
        machine_key: machine_key.to_base64(),
        wg_public_key: own.map(|c| c.wg_public_key.to_base64()),
        listen_port,
        endpoints: st.endpoints.iter().map(|e| e.to_string()).collect(),
    };
    let peers = st
        .peers
        .values()
        .map(|p| {
            let live = snap.peers.iter().find(|s| {
                s.node_id == Some(p.cred.node_id)
                    || (s.node_id.is_none()
                        && s.addresses.iter().any(|a| p.cred.addresses.contains(a)))
            });
            PeerStatus {
                name: p.cred.hostname.clone(),
                node_id: p.cred.node_id.0,
                addresses: p.cred.addresses.iter().map(|a| a.to_string()).collect(),
                user: p.cred.user.clone(),
                tags: p.cred.tags.clone(),
                wg_public_key: p.cred.wg_public_key.to_base64(),
                endpoint: live
                    .and_then(|s| s.endpoint)
                    .or_else(|| p.endpoints.first().copied())
                    .map(|e| e.to_string()),
                last_handshake_ms: live.and_then(|s| s.last_handshake_ms),
                rx_bytes: live.map(|s| s.rx_bytes).unwrap_or(0),
                tx_bytes: live.map(|s| s.tx_bytes).unwrap_or(0),
                expires_at_ms: p.cred.expires_at.0,
            }
        })
        .collect();
    // The data plane stops on its own at expiry; say so rather than "running".
    let expired = st.phase == Phase::Running && own.is_some_and(|c| !credential_valid(c));
    StatusReport {
        // A data plane that stopped (its TUN device is gone) carries no traffic whatever the
        // control session says.
        state: if snap.failure.is_some() {
            "failed"
        } else if expired {
            "expired"
        } else {
            st.phase.as_str()
        }
        .to_string(),
        coordinator: st.coordinator.clone(),
        connected: st.connected_since.is_some(),
        connected_since_ms: st.connected_since.map(|t| t.0),
        login_url: st.login_url.clone(),
        reauth_url: st.reauth_url.clone(),
        refused: st.refused.clone(),
        revoked: st.revoked.clone(),
        last_error: snap
            .failure
            .as_ref()
            .map(|f| format!("data plane stopped: {f}"))
            .or_else(|| st.last_error.clone()),
        self_,
        peers,
        denied: snap
            .recent_denied
            .iter()
            .rev()
            .map(|e| FlowStatus {
                at_ms: e.at.0,
                src: e.src.to_string(),
                dst: e.dst.to_string(),
                proto: e.proto,
                dst_port: e.dst_port,
                count: e.count,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_data_plane_shows_as_failed_with_its_reason() {
        let st = ControlState {
            phase: Phase::Running,
            last_error: Some("older error".into()),
            ..ControlState::default()
        };
        let key = MachinePublicKey([7; 32]);
        let healthy = report(&st, &PlaneSnapshot::default(), key, None);
        assert_eq!(healthy.state, "running");
        assert_eq!(healthy.last_error.as_deref(), Some("older error"));

        let gone = PlaneSnapshot {
            failure: Some("TUN device ztmesh0 is gone".into()),
            ..PlaneSnapshot::default()
        };
        let failed = report(&st, &gone, key, None);
        assert_eq!(failed.state, "failed");
        assert_eq!(
            failed.last_error.as_deref(),
            Some("data plane stopped: TUN device ztmesh0 is gone")
        );
    }
}
