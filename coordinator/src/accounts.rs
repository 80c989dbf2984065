//! Local accounts, the embedded identity source: argon2id password + TOTP (RFC 6238), and the
//! login pages at `/login/{login_id}` that finish a device's interactive login with them (or
//! send the browser to the OIDC provider, when one is configured).

use crate::audit;
use crate::identity::{Identity, LoginSink};
use crate::store::{Decision, Store, StoreError, UserRecord};
use crate::web_page::{escape, page};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use rand::RngCore;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use totp_rs::{Algorithm, Secret, TOTP};
use tracing::{info, warn};

/// TOTP parameters: the RFC 6238 defaults every authenticator app understands.
const TOTP_DIGITS: usize = 6;
const TOTP_STEP: u64 = 30;
/// Accept the code of one step before/after, for clock skew between phone and server.
const TOTP_SKEW: u8 = 1;
const ISSUER: &str = "ztmesh";

/// Failed attempts allowed per login name (and per client address) per window.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid login name {0:?}: use name@domain (letters, digits and . _ - + , at most 128 characters), as policies name users")]
    InvalidLogin(String),
    #[error("invalid group {0:?}: groups are written group:NAME")]
    InvalidGroup(String),
    #[error("password must be at least 10 characters")]
    WeakPassword,
    #[error("password hashing: {0}")]
    Hash(String),
    #[error("TOTP: {0}")]
    Totp(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `users add` shows once: the TOTP secret and the `otpauth://` URL for an app.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NewAccount {
    pub login: String,
    pub groups: Vec<String>,
    /// Base32 secret, to type into an authenticator app.
    pub totp_secret: String,
    pub otpauth_url: String,
}

/// Policies name users as `name@domain`, so local logins have that form too.
pub fn valid_login(login: &str) -> bool {
    let ok_chars = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
    };
    login.len() <= 128
        && login
            .split_once('@')
            .is_some_and(|(name, domain)| ok_chars(name) && ok_chars(domain))
}

/// argon2id with the crate's default (OWASP-recommended) parameters and a random salt.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

fn totp_for(secret_b32: &str) -> Result<TOTP, AccountError> {
    let raw = Secret::Encoded(secret_b32.to_owned())
        .to_bytes()
        .map_err(|e| AccountError::Totp(format!("{e:?}")))?;
    TOTP::new(Algorithm::SHA1, TOTP_DIGITS, TOTP_SKEW, TOTP_STEP, raw)
        .map_err(|e| AccountError::Totp(e.to_string()))
}

/// Whether `code` is valid for `secret_b32` at Unix time `now_secs` (within the skew).
pub fn check_totp(secret_b32: &str, code: &str, now_secs: u64) -> bool {
    let code = code.trim();
    if code.len() != TOTP_DIGITS || !code.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    // totp-rs compares in constant time.
    totp_for(secret_b32).is_ok_and(|t| t.check(code, now_secs))
}

/// The code for `secret_b32` at `now_secs` (tests, and the CLI's self-check).
pub fn totp_code(secret_b32: &str, now_secs: u64) -> Result<String, AccountError> {
    Ok(totp_for(secret_b32)?.generate(now_secs))
}

fn unix_secs() -> u64 {
    audit::now().0 / 1000
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Create a local account. The password is hashed; the TOTP secret is returned once.
pub fn add_user(
    store: &dyn Store,
    login: &str,
    password: &str,
    groups: Vec<String>,
) -> Result<NewAccount, AccountError> {
    if !valid_login(login) {
        return Err(AccountError::InvalidLogin(login.to_owned()));
    }
    if password.chars().count() < 10 {
        return Err(AccountError::WeakPassword);
    }
    for g in &groups {
        if !g.starts_with("group:") || g.len() <= "group:".len() {
            return Err(AccountError::InvalidGroup(g.clone()));
        }
    }
    let mut raw = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret = Secret::Raw(raw.to_vec()).to_encoded().to_string();
    store.create_user(&UserRecord {
        login: login.to_owned(),
        password_hash: hash_password(password)?,
        totp_secret: secret.clone(),
        disabled: false,
        groups: groups.clone(),
        created_at: audit::now(),
    })?;
    let otpauth_url = format!(
        "otpauth://totp/{ISSUER}:{}?secret={secret}&issuer={ISSUER}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}",
        percent_encode(login)
    );
    Ok(NewAccount {
        login: login.to_owned(),
        groups,
        totp_secret: secret,
        otpauth_url,
    })
}

/// Why a local sign-in failed (the page shows one generic message; the audit log the detail).
#[derive(Debug, PartialEq, Eq)]
pub enum SignInError {
    BadCredentials,
    Disabled,
    RateLimited,
    Internal(String),
}

/// Counts failures per key in a sliding window; refuses once the limit is reached.
#[derive(Default)]
pub struct RateLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl RateLimiter {
    fn blocked(&self, key: &str, now: Instant) -> bool {
        let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        match m.get(key) {
            Some((n, since)) if now.duration_since(*since) < FAILURE_WINDOW => *n >= MAX_FAILURES,
            _ => false,
        }
    }

    fn fail(&self, key: &str, now: Instant) {
        let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(key.to_owned()).or_insert((0, now));
        if now.duration_since(e.1) >= FAILURE_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }

    fn clear(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Verifies local sign-ins: password, TOTP (each code usable once), disabled flag, rate limit.
pub struct Authenticator {
    store: Arc<dyn Store>,
    limiter: RateLimiter,
    /// Last TOTP time step used per login, so a code seen over a shoulder cannot be replayed.
    last_step: Mutex<HashMap<String, u64>>,
    /// A real argon2 hash to verify against for unknown users, so timing does not reveal
    /// which logins exist.
    dummy_hash: String,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Authenticator {
            store,
            limiter: RateLimiter::default(),
            last_step: Mutex::new(HashMap::new()),
            dummy_hash: hash_password("not-a-real-password-0123456789").unwrap_or_default(),
        }
    }

    /// Check a sign-in attempt from `client`; on success the user's record.
    pub fn sign_in(
        &self,
        login: &str,
        password: &str,
        code: &str,
        client: IpAddr,
    ) -> Result<UserRecord, SignInError> {
        let now = Instant::now();
        let (user_key, ip_key) = (format!("u:{login}"), format!("ip:{client}"));
        if self.limiter.blocked(&user_key, now) || self.limiter.blocked(&ip_key, now) {
            return Err(SignInError::RateLimited);
        }
        let user = self
            .store
            .get_user(login)
            .map_err(|e| SignInError::Internal(e.to_string()))?;
        let fail = || {
            self.limiter.fail(&user_key, now);
            self.limiter.fail(&ip_key, now);
            Err(SignInError::BadCredentials)
        };
        let Some(user) = user else {
            let _ = verify_password(password, &self.dummy_hash);
            return fail();
        };
        // Both checks always run, so timing does not say which factor was wrong.
        let pw_ok = verify_password(password, &user.password_hash);
        let secs = unix_secs();
        let code_ok = check_totp(&user.totp_secret, code, secs);
        if !(pw_ok && code_ok) {
            return fail();
        }
        // Refuse a code whose time step was already used (RFC 6238 §5.2).
        let step = self.matching_step(&user.totp_secret, code, secs);
        {
            let mut last = self.last_step.lock().unwrap_or_else(|e| e.into_inner());
            if last.get(login).is_some_and(|&s| step <= s) {
                drop(last);
                return fail();
            }
            last.insert(login.to_owned(), step);
        }
        if user.disabled {
            return Err(SignInError::Disabled);
        }
        self.limiter.clear(&user_key);
        Ok(user)
    }

    /// The time step whose code `code` is (one of now-1, now, now+1; checked before).
    fn matching_step(&self, secret: &str, code: &str, secs: u64) -> u64 {
        let step = secs / TOTP_STEP;
        for s in [step.saturating_sub(1), step, step + 1] {
            if totp_code(secret, s * TOTP_STEP).is_ok_and(|c| c == code.trim()) {
                return s;
            }
        }
        step
    }
}

/// State of the login pages.
#[derive(Clone)]
pub struct LoginPages {
    pub auth: Arc<Authenticator>,
    pub sink: Arc<dyn LoginSink>,
    pub store: Arc<dyn Store>,
    /// Whether to offer "Sign in with SSO" (an OIDC provider is configured).
    pub oidc_enabled: bool,
}

/// `GET /login/{login_id}` (the form) and `POST /login/{login_id}` (its submission).
pub fn router(pages: LoginPages) -> Router {
    Router::new()
        .route("/login/{login_id}", get(form).post(submit))
        .with_state(pages)
}

fn form_page(p: &LoginPages, login_id: &str, error: Option<&str>) -> Response {
    let id = escape(login_id);
    let err = error
        .map(|e| format!("<p class=\"err\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let sso = if p.oidc_enabled {
        format!(
            "<p><a href=\"/oidc/start/{id}\">Sign in with SSO</a></p><hr><h2>Local account</h2>"
        )
    } else {
        String::new()
    };
    let body = format!(
        "<p>Sign in to add this device to the mesh.</p>{sso}{err}\
         <form method=\"post\" action=\"/login/{id}\">\
         <label>User <input name=\"user\" autocomplete=\"username\" required></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <label>6-digit code <input name=\"code\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" autocomplete=\"one-time-code\" required></label>\
         <button type=\"submit\">Sign in</button></form>"
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    page(status, "Sign in", &body)
}

fn unknown_login() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Sign-in failed",
        "<p>This login link is unknown or has expired. Run the login command on your device again.</p>",
    )
}

async fn form(State(p): State<LoginPages>, Path(login_id): Path<String>) -> Response {
    if !p.sink.login_pending(&login_id) {
        return unknown_login();
    }
    form_page(&p, &login_id, None)
}

#[derive(Deserialize)]
struct SignInForm {
    user: String,
    password: String,
    code: String,
}

async fn submit(
    State(p): State<LoginPages>,
    Path(login_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(f): Form<SignInForm>,
) -> Response {
    if !p.sink.login_pending(&login_id) {
        return unknown_login();
    }
    let auth = p.auth.clone();
    let (user, password, code) = (f.user.clone(), f.password, f.code);
    // argon2 is deliberately slow: keep it off the async threads.
    let res = tokio::task::spawn_blocking(move || auth.sign_in(&user, &password, &code, peer.ip()))
        .await
        .unwrap_or_else(|e| Err(SignInError::Internal(e.to_string())));
    let subject = format!("user:{}", f.user);
    let (decision, reason, shown) = match &res {
        Ok(_) => (
            Decision::Allow,
            "password and TOTP verified".to_owned(),
            None,
        ),
        Err(SignInError::BadCredentials) => (
            Decision::Deny,
            "wrong user, password or code".to_owned(),
            Some("Wrong user, password or code."),
        ),
        Err(SignInError::Disabled) => (
            Decision::Deny,
            "account disabled".to_owned(),
            Some("This account is disabled."),
        ),
        Err(SignInError::RateLimited) => (
            Decision::Deny,
            "too many failed attempts".to_owned(),
            Some("Too many failed attempts; wait a few minutes."),
        ),
        Err(SignInError::Internal(e)) => (
            Decision::Deny,
            format!("internal error: {e}"),
            Some("Internal error; try again."),
        ),
    };
    let store = p.store.clone();
    let (s2, r2) = (subject.clone(), reason.clone());
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = audit::record(store.as_ref(), "web", "login.local", &s2, decision, &r2) {
            warn!(error = %e, "audit append failed");
        }
    })
    .await;
    let user = match res {
        Ok(u) => u,
        Err(_) => {
            info!(user = %f.user, %reason, "local sign-in refused");
            return form_page(&p, &login_id, shown);
        }
    };
    match p
        .sink
        .complete_login(
            &login_id,
            Identity::local(user.login.clone(), user.groups.clone()),
        )
        .await
    {
        Ok(()) => {
            info!(user = %user.login, "local sign-in completed a device login");
            page(
                StatusCode::OK,
                "Signed in",
                &format!(
                    "<p>Signed in as <b>{}</b>. Your device is signed in: you can close this page and return to it.</p>",
                    escape(&user.login)
                ),
            )
        }
        Err(e) => page(
            StatusCode::CONFLICT,
            "Sign-in failed",
            &format!("<p>{}</p>", escape(&e.0)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn totp_matches_rfc6238_vector() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890", T = 59 s -> 94287082 (8
        // digits); the 6-digit code is its last six digits.
        let secret = Secret::Raw(b"12345678901234567890".to_vec())
            .to_encoded()
            .to_string();
        assert_eq!(totp_code(&secret, 59).unwrap(), "287082");
        assert!(check_totp(&secret, "287082", 59));
        assert!(check_totp(&secret, "287082", 59 + 30), "one step of skew");
        assert!(!check_totp(&secret, "287082", 59 + 90));
        assert!(!check_totp(&secret, "28708", 59));
    }

    #[test]
    fn sign_in_checks_both_factors_replay_disabled_and_rate() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(d.path()).unwrap());
        let acct = add_user(
            store.as_ref(),
            "alice@example.com",
            "correct horse battery",
            vec!["group:eng".into()],
        )
        .unwrap();
        assert!(acct
            .otpauth_url
            .starts_with("otpauth://totp/ztmesh:alice%40example.com?secret="));
        let auth = Authenticator::new(store.clone());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let code = totp_code(&acct.totp_secret, unix_secs()).unwrap();
        assert_eq!(
            auth.sign_in("alice@example.com", "wrong password!", &code, ip)
                .unwrap_err(),
            SignInError::BadCredentials
        );
        let u = auth
            .sign_in("alice@example.com", "correct horse battery", &code, ip)
            .unwrap();
        assert_eq!(u.groups, vec!["group:eng".to_string()]);
        // The same code again is a replay.
        assert_eq!(
            auth.sign_in("alice@example.com", "correct horse battery", &code, ip)
                .unwrap_err(),
            SignInError::BadCredentials
        );
        assert_eq!(
            auth.sign_in("nobody", "x", "123456", ip).unwrap_err(),
            SignInError::BadCredentials
        );
        for _ in 0..MAX_FAILURES {
            let _ = auth.sign_in(
                "alice@example.com",
                "bad",
                "000000",
                "10.0.0.9".parse().unwrap(),
            );
        }
        assert_eq!(
            auth.sign_in(
                "alice@example.com",
                "bad",
                "000000",
                "10.0.0.9".parse().unwrap()
            )
            .unwrap_err(),
            SignInError::RateLimited
        );
        assert!(matches!(
            add_user(
                store.as_ref(),
                "alice@example.com",
                "another long one",
                vec![]
            ),
            Err(AccountError::Store(StoreError::AlreadyExists(_)))
        ));
        assert!(matches!(
            add_user(store.as_ref(), "bob@example.com", "short", vec![]),
            Err(AccountError::WeakPassword)
        ));
    }
}
