//! The identity provider of the lab: H6's npm `oidc-provider` server (`tests/idp/server.mjs`)
//! run with Node inside the `idp` host, with the users and clients a test gives it.

use crate::lab::IDP_ADDR;
use crate::{bins, wait, Lab, LabError, ProbeOutcome, Process};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// The port the IdP listens on inside its host.
pub const IDP_PORT: u16 = 9000;

/// A user of the IdP.
#[derive(Clone, Debug)]
pub struct IdpUser {
    pub login: String,
    pub password: String,
    /// Base32 TOTP secret: the user then has MFA and the ID token says `amr: ["pwd","otp"]`.
    pub totp_secret: Option<String>,
    pub groups: Vec<String>,
}

impl IdpUser {
    pub fn new(login: &str, password: &str, totp: Option<&str>, groups: &[&str]) -> Self {
        IdpUser {
            login: login.into(),
            password: password.into(),
            totp_secret: totp.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// A running IdP.
#[derive(Debug)]
pub struct Idp {
    pub process: Process,
    /// `http://203.0.113.20:9000`
    pub issuer: String,
    pub client_id: String,
    pub users: Vec<IdpUser>,
}

/// The test IdP's directory, with its npm packages installed.
pub fn idp_dir() -> Result<PathBuf, LabError> {
    let dir = bins::repo_root().join("tests/idp");
    if !dir.join("server.mjs").is_file() {
        return Err(LabError::Setup(format!("{} missing", dir.display())));
    }
    if !dir.join("node_modules/oidc-provider").is_dir() {
        return Err(LabError::Setup(format!(
            "the IdP's npm packages are not installed: run `npm ci` in {} (packaging/test.sh does)",
            dir.display()
        )));
    }
    Ok(dir)
}

impl Lab {
    /// Starts the IdP with `users` and one public client `ztmesh` allowed to redirect to
    /// `redirect_uris`; returns once discovery answers from another host.
    pub fn start_idp(&self, users: &[IdpUser], redirect_uris: &[String]) -> Result<Idp, LabError> {
        let dir = idp_dir()?;
        let cfg = self.subdir("idp")?;
        let users_json = json!({"users": users.iter().map(|u| json!({
            "login": u.login, "password": u.password, "totp_secret": u.totp_secret,
            "email": format!("{}@example.test", u.login), "groups": u.groups,
        })).collect::<Vec<_>>()});
        let clients_json = json!([{ "client_id": "ztmesh", "redirect_uris": redirect_uris }]);
        let users_path = cfg.join("users.json");
        let clients_path = cfg.join("clients.json");
        std::fs::write(&users_path, users_json.to_string())?;
        std::fs::write(&clients_path, clients_json.to_string())?;
        let issuer = format!("http://{IDP_ADDR}:{IDP_PORT}");
        let node = which("node")?;
        let server = dir.join("server.mjs");
        let port = IDP_PORT.to_string();
        let (u, c) = (
            users_path.to_string_lossy().into_owned(),
            clients_path.to_string_lossy().into_owned(),
        );
        let args = [
            &*server.to_string_lossy(),
            "--host",
            "0.0.0.0",
            "--port",
            &port,
            "--issuer",
            &issuer,
            "--users",
            &u,
            "--clients",
            &c,
        ];
        // A node process that stalls before serving (seen once on a loaded CI machine) is
        // stopped and started once more; one that fails twice fails the lab.
        let mut process = self.spawn("idp", "idp", &node, &args)?;
        if let Err(first) = process.wait_for_log("ztmesh-test-idp ready", Duration::from_secs(45)) {
            process.stop();
            eprintln!("lab: the IdP did not start ({first}); starting it once more");
            process = self.spawn("idp", "idp-retry", &node, &args)?;
            process.wait_for_log("ztmesh-test-idp ready", Duration::from_secs(45))?;
        }
        // Reachable from the internet segment, not only bound.
        let addr = format!("{IDP_ADDR}:{IDP_PORT}");
        wait::until(
            "the IdP to answer on the internet",
            Duration::from_secs(10),
            || {
                matches!(
                    self.probe_tcp("coord", &addr, Duration::from_millis(500)),
                    Ok(ProbeOutcome::Ok { .. })
                )
                .then_some(())
            },
        )?;
        Ok(Idp {
            process,
            issuer,
            client_id: "ztmesh".into(),
            users: users.to_vec(),
        })
    }
}

/// The full path of a program on `PATH`.
pub fn which(program: &str) -> Result<PathBuf, LabError> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| LabError::Setup(format!("`{program}` not found on PATH")))
}
