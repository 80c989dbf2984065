//! OIDC sign-in wired to the real control plane: a device asks to log in over real QUIC, the
//! user signs in at the real test IdP through the relying party's routes, the device gets a
//! credential for the IdP user with mapped groups; at the end of each login session the
//! control plane re-verifies the user with the refresh token, and once the user is disabled
//! at the IdP the device is revoked.

mod control_util;
mod oidc_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_util::*;
use oidc_support::*;
use serde_json::json;
use ztmesh_common::posture::{attr, AttrValue};
use ztmesh_common::wire::{ClientMsg, LoginAuth, ServerMsg};
use ztmesh_coordinator::control::testkit::login_request;
use ztmesh_coordinator::control::testkit::TestClient;
use ztmesh_coordinator::control::ControlConfig;
use ztmesh_coordinator::identity::oidc::OidcProvider;
use ztmesh_coordinator::store::{Decision, Store};

const POLICY: &str = r#"{
  "groups": { "group:eng": [] },
  "tagOwners": { "tag:web": [] },
  "lifetimes": { "reauth": "2s" },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"] },
  ],
}"#;

/// The control plane, the test IdP and the relying party's routes, wired together.
struct Setup {
    h: Harness,
    idp: Idp,
    base: String,
    _server: tokio::task::JoinHandle<()>,
}

async fn setup() -> Setup {
    let (listener, base) = rp_listener().await;
    let idp = Idp::start(json!([client("ztmesh", &base)]), users());
    let h = Harness::start_with(
        POLICY,
        ControlConfig {
            http_base: base.clone(),
            ..ControlConfig::default()
        },
    )
    .await;
    let provider = Arc::new(
        OidcProvider::discover(rp_config(&idp.issuer, "ztmesh", &base))
            .await
            .unwrap(),
    );
    h.cp.set_reverifier(provider.clone());
    let server = serve_routes(listener, provider, Arc::new(h.cp.clone()));
    Setup {
        h,
        idp,
        base,
        _server: server,
    }
}

/// Ask for an interactive login; returns the login id of the URL the device was given.
async fn ask_login(c: &mut TestClient, base: &str) -> String {
    let posture = posture(&[(attr::FIREWALL, AttrValue::Bool(true))]);
    c.send(&ClientMsg::Login(login_request(
        "laptop",
        LoginAuth::Interactive,
        posture,
    )))
    .await
    .unwrap();
    let url = match c.recv().await.unwrap() {
        ServerMsg::LoginUrl { url } => url,
        other => panic!("expected LoginUrl, got {other:?}"),
    };
    url.strip_prefix(&format!("{base}/login/"))
        .unwrap_or_else(|| panic!("login url {url} under {base}/login/"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_via_oidc_then_reverified_then_revoked_when_user_disabled() {
    let Setup {
        h,
        idp,
        base,
        _server,
    } = setup().await;

    // The device asks for an interactive login and is given the login page's URL.
    let (mut c, welcome) = h.connect().await;
    let login_id = ask_login(&mut c, &base).await;

    // An unknown login id is refused before the browser is sent to the IdP.
    let page = Browser::new()
        .navigate(
            format!("{base}/oidc/start/not-a-pending-login-id")
                .parse()
                .unwrap(),
            None,
            |_| false,
        )
        .await
        .unwrap();
    assert_eq!(page.status, 404, "{page:?}");

    // The user signs in with password + TOTP (the "Sign in with SSO" link of the login page).
    let page = sign_in(
        &base,
        &login_id,
        "alice",
        "alice-pw",
        &totp_now(ALICE_TOTP),
        false,
    )
    .await
    .expect("not stopped");
    assert_eq!(page.status, 200, "{page:?}");

    let (node, cred) = expect_credential(&mut c, &welcome).await;
    assert_eq!(cred.user.as_deref(), Some("alice@example.test"));
    let device = h
        .store
        .list_devices()
        .unwrap()
        .into_iter()
        .find(|d| d.id == node)
        .expect("device stored");
    assert_eq!(device.user_groups, vec!["group:eng", "group:ops"]);
    assert!(
        device.refresh_token.is_some(),
        "refresh token kept for re-verification"
    );

    // The 2 s login session ends: the control plane re-verifies with the IdP and keeps the
    // device. Wait until that has happened at least once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines("re-verified with the identity provider").is_empty() {
        assert!(Instant::now() < deadline, "no re-verification within 10 s");
        if let Some(ServerMsg::Revoked { reason }) =
            c.recv_within(Duration::from_millis(200)).await.unwrap()
        {
            panic!("revoked while the user is still enabled: {reason}");
        }
    }

    // Disabled at the IdP: the next re-verification fails and the device is revoked.
    idp.disable_user("alice").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("device not revoked within 10 s of the user being disabled");
        match c.recv_within(left).await.unwrap() {
            Some(ServerMsg::Revoked { reason }) => break reason,
            Some(_) => continue,
            None => panic!("device not revoked within 10 s of the user being disabled"),
        }
    };
    assert!(reason.contains("re-verification"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_without_mfa_refuses_the_waiting_device_saying_why_and_is_audited() {
    let Setup {
        h,
        base,
        idp: _idp,
        _server,
    } = setup().await;
    let (mut c, _) = h.connect().await;
    let login_id = ask_login(&mut c, &base).await;

    // bob has a password only: the IdP reports amr ["pwd"].
    let page = sign_in(&base, &login_id, "bob", "bob-pw", "", false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 403, "{page:?}");

    // The device waiting on the login hears why at once, not at the login's timeout.
    let reasons = match c.recv().await.unwrap() {
        ServerMsg::Refused { reasons } => reasons,
        other => panic!("expected Refused, got {other:?}"),
    };
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("multi-factor authentication is required"),
        "{reasons:?}"
    );
    let records = h.store.audit_records().unwrap();
    let rec = records
        .iter()
        .find(|r| r.action == "admission" && r.reason.contains("multi-factor"))
        .unwrap_or_else(|| panic!("no audit record of the refusal: {records:?}"));
    assert_eq!(rec.decision, Decision::Deny);
    assert_eq!(rec.actor, "user:bob@example.test");
    assert_eq!(rec.subject, "laptop");
    assert!(
        h.store.list_devices().unwrap().is_empty(),
        "nobody admitted"
    );

    // The login is over; the device may start a new one.
    let again = ask_login(&mut c, &base).await;
    assert_ne!(again, login_id);
}
