//! The demo's story as a test, over the real coordinator, clients, data plane and IdP:
//! a tagged server joins with a pre-auth key; alice (eng, MFA via the IdP) reaches
//! web:443 and not :22, pings it over v4 and v6, and cannot be reached from it; bob (sales)
//! does not see the server; carol fails posture and is told
//! why; a live policy change closes 443; revoking alice cuts her open connection within 1 s;
//! with the coordinator stopped the mesh keeps working until the credentials expire.

use ztmesh_tests::story::{self, Narrator, Step};

struct Log;

impl Narrator for Log {
    fn say(&mut self, text: &str) {
        eprintln!("    {text}");
    }
    fn step(&mut self, step: &Step) {
        eprintln!(
            "[{}] {}: {}",
            if step.ok { "PASS" } else { "FAIL" },
            step.name,
            step.detail
        );
    }
}

#[test]
fn the_demo_story_holds_end_to_end() {
    let report = story::run(&mut Log);
    eprintln!("timings: {:?}", report.timings);
    let failed: Vec<&Step> = report.steps.iter().filter(|s| !s.ok).collect();
    assert!(report.all_ok(), "failed steps: {failed:#?}");
    assert_eq!(report.steps.len(), 10, "{:#?}", report.steps);
    // Revocation must cut an open connection within a second.
    assert!(report.timings.revoke_to_cut.is_some_and(|ms| ms <= 1000));
}
