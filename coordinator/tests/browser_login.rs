//! The login pages driven by a real headless Chromium, as a user signs in from their browser:
//! the OIDC flow (the relying party's `/oidc/start`, the test IdP's login form, the callback)
//! with MFA and with a wrong one-time code, and the coordinator's own local-account page
//! (argon2 password + TOTP) of a real `serve` while a device waits on its QUIC connection.
//! Needs Debian `chromium` and `cd tests/idp && npm ci` (puppeteer-core); fails without them.

mod admin_support;
mod oidc_support;

use std::time::Duration;

use admin_support::*;
use oidc_support::chromium::submit_form;
use oidc_support::*;
use ztmesh_common::wire::ServerMsg;

const LOGIN_A: &str = "login-browser-0001";

/// Wrong for sure: a code that differs from the current one.
fn other_code(current: &str) -> &'static str {
    if current == "000000" {
        "111111"
    } else {
        "000000"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_with_mfa_in_chromium_signs_the_device_in() {
    let (idp, rp) = idp_and_rp(|c| {
        c.group_map.insert("ops".into(), "group:operators".into());
    })
    .await;

    let otp = totp_now(ALICE_TOTP);
    let seen = submit_form(
        &format!("{}/oidc/start/{LOGIN_A}", rp.base),
        &[("login", "alice"), ("password", "alice-pw"), ("otp", &otp)],
    )
    .await;

    // The start link took the browser to the IdP's login form, which reads as one.
    let form = &seen.form;
    assert!(
        form.url
            .starts_with(&format!("{}/interaction/", idp.issuer)),
        "{seen:?}"
    );
    assert_eq!(
        (form.status, form.title.as_str()),
        (200, "ztmesh test IdP: sign in")
    );
    assert_eq!(form.labels["login"], "Login");
    assert_eq!(form.labels["password"], "Password");
    assert_eq!(form.labels["otp"], "One-time code");

    // The browser came back through the callback to a page that says it is done.
    let page = &seen.landed;
    assert!(
        page.url.starts_with(&format!("{}/oidc/callback?", rp.base)),
        "{seen:?}"
    );
    assert_eq!(
        (page.status, page.title.as_str()),
        (200, "Signed in - ztmesh")
    );
    assert!(
        page.text.contains("Signed in as alice@example.test")
            && page.text.contains("Your device is signed in"),
        "{seen:?}"
    );

    let done = rp.completed.lock().unwrap().clone();
    assert_eq!(done.len(), 1, "{done:?}");
    let (login_id, id) = &done[0];
    assert_eq!(login_id, LOGIN_A);
    assert_eq!(id.user, "alice@example.test");
    assert!(id.amr.iter().any(|m| m == "otp"), "{:?}", id.amr);
    assert_eq!(id.groups, vec!["group:eng", "group:operators"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_with_a_wrong_code_in_chromium_is_refused_and_records_nothing() {
    let (idp, rp) = idp_and_rp(|_| {}).await;

    let wrong = other_code(&totp_now(ALICE_TOTP));
    let seen = submit_form(
        &format!("{}/oidc/start/{LOGIN_A}", rp.base),
        &[("login", "alice"), ("password", "alice-pw"), ("otp", wrong)],
    )
    .await;

    // The IdP shows its form again with the reason; the browser never reaches the callback.
    let page = &seen.landed;
    assert!(
        page.url
            .starts_with(&format!("{}/interaction/", idp.issuer)),
        "{seen:?}"
    );
    assert_eq!(
        (page.status, page.title.as_str()),
        (401, "ztmesh test IdP: sign in")
    );
    assert!(page.text.contains("Invalid one-time code."), "{seen:?}");
    assert!(
        rp.completed.lock().unwrap().is_empty(),
        "a refused login records nothing"
    );
}

const POLICY: &str = r#"{
  "groups": { "group:eng": ["alice@example.com"] },
  "acls": [ { "action": "accept", "src": ["group:eng"], "dst": ["group:eng:*"] } ],
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_account_login_page_in_chromium_refuses_a_wrong_password_then_admits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let srv = Server::start_with(&dir, Some(&policy), &["--http-plain-loopback"]).await;
    let added = srv.cli_stdin(
        &["users", "add", "alice@example.com", "--password-stdin"],
        "correct horse battery staple\n",
    );
    let added = String::from_utf8_lossy(&added.stdout);
    let secret = added
        .split("secret=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap_or_else(|| panic!("no TOTP secret in {added}"));

    let (mut dev, login_id) = interactive(&srv, "alice-laptop").await;
    let url = format!("{}/login/{login_id}", srv.url);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = ztmesh_coordinator::accounts::totp_code(secret, now).unwrap();

    let sign_in = |password: &'static str| {
        let fields = [
            ("user", "alice@example.com"),
            ("password", password),
            ("code", code.as_str()),
        ];
        let url = url.clone();
        async move { submit_form(&url, &fields).await }
    };

    let seen = sign_in("not her password").await;
    let form = &seen.form;
    assert_eq!(
        (form.status, form.title.as_str()),
        (200, "Sign in - ztmesh")
    );
    assert_eq!(form.labels["user"], "User");
    assert_eq!(form.labels["password"], "Password");
    assert_eq!(form.labels["code"], "6-digit code");
    let page = &seen.landed;
    assert_eq!(page.url, url, "{seen:?}");
    assert_eq!(
        (page.status, page.title.as_str()),
        (401, "Sign in - ztmesh")
    );
    assert!(
        page.text.contains("Wrong user, password or code."),
        "{seen:?}"
    );
    if let Ok(Some(ServerMsg::Credential(_))) = dev.recv_within(Duration::from_millis(300)).await {
        panic!("a refused sign-in must not admit the device");
    }

    // The same code again with the right password: it was not spent by the refused attempt.
    let seen = sign_in("correct horse battery staple").await;
    let page = &seen.landed;
    assert_eq!(
        (page.status, page.title.as_str()),
        (200, "Signed in - ztmesh")
    );
    assert!(
        page.text.contains("Signed in as alice@example.com")
            && page.text.contains("Your device is signed in"),
        "{seen:?}"
    );
    let grant = wait_for_credential(&mut dev).await;
    let shown = srv.json(&["devices", "show", "alice-laptop"]);
    assert_eq!(shown["summary"]["id"], grant.node_id.0, "{shown}");
    assert_eq!(shown["summary"]["user"], "alice@example.com", "{shown}");
    assert_eq!(shown["login_method"], "local_totp", "{shown}");
}
