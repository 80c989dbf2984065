//! Runs the real `ztmesh-coordinator policy check|explain` binary over the shared policy
//! cases (`../shared/cases/policy`, beside the checkout) and over `docs/example-policy.hujson`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ztmesh-coordinator"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cases_dir() -> PathBuf {
    let d = repo().join("../shared/cases/policy");
    assert!(
        d.is_dir(),
        "the shared policy cases are missing: expected them at {} (beside the checkout)",
        d.display()
    );
    d
}

fn check(file: &Path) -> Output {
    bin()
        .args(["policy", "check"])
        .arg(file)
        .output()
        .expect("run binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn shared_cases_are_decided_by_the_binary() {
    let mut seen = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hujson"))
        .collect();
    files.sort();
    for f in files {
        seen += 1;
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let o = check(&f);
        let err = stderr(&o);
        if name.starts_with("ok-") {
            assert_eq!(o.status.code(), Some(0), "{name} must pass: {err}");
            assert!(err.is_empty(), "{name}: {err}");
        } else {
            assert!(name.starts_with("bad-"), "unexpected case name {name}");
            assert_eq!(o.status.code(), Some(1), "{name} must be refused: {err}");
            let first = err.lines().next().unwrap_or_default();
            // file:line:column: ...
            let shown = f.display().to_string();
            let rest = first
                .strip_prefix(&format!("{shown}:"))
                .unwrap_or_else(|| panic!("{name}: error does not start with the file: {first}"));
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().unwrap().parse::<u32>();
            let col = parts.next().unwrap_or("").parse::<u32>();
            assert!(
                line.is_ok() && col.is_ok(),
                "{name}: no line:column in {first}"
            );
            let is_test = first.contains("test tests[");
            if is_test {
                assert!(
                    first.contains("expected") && first.contains("got"),
                    "{first}"
                );
                assert!(
                    first.contains("decided by acls[")
                        || first.contains("decided by grants[")
                        || first.contains("decided by no rule: default deny"),
                    "{name}: the deciding rule is not named: {first}"
                );
            }
        }
    }
    assert!(
        seen >= 6,
        "expected at least the 6 handed-over cases, found {seen}"
    );
}

#[test]
fn specific_cases_say_the_right_thing() {
    let d = cases_dir();
    let e = stderr(&check(&d.join("bad-syntax.hujson")));
    assert!(
        e.contains("bad-syntax.hujson:3:3: expected ',' or '}'"),
        "{e}"
    );
    let e = stderr(&check(&d.join("bad-undefined-group.hujson")));
    assert!(
        e.contains(":3:43: undefined group `group:engineering`"),
        "{e}"
    );
    let e = stderr(&check(&d.join("bad-test-expects-too-much.hujson")));
    assert!(
        e.contains("tag:web:22: expected accept, got deny; decided by no rule: default deny"),
        "{e}"
    );
}

#[test]
fn example_policy_passes_check() {
    let o = check(&repo().join("docs/example-policy.hujson"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("OK"));
}

#[test]
fn explain_prints_decision_rules_and_reasons() {
    let f = repo().join("docs/example-policy.hujson");
    let o = bin()
        .args(["policy", "explain"])
        .arg(&f)
        .args([
            "--src",
            "carol@example.com",
            "--dst",
            "tag:prod:443",
            "--json",
        ])
        .args([
            "--attr",
            "node:os=linux",
            "--attr",
            "node:diskEncrypted=false",
        ])
        .args(["--attr", "node:clientVersion=0.2.1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "deny exits 1");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rules"].as_array().unwrap().len(), 0);
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("posture:compliant: node:diskEncrypted == true (device reports false)"),
        "{reasons}"
    );

    let o = bin()
        .args(["policy", "explain"])
        .arg(&f)
        .args(["--src", "alice@example.com", "--dst", "tag:web:443"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("accept"), "{out}");
    assert!(out.contains("allowed by acls[0]"), "{out}");

    let o = bin()
        .args(["policy", "explain"])
        .arg(&f)
        .args(["--src", "group:nope", "--dst", "tag:web:443"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "unknown names are usage errors");
    assert!(stderr(&o).contains("undefined group"));
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("two.hujson");
    std::fs::write(
        &p,
        "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:a\"], \"dst\": [\"tag:b:99999\"]},\n  ],\n}\n",
    )
    .unwrap();
    let e = stderr(&check(&p));
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(
        e.contains("two.hujson:3:34: undefined group `group:a`"),
        "{e}"
    );
    assert!(e.contains("two.hujson:3:55: undefined tag `tag:b`"), "{e}");
}
