//! Golden files: each `tests/golden/*.hujson` policy, compiled over `golden/inventory.json`,
//! must give exactly the views in the matching `.expected` file. Regenerate after an intended
//! change with `ZTMESH_UPDATE_GOLDEN=1 cargo test -p ztmesh-common --test policy_golden`, and
//! review the diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use ztmesh_common::addr::overlay_addrs;
use ztmesh_common::ids::NodeId;
use ztmesh_common::policy::target::{fmt_ports, proto_name};
use ztmesh_common::policy::{compile_all, InventoryNode, Policy};
use ztmesh_common::posture::AttrValue;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn inventory() -> (Vec<InventoryNode>, BTreeMap<NodeId, String>) {
    let text = std::fs::read_to_string(golden_dir().join("inventory.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut nodes = Vec::new();
    let mut names = BTreeMap::new();
    for n in v.as_array().unwrap() {
        let id = NodeId(n["id"].as_u64().unwrap());
        let (v4, v6) = overlay_addrs(n["index"].as_u64().unwrap() as u32).unwrap();
        let strs = |k: &str| -> Vec<String> {
            n[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        };
        let mut addresses = vec![IpAddr::V4(v4)];
        if !n["v4only"].as_bool().unwrap_or(false) {
            addresses.push(IpAddr::V6(v6));
        }
        names.insert(id, n["name"].as_str().unwrap().to_string());
        nodes.push(InventoryNode {
            id,
            user: n["user"].as_str().map(str::to_string),
            user_groups: strs("groups"),
            tags: strs("tags"),
            addresses,
            posture: n["posture"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), AttrValue::from_json(v).unwrap()))
                .collect(),
        });
    }
    (nodes, names)
}

fn render(policy_file: &Path) -> String {
    let text = std::fs::read_to_string(policy_file).unwrap();
    let name = policy_file.file_name().unwrap().to_string_lossy();
    let policy = Policy::parse(&text, &name).unwrap_or_else(|e| panic!("{e}"));
    let (nodes, names) = inventory();
    let views = compile_all(Arc::new(policy), nodes);
    let mut out = String::new();
    for (id, v) in &views {
        writeln!(out, "{id} {}", names[id]).unwrap();
        let peers: Vec<String> = v
            .peers
            .iter()
            .map(|p| format!("{p}({})", names[&p]))
            .collect();
        writeln!(out, "  peers: {}", peers.join(" ")).unwrap();
        for r in v.filter.iter() {
            let protos: Vec<String> = r.protos.iter().map(|p| proto_name(*p)).collect();
            let list = |xs: &[ipnet::IpNet]| {
                xs.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            writeln!(
                out,
                "  allow {} ports {} from [{}] to [{}]",
                protos.join("/"),
                fmt_ports(&r.ports),
                list(&r.src),
                list(v.dst(r))
            )
            .unwrap();
        }
    }
    out
}

#[test]
fn golden_views() {
    let update = std::env::var_os("ZTMESH_UPDATE_GOLDEN").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hujson"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "golden policies missing");
    let mut mismatches = Vec::new();
    for f in files {
        let got = render(&f);
        let exp_path = f.with_extension("expected");
        if update {
            std::fs::write(&exp_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&exp_path).unwrap_or_else(|_| {
            panic!(
                "{} missing: run with ZTMESH_UPDATE_GOLDEN=1",
                exp_path.display()
            )
        });
        if got != want {
            mismatches.push(format!(
                "{}:\n--- expected\n{want}\n--- got\n{got}",
                f.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
