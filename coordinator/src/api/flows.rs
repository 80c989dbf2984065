//! `/api/v1/flows`: the flow events the devices' packet filters reported (denied flows above
//! all), newest first, for one device or for all.

use super::devices::resolve;
use super::{ApiError, ApiState, Caller};
use crate::control::flows::FlowRecord;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct FlowsQuery {
    /// A device id (`n3`, `3`) or hostname; all devices when absent.
    pub device: Option<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
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
    Ok(Json(st.control.flows(node, q.limit.min(10_000))))
}
