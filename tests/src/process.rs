//! Supervision of one real process running inside a lab namespace: its log file, readiness
//! by polling, and termination (SIGTERM, then SIGKILL) when it is stopped or dropped.

use crate::{wait, LabError};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A process started with `ip netns exec NS ...`; stdout and stderr go to one log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    ns: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `program args` in namespace `ns` with extra environment `env`, logging to
    /// `log_path`. `ip netns exec` execs the program, so the child's pid is the program's.
    pub fn spawn(
        ns: &str,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_path: &Path,
    ) -> Result<Process, LabError> {
        let mut log = File::create(log_path)?;
        writeln!(
            log,
            "# {name} in {ns}: {} {}",
            program.display(),
            args.join(" ")
        )?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            // Plain log files: no terminal colour codes.
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| LabError::Setup(format!("cannot start {}: {e}", program.display())))?;
        Ok(Process {
            name: name.to_string(),
            ns: ns.to_string(),
            child,
            log: log_path.to_path_buf(),
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exited = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// The exit status, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.exited
    }

    /// Waits until the log contains `needle`; fails early if the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<(), LabError> {
        let what = format!("`{needle}` in the log of {}", self.name);
        let mut exited = false;
        let r = wait::until(&what, timeout, || {
            if self.log().contains(needle) {
                return Some(());
            }
            if !self.is_running() {
                exited = true;
                return Some(());
            }
            None
        });
        if exited && !self.log().contains(needle) {
            return Err(LabError::Setup(format!(
                "{} exited ({:?}) before logging `{needle}`; log:\n{}",
                self.name,
                self.exited,
                tail(&self.log(), 40)
            )));
        }
        r
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, LabError> {
        let what = format!("{} to exit", self.name);
        wait::until(&what, timeout, || self.exit_status())
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if !self.is_running() {
            return self.exited;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.is_running() {
                return self.exited;
            }
            std::thread::sleep(wait::POLL);
        }
        self.kill()
    }

    /// SIGKILL at once (a crash, as far as the process can tell).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.is_running() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
