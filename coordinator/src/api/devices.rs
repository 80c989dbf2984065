//! `/api/v1/devices*` (list, show, revoke, custom attributes) and `/api/v1/audit*`.

use super::{ApiError, ApiState, Caller};
use crate::audit;
use crate::control::DeviceSummary;
use crate::store::{AuditRecord, Decision};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use ztmesh_common::ids::NodeId;
use ztmesh_common::posture::AttrValue;

pub async fn list(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<Vec<DeviceSummary>>, ApiError> {
    Ok(Json(st.control.devices().await?))
}

/// `n12`, `12` or a hostname; a hostname used by several devices is ambiguous.
pub fn resolve(devices: &[DeviceSummary], key: &str) -> Result<NodeId, ApiError> {
    let as_id = key.strip_prefix('n').unwrap_or(key).parse::<u64>().ok();
    if let Some(id) = as_id {
        if let Some(d) = devices.iter().find(|d| d.id.0 == id) {
            return Ok(d.id);
        }
    }
    let by_name: Vec<&DeviceSummary> = devices.iter().filter(|d| d.hostname == key).collect();
    match by_name.as_slice() {
        [one] => Ok(one.id),
        [] => Err(ApiError::not_found(format!("no device {key:?}"))),
        many => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "hostname {key:?} is used by several devices ({}); use an id",
                many.iter()
                    .map(|d| d.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

pub async fn show(
    State(st): State<ApiState>,
    _caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let devices = st.control.devices().await?;
    let id = resolve(&devices, &key)?;
    let summary = devices.into_iter().find(|d| d.id == id);
    let rec = st
        .blocking(move |s| s.get_device(id))
        .await??
        .ok_or_else(|| ApiError::not_found(format!("no device {key:?}")))?;
    let attrs = |a: &ztmesh_common::posture::PostureAttrs| -> serde_json::Map<String, Value> {
        a.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
    };
    Ok(Json(json!({
        "summary": summary,
        "machine_key": rec.machine_key.to_base64(),
        "host_index": rec.host_index,
        "user_groups": rec.user_groups,
        "custom_attrs": attrs(&rec.custom_attrs),
        "last_posture": attrs(&rec.last_posture),
        "posture_reported_at": rec.posture_reported_at.map(|t| t.0),
        "revoked_reason": rec.revoked_reason,
        "login_method": rec.login_method,
        "login_expires_at": rec.login_expires_at.map(|t| t.0),
        "credential_serial": rec.credential_serial,
        "created_at": rec.created_at.0,
    })))
}

#[derive(Deserialize, Default)]
pub struct RevokeIn {
    #[serde(default)]
    pub reason: String,
}

pub async fn revoke(
    State(st): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    body: Option<Json<RevokeIn>>,
) -> Result<Json<Value>, ApiError> {
    st.require_admin(&caller, "device.revoke", &key).await?;
    let reason = body.map(|b| b.0.reason).unwrap_or_default();
    let devices = st.control.devices().await?;
    let id = match resolve(&devices, &key) {
        Ok(id) => id,
        Err(e) => {
            st.audit(&caller, "device.revoke", &key, Decision::Deny, &e.message)
                .await?;
            return Err(e);
        }
    };
    st.control.revoke_device(id, &reason).await?;
    st.audit(
        &caller,
        "device.revoke",
        &id.to_string(),
        Decision::Allow,
        &reason,
    )
    .await?;
    Ok(Json(json!({ "revoked": id.0 })))
}

#[derive(Deserialize)]
pub struct AttrIn {
    pub value: Value,
}

pub async fn set_attr(
    State(st): State<ApiState>,
    caller: Caller,
    Path((key, attr)): Path<(String, String)>,
    Json(body): Json<AttrIn>,
) -> Result<Json<Value>, ApiError> {
    let subject = format!("{key} {attr}");
    st.require_admin(&caller, "device.set_attr", &subject)
        .await?;
    let value = if body.value.is_null() {
        None
    } else {
        Some(AttrValue::from_json(&body.value).ok_or_else(|| {
            ApiError::bad_request("value must be a boolean, number, string or list of strings")
        })?)
    };
    apply_attr(&st, &caller, &key, &attr, value).await
}

pub async fn delete_attr(
    State(st): State<ApiState>,
    caller: Caller,
    Path((key, attr)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    st.require_admin(&caller, "device.set_attr", &format!("{key} {attr}"))
        .await?;
    apply_attr(&st, &caller, &key, &attr, None).await
}

async fn apply_attr(
    st: &ApiState,
    caller: &Caller,
    key: &str,
    attr: &str,
    value: Option<AttrValue>,
) -> Result<Json<Value>, ApiError> {
    let devices = st.control.devices().await?;
    let id = resolve(&devices, key)?;
    let shown = value
        .as_ref()
        .map_or("(removed)".to_owned(), |v| v.to_json().to_string());
    let subject = format!("{id} {attr}");
    match st.control.set_device_attr(id, attr, value).await {
        Ok(()) => {
            st.audit(
                caller,
                "device.set_attr",
                &subject,
                Decision::Allow,
                &format!("{attr}={shown}"),
            )
            .await?;
            Ok(Json(
                json!({ "device": id.0, "attr": attr, "value": shown }),
            ))
        }
        Err(e) => {
            let err = ApiError::from(e);
            st.audit(
                caller,
                "device.set_attr",
                &subject,
                Decision::Deny,
                &err.message,
            )
            .await?;
            Err(err)
        }
    }
}

#[derive(Deserialize)]
pub struct TailQuery {
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    50
}

pub async fn audit_tail(
    State(st): State<ApiState>,
    _caller: Caller,
    Query(q): Query<TailQuery>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let n = q.limit.min(10_000);
    Ok(Json(st.blocking(move |s| s.audit_tail(n)).await??))
}

pub async fn audit_verify(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<audit::Verification>, ApiError> {
    Ok(Json(st.blocking(audit::verify).await??))
}
