//! What a new operator runs into, against a real `ztmesh-coordinator serve` process: admin
//! commands piped into `head` exit quietly, `serve` refuses a bad public address or base URL
//! (flag, variable or file), everything it makes in the data directory is private whatever
//! the umask, a remote CLI without `--pin` is told the certificate is not trusted, `policy
//! set` takes a policy of a few MiB and refuses one over the limit before sending, and
//! `flows` shows denied and allowed events and filters by verdict.

mod admin_support;

use admin_support::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use ztmesh_common::time::UnixMillis;
use ztmesh_common::wire::{ClientMsg, FlowEvent, FlowVerdict, ServerMsg};

const POLICY: &str = r#"{
  "groups": { "group:eng": ["alice@example.com"] },
  "tagOwners": { "tag:server": ["group:eng"] },
  "acls": [ { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"] } ],
}"#;

/// Run the CLI with its stdout a pipe whose reader is already gone (`... | head -0`).
fn run_into_closed_pipe(args: &[&str], dir: &Path) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet_sigpipe(what: &str, o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{what}: {err}"
    );
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{what}: ended by SIGPIPE like any Unix tool, not {:?}: {err}",
        o.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_die_quietly_on_a_closed_pipe_and_serve_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    // serve's own stdout is a closed pipe too: it must start and keep serving.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut serve = Reap(
        serve_command(&dir)
            .args(["--public-addr", "127.0.0.1:7443", "--policy"])
            .arg(&policy)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = insecure_http();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            serve.0.try_wait().unwrap().is_none(),
            "serve died with its stdout closed"
        );
        let url = std::fs::read_to_string(dir.join("http-url")).unwrap_or_default();
        if !url.trim().is_empty() {
            let r = http.get(format!("{}/healthz", url.trim())).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An audited action, so that `audit tail` has a line to print.
    let o = Command::new(BIN)
        .args(["preauth", "create", "--tags", "tag:server", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for args in [
        &["audit", "tail", "-n", "1000"][..],
        &["devices", "list"],
        &["policy", "get"],
        &["join-url"],
    ] {
        let o = run_into_closed_pipe(args, &dir);
        assert_quiet_sigpipe(&args.join(" "), &o);
    }
    // The offline check of a file, too (the data dir is ignored there).
    let o = Command::new(BIN)
        .args(["policy", "check"])
        .arg(&policy)
        .stdout(Stdio::from({
            let (r, w) = std::io::pipe().unwrap();
            drop(r);
            w
        }))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_quiet_sigpipe("policy check", &o);

    assert!(serve.0.try_wait().unwrap().is_none(), "serve still running");
}

/// Kills the process when dropped, so that a failed assertion leaves no server behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Reap(
        serve_command(dir)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // A serve that accepted the value would run on: give it a few seconds, not forever.
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "serve accepted {args:?} {env:?} and is running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.0.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {out}{err}");
    assert!(!out.contains("join URL"), "{out}");
    assert!(!dir.join("public-addr").exists(), "nothing recorded");
    err
}

#[test]
fn serve_refuses_a_bad_public_addr_or_base_url_from_flag_variable_or_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let e = serve_refused(&dir, &["--public-addr", "bad host:port"], &[]);
    assert!(e.contains("public address \"bad host:port\""), "{e}");
    let e = serve_refused(
        &dir,
        &["--public-addr", "127.0.0.1:7443"],
        &[("ZTMESH_HTTP_BASE_URL", "javascript:alert(1)")],
    );
    assert!(e.contains("HTTP base URL \"javascript:alert(1)\""), "{e}");
    assert!(e.contains("http(s)"), "{e}");
    let e = serve_refused(&dir, &[], &[("ZTMESH_PUBLIC_ADDR", "coord:0")]);
    assert!(e.contains("invalid port"), "{e}");
    let e = serve_refused(
        &dir,
        &[
            "--public-addr",
            "127.0.0.1:7443",
            "--http-base-url",
            "https://coord.example.com/?next=x",
        ],
        &[],
    );
    assert!(e.contains("query or fragment"), "{e}");
    let cfg = write(
        tmp.path(),
        "c.toml",
        "public_addr = \"[::1:7443\"\nhttp_base_url = \"https://coord.example.com\"\n",
    );
    let e = serve_refused(&dir, &["--config", cfg.to_str().unwrap()], &[]);
    assert!(e.contains("public address \"[::1:7443\""), "{e}");
}

/// Every directory and file under `dir`, with its mode.
fn modes(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        out.push((
            e.path().display().to_string(),
            md.permissions().mode() & 0o777,
            md.is_dir(),
        ));
        if md.is_dir() {
            modes(&e.path(), out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_serve_makes_in_the_data_dir_is_private_under_umask_022() {
    // Inherited by the serve process (the usual default of a login shell).
    // SAFETY: sets this test process's file-mode mask; no other test here depends on it.
    unsafe {
        libc::umask(0o022);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let srv = Server::start(&dir, Some(&policy)).await;
    // A write to the database (a TOTP secret), so sled has made its files.
    srv.cli_stdin(
        &["users", "add", "alice@example.com", "--password-stdin"],
        "correct horse battery staple\n",
    );
    let mut all = vec![];
    modes(&dir, &mut all);
    assert!(
        all.iter().any(|(p, _, d)| *d && p.ends_with("/db")),
        "{all:?}"
    );
    assert!(all.iter().filter(|(_, _, d)| !*d).count() > 3, "{all:?}");
    let open: Vec<_> = all.iter().filter(|(_, m, _)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode & 0o077, 0, "the data dir itself: {dir_mode:o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_cli_without_pin_is_told_the_certificate_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = Server::start(&dir, None).await;
    let remote = |extra: &[&str]| {
        Command::new(BIN)
            .args(["devices", "list", "--api", &srv.url, "--token-file"])
            .arg(dir.join("admin.token"))
            .args(extra)
            .env_remove("ZTMESH_DATA_DIR")
            .output()
            .unwrap()
    };
    let o = remote(&[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("certificate is not trusted"), "{e}");
    assert!(e.contains("--pin sha256:"), "{e}");
    assert!(e.contains("http-cert-fp"), "{e}");
    assert!(!e.contains("is it running"), "{e}");
    // The value it points at works.
    let fp = std::fs::read_to_string(dir.join("http-cert-fp")).unwrap();
    let o = remote(&["--pin", fp.trim()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_set_takes_a_few_mib_and_refuses_more_before_sending() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = Server::start(&dir, None).await;
    // 1.5 MB: over the 1 MiB of the other endpoints, under the policy endpoints' 8 MiB.
    let pad = "// padding padding padding padding padding padding padding padding\n";
    let big = format!("{}{POLICY}\n", pad.repeat(1_500_000 / pad.len()));
    assert!(big.len() > 1_400_000);
    let f = write(tmp.path(), "big.hujson", &big);
    let out = srv.ok(&["policy", "set", f.to_str().unwrap()]);
    assert!(out.contains("policy v1 is in force"), "{out}");

    let huge = format!("{}{POLICY}\n", pad.repeat(9 * 1024 * 1024 / pad.len()));
    let f = write(tmp.path(), "huge.hujson", &huge);
    let o = srv.cli(&["policy", "set", f.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("too large") && e.contains("8 MiB"), "{e}");
    assert!(
        !e.contains("is it running") && !e.contains("Broken pipe"),
        "{e}"
    );
    // Not sent: v1 is still the only version.
    let history = srv.ok(&["policy", "history"]);
    assert_eq!(history.lines().count(), 1, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_shows_denied_and_allowed_and_filters_by_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let srv = Server::start(&dir, Some(&policy)).await;
    let key = last_line(&srv.ok(&["preauth", "create", "--tags", "tag:server"]));
    let (mut dev, first) = join(&srv, "web-1", &key).await;
    assert!(matches!(first, ServerMsg::Credential(_)), "{first:?}");
    let ev = |at: u64, port: u16, verdict| FlowEvent {
        at: UnixMillis(at),
        src: "100.64.0.2".parse().unwrap(),
        dst: "100.64.0.1".parse().unwrap(),
        proto: 6,
        dst_port: Some(port),
        verdict,
        count: 1,
    };
    dev.send(&ClientMsg::FlowLog(vec![
        ev(1_000, 22, FlowVerdict::Denied),
        ev(2_000, 443, FlowVerdict::Allowed),
    ]))
    .await
    .unwrap();
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        srv.ok(args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let all = loop {
        let all = lines(&["flows", "--json"]);
        if all.len() == 2 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let verdicts: Vec<_> = all.iter().map(|r| r["verdict"].clone()).collect();
    assert_eq!(
        verdicts,
        ["allowed", "denied"],
        "both, newest first: {all:?}"
    );
    let denied = lines(&["flows", "--json", "--verdict", "denied"]);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["dst_port"], 22);
    let allowed = lines(&["flows", "--json", "--verdict", "allowed", "-n", "1"]);
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0]["dst_port"], 443);
    let bad = srv.cli(&["flows", "--verdict", "dropped"]);
    assert!(!bad.status.success());
}
