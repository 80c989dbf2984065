//! HTTP routes of the relying party: `GET /oidc/start/{login_id}` sends the browser to the
//! IdP, `GET /oidc/callback` finishes the sign-in and shows a result page.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::{OidcError, OidcProvider};
use crate::identity::LoginSink;
use crate::web_page::message_page as page;

#[derive(Clone)]
struct RouteState {
    provider: Arc<OidcProvider>,
    sink: Arc<dyn LoginSink>,
}

/// The OIDC routes, to be merged into the coordinator's HTTP router.
pub fn router(provider: Arc<OidcProvider>, sink: Arc<dyn LoginSink>) -> Router {
    Router::new()
        .route("/oidc/start/{login_id}", get(start))
        .route("/oidc/callback", get(callback))
        .with_state(RouteState { provider, sink })
}

async fn start(State(st): State<RouteState>, Path(login_id): Path<String>) -> Response {
    if !st.sink.login_pending(&login_id) {
        return page(
            StatusCode::NOT_FOUND,
            "Sign-in failed",
            "This login link is unknown or has expired. Run the login command again.",
        );
    }
    match st.provider.start(&login_id) {
        Ok(url) => Redirect::to(url.as_str()).into_response(),
        Err(err) => error_page(&err),
    }
}

#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(State(st): State<RouteState>, Query(q): Query<CallbackParams>) -> Response {
    let Some(state) = q.state.as_deref() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The response has no state.",
        );
    };
    if let Some(error) = q.error.as_deref() {
        let login_id = st.provider.abandon(state);
        let text = match q.error_description.as_deref() {
            Some(desc) => format!("{error}: {desc}"),
            None => error.to_string(),
        };
        tracing::warn!(?login_id, error = %text, "OIDC sign-in refused by the identity provider");
        let err = OidcError::Provider(text);
        refused(&st, login_id.as_deref(), &err).await;
        return error_page(&err);
    }
    let Some(code) = q.code.as_deref() else {
        let login_id = st.provider.abandon(state);
        let err = OidcError::BadResponse("the authorization response has no code".into());
        refused(&st, login_id.as_deref(), &err).await;
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The response has no code.",
        );
    };
    let verified = match st.provider.callback(code, state, q.iss.as_deref()).await {
        Ok(v) => v,
        Err(err) => {
            tracing::warn!(error = %err, "OIDC sign-in refused");
            refused(&st, err.login_id.as_deref(), &err.error).await;
            return error_page(&err.error);
        }
    };
    let user = verified.identity.user.clone();
    match st
        .sink
        .complete_login(&verified.login_id, verified.identity)
        .await
    {
        Ok(()) => page(
            StatusCode::OK,
            "Signed in",
            &format!("Signed in as {user}. Your device is signed in: you can close this page and return to it."),
        ),
        Err(rejected) => {
            tracing::warn!(login_id = %verified.login_id, %user, reason = %rejected, "login refused by the control plane");
            page(
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                &format!("Signed in as {user}, but the device was not admitted: {rejected}"),
            )
        }
    }
}

/// Hand a refusal to the control plane (audit, and the waiting device is told). Without a
/// pending login (unknown or replayed state) there is no device to tell: only the log says it.
async fn refused(st: &RouteState, login_id: Option<&str>, err: &OidcError) {
    if let Some(id) = login_id {
        st.sink.fail_login(id, err.user(), &err.to_string()).await;
    }
}

fn error_page(err: &OidcError) -> Response {
    let status = match err {
        OidcError::MfaRequired { .. } | OidcError::Provider(_) => StatusCode::FORBIDDEN,
        OidcError::UnknownState | OidcError::LoginExpired | OidcError::InvalidLoginId => {
            StatusCode::BAD_REQUEST
        }
        OidcError::TooManyPending => StatusCode::SERVICE_UNAVAILABLE,
        OidcError::Transport(_) | OidcError::BadResponse(_) | OidcError::Discovery { .. } => {
            StatusCode::BAD_GATEWAY
        }
        OidcError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNAUTHORIZED,
    };
    page(status, "Sign-in failed", &err.to_string())
}
