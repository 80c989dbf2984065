//! Login sessions end after the policy's `reauth`: local users are asked to log in again
//! (and get a fresh credential when they do); OIDC users are re-verified with their refresh
//! token, and lose access when the identity provider refuses.

mod control_util;

use control_util::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use ztmesh_common::wire::{ClientMsg, LoginAuth, ServerMsg};
use ztmesh_coordinator::control::testkit::login_request;
use ztmesh_coordinator::control::Reverifier;
use ztmesh_coordinator::identity::{AuthMethod, Identity, RefreshToken};

const POLICY: &str = r#"{
  "acls": [],
  "lifetimes": { "reauth": "2s" },
}"#;

/// An identity provider that answers refreshes as told.
struct FakeIdp {
    accept: bool,
}

impl Reverifier for FakeIdp {
    fn refresh<'a>(
        &'a self,
        token: &'a RefreshToken,
        subject: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, String>> + Send + 'a>> {
        Box::pin(async move {
            assert!(token.expose().starts_with("rt-"));
            assert_eq!(subject, Some("sub-1"));
            if self.accept {
                Ok(oidc_identity("rt-2"))
            } else {
                Err("invalid_grant: the user is disabled".into())
            }
        })
    }
}

fn oidc_identity(token: &str) -> Identity {
    Identity {
        user: "carol@example.com".into(),
        groups: vec![],
        method: AuthMethod::Oidc,
        refresh_token: Some(RefreshToken::new(token)),
        amr: vec!["pwd".into(), "otp".into()],
        subject: Some("sub-1".into()),
    }
}

/// Log in interactively as `identity`; returns the client once admitted.
async fn login_as(h: &Harness, identity: Identity) -> Device {
    let (mut client, welcome) = h.connect().await;
    client
        .send(&ClientMsg::Login(login_request(
            "laptop",
            LoginAuth::Interactive,
            Default::default(),
        )))
        .await
        .unwrap();
    let ServerMsg::LoginUrl { url } = client.recv().await.unwrap() else {
        panic!("expected LoginUrl")
    };
    let id = url.rsplit('/').next().unwrap();
    h.cp.complete_login(id, identity).await.unwrap();
    let (node, credential, posture_report_interval_ms) = expect_grant(&mut client, &welcome).await;
    let ServerMsg::NetMap(netmap) = client.recv().await.unwrap() else {
        panic!("expected NetMap")
    };
    Device {
        client,
        welcome,
        node,
        credential,
        posture_report_interval_ms,
        netmap,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_user_is_asked_to_log_in_again_and_gets_a_fresh_credential() {
    let h = Harness::start(POLICY).await;
    let mut d = login_as(&h, Identity::local("alice@example.com", vec![])).await;
    let url = match d.client.recv_within(Duration::from_secs(4)).await.unwrap() {
        Some(ServerMsg::ReauthRequired { url }) => url,
        other => panic!("expected ReauthRequired, got {other:?}"),
    };
    let id = url.rsplit('/').next().unwrap().to_owned();
    // Somebody else cannot finish the owner's re-authentication.
    assert!(h
        .cp
        .complete_login(&id, Identity::local("mallory@example.com", vec![]))
        .await
        .is_err());
    h.cp.complete_login(&id, Identity::local("alice@example.com", vec![]))
        .await
        .unwrap();
    let (_, fresh) = expect_credential(&mut d.client, &d.welcome).await;
    assert!(fresh.serial > d.credential.serial);
    assert_eq!(fresh.wg_public_key, d.credential.wg_public_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_user_is_reverified_silently_and_revoked_when_the_idp_refuses() {
    let h = Harness::start(POLICY).await;
    h.cp.set_reverifier(Arc::new(FakeIdp { accept: true }));
    let mut d = login_as(&h, oidc_identity("rt-1")).await;
    // Re-verified without the user: a fresh credential, the rotated token stored.
    let (_, fresh) = expect_credential(&mut d.client, &d.welcome).await;
    assert!(fresh.serial > d.credential.serial);
    // The rotated refresh token is stored (the write follows the push).
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let dev = ztmesh_coordinator::store::Store::get_device(h.store.as_ref(), d.node)
            .unwrap()
            .unwrap();
        if dev.refresh_token.as_deref() == Some("rt-2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotated token not stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(d);
    drop(h);

    let h = Harness::start(POLICY).await;
    h.cp.set_reverifier(Arc::new(FakeIdp { accept: false }));
    let mut d = login_as(&h, oidc_identity("rt-1")).await;
    match d.client.recv_within(Duration::from_secs(4)).await.unwrap() {
        Some(ServerMsg::Revoked { reason }) => {
            assert!(reason.contains("user is disabled"), "{reason}")
        }
        other => panic!("expected Revoked, got {other:?}"),
    }
}
