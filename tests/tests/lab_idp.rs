//! The lab's identity provider: the real npm oidc-provider in its own host, reached across the
//! internet segment, with a headless login (password + TOTP) following its redirects.

use ztmesh_tests::lab::COORD_ADDR;
use ztmesh_tests::{BrowseOutcome, IdpUser, Lab, Site};

#[test]
fn headless_login_with_mfa_reaches_the_relying_party_with_a_code() {
    let lab = Lab::builder().host("laptop", Site::Lan(1)).build().unwrap();
    // Stand-in relying party: the echo service answers the callback GET with a page.
    let _rp = lab.serve("coord", "rp", &[7080], &[]).unwrap();
    let callback = format!("http://{COORD_ADDR}:7080/oidc/callback");
    let alice = IdpUser::new("alice", "alice-pw", Some("JBSWY3DPEHPK3PXP"), &["eng"]);
    let idp = lab
        .start_idp(
            std::slice::from_ref(&alice),
            std::slice::from_ref(&callback),
        )
        .unwrap();
    let auth = format!(
        "{}/auth?client_id=ztmesh&response_type=code&scope=openid%20groups&redirect_uri={}\
         &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256\
         &state=s1&nonce=n1",
        idp.issuer,
        callback.replace(':', "%3A").replace('/', "%2F")
    );
    match lab.browse("laptop", &auth, &alice, false).unwrap() {
        BrowseOutcome::Ok { final_url, page } => {
            assert!(final_url.starts_with(&callback), "{final_url}");
            assert!(final_url.contains("code="), "{final_url}");
            assert!(final_url.contains("state=s1"), "{final_url}");
            assert!(page.contains("hello from rp"), "{page}");
        }
        other => panic!("login failed: {other:?}"),
    }
    // A wrong second factor is refused (the provider really checks MFA).
    let mut wrong = alice.clone();
    wrong.totp_secret = Some("GEZDGNBVGY3TQOJQ".into());
    let r = lab.browse("laptop", &auth, &wrong, false).unwrap();
    assert!(
        matches!(&r, BrowseOutcome::Error { message } if message.contains("401")),
        "{r:?}"
    );
    assert!(idp.process.log().contains("login ok"));
    lab.assert_no_panics();
}
