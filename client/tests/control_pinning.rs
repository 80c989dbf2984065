//! Real QUIC on loopback against a throwaway certificate: the client pins the certificate's
//! fingerprint (a wrong one is refused before any message is sent), and its machine-key proof
//! verifies on the server side over this session's TLS exporter (and not over another's).

mod control_support;

use control_support::{start_server, start_server_with, verify_proof, Seen};
use ztmesh_client::control::conn;
use ztmesh_client::control::JoinUrl;
use ztmesh_client::keys::MachineKey;

#[tokio::test]
async fn pinned_fingerprint_connects_and_proof_verifies_on_the_server() {
    let mut server = start_server();
    let machine = MachineKey::generate();
    let join = JoinUrl::parse(&server.join_url()).unwrap();
    let c = conn::connect(&join, &machine).await.expect("connects");
    assert_eq!(c.welcome.coordinator_key, server.coordinator_key());
    match server.next(5).await {
        Seen::Hello {
            machine_key,
            proof_ok,
            ..
        } => {
            assert_eq!(machine_key, machine.public());
            assert!(proof_ok, "server must accept the proof");
        }
        other => panic!("expected Hello, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_fingerprint_is_refused_before_hello() {
    let mut server = start_server();
    let machine = MachineKey::generate();
    let mut join = JoinUrl::parse(&server.join_url()).unwrap();
    join.fingerprint.0[0] ^= 0x01;
    let err = match conn::connect(&join, &machine).await {
        Ok(_) => panic!("a wrong fingerprint must be refused"),
        Err(e) => e,
    };
    assert!(
        matches!(err, conn::ConnError::NotPinned(_)),
        "expected a pin mismatch, got {err}"
    );
    let said = err.to_string();
    assert!(
        said.contains("not the one the join URL pins")
            && said.contains(&join.fingerprint.to_string())
            && said.contains(&server.fingerprint.to_string()),
        "{said}"
    );
    // The server never received a Hello (nothing about the device leaked to an impostor).
    let seen =
        tokio::time::timeout(std::time::Duration::from_millis(500), server.seen.recv()).await;
    assert!(
        !matches!(seen, Ok(Some(Seen::Hello { .. }))),
        "no Hello may reach a server with the wrong certificate"
    );
}

#[tokio::test]
async fn proof_is_bound_to_its_tls_session() {
    let mut server = start_server();
    let machine = MachineKey::generate();
    let join = JoinUrl::parse(&server.join_url()).unwrap();
    let _c1 = conn::connect(&join, &machine).await.unwrap();
    let _c2 = conn::connect(&join, &machine).await.unwrap();
    let mut hellos = Vec::new();
    while hellos.len() < 2 {
        if let Seen::Hello { proof, ekm, .. } = server.next(5).await {
            hellos.push((proof, ekm));
        }
    }
    let (p1, e1) = &hellos[0];
    let (p2, e2) = &hellos[1];
    assert_ne!(e1, e2, "each session exports different keying material");
    assert!(verify_proof(&machine.public(), p1, e1));
    // Replaying session 1's proof in session 2 fails.
    assert!(!verify_proof(&machine.public(), p1, e2));
    assert!(!verify_proof(&machine.public(), p2, e1));
    // Another machine's key does not verify either.
    assert!(!verify_proof(&MachineKey::generate().public(), p1, e1));
}

#[tokio::test]
async fn copied_certificate_without_its_key_is_refused() {
    // The fingerprint matches, but the handshake signature is not made by the cert's key.
    let server = start_server_with(true);
    let machine = MachineKey::generate();
    let join = JoinUrl::parse(&server.join_url()).unwrap();
    assert!(
        conn::connect(&join, &machine).await.is_err(),
        "a server without the certificate's private key must be refused"
    );
}
