//! `audit verify` detects tampering done directly in the sled tree, behind the store's back.

use ztmesh_common::time::UnixMillis;
use ztmesh_coordinator::audit;
use ztmesh_coordinator::store::*;

fn fill(store: &SledStore, n: u64) {
    for i in 0..n {
        store
            .append_audit(AuditEntry {
                at: UnixMillis(1_000 + i),
                actor: "admin".into(),
                action: "device.revoke".into(),
                subject: format!("n{i}"),
                decision: Decision::Allow,
                reason: "stolen laptop".into(),
            })
            .unwrap();
    }
}

fn raw_edit(store: &SledStore, seq: u64, f: impl Fn(&mut serde_json::Value)) {
    let tree = store.raw_tree("audit").unwrap();
    let key = seq.to_be_bytes();
    let mut v: serde_json::Value =
        serde_json::from_slice(&tree.get(key).unwrap().unwrap()).unwrap();
    f(&mut v);
    tree.insert(key, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn intact_log_verifies_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        fill(&store, 10);
    }
    let store = SledStore::open(dir.path()).unwrap();
    fill(&store, 2);
    let v = audit::verify(&store).unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!(v.records, 12);
    assert_eq!(
        store
            .audit_tail(3)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [10, 11, 12]
    );
}

#[test]
fn edited_field_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    fill(&store, 5);
    raw_edit(&store, 3, |v| v["decision"] = "deny".into());
    let v = audit::verify(&store).unwrap();
    assert!(!v.is_ok());
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("record 3 was modified")),
        "{:?}",
        v.problems
    );
}

#[test]
fn edited_and_rehashed_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    fill(&store, 5);
    // A forger who recomputes the edited record's hash still breaks the next link.
    let tree = store.raw_tree("audit").unwrap();
    let key = 2u64.to_be_bytes();
    let mut rec: AuditRecord = serde_json::from_slice(&tree.get(key).unwrap().unwrap()).unwrap();
    rec.actor = "someone-else".into();
    rec.hash = rec.compute_hash();
    tree.insert(key, serde_json::to_vec(&rec).unwrap()).unwrap();
    let v = audit::verify(&store).unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("record 3 does not link")),
        "{:?}",
        v.problems
    );
}

#[test]
fn removed_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    fill(&store, 5);
    let tree = store.raw_tree("audit").unwrap();
    tree.remove(3u64.to_be_bytes()).unwrap();
    assert!(!audit::verify(&store).unwrap().is_ok());

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    fill(&store, 5);
    store
        .raw_tree("audit")
        .unwrap()
        .remove(5u64.to_be_bytes())
        .unwrap();
    let v = audit::verify(&store).unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("head is record 5")),
        "{:?}",
        v.problems
    );
}

#[test]
fn garbage_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    fill(&store, 3);
    store
        .raw_tree("audit")
        .unwrap()
        .insert(2u64.to_be_bytes(), &b"not json"[..])
        .unwrap();
    assert!(!audit::verify(&store).unwrap().is_ok());
}
