//! `serve` with an `[oidc]` table, against the real test IdP: the login page offers "Sign in
//! with SSO", the OIDC routes are mounted, and a device waiting on its QUIC control connection
//! is admitted as the IdP's user with mapped groups; a user without MFA is refused.

mod admin_support;
#[path = "oidc_support/mod.rs"]
mod oidc_support;

use admin_support::*;
use oidc_support::{client, sign_in, totp_now, users, Idp, ALICE_TOTP};
use serde_json::json;
use std::time::Duration;
use ztmesh_common::wire::ServerMsg;

const POLICY: &str = r#"{
  "groups": { "group:eng": ["alice@example.test"] },
  "tagOwners": { "tag:server": ["group:eng"] },
  "acls": [ { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"] } ],
}"#;

/// A temporary directory, the data directory in it, the HTTP base URL `serve` will have, and
/// the test IdP with that base's redirect URI registered.
fn lab() -> (tempfile::TempDir, std::path::PathBuf, String, Idp) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // The redirect URI must be registered before the IdP starts: pick the HTTP port first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = Idp::start(json!([client("ztmesh", &base)]), users());
    (tmp, dir, base, idp)
}

/// The coordinator's TOML file, with an `[oidc]` table for `issuer` and `client_id`.
fn config_file(
    tmp: &tempfile::TempDir,
    base: &str,
    issuer: &str,
    client_id: &str,
) -> std::path::PathBuf {
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let listen = base.trim_start_matches("http://");
    write(
        tmp.path(),
        "coordinator.toml",
        &format!(
            "http_listen = \"{listen}\"\nhttp_plain_loopback = true\n\
             control_listen = \"127.0.0.1:0\"\npublic_addr = \"127.0.0.1:7443\"\npolicy = {policy:?}\n\
             [oidc]\nissuer = \"{issuer}\"\nclient_id = \"{client_id}\"\nredirect_base = \"{base}\"\n\
             allow_http_issuer = true\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_login_through_serve_admits_the_device_as_the_idp_user() {
    let (tmp, dir, base, idp) = lab();
    let config = config_file(&tmp, &base, &idp.issuer, "ztmesh");
    let srv = Server::start_args(&dir, &["--config".into(), config.to_string_lossy().into()]).await;
    assert_eq!(srv.url, base);

    let (mut dev, login_id) = interactive(&srv, "alice-laptop").await;
    let page = insecure_http()
        .get(format!("{base}/login/{login_id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("/oidc/start/{login_id}")) && page.contains("Sign in with SSO"),
        "{page}"
    );

    let done = sign_in(
        &base,
        &login_id,
        "alice",
        "alice-pw",
        &totp_now(ALICE_TOTP),
        false,
    )
    .await
    .expect("not stopped");
    assert_eq!(done.status, 200, "{done:?}");
    let grant = wait_for_credential(&mut dev).await;
    let devices = srv.json(&["devices", "list", "--json"]);
    let d = &devices.as_array().unwrap()[0];
    assert_eq!(d["id"], grant.node_id.0);
    assert_eq!(d["user"], "alice@example.test");
    let shown = srv.json(&["devices", "show", "alice-laptop"]);
    assert!(
        shown["user_groups"].to_string().contains("group:eng"),
        "IdP groups are mapped: {shown}"
    );
    assert_eq!(shown["login_method"], "oidc");

    // bob has no second factor: the relying party refuses him (require_mfa defaults on).
    let (mut dev2, login2) = interactive(&srv, "bob-laptop").await;
    let page = sign_in(&base, &login2, "bob", "bob-pw", "", false).await;
    if let Ok(p) = page {
        assert_ne!(p.status, 200, "{p:?}");
    }
    if let Ok(Some(ServerMsg::Credential(_))) = dev2.recv_within(Duration::from_millis(500)).await {
        panic!("bob must not be admitted");
    }
    let tail = srv.ok(&["audit", "tail", "-n", "100"]);
    assert!(tail.contains("alice@example.test"), "{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_variables_and_flags_override_the_file() {
    let (tmp, dir, base, idp) = lab();
    // The file names an issuer nobody answers at and a client the IdP does not know: serve
    // could not even start with it.
    let config = config_file(&tmp, &base, "http://127.0.0.1:9/nobody", "unknown-client");
    let srv = Server::start_env(
        &dir,
        &[
            "--config".into(),
            config.to_string_lossy().into(),
            // The flag wins over the variable below, and both over the file's default.
            "--oidc-require-mfa=false".into(),
        ],
        &[
            ("ZTMESH_OIDC_ISSUER", idp.issuer.as_str()),
            ("ZTMESH_OIDC_CLIENT_ID", "ztmesh"),
            ("ZTMESH_OIDC_REQUIRE_MFA", "true"),
        ],
    )
    .await;
    // bob has a password only: admitted, because MFA is off by the flag.
    let (mut dev, login_id) = interactive(&srv, "bob-laptop").await;
    let page = sign_in(&base, &login_id, "bob", "bob-pw", "", false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 200, "{page:?}");
    wait_for_credential(&mut dev).await;
    let shown = srv.json(&["devices", "show", "bob-laptop"]);
    assert_eq!(shown["summary"]["user"], "bob@example.test", "{shown}");
}
