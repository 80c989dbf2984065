//! `/api/v1/users*`, `/api/v1/preauth*` and `/api/v1/tokens*`: the principals that may join
//! the mesh or use this API.

use super::{ApiError, ApiState, Caller};
use crate::accounts::{self, AccountError, NewAccount};
use crate::bootstrap::new_token;
use crate::store::{secret_hash, ApiTokenRecord, Decision, PreauthKeyRecord, Role, StoreError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// Default lifetime of a pre-auth key.
const DEFAULT_PREAUTH_EXPIRY: Duration = Duration::from_secs(3600);
/// Longest lifetime of a pre-auth key: a key is a bearer secret; long-lived ones leak.
const MAX_PREAUTH_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Serialize)]
pub struct UserOut {
    pub login: String,
    pub groups: Vec<String>,
    pub disabled: bool,
    pub created_at: u64,
}

pub async fn list(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<Vec<UserOut>>, ApiError> {
    let users = st.blocking(|s| s.list_users()).await??;
    Ok(Json(
        users
            .into_iter()
            .map(|u| UserOut {
                login: u.login,
                groups: u.groups,
                disabled: u.disabled,
                created_at: u.created_at.0,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
pub struct AddUserIn {
    pub login: String,
    pub password: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

pub async fn add(
    State(st): State<ApiState>,
    caller: Caller,
    Json(body): Json<AddUserIn>,
) -> Result<(StatusCode, Json<NewAccount>), ApiError> {
    let subject = format!("user:{}", body.login);
    st.require_admin(&caller, "user.add", &subject).await?;
    let groups = body.groups.clone();
    let res = st
        .blocking(move |s| accounts::add_user(s, &body.login, &body.password, body.groups))
        .await?;
    match res {
        Ok(acct) => {
            st.audit(
                &caller,
                "user.add",
                &subject,
                Decision::Allow,
                &format!("groups {groups:?}"),
            )
            .await?;
            Ok((StatusCode::CREATED, Json(acct)))
        }
        Err(e) => {
            st.audit(
                &caller,
                "user.add",
                &subject,
                Decision::Deny,
                &e.to_string(),
            )
            .await?;
            Err(match e {
                AccountError::Store(s) => s.into(),
                AccountError::Hash(_) | AccountError::Totp(_) => ApiError::internal(e),
                _ => ApiError::bad_request(e.to_string()),
            })
        }
    }
}

/// Disable a local account and revoke every device of that user.
pub async fn disable(
    State(st): State<ApiState>,
    caller: Caller,
    Path(login): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let subject = format!("user:{login}");
    st.require_admin(&caller, "user.disable", &subject).await?;
    let l2 = login.clone();
    let res = st
        .blocking(move |s| s.update_user(&l2, &mut |u| u.disabled = true))
        .await?;
    let had_account = match res {
        Ok(_) => true,
        // A user known only from the IdP has no local account; their devices still go.
        Err(StoreError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    let devices = st.control.devices().await?;
    let mine: Vec<_> = devices
        .iter()
        .filter(|d| d.user.as_deref() == Some(login.as_str()) && !d.revoked)
        .map(|d| d.id)
        .collect();
    if !had_account
        && devices
            .iter()
            .all(|d| d.user.as_deref() != Some(login.as_str()))
    {
        let e = ApiError::not_found(format!("no user {login:?}"));
        st.audit(
            &caller,
            "user.disable",
            &subject,
            Decision::Deny,
            &e.message,
        )
        .await?;
        return Err(e);
    }
    for id in &mine {
        st.control
            .revoke_device(*id, &format!("user {login} was disabled"))
            .await?;
    }
    let reason = format!(
        "account disabled; devices revoked: [{}]",
        mine.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    st.audit(&caller, "user.disable", &subject, Decision::Allow, &reason)
        .await?;
    Ok(Json(json!({
        "login": login,
        "disabled": had_account,
        "revoked_devices": mine.iter().map(|i| i.0).collect::<Vec<_>>(),
    })))
}

#[derive(Serialize)]
pub struct PreauthOut {
    pub id: String,
    pub tags: Vec<String>,
    pub reusable: bool,
    pub expires_at: u64,
    pub used: bool,
    pub used_by: Vec<u64>,
    pub revoked: bool,
    pub created_at: u64,
    pub created_by: String,
}

impl From<PreauthKeyRecord> for PreauthOut {
    fn from(k: PreauthKeyRecord) -> Self {
        PreauthOut {
            id: k.id,
            tags: k.tags,
            reusable: k.reusable,
            expires_at: k.expires_at.0,
            used: k.used,
            used_by: k.used_by.iter().map(|n| n.0).collect(),
            revoked: k.revoked,
            created_at: k.created_at.0,
            created_by: k.created_by,
        }
    }
}

pub async fn list_preauth(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<Vec<PreauthOut>>, ApiError> {
    let keys = st.blocking(|s| s.list_preauth()).await??;
    Ok(Json(keys.into_iter().map(PreauthOut::from).collect()))
}

#[derive(Deserialize)]
pub struct CreatePreauthIn {
    pub tags: Vec<String>,
    #[serde(default)]
    pub reusable: bool,
    /// Lifetime: `30m`, `1h`, `7d` (default 1h, at most 90d).
    #[serde(default)]
    pub expires: Option<String>,
}

pub async fn create_preauth(
    State(st): State<ApiState>,
    caller: Caller,
    Json(body): Json<CreatePreauthIn>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let subject = format!("preauth tags {}", body.tags.join(","));
    st.require_admin(&caller, "preauth.create", &subject)
        .await?;
    let refuse = |m: String| ApiError::bad_request(m);
    let check = || -> Result<Duration, ApiError> {
        if body.tags.is_empty() {
            return Err(refuse("a pre-auth key needs at least one tag".into()));
        }
        let policy = st.control.policy();
        for t in &body.tags {
            if !policy.is_declared_tag(t) {
                return Err(refuse(format!(
                    "tag {t:?} is not declared in the policy's tagOwners"
                )));
            }
        }
        let ttl = match &body.expires {
            None => DEFAULT_PREAUTH_EXPIRY,
            Some(s) => ztmesh_common::policy::parse_duration(s)
                .map_err(|e| refuse(format!("expires: {e}")))?,
        };
        if ttl.is_zero() || ttl > MAX_PREAUTH_EXPIRY {
            return Err(refuse("expires must be between 1s and 90d".into()));
        }
        Ok(ttl)
    };
    let ttl = match check() {
        Ok(t) => t,
        Err(e) => {
            st.audit(
                &caller,
                "preauth.create",
                &subject,
                Decision::Deny,
                &e.message,
            )
            .await?;
            return Err(e);
        }
    };
    let key = new_token("ztk_");
    let hash = secret_hash(&key);
    let now = crate::audit::now();
    let rec = PreauthKeyRecord {
        id: hash[..16].to_owned(),
        key_hash: hash,
        tags: body.tags.clone(),
        reusable: body.reusable,
        expires_at: now.saturating_add_ms(ttl.as_millis() as u64),
        used: false,
        used_by: vec![],
        revoked: false,
        created_at: now,
        created_by: caller.actor.clone(),
    };
    let r2 = rec.clone();
    st.blocking(move |s| s.create_preauth(&r2)).await??;
    st.audit(
        &caller,
        "preauth.create",
        &format!("preauth {}", rec.id),
        Decision::Allow,
        &format!(
            "tags {}, {}, expires in {}s",
            rec.tags.join(","),
            if rec.reusable {
                "reusable"
            } else {
                "single-use"
            },
            ttl.as_secs()
        ),
    )
    .await?;
    let mut out = serde_json::to_value(PreauthOut::from(rec)).map_err(ApiError::internal)?;
    out["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn revoke_preauth(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PreauthOut>, ApiError> {
    let subject = format!("preauth {id}");
    st.require_admin(&caller, "preauth.revoke", &subject)
        .await?;
    let i2 = id.clone();
    match st.blocking(move |s| s.revoke_preauth(&i2)).await? {
        Ok(k) => {
            st.audit(&caller, "preauth.revoke", &subject, Decision::Allow, "")
                .await?;
            Ok(Json(k.into()))
        }
        Err(e) => {
            st.audit(
                &caller,
                "preauth.revoke",
                &subject,
                Decision::Deny,
                &e.to_string(),
            )
            .await?;
            Err(e.into())
        }
    }
}

#[derive(Serialize)]
pub struct TokenOut {
    pub id: String,
    pub role: Role,
    pub created_at: u64,
    pub created_by: String,
    pub revoked: bool,
}

impl From<ApiTokenRecord> for TokenOut {
    fn from(t: ApiTokenRecord) -> Self {
        TokenOut {
            id: t.id,
            role: t.role,
            created_at: t.created_at.0,
            created_by: t.created_by,
            revoked: t.revoked,
        }
    }
}

pub async fn list_tokens(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<Vec<TokenOut>>, ApiError> {
    let t = st.blocking(|s| s.list_tokens()).await??;
    Ok(Json(t.into_iter().map(TokenOut::from).collect()))
}

#[derive(Deserialize)]
pub struct CreateTokenIn {
    pub role: Role,
}

pub async fn create_token(
    State(st): State<ApiState>,
    caller: Caller,
    Json(body): Json<CreateTokenIn>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    st.require_admin(&caller, "token.create", &format!("role {}", body.role))
        .await?;
    let token = new_token(match body.role {
        Role::Admin => "ztm_admin_",
        Role::Auditor => "ztm_audit_",
    });
    let hash = secret_hash(&token);
    let rec = ApiTokenRecord {
        id: hash[..16].to_owned(),
        token_hash: hash,
        role: body.role,
        created_at: crate::audit::now(),
        created_by: caller.actor.clone(),
        revoked: false,
    };
    let r2 = rec.clone();
    st.blocking(move |s| s.create_token(&r2)).await??;
    st.audit(
        &caller,
        "token.create",
        &format!("token:{}", rec.id),
        Decision::Allow,
        &format!("role {}", rec.role),
    )
    .await?;
    let mut out = serde_json::to_value(TokenOut::from(rec)).map_err(ApiError::internal)?;
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn revoke_token(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenOut>, ApiError> {
    let subject = format!("token:{id}");
    st.require_admin(&caller, "token.revoke", &subject).await?;
    let i2 = id.clone();
    let t = st.blocking(move |s| s.revoke_token(&i2)).await??;
    st.audit(&caller, "token.revoke", &subject, Decision::Allow, "")
        .await?;
    Ok(Json(t.into()))
}
