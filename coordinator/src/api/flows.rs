//! `/api/v1/flows`: the flow events the devices' packet filters reported, newest first, for
//! one device or for all: denied packets, and the first packet of each inbound connection
//! they allowed (the client's filter reports both), optionally of one verdict only.

use super::devices::resolve;
use super::{ApiError, ApiState, Caller};
use crate::control::flows::FlowRecord;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use ztmesh_common::wire::FlowVerdict;

#[derive(Deserialize)]
pub struct FlowsQuery {
    /// A device id (`n3`, `3`) or hostname; all devices when absent.
    pub device: Option<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// `denied` or `allowed`; both when absent.
    pub verdict: Option<FlowVerdict>,
}

fn default_limit() -> usize {
    100
}

pub async fn list(
    State(st): State<ApiState>,
    _caller: Caller,
    Query(q): Query<FlowsQuery>,
) -> Result<Json<Vec<FlowRecord>>, ApiError> {
    let node = match &q.device {
        Some(key) => Some(resolve(&st.control.devices().await?, key)?),
        None => None,
    };
    let limit = q.limit.min(10_000);
    Ok(Json(match q.verdict {
        None => st.control.flows(node, limit),
        Some(v) => {
            // Filter before the limit, so `limit` events of that verdict come back. The
            // journal is bounded per device, so reading all of it is cheap.
            let mut all = st.control.flows(node, usize::MAX);
            all.retain(|r| r.event.verdict == v);
            all.truncate(limit);
            all
        }
    }))
}
