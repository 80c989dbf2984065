//! The reference evaluator: "may this source reach that destination on proto/port?",
//! answered straight from the rules, one at a time. The policy's `tests`, `explain` and the
//! property test of the compiler all use it; it shares no code with the compiler's indexes.

use super::target::{self, Selector};
use super::{parse, InventoryNode, Policy, Rule};
use crate::posture::PostureAttrs;
use std::fmt;
use std::net::IpAddr;

/// Accept or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Deny,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Accept => "accept",
            Decision::Deny => "deny",
        })
    }
}

/// One side of a flow as the rules see it.
#[derive(Clone, Debug, Default)]
pub(super) struct Principal {
    /// Owner login, for user-owned devices.
    pub user: Option<String>,
    /// A user-owned (untagged) device, possibly of an unnamed member of `groups`.
    pub user_device: bool,
    /// Policy groups of the user plus the IdP's groups.
    pub groups: Vec<String>,
    pub tags: Vec<String>,
    /// The address the packet uses on this side (empty when only the identity is known).
    pub addrs: Vec<IpAddr>,
    /// Posture attributes; `None` when the side is not a device (a bare address).
    pub posture: Option<PostureAttrs>,
}

impl Principal {
    fn matches(&self, sel: &Selector) -> bool {
        match sel {
            Selector::All => true,
            Selector::User(u) => self.user_device && self.user.as_deref() == Some(u),
            Selector::Group(g) => self.user_device && self.groups.iter().any(|x| x == g),
            Selector::Tag(t) => self.tags.iter().any(|x| x == t),
            Selector::Member => self.user_device,
            Selector::Tagged => !self.tags.is_empty(),
            Selector::Prefix { net, .. } => self.addrs.iter().any(|a| net.contains(a)),
        }
    }

    /// A device of the inventory, seen through one of its addresses.
    pub fn of_node(policy: &Policy, n: &InventoryNode, addr: IpAddr) -> Principal {
        let user_device = n.tags.is_empty() && n.user.is_some();
        let mut groups: Vec<String> = Vec::new();
        if user_device {
            if let Some(u) = &n.user {
                groups.extend(policy.groups_of(u).iter().cloned());
            }
            groups.extend(n.user_groups.iter().cloned());
        }
        Principal {
            user: n.user.clone(),
            user_device,
            groups,
            tags: n.tags.clone(),
            addrs: vec![addr],
            posture: Some(n.posture.clone()),
        }
    }

    /// A hypothetical device named by a target, as in `tests` and `explain`.
    pub fn of_target(policy: &Policy, sel: &Selector, attrs: Option<&PostureAttrs>) -> Principal {
        let mut p = Principal {
            posture: attrs.cloned(),
            ..Principal::default()
        };
        match sel {
            Selector::User(u) => {
                p.user = Some(u.clone());
                p.user_device = true;
                p.groups = policy.groups_of(u).to_vec();
                p.posture.get_or_insert_with(PostureAttrs::new);
            }
            Selector::Group(g) => {
                p.user_device = true;
                p.groups = vec![g.clone()];
                p.posture.get_or_insert_with(PostureAttrs::new);
            }
            Selector::Member => {
                p.user_device = true;
                p.posture.get_or_insert_with(PostureAttrs::new);
            }
            Selector::Tag(t) => {
                p.tags = vec![t.clone()];
                p.posture.get_or_insert_with(PostureAttrs::new);
            }
            Selector::Prefix { net, .. } => p.addrs = vec![net.addr()],
            Selector::All | Selector::Tagged => {}
        }
        p
    }
}

/// What the rules say about one flow.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Rules that allow it.
    pub allowed_by: Vec<usize>,
    /// Rules that would allow it but for the source's posture, with the failed conditions.
    pub posture_failed: Vec<(usize, Vec<String>)>,
    /// Rules that connect source and destination, but not on this protocol/port.
    pub other_ports: Vec<usize>,
}

/// Why a rule's posture requirement fails (empty: it holds).
fn posture_failures(policy: &Policy, rule: &Rule, src: &Principal) -> Vec<String> {
    let req = &rule.posture;
    if req.postures.is_empty() {
        return Vec::new();
    }
    let Some(attrs) = &src.posture else {
        return vec!["the source is a bare address, not a device, so it has no posture".into()];
    };
    if req.all {
        req.postures
            .iter()
            .flat_map(|p| policy.posture_failures(*p, attrs))
            .collect()
    } else if req.postures.iter().any(|p| policy.posture_holds(*p, attrs)) {
        Vec::new()
    } else {
        req.postures
            .iter()
            .flat_map(|p| policy.posture_failures(*p, attrs))
            .collect()
    }
}

pub(super) fn decide(
    policy: &Policy,
    src: &Principal,
    dst: &Principal,
    proto: u8,
    port: Option<u16>,
) -> Outcome {
    let mut out = Outcome::default();
    for (i, rule) in policy.rules.iter().enumerate() {
        if !rule.src.iter().any(|s| src.matches(s)) {
            continue;
        }
        let entries: Vec<_> = rule
            .dst
            .iter()
            .filter(|d| dst.matches(&d.selector))
            .collect();
        if entries.is_empty() {
            continue;
        }
        if !entries
            .iter()
            .any(|d| d.caps.iter().any(|c| c.allows(proto, port)))
        {
            out.other_ports.push(i);
            continue;
        }
        let fails = posture_failures(policy, rule, src);
        if fails.is_empty() {
            out.allowed_by.push(i);
        } else {
            out.posture_failed.push((i, fails));
        }
    }
    out
}

/// May the node owning `src` (or the bare address `src`) reach address `dst` of a node in
/// `nodes` on `proto`/`port`? Answered rule by rule from the policy; a destination that is
/// no node's address is never reachable.
pub fn reference_allows(
    policy: &Policy,
    nodes: &[InventoryNode],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    let Some(d) = nodes.iter().find(|n| n.addresses.contains(&dst)) else {
        return false;
    };
    let s = match nodes.iter().find(|n| n.addresses.contains(&src)) {
        Some(n) => Principal::of_node(policy, n, src),
        None => Principal {
            addrs: vec![src],
            ..Principal::default()
        },
    };
    let d = Principal::of_node(policy, d, dst);
    !decide(policy, &s, &d, proto, port).allowed_by.is_empty()
}

/// A question for [`Policy::explain`].
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// A user, group, tag, host alias or IP address.
    pub src: String,
    /// `TARGET:PORT` (`TARGET` alone for protocols without ports).
    pub dst: String,
    /// IANA protocol number.
    pub proto: u8,
    /// Posture attributes of the source device.
    pub src_attrs: PostureAttrs,
}

impl Query {
    /// A query with the protocol given by name or number (`None`: tcp).
    pub fn new(
        src: &str,
        dst: &str,
        proto: Option<&str>,
        src_attrs: PostureAttrs,
    ) -> Result<Query, String> {
        let proto = match proto {
            None => crate::netmap::proto::TCP,
            Some(p) => target::parse_proto(p)?,
        };
        parse::parse_test_dst(dst, proto)?;
        Ok(Query {
            src: src.to_string(),
            dst: dst.to_string(),
            proto,
            src_attrs,
        })
    }
}

/// The answer of [`Policy::explain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// Every rule that allows the flow, described.
    pub rules: Vec<String>,
    /// When denied: why each nearly-matching rule did not apply, then the default deny.
    pub reasons: Vec<String>,
}

impl Explanation {
    /// `{"decision":"accept"|"deny","rules":[...],"reasons":[...]}`
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "decision": self.decision.to_string(),
            "rules": self.rules,
            "reasons": self.reasons,
        })
    }
}

pub(super) fn resolve_query(
    policy: &Policy,
    q: &Query,
) -> Result<(Principal, Principal, Option<u16>), String> {
    let names = policy.names();
    let ssel = target::resolve(&q.src, &names)?;
    if matches!(ssel, Selector::All | Selector::Tagged) {
        return Err(format!(
            "source `{}`: expected a user, group, tag, host or IP address",
            q.src
        ));
    }
    let (t, port) = parse::parse_test_dst(&q.dst, q.proto)?;
    let dsel = target::resolve(t, &names)?;
    if matches!(dsel, Selector::All | Selector::Member | Selector::Tagged) {
        return Err(format!(
            "destination `{t}`: expected a user, group, tag, host or IP address"
        ));
    }
    let attrs = (!q.src_attrs.is_empty() || !matches!(ssel, Selector::Prefix { .. }))
        .then_some(&q.src_attrs);
    Ok((
        Principal::of_target(policy, &ssel, attrs),
        Principal::of_target(policy, &dsel, None),
        port,
    ))
}

pub(super) fn explain(policy: &Policy, q: &Query) -> Explanation {
    let (s, d, port) = match resolve_query(policy, q) {
        Ok(x) => x,
        Err(e) => {
            return Explanation {
                decision: Decision::Deny,
                rules: vec![],
                reasons: vec![e],
            }
        }
    };
    let out = decide(policy, &s, &d, q.proto, port);
    let rules: Vec<String> = out
        .allowed_by
        .iter()
        .map(|i| policy.describe_rule(&policy.rules[*i]))
        .collect();
    let mut reasons = Vec::new();
    if rules.is_empty() {
        let what = match port {
            Some(p) => format!("{} port {p}", target::proto_name(q.proto)),
            None => target::proto_name(q.proto),
        };
        for (i, fails) in &out.posture_failed {
            for f in fails {
                reasons.push(format!(
                    "{} would allow it, but its posture fails: {f}",
                    policy.rule_label(&policy.rules[*i])
                ));
            }
        }
        for i in &out.other_ports {
            reasons.push(format!(
                "{} connects them, but not on {what}",
                policy.describe_rule(&policy.rules[*i])
            ));
        }
        reasons.push(format!(
            "no rule allows {} -> {} on {what}: default deny",
            q.src, q.dst
        ));
    }
    Explanation {
        decision: if rules.is_empty() {
            Decision::Deny
        } else {
            Decision::Accept
        },
        rules,
        reasons,
    }
}

/// A `tests` entry that does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestFailure {
    pub file: String,
    /// Where the failing target is written.
    pub pos: super::hujson::Pos,
    pub test_index: usize,
    pub src: String,
    pub target: String,
    pub expected: Decision,
    pub got: Decision,
    /// The rule that decided, or "no rule: default deny" (with posture reasons, if any).
    pub decided_by: String,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: test tests[{}] (src {}) -> {}: expected {}, got {}; decided by {}",
            self.file,
            self.pos,
            self.test_index,
            self.src,
            self.target,
            self.expected,
            self.got,
            self.decided_by
        )
    }
}

pub(super) fn run_tests(policy: &Policy) -> Vec<TestFailure> {
    let mut out = Vec::new();
    for t in &policy.tests {
        for (list, expected) in [(&t.accept, Decision::Accept), (&t.deny, Decision::Deny)] {
            for (target, pos) in list {
                let q = Query {
                    src: t.src.clone(),
                    dst: target.clone(),
                    proto: t.proto,
                    src_attrs: t.src_attrs.clone(),
                };
                let e = explain(policy, &q);
                if e.decision == expected {
                    continue;
                }
                let decided_by = match e.decision {
                    Decision::Accept => e.rules.join("; "),
                    Decision::Deny => {
                        let mut r = vec!["no rule: default deny".to_string()];
                        r.extend(
                            e.reasons
                                .iter()
                                .filter(|x| !x.ends_with("default deny"))
                                .cloned(),
                        );
                        r.join("; ")
                    }
                };
                out.push(TestFailure {
                    file: policy.file.clone(),
                    pos: *pos,
                    test_index: t.index,
                    src: t.src.clone(),
                    target: target.clone(),
                    expected,
                    got: e.decision,
                    decided_by,
                });
            }
        }
    }
    out
}
