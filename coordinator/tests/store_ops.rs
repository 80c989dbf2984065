//! The store's operations: uniqueness, atomic read-modify-write, single-use pre-auth keys
//! under a race, policy history, counters that survive reopen.

use std::sync::{Arc, Barrier};
use ztmesh_common::ids::{MachinePublicKey, NodeId};
use ztmesh_common::time::UnixMillis;
use ztmesh_coordinator::store::*;

fn key(hash_of: &str, reusable: bool, expires_at: u64) -> PreauthKeyRecord {
    let h = secret_hash(hash_of);
    PreauthKeyRecord {
        id: h[..16].to_owned(),
        key_hash: h,
        tags: vec!["tag:server".into()],
        reusable,
        expires_at: UnixMillis(expires_at),
        used: false,
        used_by: vec![],
        revoked: false,
        created_at: UnixMillis(1),
        created_by: "admin".into(),
    }
}

fn new_device(n: u8) -> NewDevice {
    NewDevice {
        machine_key: MachinePublicKey([n; 32]),
        hostname: format!("h{n}"),
        user: Some("alice".into()),
        user_groups: vec![],
        tags: vec![],
        created_at: UnixMillis(5),
    }
}

#[test]
fn single_use_key_raced_by_20_threads_admits_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    store
        .create_preauth(&key("secret-1", false, u64::MAX))
        .unwrap();
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20u64)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store
                    .consume_preauth("secret-1", NodeId(i), UnixMillis(10))
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, PreauthError::AlreadyUsed(_))));
    let k = &store.list_preauth().unwrap()[0];
    assert!(k.used);
    assert_eq!(k.used_by.len(), 1);
}

#[test]
fn preauth_expiry_revocation_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.create_preauth(&key("reuse", true, 100)).unwrap();
    assert!(store
        .consume_preauth("reuse", NodeId(1), UnixMillis(10))
        .unwrap()
        .is_ok());
    assert!(store
        .consume_preauth("reuse", NodeId(2), UnixMillis(20))
        .unwrap()
        .is_ok());
    assert!(matches!(
        store
            .consume_preauth("reuse", NodeId(3), UnixMillis(100))
            .unwrap(),
        Err(PreauthError::Expired(_))
    ));
    assert_eq!(
        store
            .consume_preauth("nope", NodeId(3), UnixMillis(1))
            .unwrap(),
        Err(PreauthError::Unknown)
    );
    let id = secret_hash("reuse")[..16].to_owned();
    store.revoke_preauth(&id).unwrap();
    assert!(matches!(
        store
            .consume_preauth("reuse", NodeId(3), UnixMillis(10))
            .unwrap(),
        Err(PreauthError::Revoked(_))
    ));
    // The key in clear is nowhere in the store.
    let dump = format!("{:?}", store.list_preauth().unwrap());
    assert!(!dump.contains("\"reuse\""));
}

#[test]
fn devices_get_unique_ids_and_addresses_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let a = store.create_device(new_device(1)).unwrap();
        let b = store.create_device(new_device(2)).unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.host_index, b.host_index);
        assert!(a.host_index >= 1);
        assert!(matches!(
            store.create_device(new_device(1)),
            Err(StoreError::AlreadyExists(_))
        ));
        let updated = store
            .update_device(a.id, &mut |d| {
                d.revoked = true;
                d.host_index = 999; // ignored: fixed at creation
            })
            .unwrap();
        assert!(updated.revoked);
        assert_eq!(updated.host_index, a.host_index);
        assert_eq!(store.next_serial().unwrap(), 1);
        assert_eq!(store.next_serial().unwrap(), 2);
    }
    let store = SledStore::open(dir.path()).unwrap();
    let d = store
        .device_by_machine_key(&MachinePublicKey([1; 32]))
        .unwrap()
        .unwrap();
    assert!(d.revoked);
    let c = store.create_device(new_device(3)).unwrap();
    assert_eq!(c.id, NodeId(3), "ids continue after reopen");
    assert_eq!(store.next_serial().unwrap(), 3, "serials never repeat");
    store.delete_device(d.id).unwrap();
    assert!(store
        .device_by_machine_key(&MachinePublicKey([1; 32]))
        .unwrap()
        .is_none());
}

#[test]
fn users_and_policy_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let u = UserRecord {
        login: "alice".into(),
        password_hash: "h".into(),
        totp_secret: "s".into(),
        disabled: false,
        groups: vec![],
        created_at: UnixMillis(1),
    };
    store.create_user(&u).unwrap();
    assert!(matches!(
        store.create_user(&u),
        Err(StoreError::AlreadyExists(_))
    ));
    let u2 = store
        .update_user("alice", &mut |u| u.disabled = true)
        .unwrap();
    assert!(u2.disabled);
    assert!(matches!(
        store.update_user("bob", &mut |_| {}),
        Err(StoreError::NotFound(_))
    ));
    assert!(store.current_policy().unwrap().is_none());
    store.put_policy("{}", "admin", UnixMillis(1)).unwrap();
    let v2 = store
        .put_policy("{\"acls\":[]}", "ops", UnixMillis(2))
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(store.current_policy().unwrap().unwrap(), v2);
    let h = store.policy_history().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].author, "admin");
}

#[test]
fn a_store_made_under_an_open_umask_is_made_private_when_opened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    drop(SledStore::open(&db).unwrap());
    // As an older coordinator left it under umask 022.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let set = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    set(&db, 0o755);
    let files: Vec<_> = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        set(f, 0o644);
    }
    drop(SledStore::open(&db).unwrap());
    assert_eq!(mode(&db), 0o700);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}
