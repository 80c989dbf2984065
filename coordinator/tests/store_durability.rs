//! `kill -9` during a stream of writes: every write the store acknowledged is there after reopen.
//!
//! The writer is this same test binary, re-run as a child with `STORE_WRITER_DIR` set: it writes
//! users, devices, audit records, policy versions and pre-auth consumptions and prints `ack ...`
//! after each write returns. The parent SIGKILLs it mid-stream and checks every ack.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use ztmesh_common::ids::{MachinePublicKey, NodeId};
use ztmesh_common::time::UnixMillis;
use ztmesh_coordinator::store::*;

const WRITER_ENV: &str = "STORE_WRITER_DIR";

fn user(i: u64) -> UserRecord {
    UserRecord {
        login: format!("user{i}"),
        password_hash: "x".into(),
        totp_secret: "y".into(),
        disabled: false,
        groups: vec!["group:eng".into()],
        created_at: UnixMillis(i),
    }
}

/// The child: writes until killed (bounded in count and time in case nobody kills it).
#[test]
fn writer_child() {
    let Ok(dir) = std::env::var(WRITER_ENV) else {
        return; // run as a normal test: nothing to do
    };
    let store = SledStore::open(&dir).unwrap();
    store
        .create_preauth(&PreauthKeyRecord {
            id: "k".into(),
            key_hash: secret_hash("reusable-key"),
            tags: vec!["tag:server".into()],
            reusable: true,
            expires_at: UnixMillis(u64::MAX),
            used: false,
            used_by: vec![],
            revoked: false,
            created_at: UnixMillis(0),
            created_by: "test".into(),
        })
        .unwrap();
    println!("ready");
    let start = Instant::now();
    for i in 1..=100_000u64 {
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        match i % 4 {
            0 => {
                store.create_user(&user(i)).unwrap();
                println!("ack user {i}");
            }
            1 => {
                let mut mk = [0u8; 32];
                mk[..8].copy_from_slice(&i.to_be_bytes());
                let d = store
                    .create_device(NewDevice {
                        machine_key: MachinePublicKey(mk),
                        hostname: format!("host{i}"),
                        user: None,
                        user_groups: vec![],
                        tags: vec!["tag:server".into()],
                        created_at: UnixMillis(i),
                    })
                    .unwrap();
                store
                    .consume_preauth("reusable-key", d.id, UnixMillis(i))
                    .unwrap()
                    .unwrap();
                println!("ack device {i} {}", d.id.0);
            }
            2 => {
                let r = store
                    .append_audit(AuditEntry {
                        at: UnixMillis(i),
                        actor: "test".into(),
                        action: "write".into(),
                        subject: format!("s{i}"),
                        decision: Decision::Allow,
                        reason: String::new(),
                    })
                    .unwrap();
                println!("ack audit {i} {}", r.seq);
            }
            _ => {
                let v = store
                    .put_policy(&format!("// v{i}\n{{}}"), "test", UnixMillis(i))
                    .unwrap();
                println!("ack policy {i} {}", v.version);
            }
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
        .env(WRITER_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acks: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Kill after a few hundred acknowledged writes, mid-stream.
    while acks.len() < 400 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("ack ") => acks.push(l),
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    // SAFETY-free: plain kill(2) of our own child by pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Lines already written by the child before it died count as acknowledged too.
    for l in lines.map_while(Result::ok) {
        if l.starts_with("ack ") {
            acks.push(l);
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child must have been killed, not finished"
    );
    assert!(acks.len() >= 100, "only {} writes acknowledged", acks.len());

    let store = SledStore::open(dir.path()).unwrap();
    let devices = store.list_devices().unwrap();
    let audit = store.audit_records().unwrap();
    let policies = store.policy_history().unwrap();
    let key = store
        .list_preauth()
        .unwrap()
        .into_iter()
        .find(|k| k.id == "k")
        .unwrap();
    for ack in &acks {
        let parts: Vec<&str> = ack.split_whitespace().collect();
        let i: u64 = parts[2].parse().unwrap();
        match parts[1] {
            "user" => assert!(
                store.get_user(&format!("user{i}")).unwrap().is_some(),
                "lost {ack}"
            ),
            "device" => {
                let id = NodeId(parts[3].parse().unwrap());
                assert!(devices.iter().any(|d| d.id == id), "lost {ack}");
                assert!(key.used_by.contains(&id), "lost key use of {ack}");
            }
            "audit" => {
                let seq: u64 = parts[3].parse().unwrap();
                assert!(audit.iter().any(|r| r.seq == seq), "lost {ack}");
            }
            "policy" => {
                let v: u64 = parts[3].parse().unwrap();
                assert!(policies.iter().any(|p| p.version == v), "lost {ack}");
            }
            other => panic!("unknown ack kind {other}"),
        }
    }
    // The chain is still intact after the crash, and the store keeps working.
    assert!(ztmesh_coordinator::audit::verify(&store).unwrap().is_ok());
    store.create_user(&user(1_000_001)).unwrap();
}
