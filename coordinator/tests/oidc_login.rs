//! End-to-end OIDC sign-in against the real test IdP (npm `oidc-provider`, started by each
//! test on loopback): the success path with groups and MFA, and every refusal the relying
//! party must make (missing MFA, wrong audience, foreign signature, expired token, nonce,
//! state, issuer), each shown with an ID token that is wrong in exactly that one way.

mod oidc_support;

use std::time::Duration;

use oidc_support::*;
use serde_json::json;
use ztmesh_coordinator::identity::oidc::{ClaimsVerificationError, OidcError};
use ztmesh_coordinator::identity::AuthMethod;

const LOGIN_A: &str = "login-aaaaaaaa-0001";
const LOGIN_B: &str = "login-bbbbbbbb-0002";

#[tokio::test]
async fn login_with_mfa_maps_groups_and_hands_identity_to_control_plane() {
    let (_idp, rp) = idp_and_rp(|c| {
        c.group_map.insert("ops".into(), "group:operators".into());
    })
    .await;
    let otp = totp_now(ALICE_TOTP);
    let page = sign_in(&rp.base, LOGIN_A, "alice", "alice-pw", &otp, false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("Signed in as alice@example.test"),
        "{}",
        page.body
    );

    let done = rp.completed.lock().unwrap().clone();
    assert_eq!(done.len(), 1);
    let (login_id, id) = &done[0];
    assert_eq!(login_id, LOGIN_A);
    assert_eq!(id.user, "alice@example.test");
    assert_eq!(id.method, AuthMethod::Oidc);
    // "ops" through the explicit map, "eng" through the prefix, "Domain Users" dropped.
    assert_eq!(id.groups, vec!["group:eng", "group:operators"]);
    assert_eq!(id.amr, vec!["pwd", "otp"]);
    assert_eq!(id.subject.as_deref(), Some("alice"));
    assert!(
        id.refresh_token.is_some(),
        "offline_access + prompt=consent gives a refresh token"
    );
    assert_eq!(rp.provider.pending_count(), 0);
}

#[tokio::test]
async fn login_without_mfa_is_refused_saying_mfa_is_required() {
    let (_idp, rp) = idp_and_rp(|_| {}).await;

    // bob has no second factor: the IdP reports amr ["pwd"].
    let page = sign_in(&rp.base, LOGIN_A, "bob", "bob-pw", "", false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 403, "{page:?}");
    assert!(
        page.body
            .contains("multi-factor authentication is required"),
        "{}",
        page.body
    );
    assert!(
        rp.completed.lock().unwrap().is_empty(),
        "no login may be completed"
    );

    // A wrong one-time code for alice is refused by the IdP itself (the form comes back).
    let page = sign_in(&rp.base, LOGIN_B, "alice", "alice-pw", "000000", false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 401, "{page:?}");
    assert!(page.body.contains("Invalid one-time code"), "{}", page.body);
    assert!(rp.completed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn password_only_login_passes_when_mfa_is_not_required() {
    let (_idp, rp) = idp_and_rp(|c| c.require_mfa = false).await;
    let page = sign_in(&rp.base, LOGIN_A, "bob", "bob-pw", "", false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 200, "{page:?}");
    let done = rp.completed.lock().unwrap().clone();
    assert_eq!(done[0].1.amr, vec!["pwd"]);
    assert_eq!(done[0].1.groups, vec!["group:eng"]);
}

#[tokio::test]
async fn unverified_email_does_not_name_a_user() {
    let (listener, base) = rp_listener().await;
    let users = json!({"users": [{"login": "eve", "password": "eve-pw", "totp_secret": ALICE_TOTP,
        "email": "alice@example.test", "email_verified": false}]});
    let idp = Idp::start(json!([client("ztmesh", &base)]), users);
    let rp = rp_serve(listener, rp_config(&idp.issuer, "ztmesh", &base)).await;
    let otp = totp_now(ALICE_TOTP);
    let page = sign_in(&rp.base, LOGIN_A, "eve", "eve-pw", &otp, false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 401, "{page:?}");
    assert!(page.body.contains("not verified"), "{}", page.body);
    assert!(rp.completed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn control_plane_refusal_is_shown() {
    let (_idp, rp) = idp_and_rp(|_| {}).await;
    let otp = totp_now(ALICE_TOTP);
    // The test sink refuses login ids containing "refuse".
    let page = sign_in(
        &rp.base,
        "login-refuse-0003",
        "alice",
        "alice-pw",
        &otp,
        false,
    )
    .await
    .expect("not stopped");
    assert_eq!(page.status, 403, "{page:?}");
    assert!(page.body.contains("posture check failed"), "{}", page.body);
}

/// Signs alice in with the client `client_id` and stops at the callback; then hands the code
/// to the relying party directly so the test can see the exact error.
async fn tampered_login(tamper: serde_json::Value) -> Result<(), OidcError> {
    let (listener, base) = rp_listener().await;
    let mut bad = client("ztmesh", &base);
    bad["x_test_tamper"] = tamper;
    let idp = Idp::start(json!([bad]), users());
    let rp = rp_serve(listener, rp_config(&idp.issuer, "ztmesh", &base)).await;
    let otp = totp_now(ALICE_TOTP);
    let cb = sign_in(&rp.base, LOGIN_A, "alice", "alice-pw", &otp, true)
        .await
        .expect_err("stops at the callback");
    let result = rp
        .provider
        .callback(&cb.code, &cb.state, cb.iss.as_deref())
        .await;
    drop(idp);
    result
        .map(|v| panic!("tampered token accepted: {v:?}"))
        .map_err(|e| {
            assert!(e.login_id.is_some(), "the pending login is named: {e:?}");
            e.error
        })
}

#[tokio::test]
async fn id_token_for_another_audience_is_refused() {
    let err = tampered_login(json!({"aud": "some-other-app"}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OidcError::IdToken(ClaimsVerificationError::InvalidAudience(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn id_token_signed_by_a_foreign_key_is_refused() {
    // Signed by a key the RP never saw, under the kid of the published key.
    let err = tampered_login(json!({"foreign_key": true}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OidcError::IdToken(ClaimsVerificationError::SignatureVerification(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_id_token_is_refused() {
    let err = tampered_login(json!({"exp_offset_secs": -7200}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OidcError::IdToken(ClaimsVerificationError::Expired(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn id_token_with_another_nonce_is_refused() {
    let err = tampered_login(json!({"nonce": "replayed-nonce"}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OidcError::IdToken(ClaimsVerificationError::InvalidNonce(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn id_token_from_another_issuer_is_refused() {
    let err = tampered_login(json!({"iss": "http://127.0.0.1:1"}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OidcError::IdToken(ClaimsVerificationError::InvalidIssuer(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn rp_follows_a_signing_key_rotation_at_the_idp() {
    let (listener, base) = rp_listener().await;
    let clients = json!([client("ztmesh", &base)]);
    let idp = Idp::start(clients.clone(), users());
    let issuer = idp.issuer.clone();
    let rp = rp_serve(listener, rp_config(&issuer, "ztmesh", &base)).await;
    let port = idp.port();
    drop(idp);
    // Same issuer URL, a new signing key under a new key id: the RP's cached JWKS lacks it,
    // so it fetches the keys again and the sign-in passes.
    let idp = Idp::start_on(clients, users(), port);
    assert_eq!(idp.issuer, issuer);
    let otp = totp_now(ALICE_TOTP);
    let page = sign_in(&rp.base, LOGIN_A, "alice", "alice-pw", &otp, false)
        .await
        .expect("not stopped");
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(rp.completed.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn code_from_a_second_provider_is_refused() {
    // Provider B: same client id and redirect, its own keys and sessions. Its code cannot be
    // redeemed at provider A, which the RP is pinned to.
    let (listener, base) = rp_listener().await;
    let idp_a = Idp::start(json!([client("ztmesh", &base)]), users());
    let idp_b = Idp::start(json!([client("ztmesh", &base)]), users());
    let rp_a = rp_serve(listener, rp_config(&idp_a.issuer, "ztmesh", &base)).await;
    let (listener_b, _) = rp_listener().await;
    let mut cfg_b = rp_config(&idp_b.issuer, "ztmesh", &base);
    cfg_b.redirect_base = base.clone();
    let rp_b = rp_serve(listener_b, cfg_b).await;
    let otp = totp_now(ALICE_TOTP);
    let cb_a = sign_in(&rp_a.base, LOGIN_A, "alice", "alice-pw", &otp, true)
        .await
        .expect_err("stops");
    // Start at B via B's RP (on its own port), but deliver B's code to A's RP with A's state.
    let cb_b = sign_in(&rp_b.base, LOGIN_B, "alice", "alice-pw", &otp, true)
        .await
        .expect_err("stops");
    // B's authorization response names B as issuer (RFC 9207): refused before any exchange.
    let err = rp_a
        .provider
        .callback(&cb_b.code, &cb_a.state, cb_b.iss.as_deref())
        .await
        .unwrap_err()
        .error;
    assert!(matches!(err, OidcError::IssuerMismatch { .. }), "{err:?}");
    // Without the iss parameter, A's token endpoint refuses B's code.
    let cb_a2 = sign_in(
        &rp_a.base,
        "login-cccccccc-0003",
        "alice",
        "alice-pw",
        &otp,
        true,
    )
    .await
    .expect_err("stops");
    let err = rp_a
        .provider
        .callback(&cb_b.code, &cb_a2.state, None)
        .await
        .unwrap_err()
        .error;
    assert!(
        matches!(err, OidcError::TokenRequest(ref t) if t.contains("invalid_grant")),
        "{err:?}"
    );
}

#[tokio::test]
async fn state_is_single_use_bound_to_its_pkce_and_expires() {
    let (_idp, rp) = idp_and_rp(|c| c.login_timeout_secs = 2).await;
    let mut browser = Browser::new();
    let otp = totp_now(ALICE_TOTP);

    // Unknown state: refused through the route with a 400 page.
    let page = browser
        .navigate(
            format!("{}/oidc/callback?code=abc&state=made-up", rp.base)
                .parse()
                .unwrap(),
            None,
            |_| false,
        )
        .await
        .unwrap();
    assert_eq!(page.status, 400, "{page:?}");
    assert!(
        page.body.contains("unknown or already used"),
        "{}",
        page.body
    );

    // Two sign-ins; A's code with B's state: B's PKCE verifier does not match A's challenge.
    let cb_a = sign_in(&rp.base, LOGIN_A, "alice", "alice-pw", &otp, true)
        .await
        .expect_err("stops");
    let cb_b = sign_in(&rp.base, LOGIN_B, "alice", "alice-pw", &otp, true)
        .await
        .expect_err("stops");
    let err = rp
        .provider
        .callback(&cb_a.code, &cb_b.state, cb_a.iss.as_deref())
        .await
        .unwrap_err()
        .error;
    assert!(
        matches!(err, OidcError::TokenRequest(ref t) if t.contains("invalid_grant")),
        "{err:?}"
    );
    // B's state was consumed by that failed attempt.
    let err = rp
        .provider
        .callback(&cb_b.code, &cb_b.state, cb_b.iss.as_deref())
        .await
        .unwrap_err()
        .error;
    assert!(matches!(err, OidcError::UnknownState), "{err:?}");

    // The real callback of A through the route works once; replaying it is refused.
    let page = browser
        .navigate(cb_a.url.clone(), None, |_| false)
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{page:?}");
    let page = browser
        .navigate(cb_a.url.clone(), None, |_| false)
        .await
        .unwrap();
    assert_eq!(page.status, 400, "{page:?}");
    assert_eq!(rp.completed.lock().unwrap().len(), 1);

    // A sign-in finished after login_timeout_secs is refused.
    let cb_c = sign_in(
        &rp.base,
        "login-cccccccc-0003",
        "alice",
        "alice-pw",
        &otp,
        true,
    )
    .await
    .expect_err("stops");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = rp
        .provider
        .callback(&cb_c.code, &cb_c.state, cb_c.iss.as_deref())
        .await
        .unwrap_err()
        .error;
    assert!(matches!(err, OidcError::LoginExpired), "{err:?}");
}

#[tokio::test]
async fn idp_error_response_is_shown_and_consumes_state() {
    let (_idp, rp) = idp_and_rp(|_| {}).await;
    let url = rp.provider.start(LOGIN_A).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let mut browser = Browser::new();
    let page = browser
        .navigate(
            format!(
                "{}/oidc/callback?error=access_denied&error_description=user+said+no&state={state}",
                rp.base
            )
            .parse()
            .unwrap(),
            None,
            |_| false,
        )
        .await
        .unwrap();
    assert_eq!(page.status, 403, "{page:?}");
    assert!(
        page.body.contains("access_denied: user said no"),
        "{}",
        page.body
    );
    assert_eq!(rp.provider.pending_count(), 0);
}
