//! Harness of the admin tests: a real `ztmesh-coordinator serve` process on loopback, the
//! admin CLI run against it, and a QUIC test device.

#![allow(dead_code)] // each test binary uses a different part

use rustls::pki_types::CertificateDer;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use ztmesh_common::posture::PostureAttrs;
use ztmesh_common::wire::{ClientMsg, CredentialGrant, LoginAuth, ServerMsg, Welcome};
use ztmesh_coordinator::control::testkit::{client_endpoint, login_request, TestClient};

pub const BIN: &str = env!("CARGO_BIN_EXE_ztmesh-coordinator");

/// Listeners on loopback, on ports the kernel picks: tests never collide.
pub const LOOPBACK_LISTEN: [&str; 4] = [
    "--control-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
];

/// `serve --data-dir DIR` on loopback listeners, for tests that run it themselves (to watch it
/// fail, or with their own stdio).
pub fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--data-dir"])
        .arg(dir)
        .args(LOOPBACK_LISTEN)
        .env("NO_COLOR", "1");
    cmd
}

/// A running coordinator; killed on drop.
pub struct Server {
    child: Child,
    pub dir: PathBuf,
    pub url: String,
    pub control: std::net::SocketAddr,
}

impl Server {
    pub async fn start(dir: &Path, policy: Option<&Path>) -> Server {
        Self::start_with(dir, policy, &[]).await
    }

    pub async fn start_with(dir: &Path, policy: Option<&Path>, extra: &[&str]) -> Server {
        let mut args: Vec<String> = LOOPBACK_LISTEN.map(String::from).to_vec();
        args.extend(["--public-addr", "127.0.0.1:7443"].map(String::from));
        if let Some(p) = policy {
            args.push("--policy".into());
            args.push(p.to_string_lossy().into_owned());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_args(dir, &args).await
    }

    /// `serve --data-dir DIR ARGS...`; returns once `/healthz` answers.
    pub async fn start_args(dir: &Path, args: &[String]) -> Server {
        Self::start_env(dir, args, &[]).await
    }

    /// [`Server::start_args`] with these environment variables set.
    pub async fn start_env(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Server {
        let _ = std::fs::remove_file(dir.join("http-url"));
        let _ = std::fs::remove_file(dir.join("control-addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--data-dir"])
            .arg(dir)
            .args(args)
            .env("NO_COLOR", "1")
            .env("ZTMESH_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let http = insecure_http();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("coordinator exited with {st:?}: {}", log_of(dir));
            }
            if let (Some(url), Some(control)) = (read("http-url"), read("control-addr")) {
                let ok = http
                    .get(format!("{url}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    return Server {
                        child,
                        dir: dir.to_owned(),
                        url,
                        control: control.parse().unwrap(),
                    };
                }
            }
            assert!(
                Instant::now() < deadline,
                "coordinator did not start: {}",
                log_of(dir)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, "")
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Run and require success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn cert(&self) -> CertificateDer<'static> {
        CertificateDer::from(std::fs::read(self.dir.join("tls.crt.der")).unwrap())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn wait_exit(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::mem::forget(self);
                return st;
            }
            assert!(Instant::now() < deadline, "coordinator did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for the test's own probes of the self-signed server (the CLI pins it).
pub fn insecure_http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_owned()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Join over real QUIC with a pre-auth key; the first answer.
pub async fn join(srv: &Server, hostname: &str, key: &str) -> (TestClient, ServerMsg) {
    let ep = client_endpoint(srv.cert()).unwrap();
    let mk = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let (mut c, _welcome) = TestClient::connect(&ep, srv.control, mk).await.unwrap();
    c.send(&ClientMsg::Login(login_request(
        hostname,
        LoginAuth::AuthKey(key.to_owned()),
        PostureAttrs::new(),
    )))
    .await
    .unwrap();
    let first = c.recv().await.unwrap();
    (c, first)
}

pub async fn wait_for_revoked(c: &mut TestClient, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Ok(Some(ServerMsg::Revoked { reason })) => return reason,
            Ok(Some(_)) => continue,
            other => panic!("no Revoked within {within:?}: {other:?}"),
        }
    }
}

/// A device that asked for an interactive login: its connection, the server's welcome and
/// the login URL it was given.
pub async fn interactive_login(srv: &Server, hostname: &str) -> (TestClient, Welcome, String) {
    let ep = client_endpoint(srv.cert()).unwrap();
    let mk = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let (mut dev, welcome) = TestClient::connect(&ep, srv.control, mk).await.unwrap();
    dev.send(&ClientMsg::Login(login_request(
        hostname,
        LoginAuth::Interactive,
        PostureAttrs::new(),
    )))
    .await
    .unwrap();
    let url = match dev.recv().await.unwrap() {
        ServerMsg::LoginUrl { url } => url,
        other => panic!("expected LoginUrl, got {other:?}"),
    };
    (dev, welcome, url)
}

/// A device that asked for an interactive login; its login id.
pub async fn interactive(srv: &Server, hostname: &str) -> (TestClient, String) {
    let (dev, _, url) = interactive_login(srv, hostname).await;
    let id = url
        .strip_prefix(&format!("{}/login/", srv.url))
        .unwrap_or_else(|| panic!("{url} is not under {}", srv.url))
        .to_owned();
    (dev, id)
}

/// Waits for the credential a device gets once its login is complete.
pub async fn wait_for_credential(dev: &mut TestClient) -> CredentialGrant {
    loop {
        match dev.recv().await.unwrap() {
            ServerMsg::Credential(g) => return g,
            ServerMsg::LoginUrl { .. } => continue,
            other => panic!("expected a credential, got {other:?}"),
        }
    }
}
