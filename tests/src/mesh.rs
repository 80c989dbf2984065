//! The real ztmesh processes in the lab: the coordinator (`ztmesh-coordinator serve` on the
//! `coord` host, with its admin CLI) and client daemons (`ztmesh daemon` + `ztmesh up/status`),
//! each with a posture fixture root.

use crate::lab::COORD_ADDR;
use crate::{bins, wait, Idp, Lab, LabError, ProbeOutcome, Process};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// QUIC control port and HTTP port of the coordinator in the lab.
pub const CONTROL_PORT: u16 = 7443;
pub const HTTP_PORT: u16 = 7080;
/// The data plane's UDP port on every client.
pub const WG_PORT: u16 = 41641;

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    pub process: Process,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub join_url: String,
    /// `http://203.0.113.10:7080`
    pub http_base: String,
}

/// The HTTP base URL and OIDC redirect URI of the lab's coordinator.
pub fn coordinator_http_base() -> String {
    format!("http://{COORD_ADDR}:{HTTP_PORT}")
}

pub fn oidc_redirect_uri() -> String {
    format!("{}/oidc/callback", coordinator_http_base())
}

impl Lab {
    /// Writes the coordinator's configuration (policy file; OIDC against `idp` if given) and
    /// starts `ztmesh-coordinator serve` on `coord`; returns once the HTTP listener answers
    /// from the internet and the join URL is known.
    pub fn start_coordinator(
        &self,
        policy: &str,
        idp: Option<&Idp>,
    ) -> Result<Coordinator, LabError> {
        let dir = self.subdir("coordinator")?;
        let data_dir = dir.join("data");
        let policy_path = dir.join("policy.hujson");
        std::fs::write(&policy_path, policy)?;
        let http_base = coordinator_http_base();
        let mut cfg = format!(
            "data_dir = {:?}\ncontrol_listen = \"0.0.0.0:{CONTROL_PORT}\"\n\
             http_listen = \"0.0.0.0:{HTTP_PORT}\"\npublic_addr = \"{COORD_ADDR}:{CONTROL_PORT}\"\n\
             http_base_url = \"{http_base}\"\n\
             # The lab has no TLS-terminating proxy; plain HTTP stays inside the namespaces.\n\
             http_insecure_behind_proxy = true\npolicy = {:?}\n",
            data_dir.to_string_lossy(),
            policy_path.to_string_lossy()
        );
        if let Some(idp) = idp {
            cfg.push_str(&format!(
                "\n[oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nredirect_base = \"{http_base}\"\n\
                 # The lab's IdP speaks plain HTTP inside the namespaces.\nallow_http_issuer = true\n",
                idp.issuer, idp.client_id
            ));
        }
        let config = dir.join("coordinator.toml");
        std::fs::write(&config, cfg)?;
        let process = self.spawn_coordinator(&config, "coordinator")?;
        let mut c = Coordinator {
            process,
            data_dir,
            config,
            join_url: String::new(),
            http_base,
        };
        c.wait_ready(self)?;
        c.join_url = c.read_join_url(self)?;
        Ok(c)
    }
}

impl Lab {
    fn spawn_coordinator(&self, config: &Path, name: &str) -> Result<Process, LabError> {
        let bin = bins::binary("ztmesh-coordinator")?;
        self.spawn_env(
            "coord",
            name,
            &bin,
            &["serve", "--config", &config.to_string_lossy()],
            &[("ZTMESH_LOG", "info,ztmesh_coordinator=debug")],
        )
    }
}

impl Coordinator {
    /// Kills the coordinator with SIGKILL (no chance to flush or say goodbye) and starts it
    /// again on the same data directory and configuration; returns once it serves again.
    /// The new process logs to `coordinator-N` so the old log stays readable.
    pub fn kill_and_restart(&mut self, lab: &Lab, generation: u32) -> Result<(), LabError> {
        self.process.kill();
        self.process = lab.spawn_coordinator(&self.config, &format!("coordinator-{generation}"))?;
        self.wait_ready(lab)
    }

    fn wait_ready(&mut self, lab: &Lab) -> Result<(), LabError> {
        let addr = format!("{COORD_ADDR}:{HTTP_PORT}");
        let mut exited = false;
        let r = wait::until(
            "the coordinator's HTTP listener",
            Duration::from_secs(30),
            || {
                if !self.process.is_running() {
                    exited = true;
                    return Some(());
                }
                matches!(
                    lab.probe_tcp("idp", &addr, Duration::from_millis(500)),
                    Ok(ProbeOutcome::Ok { .. })
                )
                .then_some(())
            },
        );
        if exited {
            return Err(LabError::Setup(format!(
                "coordinator exited at start:\n{}",
                crate::process::tail(&self.process.log(), 30)
            )));
        }
        r
    }

    fn read_join_url(&self, lab: &Lab) -> Result<String, LabError> {
        let out = self.admin(lab, &["join-url"])?;
        out.split_whitespace()
            .find(|w| w.starts_with("ztmesh://"))
            .map(str::to_string)
            .ok_or_else(|| LabError::Setup(format!("no join URL in `join-url` output: {out}")))
    }

    /// Runs an admin command (`ztmesh-coordinator ARGS --data-dir D`) on the coordinator host
    /// (the admin CLI finds the API address and admin token in the data directory);
    /// returns its stdout, or an error with its stderr when it fails.
    pub fn admin(&self, lab: &Lab, args: &[&str]) -> Result<String, LabError> {
        self.admin_cli().run(lab, args)
    }

    /// Like [`Coordinator::admin`], whatever the exit status.
    pub fn admin_output(&self, lab: &Lab, args: &[&str]) -> Result<std::process::Output, LabError> {
        self.admin_cli().output(lab, args)
    }

    /// The admin CLI of this coordinator, usable from another thread while the coordinator
    /// itself is restarted.
    pub fn admin_cli(&self) -> AdminCli {
        AdminCli {
            data_dir: self.data_dir.clone(),
        }
    }

    /// A pre-auth key for devices tagged `tags`.
    pub fn preauth_key(&self, lab: &Lab, tags: &[&str]) -> Result<String, LabError> {
        let tags = tags.join(",");
        let out = self.admin(lab, &["preauth", "create", "--tags", &tags])?;
        // The key is alone on the last line.
        out.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| LabError::Setup(format!("no key in: {out}")))
    }

    /// Replaces the running policy.
    pub fn set_policy(&self, lab: &Lab, text: &str) -> Result<String, LabError> {
        let path = self
            .data_dir
            .with_file_name(format!("policy-{}.hujson", crate::now_ms()));
        std::fs::write(&path, text)?;
        self.admin(lab, &["policy", "set", &path.to_string_lossy()])
    }

    /// Revokes a device by node id.
    pub fn revoke(&self, lab: &Lab, node_id: u64) -> Result<String, LabError> {
        self.admin(lab, &["devices", "revoke", &node_id.to_string()])
    }
}

/// `ztmesh-coordinator ARGS --data-dir D`, run on the coordinator host.
#[derive(Clone, Debug)]
pub struct AdminCli {
    data_dir: PathBuf,
}

impl AdminCli {
    /// Stdout of a successful command, or an error with its output.
    pub fn run(&self, lab: &Lab, args: &[&str]) -> Result<String, LabError> {
        let out = self.output(lab, args)?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("ztmesh-coordinator {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: output_text(&out),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The command's output, whatever its exit status.
    pub fn output(&self, lab: &Lab, args: &[&str]) -> Result<std::process::Output, LabError> {
        let bin = bins::binary("ztmesh-coordinator")?;
        let dir = self.data_dir.to_string_lossy().into_owned();
        let mut full = args.to_vec();
        full.extend(["--data-dir", &dir]);
        lab.exec("coord", &bin, &full, Duration::from_secs(30))
    }
}

/// What a client's posture probes find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posture {
    /// Encrypted root file system (LUKS under LVM), firewall on, fresh updates.
    Compliant,
    /// The same laptop with a plain, unencrypted root file system.
    NoDiskEncryption,
}

/// Writes a posture fixture root (the files the client's probes read) for `posture`.
pub fn write_posture_fixture(root: &Path, posture: Posture) -> Result<(), LabError> {
    let w = |rel: &str, text: &str| -> Result<(), LabError> {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, text)?;
        Ok(())
    };
    w(
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    )?;
    w("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n")?;
    w("proc/1/comm", "systemd\n")?;
    w(
        "nft-ruleset",
        "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n",
    )?;
    w("var/lib/dpkg/status", "Package: bash\n")?;
    match posture {
        Posture::Compliant => {
            w(
                "proc/mounts",
                "sysfs /sys sysfs rw 0 0\n/dev/mapper/vg-root / ext4 rw,relatime 0 0\n",
            )?;
            w("sys/block/dm-0/dm/name", "nvme0n1p3_crypt\n")?;
            w(
                "sys/block/dm-0/dm/uuid",
                "CRYPT-LUKS2-3f2a9c0d1e2b4c5d6e7f8a9b0c1d2e3f-nvme0n1p3_crypt\n",
            )?;
            w("sys/block/dm-1/dm/name", "vg-root\n")?;
            w("sys/block/dm-1/dm/uuid", "LVM-abcdef\n")?;
            w("sys/block/dm-1/slaves/dm-0", "")?;
        }
        Posture::NoDiskEncryption => {
            w(
                "proc/mounts",
                "sysfs /sys sysfs rw 0 0\n/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n",
            )?;
        }
    }
    Ok(())
}

/// A client daemon on a lab host.
#[derive(Debug)]
pub struct Client {
    pub host: String,
    pub daemon: Process,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

/// The parts of `ztmesh status --json` the tests look at.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub state: String,
    pub connected: bool,
    pub connected_since_ms: Option<u64>,
    pub login_url: Option<String>,
    pub refused: Vec<String>,
    pub revoked: Option<String>,
    #[serde(rename = "self")]
    pub self_: SelfStatus,
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SelfStatus {
    pub name: String,
    pub node_id: Option<u64>,
    pub addresses: Vec<String>,
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub expires_at_ms: Option<u64>,
    pub wg_public_key: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub name: String,
    pub node_id: u64,
    pub addresses: Vec<String>,
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub wg_public_key: String,
    pub last_handshake_ms: Option<u64>,
}

impl Status {
    /// This node's overlay IPv4 address.
    pub fn overlay_v4(&self) -> Option<String> {
        self.self_
            .addresses
            .iter()
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .find(|a| a.starts_with("100."))
    }

    pub fn has_peer(&self, name: &str) -> bool {
        self.peers.iter().any(|p| p.name == name)
    }
}

impl Lab {
    /// Starts `ztmesh daemon` on `host` with a posture fixture; returns once its control
    /// socket answers.
    pub fn start_client(&self, host: &str, posture: Posture) -> Result<Client, LabError> {
        let dir = self.subdir(&format!("client-{host}"))?;
        let fixture = dir.join("posture-root");
        write_posture_fixture(&fixture, posture)?;
        let socket = dir.join("ztmesh.sock");
        let state_dir = dir.join("state");
        let bin = bins::binary("ztmesh")?;
        let port = WG_PORT.to_string();
        let daemon = self.spawn_env(
            host,
            &format!("ztmesh-{host}"),
            &bin,
            &[
                "daemon",
                "--socket",
                &socket.to_string_lossy(),
                "--state-dir",
                &state_dir.to_string_lossy(),
                "--tun",
                "zt0",
                "--port",
                &port,
                "--posture-root",
                &fixture.to_string_lossy(),
            ],
            &[("ZTMESH_LOG", "info,ztmesh_client=debug")],
        )?;
        let client = Client {
            host: host.to_string(),
            daemon,
            socket,
            state_dir,
        };
        wait::until(
            &format!("the daemon on {host} to answer"),
            Duration::from_secs(20),
            || client.status(self).ok(),
        )?;
        Ok(client)
    }
}

impl Client {
    fn cli(
        &self,
        lab: &Lab,
        args: &[&str],
        timeout: Duration,
    ) -> Result<std::process::Output, LabError> {
        let bin = bins::binary("ztmesh")?;
        let sock = self.socket.to_string_lossy().into_owned();
        let mut full = args.to_vec();
        full.extend(["--socket", &sock]);
        lab.exec(&self.host, &bin, &full, timeout)
    }

    /// Any `ztmesh` command against this daemon; the exit code and combined output.
    pub fn run_cli(&self, lab: &Lab, args: &[&str]) -> Result<(i32, String), LabError> {
        let out = self.cli(lab, args, Duration::from_secs(30))?;
        Ok((out.status.code().unwrap_or(-1), output_text(&out)))
    }

    /// `ztmesh status --json`.
    pub fn status(&self, lab: &Lab) -> Result<Status, LabError> {
        let out = self.cli(lab, &["status", "--json"], Duration::from_secs(10))?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| LabError::Setup(format!("status --json does not parse: {e}")))
    }

    /// `ztmesh up` with a pre-auth key; returns the exit code and the combined output.
    pub fn up_with_key(
        &self,
        lab: &Lab,
        join_url: &str,
        key: &str,
    ) -> Result<(i32, String), LabError> {
        let out = self.cli(
            lab,
            &[
                "up",
                "--coordinator",
                join_url,
                "--auth-key",
                key,
                "--hostname",
                &self.host,
                "--timeout",
                "30",
            ],
            Duration::from_secs(40),
        )?;
        Ok((out.status.code().unwrap_or(-1), output_text(&out)))
    }

    /// Starts an interactive `ztmesh up` (it waits for the login); the login URL then shows
    /// in `status().login_url`.
    pub fn up_interactive(&self, lab: &Lab, join_url: &str) -> Result<Process, LabError> {
        let bin = bins::binary("ztmesh")?;
        lab.spawn(
            &self.host,
            &format!("up-{}", self.host),
            &bin,
            &[
                "up",
                "--socket",
                &self.socket.to_string_lossy(),
                "--coordinator",
                join_url,
                "--hostname",
                &self.host,
                "--timeout",
                "60",
            ],
        )
    }

    /// Waits until `check` holds for this client's status.
    pub fn wait_status(
        &self,
        lab: &Lab,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Status) -> bool,
    ) -> Result<Status, LabError> {
        wait::until(&format!("{}: {what}", self.host), timeout, || {
            self.status(lab).ok().filter(|s| check(s))
        })
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
