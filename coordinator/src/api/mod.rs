//! The admin API: HTTP JSON under `/api/v1`, bearer tokens with the roles `admin` (read and
//! write) and `auditor` (read only). Every state-changing request, allowed or refused, is an
//! audit record with the caller, the subject and the reason. Documented in `docs/api.md`.

pub mod auth;
mod devices;
mod flows;
mod policy;
mod users;

pub use auth::Caller;

use crate::audit;
use crate::control::ControlPlane;
use crate::store::{Decision, Store};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use tracing::{error, info};

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub control: ControlPlane,
    /// SHA-256 of the admin token from the data directory.
    pub admin_token_digest: [u8; 32],
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>, control: ControlPlane, admin_token: &str) -> Self {
        ApiState {
            store,
            control,
            admin_token_digest: auth::digest(admin_token),
        }
    }

    /// Run a store call off the async threads (writes fsync).
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(ApiError::internal)
    }

    /// Append an audit record for an admin action. A failure to record is an error of the
    /// request (the action already happened; the caller is told the log failed).
    pub async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        subject: &str,
        decision: Decision,
        reason: &str,
    ) -> Result<(), ApiError> {
        info!(actor = %caller.actor, action, subject, %decision, reason, "admin action");
        let (a, ac, s, r) = (
            caller.actor.clone(),
            action.to_owned(),
            subject.to_owned(),
            reason.to_owned(),
        );
        self.blocking(move |st| audit::record(st, &a, &ac, &s, decision, &r))
            .await?
            .map(|_| ())
            .map_err(|e| {
                error!(error = %e, "audit append failed");
                ApiError::internal(format!(
                    "the action was taken but could not be audited: {e}"
                ))
            })
    }

    /// Refuse a write by a read-only caller, with an audit record of the refusal.
    pub async fn require_admin(
        &self,
        caller: &Caller,
        action: &str,
        subject: &str,
    ) -> Result<(), ApiError> {
        if let Err(e) = caller.require_admin() {
            self.audit(caller, action, subject, Decision::Deny, &e.message)
                .await?;
            return Err(e);
        }
        Ok(())
    }
}

/// An error answer: `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Extra lines (every policy problem, every failed test).
    pub details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: vec![],
        }
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError::*;
        match e {
            AlreadyExists(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            NotFound(_) => Self::not_found(e.to_string()),
            _ => Self::internal(e),
        }
    }
}

impl From<crate::control::ControlError> for ApiError {
    fn from(e: crate::control::ControlError) -> Self {
        use crate::control::ControlError::*;
        match e {
            InvalidPolicy(ref m) => {
                let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "policy refused");
                err.details = m.lines().map(str::to_owned).collect();
                err
            }
            PolicyTestsFailed(ref f) => {
                let mut err = Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("policy refused: {} of its tests failed", f.len()),
                );
                err.details = f.clone();
                err
            }
            UnknownDevice(_) => Self::not_found(e.to_string()),
            NotCustomAttr(_) => Self::bad_request(e.to_string()),
            Store(s) => s.into(),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.details.is_empty() {
            json!({ "error": self.message })
        } else {
            json!({ "error": self.message, "details": self.details })
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"ztmesh\""),
            );
        }
        resp
    }
}

/// Largest request body of the endpoints that take a policy text (`PUT /api/v1/policy`,
/// `POST /api/v1/policy/check`): a policy with many hosts and tests may be a few MiB.
pub const POLICY_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Largest request body of every other endpoint (and of the login pages).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Give every error answer the documented `{"error": ...}` shape. axum's own rejections (a
/// body over the limit, a wrong content type, JSON or a query string that does not parse, a
/// method a path does not take) are plain text or empty; they are rewrapped here, keeping
/// their status and headers (`Allow`, `WWW-Authenticate`), so clients parse one shape.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Rejection texts are short; anything longer is cut rather than buffered.
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut out = ApiError::new(status, message).into_response();
    out.headers_mut().extend(parts.headers);
    out
}

/// Unknown paths (under `/api/` or not) answer a JSON 404 rather than an empty body.
async fn no_such_path(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such path: {}", uri.path()))
}

/// The API routes (to be merged into the coordinator's HTTP router). Carries the router's
/// fallback, so it must be merged into routers that have none.
pub fn router(state: ApiState) -> Router {
    let policy_limit = || DefaultBodyLimit::max(POLICY_BODY_LIMIT);
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/policy",
            get(policy::get_policy)
                .put(policy::set_policy)
                .layer(policy_limit()),
        )
        .route("/api/v1/policy/history", get(policy::history))
        .route(
            "/api/v1/policy/check",
            post(policy::check).layer(policy_limit()),
        )
        .route("/api/v1/policy/explain", post(policy::explain))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{device}", get(devices::show))
        .route("/api/v1/devices/{device}/revoke", post(devices::revoke))
        .route(
            "/api/v1/devices/{device}/attrs/{key}",
            put(devices::set_attr).delete(devices::delete_attr),
        )
        .route("/api/v1/users", get(users::list).post(users::add))
        .route("/api/v1/users/{login}/disable", post(users::disable))
        .route(
            "/api/v1/preauth",
            get(users::list_preauth).post(users::create_preauth),
        )
        .route("/api/v1/preauth/{id}/revoke", post(users::revoke_preauth))
        .route(
            "/api/v1/tokens",
            get(users::list_tokens).post(users::create_token),
        )
        .route("/api/v1/tokens/{id}/revoke", post(users::revoke_token))
        .route("/api/v1/flows", get(flows::list))
        .route("/api/v1/audit", get(devices::audit_tail))
        .route("/api/v1/audit/verify", get(devices::audit_verify))
        .fallback(no_such_path)
        .with_state(state)
        // Outside the per-route limits above, so that theirs are the ones in force there.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(json_errors))
}

async fn whoami(caller: Caller) -> Json<serde_json::Value> {
    Json(json!({ "actor": caller.actor, "role": caller.role }))
}
