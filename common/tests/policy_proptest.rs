//! Property tests: the compiled views agree with the reference evaluator on random policies,
//! inventories and packets; peers are exactly the other ends of allowed flows; and
//! incremental updates end in the same views as a fresh compile, reporting every change.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use ztmesh_common::addr::overlay_addrs;
use ztmesh_common::ids::NodeId;
use ztmesh_common::netmap::proto;
use ztmesh_common::policy::{compile_all, reference_allows, InventoryNode, Policy, ViewCompiler};
use ztmesh_common::posture::{AttrValue, PostureAttrs};

const USERS: [&str; 4] = ["u0@x.com", "u1@x.com", "u2@x.com", "u3@x.com"];
const GROUPS: [&str; 3] = ["group:g0", "group:g1", "group:g2"];
const TAGS: [&str; 3] = ["tag:t0", "tag:t1", "tag:t2"];
const PORTS: [&str; 5] = ["*", "22", "80,443", "1000-2000", "22,1000-1999"];
const PROBE_PORTS: [u16; 5] = [22, 80, 443, 1500, 2000];
const PROBE_PROTOS: [u8; 4] = [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6];

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (0..USERS.len()).prop_map(|i| USERS[i].to_string()),
        (0..GROUPS.len()).prop_map(|i| GROUPS[i].to_string()),
        (0..TAGS.len()).prop_map(|i| TAGS[i].to_string()),
        Just("autogroup:member".to_string()),
        Just("autogroup:tagged".to_string()),
        Just("h0".to_string()),
        Just("100.64.0.0/30".to_string()),
        Just("100.64.0.5".to_string()),
        Just("[fd5a:746d:6573::4/126]".to_string()),
        Just("198.18.0.0/16".to_string()),
    ]
}

fn dst_with_ports() -> impl Strategy<Value = String> {
    (target(), 0..PORTS.len()).prop_map(|(t, p)| {
        // A bracketed IPv6 prefix keeps its brackets before the port.
        format!("{t}:{}", PORTS[p])
    })
}

fn posture_ref() -> impl Strategy<Value = Option<Vec<&'static str>>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(vec!["posture:p0"])),
        1 => Just(Some(vec!["posture:p1"])),
        1 => Just(Some(vec!["posture:p0", "posture:p1"])),
    ]
}

fn quote(xs: &[String]) -> String {
    xs.iter()
        .map(|x| format!("\"{x}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn acl() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(target(), 1..3),
        prop::collection::vec(dst_with_ports(), 1..3),
        prop_oneof![Just(None), Just(Some("tcp")), Just(Some("udp"))],
        posture_ref(),
    )
        .prop_map(|(src, dst, proto, post)| {
            let mut s = format!(
                "{{\"action\": \"accept\", \"src\": [{}], \"dst\": [{}]",
                quote(&src),
                quote(&dst)
            );
            if let Some(p) = proto {
                s.push_str(&format!(", \"proto\": \"{p}\""));
            }
            if let Some(ps) = post {
                let ps: Vec<String> = ps.iter().map(|x| x.to_string()).collect();
                s.push_str(&format!(", \"srcPosture\": [{}]", quote(&ps)));
            }
            s + "}"
        })
}

fn grant() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(target(), 1..3),
        prop::collection::vec(target(), 1..3),
        prop::collection::vec(
            prop_oneof![
                Just("*"),
                Just("tcp:22"),
                Just("udp:1000-2000"),
                Just("icmp"),
                Just("ipv6-icmp"),
                Just("443")
            ],
            1..3,
        ),
        posture_ref(),
    )
        .prop_map(|(src, dst, ip, post)| {
            let ip: Vec<String> = ip.iter().map(|x| x.to_string()).collect();
            let mut s = format!(
                "{{\"src\": [{}], \"dst\": [{}], \"ip\": [{}]",
                quote(&src),
                quote(&dst),
                quote(&ip)
            );
            if let Some(ps) = post {
                let ps: Vec<String> = ps.iter().map(|x| x.to_string()).collect();
                s.push_str(&format!(", \"srcPosture\": [{}]", quote(&ps)));
            }
            s + "}"
        })
}

fn policy_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::collection::vec(0..USERS.len(), 0..3), 3),
        prop::collection::vec(acl(), 0..4),
        prop::collection::vec(grant(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(members, acls, grants, default_posture)| {
            let groups: Vec<String> = members
                .iter()
                .enumerate()
                .map(|(g, us)| {
                    let us: Vec<String> = us.iter().map(|u| USERS[*u].to_string()).collect();
                    format!("\"{}\": [{}]", GROUPS[g], quote(&us))
                })
                .collect();
            let tags: Vec<String> = TAGS.iter().map(|t| format!("\"{t}\": []")).collect();
            format!(
                r#"{{
  "groups": {{ {} }},
  "tagOwners": {{ {} }},
  "hosts": {{ "h0": "100.64.0.2" }},
  "postures": {{
    "posture:p0": ["node:os == 'linux'", "node:diskEncrypted == true"],
    "posture:p1": ["custom:level >= 2"],
  }},
  {}
  "acls": [{}],
  "grants": [{}],
}}"#,
                groups.join(", "),
                tags.join(", "),
                if default_posture {
                    r#""defaultSrcPosture": ["posture:p1"],"#
                } else {
                    ""
                },
                acls.join(",\n"),
                grants.join(",\n"),
            )
        })
}

fn node(i: u64) -> impl Strategy<Value = InventoryNode> {
    (
        prop_oneof![
            3 => (0..USERS.len()).prop_map(|u| (Some(USERS[u].to_string()), vec![])),
            2 => prop::collection::vec(0..TAGS.len(), 1..3)
                .prop_map(|ts| (Some(USERS[0].to_string()), ts.iter().map(|t| TAGS[*t].to_string()).collect())),
            1 => Just((None, vec![])),
        ],
        prop::collection::vec(0..GROUPS.len(), 0..2),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0..4i32),
        any::<bool>(),
    )
        .prop_map(move |((user, tags), idp, linux, enc, level, both)| {
            let (v4, v6) = overlay_addrs(i as u32 + 1).unwrap();
            let mut posture = PostureAttrs::new();
            posture.insert(
                "node:os".into(),
                AttrValue::String(if linux { "linux" } else { "macos" }.into()),
            );
            posture.insert("node:diskEncrypted".into(), AttrValue::Bool(enc));
            if let Some(l) = level {
                posture.insert("custom:level".into(), AttrValue::Number(l as f64));
            }
            InventoryNode {
                id: NodeId(i),
                user,
                user_groups: idp.iter().map(|g| GROUPS[*g].to_string()).collect(),
                tags,
                addresses: if both {
                    vec![IpAddr::V4(v4), IpAddr::V6(v6)]
                } else {
                    vec![IpAddr::V4(v4)]
                },
                posture,
            }
        })
}

fn inventory() -> impl Strategy<Value = Vec<InventoryNode>> {
    (1usize..8).prop_flat_map(|n| (0..n as u64).map(node).collect::<Vec<_>>())
}

/// Whether any probed flow from `a` to `b` is allowed by the reference evaluator.
fn any_flow(p: &Policy, nodes: &[InventoryNode], a: &InventoryNode, b: &InventoryNode) -> bool {
    for s in &a.addresses {
        for d in &b.addresses {
            for pr in PROBE_PROTOS {
                for port in PROBE_PORTS {
                    if reference_allows(p, nodes, *s, *d, pr, Some(port)) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn compiled_views_agree_with_the_reference(text in policy_text(), nodes in inventory()) {
        let policy = Arc::new(Policy::parse(&text, "gen.hujson").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?);
        let views = compile_all(policy.clone(), nodes.clone());
        let external: IpAddr = "198.18.3.4".parse().unwrap();
        for d in &nodes {
            let view = &views[&d.id];
            let mut sources: Vec<IpAddr> = nodes.iter().flat_map(|n| n.addresses.clone()).collect();
            sources.push(external);
            sources.push("fd5a:746d:6573::99".parse().unwrap());
            for s in sources {
                for dst in &d.addresses {
                    for pr in PROBE_PROTOS {
                        for port in PROBE_PORTS {
                            let want = reference_allows(&policy, &nodes, s, *dst, pr, Some(port));
                            let got = view.allows(s, *dst, pr, Some(port));
                            prop_assert_eq!(got, want, "{} -> {} proto {} port {}\npolicy: {}\nfilter: {:?}", s, dst, pr, port, text, view.filter);
                        }
                    }
                }
            }
        }
        for a in &nodes {
            for b in &nodes {
                if a.id == b.id { continue; }
                let want = any_flow(&policy, &nodes, a, b) || any_flow(&policy, &nodes, b, a);
                let got = views[&a.id].peers.contains(&b.id);
                prop_assert_eq!(got, want, "peer {} of {}\npolicy: {}", b.id, a.id, text);
            }
        }
    }

    #[test]
    fn incremental_updates_match_a_fresh_compile(
        text in policy_text(),
        text2 in policy_text(),
        nodes in inventory(),
        changes in prop::collection::vec((0u64..8, node(0), any::<bool>()), 1..10),
    ) {
        let policy = Arc::new(Policy::parse(&text, "a.hujson").unwrap());
        let mut c = ViewCompiler::new(policy.clone());
        let mut inv: BTreeMap<NodeId, InventoryNode> = BTreeMap::new();
        for n in &nodes {
            c.upsert_node(n.clone());
            inv.insert(n.id, n.clone());
        }
        let check = |c: &ViewCompiler, inv: &BTreeMap<NodeId, InventoryNode>, p: &Arc<Policy>| -> Result<(), TestCaseError> {
            let fresh = compile_all(p.clone(), inv.values().cloned());
            for (id, v) in &fresh {
                prop_assert_eq!(Some(v), c.view(*id), "view of {}", id);
            }
            prop_assert_eq!(fresh.len(), c.len());
            Ok(())
        };
        check(&c, &inv, &policy)?;
        for (slot, mut n, remove) in changes {
            let before: BTreeMap<NodeId, _> = inv.keys().filter_map(|id| c.view(*id).map(|v| (*id, v.clone()))).collect();
            let id = NodeId(slot);
            let changed: BTreeSet<NodeId> = if remove {
                inv.remove(&id);
                c.remove_node(id).into_iter().collect()
            } else {
                let (v4, v6) = overlay_addrs(slot as u32 + 1).unwrap();
                n.id = id;
                n.addresses = if n.addresses.len() == 2 { vec![v4.into(), v6.into()] } else { vec![v4.into()] };
                inv.insert(id, n.clone());
                c.upsert_node(n).into_iter().collect()
            };
            check(&c, &inv, &policy)?;
            for (oid, old) in &before {
                if *oid == id { continue; }
                if c.view(*oid) != Some(old) {
                    prop_assert!(changed.contains(oid), "view of {} changed but was not reported", oid);
                }
            }
        }
        let p2 = Arc::new(Policy::parse(&text2, "b.hujson").unwrap());
        let before: BTreeMap<NodeId, _> = inv.keys().map(|id| (*id, c.view(*id).cloned())).collect();
        let changed: BTreeSet<NodeId> = c.set_policy(p2.clone()).into_iter().collect();
        check(&c, &inv, &p2)?;
        for (id, old) in before {
            if c.view(id).cloned() != old {
                prop_assert!(changed.contains(&id));
            }
        }
    }
}
