//! One test per section, target, port form, operator and error location of the policy
//! language (docs/policy.md describes each).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use ztmesh_common::ids::NodeId;
use ztmesh_common::policy::{
    compile_all, Decision, InventoryNode, Lifetimes, Policy, Query, ViewCompiler,
};
use ztmesh_common::posture::{AttrValue, PostureAttrs};

fn parse(src: &str) -> Policy {
    Policy::parse(src, "p.hujson").unwrap_or_else(|e| panic!("{e}\n{src}"))
}

/// The single error of a policy, as `line:col: message`.
fn error(src: &str) -> String {
    let e = Policy::parse(src, "p.hujson").expect_err("must be refused");
    let s = e.to_string();
    s.strip_prefix("p.hujson:").unwrap_or(&s).to_string()
}

fn decide(
    p: &Policy,
    src: &str,
    dst: &str,
    proto: Option<&str>,
    attrs: &[(&str, AttrValue)],
) -> Decision {
    let a: PostureAttrs = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let q = Query::new(src, dst, proto, a).unwrap();
    p.check_query(&q).unwrap();
    p.explain(&q).decision
}

use Decision::{Accept as A, Deny as D};

const BASE: &str = r#"
  "groups": { "group:eng": ["alice@x.com", "dave@x.com"], "group:sales": ["bob@x.com"], "group:idp": [] },
  "tagOwners": { "tag:web": ["group:eng"], "tag:db": ["tag:web"], "tag:prod": ["alice@x.com"] },
  "hosts": { "office": "198.18.10.0/24", "printer": "198.18.10.7", "v6net": "fd00:1::/64" },
"#;

fn with_rules(rules: &str) -> Policy {
    parse(&format!("{{ {BASE} {rules} }}"))
}

#[test]
fn empty_or_missing_rules_deny_everything() {
    for p in [
        with_rules(""),
        with_rules(r#""acls": []"#),
        with_rules(r#""grants": []"#),
    ] {
        assert_eq!(decide(&p, "alice@x.com", "tag:web:443", None, &[]), D);
        assert_eq!(decide(&p, "100.64.0.1", "100.64.0.2:22", None, &[]), D);
    }
}

#[test]
fn targets_users_groups_tags_autogroups() {
    let p = with_rules(
        r#""acls": [
        { "action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"] },
        { "action": "accept", "src": ["bob@x.com"], "dst": ["alice@x.com:22"] },
        { "action": "accept", "src": ["autogroup:tagged"], "dst": ["tag:db:5432"] },
        { "action": "accept", "src": ["autogroup:member"], "dst": ["tag:prod:8080"] },
        { "action": "accept", "src": ["tag:web"], "dst": ["group:sales:9000"] },
      ]"#,
    );
    assert_eq!(decide(&p, "alice@x.com", "tag:web:443", None, &[]), A);
    assert_eq!(decide(&p, "group:eng", "tag:web:443", None, &[]), A);
    assert_eq!(decide(&p, "bob@x.com", "tag:web:443", None, &[]), D);
    // A user as destination means that user's own devices.
    assert_eq!(decide(&p, "bob@x.com", "alice@x.com:22", None, &[]), A);
    assert_eq!(decide(&p, "bob@x.com", "dave@x.com:22", None, &[]), D);
    assert_eq!(decide(&p, "tag:web", "tag:db:5432", None, &[]), A);
    // Users are never tagged devices.
    assert_eq!(decide(&p, "alice@x.com", "tag:db:5432", None, &[]), D);
    assert_eq!(decide(&p, "dave@x.com", "tag:prod:8080", None, &[]), A);
    // Tagged devices are not members.
    assert_eq!(decide(&p, "tag:web", "tag:prod:8080", None, &[]), D);
    assert_eq!(decide(&p, "tag:web", "bob@x.com:9000", None, &[]), A);
    assert_eq!(decide(&p, "tag:web", "alice@x.com:9000", None, &[]), D);
}

#[test]
fn targets_hosts_and_prefixes() {
    let p = with_rules(
        r#""acls": [
        { "action": "accept", "src": ["office"], "dst": ["printer:631"] },
        { "action": "accept", "src": ["100.64.0.0/10"], "dst": ["[fd00:1::5]:443", "198.18.20.1:*"] },
        { "action": "accept", "src": ["fd00:2::/48"], "dst": ["v6net:22"] },
      ]"#,
    );
    assert_eq!(decide(&p, "198.18.10.99", "printer:631", None, &[]), A);
    assert_eq!(decide(&p, "198.18.11.99", "printer:631", None, &[]), D);
    assert_eq!(decide(&p, "198.18.10.99", "198.18.10.7:631", None, &[]), A);
    assert_eq!(decide(&p, "100.64.3.4", "[fd00:1::5]:443", None, &[]), A);
    assert_eq!(decide(&p, "100.64.3.4", "198.18.20.1:1", None, &[]), A);
    assert_eq!(decide(&p, "100.128.0.1", "198.18.20.1:1", None, &[]), D);
    assert_eq!(decide(&p, "[fd00:2::1]", "[fd00:1::77]:22", None, &[]), A);
}

#[test]
fn port_forms() {
    let p = with_rules(
        r#""acls": [
        { "action": "accept", "src": ["alice@x.com"], "dst": ["tag:web:*"] },
        { "action": "accept", "src": ["bob@x.com"], "dst": ["tag:web:22", "tag:db:80,443", "tag:prod:1000-2000,3000,4000-4001"] },
      ]"#,
    );
    for port in [0, 1, 22, 65535] {
        assert_eq!(
            decide(&p, "alice@x.com", &format!("tag:web:{port}"), None, &[]),
            A
        );
    }
    for (dst, want) in [
        ("tag:web:22", A),
        ("tag:web:23", D),
        ("tag:db:80", A),
        ("tag:db:443", A),
        ("tag:db:81", D),
        ("tag:prod:999", D),
        ("tag:prod:1000", A),
        ("tag:prod:2000", A),
        ("tag:prod:2001", D),
        ("tag:prod:3000", A),
        ("tag:prod:4001", A),
        ("tag:prod:4002", D),
    ] {
        assert_eq!(decide(&p, "bob@x.com", dst, None, &[]), want, "{dst}");
    }
}

#[test]
fn protocols() {
    let p = with_rules(
        r#""acls": [
        { "action": "accept", "src": ["alice@x.com"], "dst": ["tag:web:443"] },
        { "action": "accept", "src": ["bob@x.com"], "dst": ["tag:web:53"], "proto": "udp" },
        { "action": "accept", "src": ["bob@x.com"], "dst": ["tag:db:*"], "proto": "icmp" },
        { "action": "accept", "src": ["dave@x.com"], "dst": ["tag:db:*"], "proto": 47 },
      ]"#,
    );
    // Omitted proto: TCP, UDP and ICMP.
    assert_eq!(
        decide(&p, "alice@x.com", "tag:web:443", Some("tcp"), &[]),
        A
    );
    assert_eq!(
        decide(&p, "alice@x.com", "tag:web:443", Some("udp"), &[]),
        A
    );
    assert_eq!(decide(&p, "alice@x.com", "tag:web", Some("icmp"), &[]), A);
    assert_eq!(
        decide(&p, "alice@x.com", "tag:web", Some("ipv6-icmp"), &[]),
        A
    );
    assert_eq!(decide(&p, "alice@x.com", "tag:web", Some("gre"), &[]), D);
    assert_eq!(decide(&p, "bob@x.com", "tag:web:53", Some("udp"), &[]), A);
    assert_eq!(decide(&p, "bob@x.com", "tag:web:53", Some("tcp"), &[]), D);
    assert_eq!(decide(&p, "bob@x.com", "tag:db:*", Some("icmp"), &[]), A);
    assert_eq!(decide(&p, "bob@x.com", "tag:db", Some("ipv6-icmp"), &[]), D);
    assert_eq!(decide(&p, "dave@x.com", "tag:db", Some("47"), &[]), A);
}

#[test]
fn grants_ip_forms() {
    let p = with_rules(
        r#""grants": [
        { "src": ["group:eng"], "dst": ["tag:web"], "ip": ["tcp:443", "udp:53", "icmp"] },
        { "src": ["group:sales"], "dst": ["tag:db"], "ip": ["*"] },
        { "src": ["group:sales"], "dst": ["tag:prod"], "ip": ["8080"] },
      ]"#,
    );
    assert_eq!(decide(&p, "alice@x.com", "tag:web:443", None, &[]), A);
    assert_eq!(
        decide(&p, "alice@x.com", "tag:web:443", Some("udp"), &[]),
        D
    );
    assert_eq!(decide(&p, "alice@x.com", "tag:web:53", Some("udp"), &[]), A);
    assert_eq!(decide(&p, "alice@x.com", "tag:web", Some("icmp"), &[]), A);
    assert_eq!(decide(&p, "bob@x.com", "tag:db:1", Some("udp"), &[]), A);
    assert_eq!(
        decide(&p, "bob@x.com", "tag:prod:8080", Some("udp"), &[]),
        A
    );
    assert_eq!(decide(&p, "bob@x.com", "tag:prod:8081", None, &[]), D);
}

#[test]
fn postures_src_posture_is_any_of_and_default_is_all_of() {
    let p = with_rules(
        r#"
      "postures": {
        "posture:linux": ["node:os == 'linux'"],
        "posture:mac": ["node:os == 'macos'", "node:osVersion >= '14.0'"],
        "posture:enc": ["node:diskEncrypted == true"],
      },
      "defaultSrcPosture": ["posture:enc"],
      "acls": [
        { "action": "accept", "src": ["alice@x.com"], "dst": ["tag:web:443"], "srcPosture": ["posture:linux", "posture:mac"] },
        { "action": "accept", "src": ["alice@x.com"], "dst": ["tag:db:5432"] },
      ]"#,
    );
    let s = |v: &str| AttrValue::String(v.into());
    let linux = [("node:os", s("linux"))];
    let old_mac = [("node:os", s("macos")), ("node:osVersion", s("13.6"))];
    let new_mac = [("node:os", s("macos")), ("node:osVersion", s("14.1"))];
    assert_eq!(decide(&p, "alice@x.com", "tag:web:443", None, &linux), A);
    assert_eq!(decide(&p, "alice@x.com", "tag:web:443", None, &new_mac), A);
    assert_eq!(decide(&p, "alice@x.com", "tag:web:443", None, &old_mac), D);
    // Without srcPosture, defaultSrcPosture applies.
    assert_eq!(decide(&p, "alice@x.com", "tag:db:5432", None, &linux), D);
    let enc = [("node:diskEncrypted", AttrValue::Bool(true))];
    assert_eq!(decide(&p, "alice@x.com", "tag:db:5432", None, &enc), A);
    // An explicit srcPosture replaces the default.
    assert_eq!(decide(&p, "alice@x.com", "tag:web:443", None, &linux), A);
}

fn node(
    id: u64,
    user: Option<&str>,
    tags: &[&str],
    addrs: &[&str],
    posture: &[(&str, AttrValue)],
) -> InventoryNode {
    InventoryNode {
        id: NodeId(id),
        user: user.map(str::to_string),
        user_groups: vec![],
        tags: tags.iter().map(|t| t.to_string()).collect(),
        addresses: addrs.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect(),
        posture: posture
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

#[test]
fn admission_gate_lists_every_failed_condition() {
    let p = parse(
        r#"{
      "postures": {
        "posture:compliant": ["node:diskEncrypted == true", "node:clientVersion >= '0.2.0'"],
        "posture:fw": ["node:firewall == true"],
      },
      "defaultSrcPosture": ["posture:compliant", "posture:fw"],
    }"#,
    );
    let n = node(
        1,
        Some("a@x.com"),
        &[],
        &["100.64.0.1"],
        &[
            ("node:diskEncrypted", AttrValue::Bool(false)),
            ("node:clientVersion", AttrValue::String("0.1.9".into())),
        ],
    );
    let reasons = p.check_admission(&n).unwrap_err();
    assert_eq!(
        reasons,
        vec![
            "posture:compliant: node:diskEncrypted == true (device reports false)".to_string(),
            "posture:compliant: node:clientVersion >= '0.2.0' (device reports '0.1.9')".to_string(),
            "posture:fw: node:firewall == true (device does not report node:firewall)".to_string(),
        ]
    );
    let ok = node(
        2,
        Some("a@x.com"),
        &[],
        &[],
        &[
            ("node:diskEncrypted", AttrValue::Bool(true)),
            ("node:clientVersion", AttrValue::String("0.10.0".into())),
            ("node:firewall", AttrValue::Bool(true)),
        ],
    );
    assert_eq!(p.check_admission(&ok), Ok(()));
    assert_eq!(parse("{}").check_admission(&n), Ok(()));
}

#[test]
fn lifetimes_and_defaults() {
    assert_eq!(parse("{}").lifetimes(), Lifetimes::default());
    let d = Lifetimes::default();
    assert_eq!(
        (d.credential, d.reauth, d.posture_report),
        (
            Duration::from_secs(3600),
            Duration::from_secs(43200),
            Duration::from_secs(300)
        )
    );
    let p = parse(
        r#"{ "lifetimes": { "credential": "15m", "reauth": "2d", "postureReport": "10s" } }"#,
    );
    let l = p.lifetimes();
    assert_eq!(
        (l.credential, l.reauth, l.posture_report),
        (
            Duration::from_secs(900),
            Duration::from_secs(172800),
            Duration::from_secs(10)
        )
    );
    assert_eq!(error(r#"{ "lifetimes": { "credential": "15 minutes" } }"#), "1:32: lifetimes.credential: bad duration `15 minutes`: expected a number and a unit s, m, h or d, e.g. 15m");
    assert!(error(r#"{ "lifetimes": { "renew": "1h" } }"#)
        .starts_with("1:18: lifetimes: unknown field `renew`"));
    assert!(error(r#"{ "lifetimes": { "credential": "0s" } }"#).contains("above zero"));
}

#[test]
fn declared_tags_and_tag_owners() {
    let p = with_rules("");
    assert!(p.is_declared_tag("tag:web") && !p.is_declared_tag("tag:nope"));
    assert!(p.may_apply_tag("alice@x.com", &[], "tag:web"));
    assert!(!p.may_apply_tag("bob@x.com", &[], "tag:web"));
    assert!(p.may_apply_tag("zed@x.com", &["group:eng".into()], "tag:web"));
    assert!(p.may_apply_tag("alice@x.com", &[], "tag:prod"));
    assert!(!p.may_apply_tag("alice@x.com", &[], "tag:nope"));
}

#[test]
fn auto_approvers_are_validated() {
    let p = with_rules(
        r#""autoApprovers": { "routes": { "10.0.0.0/8": ["tag:web", "group:eng"] }, "exitNode": ["tag:prod"] }"#,
    );
    assert_eq!(p.auto_approvers().routes.len(), 1);
    assert_eq!(p.auto_approvers().exit_node.len(), 1);
    assert!(
        error(r#"{ "autoApprovers": { "routes": { "10.0.0.1/8": [] } } }"#).contains("host bits")
    );
    assert!(
        error(r#"{ "autoApprovers": { "routes": { "10.0.0.0/8": ["tag:x"] } } }"#)
            .contains("undefined tag `tag:x`")
    );
}

#[test]
fn idp_groups_count_when_declared() {
    let p = with_rules(
        r#""acls": [{ "action": "accept", "src": ["group:idp"], "dst": ["tag:web:443"] }]"#,
    );
    let mut u = node(1, Some("zed@x.com"), &[], &["100.64.0.1"], &[]);
    u.user_groups = vec!["group:idp".into()];
    let w = node(2, Some("alice@x.com"), &["tag:web"], &["100.64.0.2"], &[]);
    let mut t = node(3, Some("zed@x.com"), &["tag:db"], &["100.64.0.3"], &[]);
    t.user_groups = vec!["group:idp".into()];
    let views = compile_all(Arc::new(p), vec![u, w, t]);
    assert_eq!(
        views[&NodeId(2)].peers.iter().collect::<Vec<_>>(),
        vec![NodeId(1)]
    );
    assert!(
        views[&NodeId(3)].peers.is_empty(),
        "tagged devices lose their user's groups"
    );
}

#[test]
fn error_locations() {
    let cases: &[(&str, &str)] = &[
        ("{\n  \"acl\": []\n}", "2:3: unknown section `acl`"),
        ("{ \"jit\": {} }", "1:3: section `jit` is reserved"),
        ("{ \"risk\": {} }", "1:3: section `risk` is reserved"),
        ("{ \"groups\": { \"eng\": [] } }", "1:15: group name `eng`"),
        ("{ \"groups\": { \"group:a\": [\"tag:x\"] } }", "1:27: `tag:x` in group:a: groups list users only"),
        ("{ \"groups\": { \"group:a\": [\"bob\"] } }", "1:27: `bob` in group:a: expected a user login name"),
        ("{ \"groups\": { \"group:a\": \"a@x.com\" } }", "1:26: group:a: expected a list, found a string"),
        ("{ \"tagOwners\": { \"tag:a\": [\"group:z\"] } }", "1:28: undefined group `group:z`"),
        ("{ \"hosts\": { \"db\": \"10.0.0.300\" } }", "1:20: host `db`: `10.0.0.300` is not an IP address or prefix"),
        ("{ \"acls\": [ { \"action\": \"deny\", \"src\": [\"*\"], \"dst\": [\"*:*\"] } ] }", "1:25: acls[0]: action `deny`: expected \"accept\""),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"] } ] }", "1:13: acls[0]: missing field `dst`"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"], \"users\": [] } ] }", "1:65: acls[0]: unknown field `users`"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:70000\"] } ] }", "1:60: port `70000` is out of range"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:90-80\"] } ] }", "1:60: port range `90-80` runs backwards"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:http\"] } ] }", "1:60: bad port `http`"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"fd00::1:22\"] } ] }", "1:58: `fd00::1:22`: IPv6 addresses need brackets"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"10.0.0.0/33:22\"] } ] }", "1:58: `10.0.0.0/33` is not an IP address or prefix"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"nobody\"], \"dst\": [\"*:*\"] } ] }", "1:43: unknown target `nobody`"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:22\"], \"proto\": \"icmp\" } ] }", "1:60: protocol icmp has no ports"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:22\"], \"proto\": \"tpc\" } ] }", "1:75: acls[0].proto: unknown protocol `tpc`"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:22\"], \"srcPosture\": [\"posture:x\"] } ] }", "1:81: undefined posture `posture:x`"),
        ("{ \"grants\": [ { \"src\": [\"*\"], \"dst\": [\"*\"], \"ip\": [\"tcp:x\"] } ] }", "1:52: grants[0].ip `tcp:x`: bad port `x`"),
        ("{ \"grants\": [ { \"src\": [\"*\"], \"dst\": [\"*:22\"], \"ip\": [\"*\"] } ] }", "1:39: unknown target `*:22`"),
        ("{ \"postures\": { \"posture:a\": [\"node:os = 'linux'\"] } }", "1:40: posture:a: expected an operator"),
        ("{ \"postures\": { \"posture:a\": [\"node:colour == 'red'\"] } }", "1:32: posture:a: unknown attribute `node:colour`"),
        ("{ \"defaultSrcPosture\": [\"posture:none\"] }", "1:25: undefined posture `posture:none`"),
        ("{ \"tests\": [ { \"src\": \"alice@x.com\", \"accept\": [\"tag:web:22\"] } ] }", "1:50: undefined tag `tag:web`"),
        ("{ \"tests\": [ { \"src\": \"alice@x.com\", \"accept\": [\"10.0.0.1:1-2\"] } ] }", "1:50: `10.0.0.1:1-2`: expected one port"),
        ("{ \"tests\": [ { \"accept\": [] } ] }", "1:14: tests[0]: missing field `src`"),
        ("{ \"tests\": [ { \"src\": \"a@x.com\", \"srcPostureAttrs\": { \"node:colour\": 1 } } ] }", "1:55: tests[0].srcPostureAttrs: unknown attribute `node:colour`"),
        ("{ \"groups\": {}, \"groups\": {} }", "1:17: duplicate key \"groups\" (first defined at 1:3)"),
        ("{ \"acls\": [ { \"action\": \"accept\", \"action\": \"accept\" } ] }", "1:35: duplicate key \"action\""),
        ("[]", "1:1: the policy: expected an object, found a list"),
    ];
    let mut bad = Vec::new();
    for (src, want) in cases {
        let got = error(src);
        if !got.starts_with(want) {
            bad.push(format!("{src}\n  got:  {got}\n  want: {want}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_problem_is_listed_in_file_order() {
    let e = Policy::parse(
        "{\n \"acls\": [{\"action\": \"accept\", \"src\": [\"group:x\"], \"dst\": [\"tag:y:1\"]}],\n \"groups\": {\"bad\": []},\n}",
        "f",
    )
    .unwrap_err();
    let lines: Vec<String> = e.problems.iter().map(|d| format!("{}", d.pos)).collect();
    assert_eq!(lines, vec!["2:40", "2:61", "3:13"]);
}

#[test]
fn failing_tests_name_the_test_the_target_and_the_rule() {
    let p = with_rules(
        r#""acls": [{ "action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"] }],
        "tests": [
          { "src": "alice@x.com", "accept": ["tag:web:443", "tag:web:22"], "deny": ["tag:web:443"] },
        ]"#,
    );
    let f: Vec<String> = p.run_tests().iter().map(|f| f.to_string()).collect();
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0].contains("test tests[0] (src alice@x.com) -> tag:web:22: expected accept, got deny; decided by no rule: default deny"), "{}", f[0]);
    assert!(
        f[1].contains("-> tag:web:443: expected deny, got accept; decided by acls[0] (p.hujson:"),
        "{}",
        f[1]
    );
}

#[test]
fn explain_gives_rules_and_posture_reasons() {
    let p = with_rules(
        r#""postures": { "posture:enc": ["node:diskEncrypted == true"] },
        "acls": [
          { "action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"], "srcPosture": ["posture:enc"] },
          { "action": "accept", "src": ["alice@x.com"], "dst": ["tag:web:80"] },
        ]"#,
    );
    let q = Query::new("alice@x.com", "tag:web:443", None, PostureAttrs::new()).unwrap();
    let e = p.explain(&q);
    assert_eq!(e.decision, D);
    assert!(
        e.reasons[0].contains(
            "posture:enc: node:diskEncrypted == true (device does not report node:diskEncrypted)"
        ),
        "{:?}",
        e.reasons
    );
    assert!(
        e.reasons
            .iter()
            .any(|r| r.contains("acls[1]") && r.contains("not on tcp port 443")),
        "{:?}",
        e.reasons
    );
    assert!(e.reasons.last().unwrap().ends_with("default deny"));
    let j = e.to_json();
    assert_eq!(j["decision"], "deny");
    let mut a = PostureAttrs::new();
    a.insert("node:diskEncrypted".into(), AttrValue::Bool(true));
    let e = p.explain(&Query::new("alice@x.com", "tag:web:443", None, a).unwrap());
    assert_eq!(e.decision, A);
    assert_eq!(e.rules.len(), 1);
    assert!(e.reasons.is_empty());
}

#[test]
fn prefixes_stay_prefixes_and_views_hold_only_peers_of_allowed_flows() {
    let p = Arc::new(with_rules(
        r#""acls": [
          { "action": "accept", "src": ["10.0.0.0/8", "group:eng"], "dst": ["tag:web:443"] },
        ]"#,
    ));
    let nodes = vec![
        node(
            1,
            Some("alice@x.com"),
            &[],
            &["100.64.0.1", "fd5a:746d:6573::1"],
            &[],
        ),
        node(2, Some("bob@x.com"), &[], &["100.64.0.2"], &[]),
        node(
            3,
            None,
            &["tag:web"],
            &["100.64.0.3", "fd5a:746d:6573::3"],
            &[],
        ),
        node(4, Some("dave@x.com"), &[], &["100.64.0.4"], &[]),
    ];
    let views = compile_all(p.clone(), nodes.clone());
    let web = &views[&NodeId(3)];
    assert_eq!(
        web.peers.iter().map(|n| n.0).collect::<Vec<_>>(),
        vec![1, 4]
    );
    assert_eq!(web.filter.len(), 1);
    let srcs: Vec<String> = web.filter[0].src.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        srcs,
        vec![
            "10.0.0.0/8",
            "100.64.0.1/32",
            "100.64.0.4/32",
            "fd5a:746d:6573::1/128"
        ]
    );
    let dsts: Vec<String> = web
        .dst(&web.filter[0])
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(dsts, vec!["100.64.0.3/32", "fd5a:746d:6573::3/128"]);
    assert!(views[&NodeId(2)].peers.is_empty() && views[&NodeId(2)].filter.is_empty());
    assert_eq!(
        views[&NodeId(1)]
            .peers
            .iter()
            .map(|n| n.0)
            .collect::<Vec<_>>(),
        vec![3]
    );
    assert!(views[&NodeId(1)].filter.is_empty(), "inbound filter only");

    // One node changing touches only the views that depend on it.
    let mut c = ViewCompiler::new(p);
    c.bulk_load(nodes);
    let mut bob = node(2, Some("bob@x.com"), &[], &["100.64.0.2"], &[]);
    bob.posture
        .insert("node:os".into(), AttrValue::String("linux".into()));
    assert_eq!(
        c.upsert_node(bob),
        Vec::<NodeId>::new(),
        "nothing depends on bob's posture"
    );
    let changed = c.upsert_node(node(2, Some("dave@x.com"), &[], &["100.64.0.2"], &[]));
    assert_eq!(changed, vec![NodeId(2), NodeId(3)]);
    assert_eq!(c.remove_node(NodeId(1)), vec![NodeId(1), NodeId(3)]);
}

#[test]
fn text_that_is_not_utf8_is_located_like_any_other_error() {
    let mut src = b"{\n  \"groups\": {\"group:a\": [\"z".to_vec();
    src.extend([0xFF, b'"', b']', b'}', b'}']);
    let e = Policy::parse_bytes(&src, "p.hujson").expect_err("must be refused");
    assert_eq!(
        e.to_string(),
        "p.hujson:2:28: byte 0xFF is not UTF-8: expected UTF-8 text"
    );
    let ok = Policy::parse_bytes(
        "{\"groups\": {\"group:a\": [\"zoë@example.com\"]}}".as_bytes(),
        "p",
    );
    assert!(ok.is_ok(), "{ok:?}");
}
