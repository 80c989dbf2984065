//! The admin CLI end to end against a real `ztmesh-coordinator serve` process on loopback:
//! users, pre-auth keys (and a device joining over QUIC with one), tokens and roles, policy
//! set refusal, devices list/revoke, the login page, audit verify, SIGTERM, and kill -9 with
//! every acknowledged write present after restart.

mod admin_support;

use admin_support::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use ztmesh_common::wire::ServerMsg;

const POLICY: &str = r#"{
  // comments are fine: HuJSON
  "groups": { "group:eng": ["alice@example.com"] },
  "tagOwners": { "tag:server": ["group:eng"] },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"] },
  ],
  "tests": [
    { "src": "alice@example.com", "accept": ["tag:server:22"], "deny": ["tag:server:80"] },
  ],
}"#;

/// A policy whose own test fails: must be refused, leaving the running one in force.
const POLICY_FAILING_TEST: &str = r#"{
  "groups": { "group:eng": ["alice@example.com"] },
  "tagOwners": { "tag:server": ["group:eng"] },
  "acls": [],
  "tests": [ { "src": "alice@example.com", "accept": ["tag:server:22"] } ],
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_end_to_end_against_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let srv = Server::start(&dir, Some(&policy)).await;

    // join-url names the public address and the certificate's fingerprint.
    let o = Command::new(BIN)
        .args(["join-url", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let join_url = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert!(
        join_url.starts_with("ztmesh://127.0.0.1:7443?fp=sha256:"),
        "{join_url}"
    );
    let fp = join_url.split("fp=").nth(1).unwrap().to_owned();

    // Users.
    let out = String::from_utf8(
        srv.cli_stdin(
            &[
                "users",
                "add",
                "alice@example.com",
                "--groups",
                "group:eng",
                "--password-stdin",
            ],
            "correct horse battery staple\n",
        )
        .stdout,
    )
    .unwrap();
    assert!(
        out.contains("otpauth://totp/ztmesh:alice%40example.com?secret="),
        "{out}"
    );
    let again = srv.cli_stdin(
        &["users", "add", "alice@example.com", "--password-stdin"],
        "x1234567890\n",
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let users = srv.json(&["users", "list", "--json"]);
    assert_eq!(users[0]["login"], "alice@example.com");
    assert_eq!(users[0]["disabled"], false);
    assert!(
        !users.to_string().contains("password"),
        "no hashes in listings"
    );

    // Pre-auth keys: only declared tags; the key alone on the last line.
    let out = srv.ok(&[
        "preauth",
        "create",
        "--tags",
        "tag:server",
        "--expires",
        "10m",
    ]);
    let key = last_line(&out);
    assert!(key.starts_with("ztk_") && !key.contains(' '), "{out}");
    let bad = srv.cli(&["preauth", "create", "--tags", "tag:nope"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("tagOwners"), "{}", stderr(&bad));
    let keys = srv.json(&["preauth", "list", "--json"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert!(
        !keys.to_string().contains(&key),
        "the key itself is never listed"
    );

    // A device joins with it over QUIC; a second device with the same single-use key cannot.
    let (mut web, first) = join(&srv, "web-1", &key).await;
    let node = match first {
        ServerMsg::Credential(g) => g.node_id,
        other => panic!("expected a credential, got {other:?}"),
    };
    let (_c2, second) = join(&srv, "web-2", &key).await;
    assert!(matches!(second, ServerMsg::Refused { .. }), "{second:?}");
    let devices = srv.json(&["devices", "list", "--json"]);
    let d = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hostname"] == "web-1")
        .expect("web-1 listed");
    assert_eq!(d["id"], node.0);
    assert_eq!(d["tags"][0], "tag:server");
    assert!(d["user"].is_null());
    assert_eq!(d["addresses"].as_array().unwrap().len(), 2);
    assert!(d["credential_expires_at"].as_u64().is_some());
    let text = srv.ok(&["devices", "list"]);
    assert!(
        text.contains("web-1") && text.contains("tag:server"),
        "{text}"
    );

    // An auditor token reads but cannot write.
    let tok = last_line(&srv.ok(&["tokens", "create", "--role", "auditor"]));
    let tok_file = write(tmp.path(), "auditor.token", &tok);
    let as_auditor = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--api", &srv.url, "--token-file"])
            .arg(&tok_file)
            .args(["--pin", &fp])
            .output()
            .unwrap()
    };
    let o = as_auditor(&["devices", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = as_auditor(&["devices", "revoke", "web-1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
    // A wrong pin is refused before any token is sent.
    let o = Command::new(BIN)
        .args(["users", "list", "--api", &srv.url, "--token-file"])
        .arg(&tok_file)
        .args(["--pin", &format!("sha256:{}", "0".repeat(64))])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("does not match the pinned fingerprint")
            && stderr(&o).contains("check --pin"),
        "{}",
        stderr(&o)
    );
    // A malformed pin is refused as such, before anything is sent.
    let o = Command::new(BIN)
        .args(["users", "list", "--api", &srv.url, "--token-file"])
        .arg(&tok_file)
        .args(["--pin", "sha256:abcd"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("64 hex digits"), "{}", stderr(&o));

    // A refused policy leaves the running one in force and says why.
    let before = srv.ok(&["policy", "get"]);
    let failing = write(tmp.path(), "failing.hujson", POLICY_FAILING_TEST);
    let o = srv.cli(&["policy", "set", failing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tests failed"), "{}", stderr(&o));
    let broken = write(tmp.path(), "broken.hujson", "{ \"acls\": [ }");
    let o = srv.cli(&["policy", "set", broken.to_str().unwrap()]);
    assert!(!o.status.success());
    // Located in the file the admin gave.
    let at = format!("{}:1:", broken.display());
    assert!(stderr(&o).contains(&at), "{}", stderr(&o));
    assert_eq!(srv.ok(&["policy", "get"]), before);
    // So is text that is not UTF-8, as the offline check locates it.
    let latin1 = tmp.path().join("latin1.hujson");
    std::fs::write(&latin1, b"{\n  \"groups\": {\"group:a\": [\"z\xe9\"]}}").unwrap();
    let o = srv.cli(&["policy", "set", latin1.to_str().unwrap()]);
    assert!(!o.status.success());
    let at = format!("{}:2:28: byte 0xE9 is not UTF-8", latin1.display());
    assert!(stderr(&o).contains(&at), "{}", stderr(&o));
    assert_eq!(srv.ok(&["policy", "get"]), before);
    // The offline check (H1's) agrees.
    assert!(!srv
        .cli(&["policy", "check", failing.to_str().unwrap()])
        .status
        .success());
    let out = srv.ok(&["policy", "set", policy.to_str().unwrap()]);
    assert!(out.contains("v2"), "{out}");
    // A policy that no longer declares a tag web-1 carries goes in force, with a warning
    // that names the tag and the device (and is in the audit record).
    let untagged = write(
        tmp.path(),
        "untagged.hujson",
        r#"{ "groups": { "group:eng": ["alice@example.com"] }, "acls": [] }"#,
    );
    let o = srv.cli(&["policy", "set", untagged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let warned = stderr(&o);
    assert!(
        warned.contains("warning: tag:server is not declared in tagOwners")
            && warned.contains("web-1"),
        "{warned}"
    );
    let audit = srv.ok(&["audit", "tail", "-n", "3"]);
    assert!(audit.contains("warning: tag:server"), "{audit}");
    let o = srv.cli(&["policy", "set", policy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));

    // custom:* attributes (MDM/EDR feeds) are set by admins; device attributes are not.
    srv.ok(&["devices", "set-attr", "web-1", "custom:managed=true"]);
    let shown = srv.json(&["devices", "show", &format!("n{}", node.0)]);
    assert_eq!(shown["custom_attrs"]["custom:managed"], true, "{shown}");
    let o = srv.cli(&["devices", "set-attr", "web-1", "node:os=linux"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("custom:"), "{}", stderr(&o));
    srv.ok(&["devices", "unset-attr", "web-1", "custom:managed"]);
    let shown = srv.json(&["devices", "show", "web-1"]);
    assert!(
        shown["custom_attrs"].as_object().unwrap().is_empty(),
        "{shown}"
    );
    // Pre-auth keys can be revoked; a revoked key admits nobody.
    let k2 = last_line(&srv.ok(&["preauth", "create", "--tags", "tag:server", "--reusable"]));
    let keys = srv.json(&["preauth", "list", "--json"]);
    let id2 = keys.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    srv.ok(&["preauth", "revoke", &id2]);
    let (_c3, third) = join(&srv, "web-3", &k2).await;
    assert!(matches!(third, ServerMsg::Refused { .. }), "{third:?}");
    assert!(srv.ok(&["tokens", "list"]).contains("auditor"));

    // Revoke by hostname reaches the device within a second.
    let t0 = Instant::now();
    srv.ok(&["devices", "revoke", "web-1", "--reason", "test"]);
    let reason = wait_for_revoked(&mut web, Duration::from_secs(1)).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{reason}");
    let devices = srv.json(&["devices", "list", "--json"]);
    assert_eq!(devices[0]["revoked"], true);

    // Every action above is in the audit log, and the chain verifies.
    let tail = srv.ok(&["audit", "tail", "-n", "100", "--json"]);
    for action in [
        "user.add",
        "preauth.create",
        "token.create",
        "policy.set",
        "device.revoke",
    ] {
        assert!(
            tail.contains(&format!("\"action\":\"{action}\"")),
            "{action} missing: {tail}"
        );
    }
    assert!(
        tail.contains("\"decision\":\"deny\""),
        "refusals are audited"
    );
    let out = srv.ok(&["audit", "verify"]);
    assert!(out.contains("intact"), "{out}");

    // SIGTERM: a clean, prompt exit.
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    let st = srv.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}: {}", log_of(&dir));
    assert!(!log_of(&dir).contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_page_with_local_account_admits_the_device_and_disable_revokes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let srv = Server::start(&dir, Some(&policy)).await;
    let out = String::from_utf8(
        srv.cli_stdin(
            &[
                "users",
                "add",
                "alice@example.com",
                "--groups",
                "group:eng",
                "--password-stdin",
            ],
            "correct horse battery staple\n",
        )
        .stdout,
    )
    .unwrap();
    let secret = out
        .lines()
        .find_map(|l| l.split("secret=").nth(1))
        .and_then(|s| s.split('&').next())
        .unwrap()
        .to_owned();

    let (mut dev, welcome, url) = interactive_login(&srv, "laptop").await;
    assert!(
        url.starts_with(&format!("{}/login/", srv.url)),
        "{url} vs {}",
        srv.url
    );

    let http = insecure_http();
    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"password\"") && html.contains("name=\"code\""));
    assert_eq!(
        http.get(format!("{}/login/not-a-login", srv.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let code = ztmesh_coordinator::accounts::totp_code(&secret, now()).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = http
        .post(&url)
        .form(&[
            ("user", "alice@example.com"),
            ("password", "correct horse battery staple"),
            ("code", wrong),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong TOTP code is refused");
    let r = http
        .post(&url)
        .form(&[
            ("user", "alice@example.com"),
            ("password", "correct horse battery staple"),
            ("code", &code),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Signed in"));
    let grant = wait_for_credential(&mut dev).await;
    let cred = grant
        .credential
        .verify_signature(&welcome.coordinator_key)
        .unwrap();
    assert_eq!(cred.user.as_deref(), Some("alice@example.com"));

    // Disabling the user revokes the device at once.
    let out = srv.ok(&["users", "disable", "alice@example.com"]);
    assert!(out.contains(&format!("{}", grant.node_id.0)), "{out}");
    wait_for_revoked(&mut dev, Duration::from_secs(1)).await;
    let users = srv.json(&["users", "list", "--json"]);
    assert_eq!(users[0]["disabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_admin_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let srv = Server::start(&dir, Some(&policy)).await;
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let http = insecure_http();
    // A stream of writes; kill -9 while requests are in flight.
    let url = srv.url.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for _ in 0..2_000 {
            let r = http
                .post(format!("{url}/api/v1/preauth"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "tags": ["tag:server"], "reusable": true }))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 201 => {
                    let v: Value = r.json().await.unwrap();
                    acked.push(v["id"].as_str().unwrap().to_owned());
                }
                _ => break,
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    srv.signal(nix::sys::signal::Signal::SIGKILL);
    let acked = writer.await.unwrap();
    drop(srv);
    assert!(
        acked.len() >= 5,
        "only {} writes before the kill",
        acked.len()
    );

    let srv = Server::start(&dir, None).await;
    let keys = srv.json(&["preauth", "list", "--json"]);
    let ids: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert!(ids.contains(&id.as_str()), "acknowledged key {id} lost");
    }
    assert!(srv.ok(&["audit", "verify"]).contains("intact"));
    // The stored policy is still in force after the crash.
    assert!(srv.ok(&["policy", "get"]).contains("tag:server"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_policy_that_no_longer_parses_never_stops_the_server() {
    use ztmesh_coordinator::store::{SledStore, Store};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let policy = write(tmp.path(), "policy.hujson", POLICY);
    let srv = Server::start(&dir, Some(&policy)).await;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(srv.wait_exit(Duration::from_secs(10)).success());
    // Behind the server's back: a newer stored version that does not parse (as after a
    // downgrade to a parser that lacks a feature).
    {
        let store = SledStore::open(dir.join("db")).unwrap();
        store
            .put_policy(
                "{ this is not a policy",
                "someone",
                ztmesh_coordinator::audit::now(),
            )
            .unwrap();
    }
    let srv = Server::start(&dir, None).await;
    let v = srv.json(&["devices", "list", "--json"]);
    assert!(v.as_array().unwrap().is_empty());
    // The last good version is in force, and the API says which one.
    let p = srv.ok(&["policy", "get"]);
    assert!(p.contains("tag:server"), "{p}");
    let key = last_line(&srv.ok(&["preauth", "create", "--tags", "tag:server"]));
    assert!(key.starts_with("ztk_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_http_certificate_is_served_and_pinned_by_the_local_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let ck = rcgen::generate_simple_self_signed(vec!["coord.example".into()]).unwrap();
    let cert = write(tmp.path(), "http.crt", &ck.cert.pem());
    let key = write(tmp.path(), "http.key", &ck.key_pair.serialize_pem());
    let srv = Server::start_with(
        &dir,
        None,
        &[
            "--http-tls-cert",
            cert.to_str().unwrap(),
            "--http-tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let pinned = std::fs::read_to_string(dir.join("http-cert-fp")).unwrap();
    assert_eq!(
        pinned.trim(),
        ztmesh_coordinator::bootstrap::fingerprint(ck.cert.der())
    );
    // The control plane keeps its own certificate (the join URL's fingerprint).
    let own = std::fs::read(dir.join("tls.crt.der")).unwrap();
    assert_ne!(own, ck.cert.der().to_vec());
    // The local CLI pins the HTTP certificate and works.
    let users = srv.json(&["users", "list", "--json"]);
    assert!(users.as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_the_same_data_dir_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = Server::start(&dir, None).await;
    let join_url = srv.ok(&["join-url"]);
    let recorded = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let before: Vec<String> = ["public-addr", "http-url", "control-addr"]
        .iter()
        .map(|f| recorded(f))
        .collect();

    let second = serve_command(&dir)
        .args(["--public-addr", "127.0.0.1:17444"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("another ztmesh-coordinator is using the data directory"),
        "{err}"
    );
    assert_eq!(
        err.matches("another ztmesh-coordinator").count(),
        1,
        "said once: {err}"
    );
    assert!(!String::from_utf8_lossy(&second.stdout).contains("join URL"));

    // The running coordinator's recorded facts are untouched and it still answers.
    let after: Vec<String> = ["public-addr", "http-url", "control-addr"]
        .iter()
        .map(|f| recorded(f))
        .collect();
    assert_eq!(before, after);
    assert_eq!(srv.ok(&["join-url"]), join_url);
    assert!(srv.json(&["devices", "list", "--json"]).is_array());
}

#[test]
fn a_data_dir_that_is_a_file_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("data");
    std::fs::write(&file, "not a directory").unwrap();
    let out = serve_command(&file).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is not a directory"), "{err}");
    assert!(!err.contains("os error"), "{err}");
}
