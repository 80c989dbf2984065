//! `/api/v1/policy*`: the running policy, its history, and set / check / explain.

use super::{ApiError, ApiState, Caller};
use crate::store::{Decision, PolicyVersion};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use ztmesh_common::policy::{Policy, Query};
use ztmesh_common::posture::{AttrValue, PostureAttrs};

/// The policy in force when none was ever stored.
const DENY_ALL: &str = "// No policy has been set: everything is denied.\n{}\n";

#[derive(Serialize)]
pub struct PolicyOut {
    /// 0 when no policy was ever set.
    pub version: u64,
    pub text: String,
    pub author: String,
    pub at: u64,
}

impl From<PolicyVersion> for PolicyOut {
    fn from(v: PolicyVersion) -> Self {
        PolicyOut {
            version: v.version,
            text: v.text,
            author: v.author,
            at: v.at.0,
        }
    }
}

/// The policy in force: the newest stored version that parses (the control plane starts with
/// the same rule, so a stored policy that no longer parses never stops the server), else deny-all.
pub async fn get_policy(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let history = st.blocking(|s| s.policy_history()).await??;
    let newest = history.last().map(|v| v.version);
    let in_force = tokio::task::spawn_blocking(move || {
        history
            .into_iter()
            .rev()
            .find(|v| Policy::parse(&v.text, &format!("policy v{}", v.version)).is_ok())
    })
    .await
    .map_err(ApiError::internal)?;
    let out = match in_force {
        Some(v) => PolicyOut::from(v),
        None => PolicyOut {
            version: 0,
            text: DENY_ALL.into(),
            author: "default".into(),
            at: 0,
        },
    };
    let mut v = serde_json::to_value(&out).map_err(ApiError::internal)?;
    if newest.is_some_and(|n| n != out.version) {
        // Say so when newer stored versions were skipped because they do not parse.
        v["newest_stored_version"] = json!(newest);
    }
    Ok(Json(v))
}

pub async fn history(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<Vec<PolicyOut>>, ApiError> {
    let h = st.blocking(|s| s.policy_history()).await??;
    Ok(Json(h.into_iter().map(PolicyOut::from).collect()))
}

#[derive(Deserialize)]
pub struct PolicyText {
    pub text: String,
    /// The file the admin's text came from, so errors name it (`file:line:column`).
    #[serde(default)]
    pub file: Option<String>,
}

impl PolicyText {
    /// The name to locate errors in: the given file name when it is printable and short.
    fn file_name(&self) -> &str {
        match &self.file {
            Some(f) if !f.is_empty() && f.len() <= 256 && !f.chars().any(char::is_control) => f,
            _ => crate::control::DEFAULT_POLICY_NAME,
        }
    }
}

/// Validate + tests + store + swap + push, via the control plane. A refusal leaves the
/// running policy in force and names every problem.
pub async fn set_policy(
    State(st): State<ApiState>,
    caller: Caller,
    Json(body): Json<PolicyText>,
) -> Result<Json<Value>, ApiError> {
    st.require_admin(&caller, "policy.set", "policy").await?;
    match st
        .control
        .set_policy_named(&body.text, body.file_name(), &caller.actor)
        .await
    {
        Ok(swap) => {
            let v = &swap.version;
            let warnings: Vec<String> = swap
                .undeclared_tags
                .iter()
                .map(|(tag, hosts)| {
                    format!(
                        "{tag} is not declared in tagOwners, but {} connected device(s) carry \
                         it ({}): no rule can name it any more",
                        hosts.len(),
                        hosts.join(", ")
                    )
                })
                .collect();
            let reason = std::iter::once("validated, tests passed, in force".to_owned())
                .chain(warnings.iter().map(|w| format!("warning: {w}")))
                .collect::<Vec<_>>()
                .join("; ");
            st.audit(
                &caller,
                "policy.set",
                &format!("policy v{}", v.version),
                Decision::Allow,
                &reason,
            )
            .await?;
            Ok(Json(json!({ "version": v.version, "warnings": warnings })))
        }
        Err(e) => {
            let err = ApiError::from(e);
            let reason = std::iter::once(&err.message)
                .chain(&err.details)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("; ");
            st.audit(&caller, "policy.set", "policy", Decision::Deny, &reason)
                .await?;
            Err(err)
        }
    }
}

/// Validate a policy and run its tests without installing it.
pub async fn check(_caller: Caller, Json(body): Json<PolicyText>) -> Result<Json<Value>, ApiError> {
    let out =
        tokio::task::spawn_blocking(move || match Policy::parse(&body.text, body.file_name()) {
            Err(e) => json!({
                "ok": false,
                "errors": e.to_string().lines().collect::<Vec<_>>(),
                "test_failures": [],
            }),
            Ok(p) => {
                let failures: Vec<String> = p.run_tests().iter().map(|f| f.to_string()).collect();
                json!({ "ok": failures.is_empty(), "errors": [], "test_failures": failures })
            }
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct ExplainIn {
    pub src: String,
    pub dst: String,
    #[serde(default)]
    pub proto: Option<String>,
    /// Posture attributes of the source, as JSON values.
    #[serde(default)]
    pub attrs: serde_json::Map<String, Value>,
}

/// Explain one decision of the running policy.
pub async fn explain(
    State(st): State<ApiState>,
    _caller: Caller,
    Json(q): Json<ExplainIn>,
) -> Result<Json<Value>, ApiError> {
    let mut attrs = PostureAttrs::new();
    for (k, v) in &q.attrs {
        let a = AttrValue::from_json(v)
            .ok_or_else(|| ApiError::bad_request(format!("attribute {k}: unsupported value")))?;
        attrs.insert(k.clone(), a);
    }
    let query =
        Query::new(&q.src, &q.dst, q.proto.as_deref(), attrs).map_err(ApiError::bad_request)?;
    let policy = st.control.policy();
    policy.check_query(&query).map_err(ApiError::bad_request)?;
    Ok(Json(policy.explain(&query).to_json()))
}
