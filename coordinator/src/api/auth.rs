//! Bearer-token authentication of the admin API: the admin token from the data directory, or
//! a token made with `tokens create` (stored as a hash). Every comparison is over SHA-256
//! digests with `subtle`, so timing says nothing about how much of a token was right.

use super::{ApiError, ApiState};
use crate::store::{secret_hash, Role};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::warn;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// For the audit log: `admin` (the data-directory token) or `token:<id>`.
    pub actor: String,
}

impl Caller {
    /// Refuse unless the caller may change state.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Auditor => Err(ApiError::forbidden(
                "this token has the auditor role, which is read-only",
            )),
        }
    }
}

/// SHA-256 of a token, the form in which tokens are compared.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Find the caller for a presented bearer token.
pub fn authenticate(state: &ApiState, presented: &str) -> Result<Option<Caller>, ApiError> {
    let d = digest(presented);
    // Evaluate every candidate (no early exit), so the time taken does not depend on which
    // token matched or on how many bytes did.
    let mut found: Option<Caller> = None;
    if bool::from(d.ct_eq(&state.admin_token_digest)) {
        found = Some(Caller {
            role: Role::Admin,
            actor: "admin".into(),
        });
    }
    let hex_digest = secret_hash(presented);
    let tokens = state.store.list_tokens().map_err(ApiError::internal)?;
    for t in tokens {
        let eq: bool = hex_digest.as_bytes().ct_eq(t.token_hash.as_bytes()).into();
        if eq && !t.revoked && found.is_none() {
            found = Some(Caller {
                role: t.role,
                actor: format!("token:{}", t.id),
            });
        }
    }
    Ok(found)
}

/// The token of an `Authorization: Bearer TOKEN` header. The scheme name is case-insensitive
/// (RFC 7235 §2.1), so `bearer` and `BEARER` are accepted too. Only the scheme is looked at
/// here; the token itself is compared in constant time in [`authenticate`].
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(bearer_token) else {
            return Err(ApiError::unauthorized("missing bearer token"));
        };
        let (state2, token) = (state.clone(), token.trim().to_owned());
        let caller = tokio::task::spawn_blocking(move || authenticate(&state2, &token))
            .await
            .map_err(ApiError::internal)??;
        match caller {
            Some(c) => Ok(c),
            None => {
                warn!(path = %parts.uri.path(), "admin API: invalid bearer token");
                Err(ApiError::unauthorized("invalid bearer token"))
            }
        }
    }
}
