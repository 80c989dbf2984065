//! Test harness for the OIDC tests: starts the real test IdP (`tests/idp/server.mjs`, npm
//! `oidc-provider`) on loopback, the relying party's routes on loopback, and drives a sign-in
//! as a browser would (cookies, redirects, the login form).

#![allow(dead_code)] // each test binary uses a different part

pub mod chromium;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use openidconnect::reqwest;
use openidconnect::url::Url;
use serde_json::{json, Value};
use ztmesh_coordinator::identity::oidc::{router, OidcConfig, OidcProvider};
use ztmesh_coordinator::identity::{FnLoginSink, Identity, LoginRejected, LoginSink};

/// TOTP secret of the MFA test user (base32 of 20 bytes).
pub const ALICE_TOTP: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/idp")
}

/// The npm packages of tests/idp the tests run: the IdP and the browser driver.
const NODE_PACKAGES: [&str; 2] = ["oidc-provider", "puppeteer-core"];

/// Installs the IdP's npm dependencies once per test binary if any is missing.
fn ensure_node_modules() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = idp_dir();
        let modules = dir.join("node_modules");
        if NODE_PACKAGES
            .iter()
            .all(|p| modules.join(p).join("package.json").exists())
        {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!(
                "the OIDC and browser tests need the test IdP's npm packages: run `cd tests/idp && npm ci` \
                 (node >= 20.19 and npm required); `npm ci` failed: {other:?}"
            ),
        }
    });
}

/// A running test IdP process, killed on drop.
pub struct Idp {
    child: Child,
    pub issuer: String,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

/// Waits for the IdP's ready line on its stdout; gives up when it exits or the time is up.
fn wait_ready(child: &mut Child, timeout: Duration) -> Result<String, String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ztmesh-test-idp ready issuer=") {
                let issuer = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(issuer);
            }
        }
    });
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(issuer) = rx.recv_timeout(Duration::from_millis(100)) {
            return Ok(issuer);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}) before serving"));
        }
    }
    Err(format!("no ready line within {timeout:?}"))
}

impl Idp {
    /// Starts the IdP with the given clients and users (JSON values as in tests/idp/README.md).
    pub fn start(clients: Value, users: Value) -> Idp {
        Self::start_on(clients, users, 0)
    }

    /// Starts the IdP on a given port (0: any free one).
    ///
    /// A node process that neither serves nor exits within a minute is killed and started once
    /// more (a loaded 2-core CI machine was once seen stalling one start out of hundreds before
    /// the provider was built); the panic says what each attempt did.
    pub fn start_on(clients: Value, users: Value, port: u16) -> Idp {
        ensure_node_modules();
        let dir = tempfile::tempdir().unwrap();
        let clients_path = dir.path().join("clients.json");
        let users_path = dir.path().join("users.json");
        let token_path = dir.path().join("admin-token");
        std::fs::write(&clients_path, clients.to_string()).unwrap();
        std::fs::write(&users_path, users.to_string()).unwrap();
        std::fs::write(&token_path, ADMIN_TOKEN).unwrap();
        let log = dir.path().join("idp.log");
        let mut attempts = Vec::new();
        for attempt in 1..=2 {
            let mut child = Command::new("node")
                .arg(idp_dir().join("server.mjs"))
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--clients",
                ])
                .arg(&clients_path)
                .arg("--users")
                .arg(&users_path)
                .arg("--admin-token-file")
                .arg(&token_path)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("cannot run `node` (Node.js >= 20.19 is needed for the OIDC tests)");
            match wait_ready(&mut child, Duration::from_secs(60)) {
                Ok(issuer) => {
                    return Idp {
                        child,
                        issuer,
                        dir,
                        log,
                    }
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    attempts.push(format!("attempt {attempt}: {why}; its log:\n{log}"));
                }
            }
        }
        panic!("test IdP did not become ready:\n{}", attempts.join("\n"));
    }

    pub fn port(&self) -> u16 {
        Url::parse(&self.issuer).unwrap().port().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Disables a user at the IdP through its admin endpoint.
    pub async fn disable_user(&self, login: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/admin/users/{login}/disable", self.issuer))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "disable {login}: {}",
            resp.text().await.unwrap()
        );
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- test IdP log ----\n{}", self.log());
        }
    }
}

/// The standard users: alice has TOTP (MFA), bob has a password only, carol is disabled.
pub fn users() -> Value {
    json!({"users": [
        {"login": "alice", "password": "alice-pw", "totp_secret": ALICE_TOTP,
         "email": "alice@example.test", "groups": ["eng", "ops", "Domain Users"]},
        {"login": "bob", "password": "bob-pw", "email": "bob@example.test", "groups": ["eng"]},
    ]})
}

/// What a finished login handed to the control plane.
pub type Completed = Arc<Mutex<Vec<(String, Identity)>>>;

/// The relying party under test: an `OidcProvider` and its routes served on loopback.
pub struct Rp {
    pub provider: Arc<OidcProvider>,
    pub base: String,
    pub completed: Completed,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Rp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Binds the RP's listener first, so that its redirect URI is known before the IdP's client
/// registrations are written.
pub async fn rp_listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

pub fn rp_config(issuer: &str, client_id: &str, base: &str) -> OidcConfig {
    let mut cfg = OidcConfig::new(issuer, client_id, base);
    cfg.allow_http_issuer = true;
    cfg
}

pub async fn rp_serve(listener: tokio::net::TcpListener, cfg: OidcConfig) -> Rp {
    let base = format!("http://{}", listener.local_addr().unwrap());
    let provider = Arc::new(OidcProvider::discover(cfg).await.expect("discovery"));
    let completed: Completed = Arc::default();
    let sink_store = completed.clone();
    let sink = Arc::new(FnLoginSink(move |login_id: String, identity: Identity| {
        let store = sink_store.clone();
        async move {
            if login_id.contains("refuse") {
                return Err(LoginRejected("posture check failed".into()));
            }
            store.lock().unwrap().push((login_id, identity));
            Ok(())
        }
    }));
    let server = serve_routes(listener, provider.clone(), sink);
    Rp {
        provider,
        base,
        completed,
        server,
    }
}

/// The test IdP (standard users, one client `ztmesh`) and a relying party for it on loopback,
/// its configuration adjusted by `tweak`.
pub async fn idp_and_rp(tweak: impl FnOnce(&mut OidcConfig)) -> (Idp, Rp) {
    let (listener, base) = rp_listener().await;
    let idp = Idp::start(json!([client("ztmesh", &base)]), users());
    let mut cfg = rp_config(&idp.issuer, "ztmesh", &base);
    tweak(&mut cfg);
    let rp = rp_serve(listener, cfg).await;
    (idp, rp)
}

/// Serves the RP's routes with `sink` as the control plane.
pub fn serve_routes(
    listener: tokio::net::TcpListener,
    provider: Arc<OidcProvider>,
    sink: Arc<dyn LoginSink>,
) -> tokio::task::JoinHandle<()> {
    let app = router(provider, sink);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

/// A client entry for the IdP's clients file.
pub fn client(id: &str, base: &str) -> Value {
    json!({"client_id": id, "redirect_uris": [format!("{base}/oidc/callback")]})
}

/// The current TOTP code for `secret`, computed by the IdP's own RFC 6238 module (so the test
/// does not depend on a TOTP crate's feature-dependent API).
pub fn totp_now(secret: &str) -> String {
    let module = idp_dir().join("totp.mjs");
    let script = format!(
        "import {{ totpAt }} from {:?}; process.stdout.write(totpAt({secret:?}, Math.floor(Date.now() / 30000)));",
        format!("file://{}", module.display())
    );
    let out = Command::new("node")
        .args(["--input-type=module", "-e", &script])
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A tiny browser: a cookie jar (per host:port, paths ignored: sending a cookie to more paths
/// of the same test server is harmless) and manual redirects, so a test can stop at the RP's
/// callback.
pub struct Browser {
    http: reqwest::Client,
    jar: HashMap<String, HashMap<String, String>>,
}

/// The last response a browser navigation ended on.
#[derive(Debug)]
pub struct Page {
    pub url: Url,
    pub status: u16,
    pub body: String,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Browser {
            http,
            jar: HashMap::new(),
        }
    }

    fn origin(url: &Url) -> String {
        format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        )
    }

    fn cookie_header(&self, url: &Url) -> Option<String> {
        let cookies = self.jar.get(&Self::origin(url))?;
        if cookies.is_empty() {
            return None;
        }
        Some(
            cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    fn store_cookies(&mut self, url: &Url, resp: &reqwest::Response) {
        let jar = self.jar.entry(Self::origin(url)).or_default();
        for value in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let mut parts = text.split(';');
            let Some((name, val)) = parts.next().and_then(|nv| nv.trim().split_once('=')) else {
                continue;
            };
            let expired = parts.any(|attr| {
                let attr = attr.trim().to_ascii_lowercase();
                attr == "max-age=0" || attr.starts_with("expires=thu, 01 jan 1970")
            });
            if expired || val.is_empty() {
                jar.remove(name);
            } else {
                jar.insert(name.to_string(), val.to_string());
            }
        }
    }

    async fn request(
        &mut self,
        method: reqwest::Method,
        url: Url,
        form: Option<&[(&str, &str)]>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, url.clone());
        if let Some(cookie) = self.cookie_header(&url) {
            req = req.header(reqwest::header::COOKIE, cookie);
        }
        if let Some(form) = form {
            req = req.form(form);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {url}: {e}"));
        self.store_cookies(&url, &resp);
        resp
    }

    /// Navigates (GET, or POST of a form) and follows redirects. Stops before requesting a URL
    /// for which `stop_at` returns true and returns that URL as `Err`.
    pub async fn navigate(
        &mut self,
        url: Url,
        form: Option<&[(&str, &str)]>,
        stop_at: impl Fn(&Url) -> bool,
    ) -> Result<Page, Url> {
        let mut resp = match form {
            Some(f) => {
                self.request(reqwest::Method::POST, url.clone(), Some(f))
                    .await
            }
            None => {
                if stop_at(&url) {
                    return Err(url);
                }
                self.request(reqwest::Method::GET, url.clone(), None).await
            }
        };
        let mut current = url;
        for _ in 0..20 {
            if !resp.status().is_redirection() {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap();
                return Ok(Page {
                    url: current,
                    status,
                    body,
                });
            }
            let location = resp.headers()[reqwest::header::LOCATION]
                .to_str()
                .unwrap()
                .to_string();
            let next = current.join(&location).unwrap();
            if stop_at(&next) {
                return Err(next);
            }
            resp = self.request(reqwest::Method::GET, next.clone(), None).await;
            current = next;
        }
        panic!("too many redirects from {current}");
    }
}

/// Where the IdP's redirect to the RP would go, split into its parameters.
#[derive(Debug, Clone)]
pub struct CallbackParams {
    pub url: Url,
    pub code: String,
    pub state: String,
    pub iss: Option<String>,
}

impl CallbackParams {
    fn from_url(url: Url) -> Self {
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        CallbackParams {
            code: q
                .get("code")
                .cloned()
                .unwrap_or_else(|| panic!("no code in {url}")),
            state: q["state"].clone(),
            iss: q.get("iss").cloned(),
            url,
        }
    }
}

fn is_callback(url: &Url) -> bool {
    url.path() == "/oidc/callback"
}

/// Opens `{rp}/oidc/start/{login_id}` in a fresh browser (no IdP session yet) and submits
/// the IdP's login form with the given credentials. With `stop_at_callback`, returns the
/// callback URL without visiting it.
pub async fn sign_in(
    rp_base: &str,
    login_id: &str,
    login: &str,
    password: &str,
    otp: &str,
    stop_at_callback: bool,
) -> Result<Page, CallbackParams> {
    let mut browser = Browser::new();
    let start = Url::parse(&format!("{rp_base}/oidc/start/{login_id}")).unwrap();
    let form_page = browser
        .navigate(start, None, |_| false)
        .await
        .expect("no stop before the form");
    assert_eq!(form_page.status, 200, "IdP login form: {form_page:?}");
    assert!(
        form_page.url.path().starts_with("/interaction/"),
        "{form_page:?}"
    );
    let action = form_page
        .url
        .join(&format!("{}/login", form_page.url.path()))
        .unwrap();
    let form = [("login", login), ("password", password), ("otp", otp)];
    let stop = move |u: &Url| stop_at_callback && is_callback(u);
    browser
        .navigate(action, Some(&form), stop)
        .await
        .map_err(CallbackParams::from_url)
}
