//! After a restart (a crash included), devices whose credentials are still valid go back into
//! the mesh at once, from the store: their peers keep seeing them, their expiry and login
//! deadlines keep running, and a device that has not reconnected yet still gets revoked or
//! expired like a connected one. Without this, the first device to reconnect would receive a
//! view without its peers and cut every connection to them.

use super::core::{Core, NodeState};
use super::deadlines::{self, Kind};
use crate::store::DeviceRecord;
use tracing::{info, warn};
use ztmesh_common::addr::overlay_addrs;
use ztmesh_common::ids::CoordinatorPublicKey;
use ztmesh_common::time::UnixMillis;

/// Put every restorable device into `core`; returns how many were restored.
pub(super) fn restore_admitted(
    core: &mut Core,
    devices: Vec<DeviceRecord>,
    coordinator: &CoordinatorPublicKey,
    now: UnixMillis,
) -> usize {
    let mut restored = 0;
    for d in devices {
        match restorable(core, &d, coordinator, now) {
            Ok(Some(state)) => {
                let id = d.id;
                // Nobody is subscribed yet: upserting pushes nothing.
                core.mesh.upsert(
                    state.inventory(id),
                    state.signed.clone(),
                    Some(state.endpoints.clone()),
                );
                core.set_deadline(id, Kind::CredentialExpiry, state.credential.expires_at);
                // A device gets the grace period after the restart to reconnect and report,
                // even when its last report is older than that.
                let reconnect = now.saturating_add_ms(
                    deadlines::posture_grace(state.posture_interval).as_millis() as u64,
                );
                core.set_deadline(id, Kind::PostureDue, state.posture_due().max(reconnect));
                if let Some(at) = state.login_expires_at {
                    core.set_deadline(id, Kind::LoginExpiry, at);
                }
                core.nodes.insert(id, state);
                restored += 1;
            }
            Ok(None) => {}
            Err(why) => {
                warn!(node = %d.id, hostname = %d.hostname, why, "stored credential not restored; the device must log in again")
            }
        }
    }
    if restored > 0 {
        info!(
            restored,
            "devices with valid credentials restored into the mesh"
        );
    }
    restored
}

/// The node state of a device that held a valid credential when the coordinator stopped;
/// `Ok(None)` for a device without one, `Err` for one whose stored credential is not usable.
fn restorable(
    core: &Core,
    d: &DeviceRecord,
    coordinator: &CoordinatorPublicKey,
    now: UnixMillis,
) -> Result<Option<NodeState>, &'static str> {
    let (Some(signed), Some(expires_at)) = (&d.credential, d.credential_expires_at) else {
        return Ok(None);
    };
    if d.revoked || expires_at <= now {
        return Ok(None);
    }
    // The store is trusted no further than the signature: a record edited by hand or left
    // from another coordinator key is not put back into anybody's view.
    let credential = signed
        .verify(coordinator, now)
        .map_err(|_| "signature or validity window does not check")?;
    if credential.node_id != d.id || credential.expires_at != expires_at {
        return Err("credential does not match the device record");
    }
    let (v4, v6) = overlay_addrs(d.host_index).ok_or("no overlay address for its host index")?;
    let state = NodeState {
        machine_key: d.machine_key,
        hostname: d.hostname.clone(),
        user: d.user.clone(),
        groups: d.user_groups.clone(),
        tags: d.tags.clone(),
        addresses: vec![v4.into(), v6.into()],
        reported: d.last_posture.clone(),
        custom: d.custom_attrs.clone(),
        credential,
        signed: signed.clone(),
        endpoints: d.endpoints.clone(),
        method: d.login_method,
        login_expires_at: d.login_expires_at,
        refresh_token: d.refresh_token.clone(),
        subject: None,
        reauth_url: None,
        posture_at: d.posture_reported_at.unwrap_or(now),
        // What it was told is not stored; the policy in force is the best guess.
        posture_interval: core.policy.lifetimes().posture_report,
    };
    // The policy in force decides again, as it would at a reconnect.
    if d.tags.iter().any(|t| !core.policy.is_declared_tag(t)) {
        return Err("one of its tags is no longer declared in tagOwners");
    }
    if core.policy.check_admission(&state.inventory(d.id)).is_err() {
        return Err("it no longer passes the policy's posture requirements");
    }
    Ok(Some(state))
}
