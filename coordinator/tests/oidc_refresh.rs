//! OIDC re-verification with refresh tokens against the real test IdP: a refresh yields a
//! freshly verified identity (confidential client), and fails once the user is disabled at
//! the IdP.

mod oidc_support;

use oidc_support::*;
use serde_json::json;
use ztmesh_coordinator::identity::oidc::{OidcError, SecretString};

#[tokio::test]
async fn refresh_reverifies_and_fails_after_user_is_disabled() {
    let (listener, base) = rp_listener().await;
    let mut conf = client("ztmesh-conf", &base);
    conf["client_secret"] = json!("conf-secret-0123456789");
    let idp = Idp::start(json!([conf]), users());
    let mut cfg = rp_config(&idp.issuer, "ztmesh-conf", &base);
    let secret_file = idp.dir.path().join("client-secret");
    std::fs::write(&secret_file, "conf-secret-0123456789\n").unwrap();
    cfg.client_secret_file = Some(secret_file);
    let rp = rp_serve(listener, cfg).await;
    let otp = totp_now(ALICE_TOTP);
    let page = sign_in(
        &rp.base,
        "login-refresh-0001",
        "alice",
        "alice-pw",
        &otp,
        false,
    )
    .await
    .expect("not stopped");
    assert_eq!(page.status, 200, "{page:?}");
    let first = rp.completed.lock().unwrap()[0].1.clone();
    let token = first.refresh_token.clone().expect("refresh token");

    // Re-verification: a new ID token, same user, same groups, MFA still on record.
    let again = rp
        .provider
        .refresh(&token, first.subject.as_deref())
        .await
        .expect("refresh");
    assert_eq!(again.user, first.user);
    assert_eq!(again.groups, first.groups);
    assert_eq!(again.amr, vec!["pwd", "otp"]);
    let newest = again.refresh_token.clone().unwrap();

    // A refresh that claims another subject is refused.
    let err = rp
        .provider
        .refresh(&newest, Some("mallory"))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::SubjectChanged { .. }), "{err:?}");

    idp.disable_user("alice").await;
    let err = rp
        .provider
        .refresh(&newest, first.subject.as_deref())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OidcError::RefreshRejected(ref t) if t.contains("invalid_grant")),
        "{err:?}"
    );
    assert!(err.to_string().contains("re-verification refused"), "{err}");

    // A disabled user cannot sign in again either.
    let page = sign_in(
        &rp.base,
        "login-refresh-0002",
        "alice",
        "alice-pw",
        &totp_now(ALICE_TOTP),
        false,
    )
    .await
    .expect("not stopped");
    assert_eq!(page.status, 401, "{page:?}");
}

#[tokio::test]
async fn wrong_client_secret_is_refused_at_the_token_endpoint() {
    let (listener, base) = rp_listener().await;
    let mut conf = client("ztmesh-conf", &base);
    conf["client_secret"] = json!("the-real-secret-0123456789");
    let idp = Idp::start(json!([conf]), users());
    let mut cfg = rp_config(&idp.issuer, "ztmesh-conf", &base);
    cfg.client_secret = Some(SecretString::new("a-wrong-secret-0123456789"));
    let rp = rp_serve(listener, cfg).await;
    let cb = sign_in(
        &rp.base,
        "login-secret-0001",
        "alice",
        "alice-pw",
        &totp_now(ALICE_TOTP),
        true,
    )
    .await
    .expect_err("stops");
    let err = rp
        .provider
        .callback(&cb.code, &cb.state, cb.iss.as_deref())
        .await
        .unwrap_err()
        .error;
    assert!(
        matches!(err, OidcError::TokenRequest(ref t) if t.contains("invalid_client")),
        "{err:?}"
    );
}

#[tokio::test]
async fn idp_outage_during_refresh_is_not_a_refusal() {
    let (listener, base) = rp_listener().await;
    let idp = Idp::start(json!([client("ztmesh", &base)]), users());
    let rp = rp_serve(listener, rp_config(&idp.issuer, "ztmesh", &base)).await;
    let page = sign_in(
        &rp.base,
        "login-outage-0001",
        "alice",
        "alice-pw",
        &totp_now(ALICE_TOTP),
        false,
    )
    .await
    .expect("not stopped");
    assert_eq!(page.status, 200, "{page:?}");
    let first = rp.completed.lock().unwrap()[0].1.clone();
    // Public client: the provider rotates the refresh token on every use.
    let again = rp
        .provider
        .refresh(
            first.refresh_token.as_ref().unwrap(),
            first.subject.as_deref(),
        )
        .await
        .expect("refresh");
    assert_ne!(again.refresh_token, first.refresh_token, "rotated");
    let err = rp
        .provider
        .refresh(
            first.refresh_token.as_ref().unwrap(),
            first.subject.as_deref(),
        )
        .await
        .unwrap_err();
    assert!(
        err.is_refusal(),
        "a used, rotated refresh token is refused: {err:?}"
    );

    drop(idp);
    let err = rp
        .provider
        .refresh(
            again.refresh_token.as_ref().unwrap(),
            first.subject.as_deref(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::Transport(_)), "{err:?}");
    assert!(
        !err.is_refusal(),
        "an unreachable IdP must not end sessions: {err}"
    );
}
