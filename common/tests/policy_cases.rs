//! The shared cases (`../shared/cases/policy`) decided by the library: `ok-*` parse and pass
//! their tests; `bad-*` are refused with a position or a failing test naming its rule.

use std::path::PathBuf;
use ztmesh_common::policy::Policy;

fn cases_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases/policy");
    assert!(d.is_dir(), "shared policy cases missing at {}", d.display());
    d
}

#[test]
fn shared_cases_are_decided() {
    let mut n = 0;
    for e in std::fs::read_dir(cases_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".hujson") {
            continue;
        }
        n += 1;
        let src = std::fs::read_to_string(&p).unwrap();
        let res = Policy::parse(&src, &name);
        if name.starts_with("ok-") {
            let pol = res.unwrap_or_else(|e| panic!("{name}: {e}"));
            let f = pol.run_tests();
            assert!(f.is_empty(), "{name}: {:?}", f);
        } else {
            assert!(name.starts_with("bad-"), "{name}");
            match res {
                Err(e) => {
                    let s = e.to_string();
                    assert!(s.starts_with(&format!("{name}:")), "{s}");
                }
                Ok(pol) => {
                    let f = pol.run_tests();
                    assert!(!f.is_empty(), "{name} should fail");
                    let s = f[0].to_string();
                    assert!(s.contains("tests[") && s.contains("decided by"), "{s}");
                }
            }
        }
    }
    assert!(n >= 6, "expected the shared cases, found {n}");
}
