//! The admin API's authentication and roles, in process over real HTTP on loopback: no token,
//! wrong tokens (including near misses), revoked tokens, auditor read-only, and a refused
//! policy that leaves the running one in force.

use std::sync::Arc;
use ztmesh_coordinator::api::{self, auth, ApiState};
use ztmesh_coordinator::control::{ControlConfig, ControlPlane};
use ztmesh_coordinator::store::{Decision, Role, SledStore, Store};

const ADMIN: &str = "ztm_admin_test-token-0123456789abcdef";

const POLICY: &str = r#"{
  "groups": { "group:eng": ["alice@example.com"] },
  "tagOwners": { "tag:server": ["group:eng"] },
  "acls": [ { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"] } ],
}"#;

struct Api {
    base: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    state: ApiState,
    _dir: tempfile::TempDir,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let cp = ControlPlane::new(store.clone(), key, ControlConfig::default()).unwrap();
    cp.set_policy(POLICY, "test").await.unwrap();
    let state = ApiState::new(store.clone(), cp, ADMIN);
    let app = api::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        store,
        state,
        _dir: dir,
    }
}

impl Api {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or_default())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or_default())
    }

    async fn token(&self, role: &str) -> (String, String) {
        let (st, v) = self
            .send(
                reqwest::Method::POST,
                "/api/v1/tokens",
                ADMIN,
                serde_json::json!({ "role": role }),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_refused() {
    let api = start().await;
    let (st, v) = api.get("/api/v1/devices", None).await;
    assert_eq!(st, 401);
    assert_eq!(v["error"], "missing bearer token");
    // Wrong, empty, near-miss (one character off, prefix, extension), and wrong scheme.
    let mut near = ADMIN.to_owned();
    near.pop();
    near.push('X');
    for bad in [
        "nope",
        "",
        near.as_str(),
        &ADMIN[..ADMIN.len() - 1],
        &format!("{ADMIN}0"),
    ] {
        let (st, _) = api.get("/api/v1/devices", Some(bad)).await;
        assert_eq!(st, 401, "token {bad:?} must be refused");
    }
    let resp = api
        .http
        .get(format!("{}/api/v1/devices", api.base))
        .header("authorization", format!("Basic {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let (st, v) = api.get("/api/v1/whoami", Some(ADMIN)).await;
    assert_eq!(st, 200);
    assert_eq!(v["role"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_check_compares_digests_of_every_candidate() {
    // The constant-time path: what is compared is a fixed-length digest, so a near miss and
    // a wild miss take the same comparison; and every stored token is compared.
    let api = start().await;
    let (_, t1) = api.token("auditor").await;
    let (_, t2) = api.token("admin").await;
    let c = auth::authenticate(&api.state, &t2).unwrap().unwrap();
    assert_eq!(c.role, Role::Admin);
    assert!(c.actor.starts_with("token:"));
    let c = auth::authenticate(&api.state, &t1).unwrap().unwrap();
    assert_eq!(c.role, Role::Auditor);
    assert!(auth::authenticate(&api.state, &t1[..t1.len() - 1])
        .unwrap()
        .is_none());
    assert_eq!(
        auth::digest("a").len(),
        auth::digest(&"a".repeat(1000)).len()
    );
    // Only hashes are stored.
    let stored = format!("{:?}", api.store.list_tokens().unwrap());
    assert!(!stored.contains(&t1) && !stored.contains(&t2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_reads_but_cannot_write_and_revoked_tokens_stop_working() {
    let api = start().await;
    let (id, auditor) = api.token("auditor").await;
    for path in [
        "/api/v1/devices",
        "/api/v1/users",
        "/api/v1/policy",
        "/api/v1/audit",
        "/api/v1/audit/verify",
        "/api/v1/preauth",
    ] {
        let (st, v) = api.get(path, Some(&auditor)).await;
        assert_eq!(st, 200, "{path}: {v}");
    }
    use reqwest::Method;
    let writes = [
        (
            Method::PUT,
            "/api/v1/policy",
            serde_json::json!({ "text": "{}" }),
        ),
        (
            Method::POST,
            "/api/v1/users",
            serde_json::json!({ "login": "eve@example.com", "password": "0123456789ab" }),
        ),
        (
            Method::POST,
            "/api/v1/preauth",
            serde_json::json!({ "tags": ["tag:server"] }),
        ),
        (
            Method::POST,
            "/api/v1/tokens",
            serde_json::json!({ "role": "admin" }),
        ),
        (
            Method::POST,
            "/api/v1/users/alice@example.com/disable",
            serde_json::json!({}),
        ),
    ];
    for (m, path, body) in writes {
        let (st, v) = api.send(m, path, &auditor, body).await;
        assert_eq!(st, 403, "{path}: {v}");
    }
    // Nothing was written, and each refusal is audited with the caller.
    assert!(api.store.list_users().unwrap().is_empty());
    assert!(api.store.list_preauth().unwrap().is_empty());
    let denied: Vec<_> = api
        .store
        .audit_records()
        .unwrap()
        .into_iter()
        .filter(|r| r.decision == Decision::Deny && r.actor == format!("token:{id}"))
        .collect();
    assert_eq!(denied.len(), 5, "{denied:?}");

    let (st, _) = api
        .send(
            Method::POST,
            &format!("/api/v1/tokens/{id}/revoke"),
            ADMIN,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = api.get("/api/v1/devices", Some(&auditor)).await;
    assert_eq!(st, 401, "a revoked token no longer works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_policy_leaves_the_running_one_in_force() {
    let api = start().await;
    let (_, before) = api.get("/api/v1/policy", Some(ADMIN)).await;
    assert_eq!(before["version"], 1);
    let bad = "{\n  \"acls\": [ { \"action\": \"accept\", \"src\": [\"group:nobody\"], \"dst\": [\"*:*\"] } ],\n}";
    let (st, v) = api
        .send(
            reqwest::Method::PUT,
            "/api/v1/policy",
            ADMIN,
            serde_json::json!({ "text": bad }),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["details"].to_string().contains("policy.hujson:"),
        "problems carry file:line:col: {v}"
    );
    let (_, after) = api.get("/api/v1/policy", Some(ADMIN)).await;
    assert_eq!(after, before);
    assert_eq!(api.store.policy_history().unwrap().len(), 1);
    // The running policy still decides: tag:server is still declared.
    assert!(api.state.control.policy().is_declared_tag("tag:server"));
    let last = api.store.audit_tail(1).unwrap().remove(0);
    assert_eq!(last.action, "policy.set");
    assert_eq!(last.decision, Decision::Deny);

    // check does not install anything.
    let (st, v) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/policy/check",
            ADMIN,
            serde_json::json!({ "text": bad }),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["ok"], false);
    // explain against the running policy.
    let (st, v) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/policy/explain",
            ADMIN,
            serde_json::json!({ "src": "alice@example.com", "dst": "tag:server:22" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["decision"], "accept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let api = start().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = api
            .http
            .get(format!("{}/api/v1/whoami", api.base))
            .header("authorization", format!("{scheme} {ADMIN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "scheme {scheme:?}");
    }
    // Only the scheme is case-insensitive: the token is not, and other schemes are refused.
    for header in [
        format!("bearer {}", ADMIN.to_uppercase()),
        format!("Bearerx {ADMIN}"),
        format!("bearer-{ADMIN}"),
        format!("Basic {ADMIN}"),
    ] {
        let resp = api
            .http
            .get(format!("{}/api/v1/whoami", api.base))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{header:?}");
    }
    assert_eq!(auth::bearer_token("bearer abc"), Some("abc"));
    assert_eq!(auth::bearer_token("Bearerabc"), None);
}

/// Status and body of a request, the body parsed as JSON (panics if it is not).
async fn raw(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut r = api
        .http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(ADMIN)
        .body(body.to_owned());
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "{path}: {st} {text:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["error"].is_string(), "{path}: {v}");
    (st, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_in_the_documented_shape() {
    use reqwest::Method;
    let api = start().await;
    let json = Some("application/json");
    let (st, v) = raw(&api, Method::POST, "/api/v1/policy/check", None, "{}").await;
    assert_eq!(st, 415);
    assert!(v["error"].as_str().unwrap().contains("Content-Type"), "{v}");
    let (st, v) = raw(&api, Method::POST, "/api/v1/policy/check", json, "{nope").await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("JSON"), "{v}");
    let (st, _) = raw(&api, Method::POST, "/api/v1/policy/check", json, "{}").await;
    assert_eq!(st, 422, "missing field");
    let (st, v) = raw(&api, Method::GET, "/api/v1/audit?limit=-1", None, "").await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("query string"), "{v}");
    let (st, _) = raw(&api, Method::GET, "/api/v1/flows?verdict=maybe", None, "").await;
    assert_eq!(st, 400);
    let (st, v) = raw(&api, Method::GET, "/api/v1/nope", None, "").await;
    assert_eq!(st, 404);
    assert_eq!(v["error"], "no such path: /api/v1/nope");
    let (st, _) = raw(&api, Method::GET, "/not-the-api", None, "").await;
    assert_eq!(st, 404);
    let (st, v) = raw(&api, Method::DELETE, "/api/v1/policy", None, "").await;
    assert_eq!(st, 405);
    assert_eq!(v["error"], "method not allowed");
    // An unknown path is unknown without a token too.
    let resp = api
        .http
        .get(format!("{}/api/v1/nope", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// A request through the real router without a socket, so that a body over the limit is
/// answered deterministically (over TCP the server may close before the client wrote it all).
async fn oneshot(api: &Api, method: &str, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap();
    let resp = api::router(api.state.clone()).oneshot(req).await.unwrap();
    let st = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (st, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_are_8_mib_for_policies_and_1_mib_elsewhere_with_json_errors() {
    let api = start().await;
    let text_of = |n: usize| {
        serde_json::to_vec(&serde_json::json!({ "text": format!("{}\n{{}}", "/".repeat(n)) }))
            .unwrap()
    };
    // 1.5 MB policy text: checked (it is only a comment and `{}`).
    let (st, v) = oneshot(&api, "POST", "/api/v1/policy/check", text_of(1_500_000)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    // Over 8 MiB: refused, as JSON.
    let (st, v) = oneshot(
        &api,
        "POST",
        "/api/v1/policy/check",
        text_of(api::POLICY_BODY_LIMIT + 1),
    )
    .await;
    assert_eq!(st, 413);
    assert!(v["error"].as_str().unwrap().contains("length limit"), "{v}");
    let (st, _) = oneshot(
        &api,
        "PUT",
        "/api/v1/policy",
        text_of(api::POLICY_BODY_LIMIT),
    )
    .await;
    assert_eq!(st, 413);
    // Elsewhere 1 MiB.
    let (st, v) = oneshot(
        &api,
        "POST",
        "/api/v1/policy/explain",
        text_of(api::BODY_LIMIT),
    )
    .await;
    assert_eq!(st, 413, "{v}");
    assert!(v["error"].is_string(), "{v}");
    assert_eq!(api::POLICY_BODY_LIMIT, 8 << 20);
    assert_eq!(api::BODY_LIMIT, 1 << 20);
}
