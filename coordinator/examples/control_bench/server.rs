//! The coordinator under test: the real `ztmesh-coordinator serve` as a child process on
//! loopback, so that its memory and CPU time are its own (read from /proc).

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Coordinator {
    child: Child,
    pub pid: u32,
    pub control: SocketAddr,
    pub data_dir: PathBuf,
}

/// The release binary next to this example (`target/release/examples/..` -> `target/release/`).
pub fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?;
    let bin = dir.join("ztmesh-coordinator");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p ztmesh-coordinator --bins --examples`",
            bin.display()
        );
    }
    Ok(bin)
}

impl Coordinator {
    /// Start `serve` on loopback with `policy` installed, and wait until it is ready.
    pub async fn start(work: &Path, policy: &str) -> anyhow::Result<Coordinator> {
        let data_dir = work.join("data");
        let policy_file = work.join("policy.hujson");
        std::fs::write(&policy_file, policy)?;
        let log = std::fs::File::create(work.join("coordinator.log"))?;
        // A profiler may wrap the coordinator (e.g. CONTROL_BENCH_WRAP="heaptrack -o FILE");
        // its memory figures then include the profiler's.
        let wrap: Vec<String> = std::env::var("CONTROL_BENCH_WRAP")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut cmd = match wrap.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(binary()?);
                c
            }
            None => Command::new(binary()?),
        };
        let mut child = cmd
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args([
                "--control-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--http-plain-loopback",
                "--policy",
            ])
            .arg(&policy_file)
            .env("ZTMESH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting ztmesh-coordinator serve")?;
        let pid = child.id().context("no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let control = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("ready: control=") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return Ok::<_, anyhow::Error>(addr.parse::<SocketAddr>()?);
                }
            }
            bail!("the coordinator exited before it was ready (see coordinator.log)")
        })
        .await
        .context("the coordinator was not ready within 30 s")??;
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Coordinator {
            child,
            pid,
            control,
            data_dir,
        })
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmRSS:").map(|k| k * 1024)
    }

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may contain spaces) start at ") ".
        let rest = stat.rsplit_once(") ").context("bad /proc/PID/stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("the coordinator exited with {status}");
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the coordinator did not stop within 20 s of SIGTERM")
            }
        }
    }
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad status line")?
        .parse()?)
}
