//! Fuzz target: any input to the policy parser must give a policy or an error, never a
//! panic; a policy that parses must also run its tests, explain and compile without one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use ztmesh_common::ids::NodeId;
use ztmesh_common::policy::{condition, InventoryNode, Policy, Query, ViewCompiler};
use ztmesh_common::posture::PostureAttrs;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = condition::parse(text);
    }
    // From bytes, as a file is read: text that is not UTF-8 is an error with a position too.
    let policy = match Policy::parse_bytes(data, "fuzz.hujson") {
        Ok(p) => p,
        Err(e) => {
            // Every error names a position.
            assert!(!e.problems.is_empty());
            let _ = e.to_string();
            return;
        }
    };
    let _ = policy.run_tests();
    let _ = policy.lifetimes();
    for (src, dst) in [("a@example.com", "tag:x:22"), ("10.0.0.1", "10.0.0.2:443")] {
        if let Ok(q) = Query::new(src, dst, None, PostureAttrs::new()) {
            let _ = policy.explain(&q);
        }
    }
    let mut c = ViewCompiler::new(Arc::new(policy));
    for i in 1..4u64 {
        let (v4, v6) = ztmesh_common::addr::overlay_addrs(i as u32).expect("index in range");
        c.upsert_node(InventoryNode {
            id: NodeId(i),
            user: (i != 2).then(|| "a@example.com".to_string()),
            user_groups: vec![],
            tags: if i == 2 { vec!["tag:x".into()] } else { vec![] },
            addresses: vec![v4.into(), v6.into()],
            posture: PostureAttrs::new(),
        });
    }
    c.remove_node(NodeId(1));
});
