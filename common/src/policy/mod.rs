//! The policy language: HuJSON parsing, validation, tests, compilation to per-node views,
//! and explanation of decisions.
//!
//! - [`hujson`]: the HuJSON reader with positions.
//! - [`target`]: targets, ports and protocols.
//! - [`condition`]: posture conditions.
//! - `parse`: from the HuJSON tree to a validated [`Policy`].
//! - `eval`: the reference evaluator, `tests`, `explain` and the admission gate.
//! - `compile`: the incremental [`ViewCompiler`]; `membership` indexes the rules for it,
//!   `prefix_set` keeps source lists as the fewest prefixes, `peer_list` stores peers compactly.
//! - `view`: the compiled [`NodeView`] with its shared filter lists.

pub mod condition;
pub mod hujson;
pub mod target;

mod compile;
mod eval;
mod membership;
mod parse;
mod peer_list;
mod prefix_set;
mod view;

pub use compile::{compile_all, ViewCompiler};
pub use eval::{reference_allows, Decision, Explanation, Query, TestFailure};
pub use peer_list::{PeerIter, PeerList};
pub use view::{heap_bytes_shared, NodeView, ViewRule};

use crate::ids::NodeId;
use crate::posture::PostureAttrs;
use condition::Condition;
use hujson::Pos;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;
use target::{Cap, Selector};

/// One problem in a policy file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.pos, self.message)
    }
}

/// A policy that was refused: every problem found, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub problems: Vec<Diagnostic>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// How long credentials, logins and posture reports stay valid (ztmesh's `lifetimes` section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub credential: Duration,
    pub reauth: Duration,
    pub posture_report: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            credential: Duration::from_secs(3600),
            reauth: Duration::from_secs(12 * 3600),
            posture_report: Duration::from_secs(300),
        }
    }
}

/// Which section a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Acls,
    Grants,
}

/// A destination of a rule: whom, and which protocols/ports.
#[derive(Clone, Debug, PartialEq)]
pub struct DstEntry {
    pub selector: Selector,
    pub caps: Vec<Cap>,
}

/// The postures a rule's source must satisfy.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PostureReq {
    /// Indices into the policy's postures.
    pub postures: Vec<usize>,
    /// `true` for `defaultSrcPosture` (every posture must hold); `false` for a rule's own
    /// `srcPosture` (any one of them suffices, as in Tailscale).
    pub all: bool,
}

/// One `acls` or `grants` entry, normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub section: Section,
    pub index: usize,
    pub pos: Pos,
    pub src: Vec<Selector>,
    pub dst: Vec<DstEntry>,
    pub posture: PostureReq,
}

/// A named posture: all of its conditions must hold.
#[derive(Clone, Debug, PartialEq)]
pub struct PostureDef {
    pub name: String,
    pub conditions: Vec<Condition>,
}

/// An entry of the `tests` section.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyTest {
    pub index: usize,
    pub pos: Pos,
    pub src: String,
    pub src_attrs: PostureAttrs,
    pub proto: u8,
    /// (target as written, where)
    pub accept: Vec<(String, Pos)>,
    pub deny: Vec<(String, Pos)>,
}

/// `autoApprovers`: who may advertise which routes or act as an exit node without an admin.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AutoApprovers {
    pub routes: Vec<(IpNet, Vec<Selector>)>,
    pub exit_node: Vec<Selector>,
}

/// A parsed and validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    file: String,
    groups: BTreeMap<String, Vec<String>>,
    /// user login -> the policy groups that list it.
    user_groups: BTreeMap<String, Vec<String>>,
    tag_owners: BTreeMap<String, Vec<String>>,
    hosts: BTreeMap<String, IpNet>,
    postures: Vec<PostureDef>,
    default_src_posture: Vec<usize>,
    rules: Vec<Rule>,
    auto_approvers: AutoApprovers,
    tests: Vec<PolicyTest>,
    lifetimes: Lifetimes,
}

/// A device as the policy sees it: who owns it (or which tags it carries), where it is, and
/// what it reports about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct InventoryNode {
    pub id: NodeId,
    /// The owner's login name; ignored for matching once the node carries tags.
    pub user: Option<String>,
    /// Groups from the IdP's groups claim, e.g. "group:eng".
    pub user_groups: Vec<String>,
    pub tags: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub posture: PostureAttrs,
}

impl Policy {
    /// Parses and validates a policy. The error lists every problem as `file:line:column`.
    pub fn parse(source: &str, file_name: &str) -> Result<Policy, PolicyError> {
        parse::parse(source, file_name)
    }

    /// [`Policy::parse`] of a file's bytes: text that is not UTF-8 is an error at the line
    /// and column of its first bad byte, like any other.
    pub fn parse_bytes(source: &[u8], file_name: &str) -> Result<Policy, PolicyError> {
        Policy::parse(policy_text(source, file_name)?, file_name)
    }

    /// The file name given to [`Policy::parse`].
    pub fn file_name(&self) -> &str {
        &self.file
    }

    /// Runs the policy's own `tests`; empty when all hold.
    pub fn run_tests(&self) -> Vec<TestFailure> {
        eval::run_tests(self)
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// Whether `tag` is declared in `tagOwners`.
    pub fn is_declared_tag(&self, tag: &str) -> bool {
        self.tag_owners.contains_key(tag)
    }

    /// Whether a user (with the given IdP groups) may put `tag` on a device: the tag is
    /// declared and its owners name the user, one of the user's groups, or `autogroup:admin`
    /// is not needed (admins tag through the admin API, not through this check).
    pub fn may_apply_tag(&self, user: &str, idp_groups: &[String], tag: &str) -> bool {
        let Some(owners) = self.tag_owners.get(tag) else {
            return false;
        };
        owners.iter().any(|o| {
            o == user
                || (o.starts_with("group:")
                    && (idp_groups.iter().any(|g| g == o)
                        || self
                            .groups
                            .get(o)
                            .is_some_and(|us| us.iter().any(|u| u == user))))
        })
    }

    /// Admission gate: the node must satisfy every posture in `defaultSrcPosture` (if any).
    /// The error lists every failed condition as a sentence.
    pub fn check_admission(&self, node: &InventoryNode) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        for &p in &self.default_src_posture {
            reasons.extend(self.posture_failures(p, &node.posture));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Explains the decision for one query: the rules that allow it, or why none does.
    pub fn explain(&self, query: &Query) -> Explanation {
        eval::explain(self, query)
    }

    /// Checks that a query's source and destination name things this policy declares
    /// (`explain` reports such problems as a deny; the CLI reports them as errors).
    pub fn check_query(&self, query: &Query) -> Result<(), String> {
        eval::resolve_query(self, query).map(|_| ())
    }

    /// The postures (name and conditions), in file order.
    pub fn postures(&self) -> &[PostureDef] {
        &self.postures
    }

    /// The normalised rules, acls first then grants, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn auto_approvers(&self) -> &AutoApprovers {
        &self.auto_approvers
    }

    /// The `tests` section.
    pub fn tests(&self) -> &[PolicyTest] {
        &self.tests
    }

    /// Failed conditions of one posture, as "posture:NAME: COND (device reports X)".
    fn posture_failures(&self, p: usize, attrs: &PostureAttrs) -> Vec<String> {
        let def = &self.postures[p];
        def.conditions
            .iter()
            .filter_map(|c| {
                c.eval(attrs)
                    .err()
                    .map(|why| format!("{}: {c} ({why})", def.name))
            })
            .collect()
    }

    fn posture_holds(&self, p: usize, attrs: &PostureAttrs) -> bool {
        self.postures[p]
            .conditions
            .iter()
            .all(|c| c.eval(attrs).is_ok())
    }

    fn names(&self) -> target::Names<'_> {
        target::Names {
            groups: &self.groups,
            tags: &self.tag_owners,
            hosts: &self.hosts,
        }
    }

    /// The policy groups that list `user`.
    fn groups_of(&self, user: &str) -> &[String] {
        self.user_groups.get(user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Human label of a rule: `acls[0] (file:5:5)`.
    pub fn rule_label(&self, r: &Rule) -> String {
        let sec = match r.section {
            Section::Acls => "acls",
            Section::Grants => "grants",
        };
        format!("{sec}[{}] ({}:{})", r.index, self.file, r.pos)
    }

    /// A rule as one line: `acls[0] (file:5:5): group:eng -> tag:web (tcp/udp/icmp:80,443)`.
    pub fn describe_rule(&self, r: &Rule) -> String {
        let src = r
            .src
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let dst = r
            .dst
            .iter()
            .map(|d| {
                let caps = d
                    .caps
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{} ({caps})", d.selector)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!("{}: {src} -> {dst}", self.rule_label(r));
        if !r.posture.postures.is_empty() {
            let names: Vec<&str> = r
                .posture
                .postures
                .iter()
                .map(|p| self.postures[*p].name.as_str())
                .collect();
            if r.posture.all {
                s.push_str(&format!(" if defaultSrcPosture [{}]", names.join(", ")));
            } else {
                s.push_str(&format!(" if srcPosture [{}]", names.join(" or ")));
            }
        }
        s
    }
}

/// A policy file's bytes as text; bytes that are not UTF-8 are an error at the line and
/// column of the first bad one (for callers that send the text on, as `policy set` does).
pub fn policy_text<'a>(source: &'a [u8], file_name: &str) -> Result<&'a str, PolicyError> {
    std::str::from_utf8(source).map_err(|e| {
        let good = std::str::from_utf8(&source[..e.valid_up_to()]).expect("valid up to there");
        let line_start = good.rfind('\n').map_or(0, |i| i + 1);
        let pos = Pos {
            line: good.matches('\n').count() as u32 + 1,
            col: good[line_start..].chars().count() as u32 + 1,
        };
        PolicyError {
            problems: vec![Diagnostic {
                file: file_name.to_string(),
                pos,
                message: format!(
                    "byte 0x{:02X} is not UTF-8: expected UTF-8 text",
                    source[e.valid_up_to()]
                ),
            }],
        }
    })
}

/// Parses a duration: `10s`, `15m`, `1h`, `2d`, or a sequence such as `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration `{s}`: expected a number and a unit s, m, h or d, e.g. 15m");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(d as u64))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n = num.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    if num.is_some() {
        return Err(bad());
    }
    // Bounded so that adding it to a timestamp can never overflow.
    if total > 366 * 86400 {
        return Err(format!("duration `{s}` is longer than a year"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in [
            "",
            "10",
            "m",
            "1x",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "400d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
