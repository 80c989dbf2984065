//! From the HuJSON tree to a validated [`Policy`]: every section is read, every name it uses
//! is checked against the declarations, and every problem is reported with its position
//! (all of them, not only the first).

use super::condition;
use super::hujson::{self, Kind, Member, Pos, Value};
use super::target::{self, Cap, Names, Selector};
use super::{
    parse_duration, AutoApprovers, Diagnostic, DstEntry, Lifetimes, Policy, PolicyError,
    PolicyTest, PostureDef, PostureReq, Rule, Section,
};
use crate::netmap::proto;
use crate::posture::{AttrValue, PostureAttrs};
use ipnet::IpNet;
use std::collections::BTreeMap;

const SECTIONS: &str = "groups, tagOwners, hosts, acls, grants, postures, defaultSrcPosture, \
autoApprovers, tests, lifetimes";

struct Ctx {
    file: String,
    problems: Vec<Diagnostic>,
}

impl Ctx {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.problems.push(Diagnostic {
            file: self.file.clone(),
            pos,
            message: msg.into(),
        });
    }

    fn object<'v>(&mut self, v: &'v Value, what: &str) -> &'v [Member] {
        match &v.kind {
            Kind::Object(ms) => ms,
            _ => {
                self.err(
                    v.pos,
                    format!("{what}: expected an object, found {}", v.type_name()),
                );
                &[]
            }
        }
    }

    fn list<'v>(&mut self, v: &'v Value, what: &str) -> &'v [Value] {
        match &v.kind {
            Kind::Array(xs) => xs,
            _ => {
                self.err(
                    v.pos,
                    format!("{what}: expected a list, found {}", v.type_name()),
                );
                &[]
            }
        }
    }

    fn string<'v>(&mut self, v: &'v Value, what: &str) -> Option<&'v str> {
        match &v.kind {
            Kind::Str(s) => Some(s),
            _ => {
                self.err(
                    v.pos,
                    format!("{what}: expected a string, found {}", v.type_name()),
                );
                None
            }
        }
    }

    /// Strings of a list, with their values.
    fn strings<'v>(&mut self, v: &'v Value, what: &str) -> Vec<(&'v str, &'v Value)> {
        let mut out = Vec::new();
        for x in self.list(v, what) {
            if let Some(s) = self.string(x, what) {
                out.push((s, x));
            }
        }
        out
    }
}

/// The position of the `off`-th character inside a string value (assumes no escapes before
/// it, which holds for the targets and conditions that use it).
fn inside(v: &Value, off: usize) -> Pos {
    Pos {
        line: v.pos.line,
        col: v.pos.col + 1 + off as u32,
    }
}

fn char_offset(s: &str, byte: usize) -> usize {
    s[..byte.min(s.len())].chars().count()
}

pub(super) fn parse(source: &str, file: &str) -> Result<Policy, PolicyError> {
    let mut cx = Ctx {
        file: file.to_string(),
        problems: Vec::new(),
    };
    let root = match hujson::parse(source) {
        Ok(v) => v,
        Err(e) => {
            cx.err(e.pos, e.message);
            return Err(PolicyError {
                problems: cx.problems,
            });
        }
    };
    let members = cx.object(&root, "the policy").to_vec();
    let mut sec: BTreeMap<&str, &Value> = BTreeMap::new();
    for m in &members {
        match m.key.as_str() {
            "groups" | "tagOwners" | "hosts" | "acls" | "grants" | "postures"
            | "defaultSrcPosture" | "autoApprovers" | "tests" | "lifetimes" => {
                sec.insert(m.key.as_str(), &m.value);
            }
            "jit" | "risk" => cx.err(
                m.key_pos,
                format!(
                    "section `{}` is reserved for a later ztmesh version: expected one of {SECTIONS}",
                    m.key
                ),
            ),
            other => cx.err(
                m.key_pos,
                format!("unknown section `{other}`: expected one of {SECTIONS}"),
            ),
        }
    }

    let groups = sec
        .get("groups")
        .map(|v| groups(&mut cx, v))
        .unwrap_or_default();
    // Tags first by name only, so that owners may name other tags in any order.
    let tag_names: BTreeMap<String, Vec<String>> = sec
        .get("tagOwners")
        .map(|v| {
            cx.object(v, "tagOwners")
                .iter()
                .map(|m| (m.key.clone(), Vec::new()))
                .collect()
        })
        .unwrap_or_default();
    let hosts = sec
        .get("hosts")
        .map(|v| hosts(&mut cx, v))
        .unwrap_or_default();
    let tag_owners = sec
        .get("tagOwners")
        .map(|v| tag_owners(&mut cx, v, &groups, &tag_names))
        .unwrap_or_default();
    let names = Names {
        groups: &groups,
        tags: &tag_names,
        hosts: &hosts,
    };
    let postures = sec
        .get("postures")
        .map(|v| postures(&mut cx, v))
        .unwrap_or_default();
    let posture_ix: BTreeMap<&str, usize> = postures
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let default_src_posture = sec
        .get("defaultSrcPosture")
        .map(|v| posture_refs(&mut cx, v, &posture_ix, "defaultSrcPosture"))
        .unwrap_or_default();

    let mut rules = Vec::new();
    if let Some(v) = sec.get("acls") {
        for (i, r) in cx.list(v, "acls").iter().enumerate() {
            if let Some(rule) = acl(&mut cx, r, i, &names, &posture_ix, &default_src_posture) {
                rules.push(rule);
            }
        }
    }
    if let Some(v) = sec.get("grants") {
        for (i, r) in cx.list(v, "grants").iter().enumerate() {
            if let Some(rule) = grant(&mut cx, r, i, &names, &posture_ix, &default_src_posture) {
                rules.push(rule);
            }
        }
    }
    let auto_approvers = sec
        .get("autoApprovers")
        .map(|v| auto_approvers(&mut cx, v, &names))
        .unwrap_or_default();
    let tests = sec
        .get("tests")
        .map(|v| tests(&mut cx, v, &names))
        .unwrap_or_default();
    let lifetimes = sec
        .get("lifetimes")
        .map(|v| lifetimes(&mut cx, v))
        .unwrap_or_default();

    if !cx.problems.is_empty() {
        cx.problems.sort_by_key(|d| d.pos);
        return Err(PolicyError {
            problems: cx.problems,
        });
    }
    let mut user_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (g, users) in &groups {
        for u in users {
            let e = user_groups.entry(u.clone()).or_default();
            if !e.contains(g) {
                e.push(g.clone());
            }
        }
    }
    Ok(Policy {
        file: file.to_string(),
        groups,
        user_groups,
        tag_owners,
        hosts,
        postures,
        default_src_posture,
        rules,
        auto_approvers,
        tests,
        lifetimes,
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn groups(cx: &mut Ctx, v: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for m in cx.object(v, "groups") {
        match m.key.strip_prefix("group:") {
            Some(n) if valid_name(n) => {}
            _ => {
                cx.err(
                    m.key_pos,
                    format!(
                        "group name `{}`: expected group:NAME (letters, digits, - _ .)",
                        m.key
                    ),
                );
                continue;
            }
        }
        let mut users = Vec::new();
        for (s, x) in cx.strings(&m.value, &m.key) {
            if s.starts_with("group:") || s.starts_with("tag:") || s.starts_with("autogroup:") {
                cx.err(
                    x.pos,
                    format!("`{s}` in {}: groups list users only (name@domain)", m.key),
                );
            } else if !s.contains('@') || s.chars().any(char::is_whitespace) {
                cx.err(
                    x.pos,
                    format!(
                        "`{s}` in {}: expected a user login name (name@domain)",
                        m.key
                    ),
                );
            } else {
                users.push(s.to_string());
            }
        }
        out.insert(m.key.clone(), users);
    }
    out
}

fn tag_owners(
    cx: &mut Ctx,
    v: &Value,
    groups: &BTreeMap<String, Vec<String>>,
    tags: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for m in cx.object(v, "tagOwners") {
        match m.key.strip_prefix("tag:") {
            Some(n) if valid_name(n) => {}
            _ => {
                cx.err(
                    m.key_pos,
                    format!(
                        "tag name `{}`: expected tag:NAME (letters, digits, - _ .)",
                        m.key
                    ),
                );
                continue;
            }
        }
        let mut owners = Vec::new();
        for (s, x) in cx.strings(&m.value, &m.key) {
            let ok = if s.starts_with("group:") {
                groups.contains_key(s) || {
                    cx.err(
                        x.pos,
                        format!("undefined group `{s}`: expected a group declared in `groups`"),
                    );
                    false
                }
            } else if s.starts_with("tag:") {
                tags.contains_key(s) || {
                    cx.err(
                        x.pos,
                        format!("undefined tag `{s}`: expected a tag declared in `tagOwners`"),
                    );
                    false
                }
            } else if s == "autogroup:admin" || s == "autogroup:member" || s.contains('@') {
                true
            } else {
                cx.err(
                    x.pos,
                    format!(
                        "tag owner `{s}`: expected a user, group:NAME, tag:NAME or autogroup:admin"
                    ),
                );
                false
            };
            if ok {
                owners.push(s.to_string());
            }
        }
        out.insert(m.key.clone(), owners);
    }
    out
}

fn hosts(cx: &mut Ctx, v: &Value) -> BTreeMap<String, IpNet> {
    let mut out = BTreeMap::new();
    for m in cx.object(v, "hosts") {
        if !valid_name(&m.key) || m.key.contains(':') {
            cx.err(
                m.key_pos,
                format!(
                    "host alias `{}`: expected a name of letters, digits, - _ .",
                    m.key
                ),
            );
            continue;
        }
        if m.key.parse::<std::net::IpAddr>().is_ok() {
            cx.err(
                m.key_pos,
                format!("host alias `{}`: expected a name, not an address", m.key),
            );
            continue;
        }
        if let Some(s) = cx.string(&m.value, &m.key) {
            match target::parse_prefix(s) {
                Ok(n) => {
                    out.insert(m.key.clone(), n);
                }
                Err(e) => cx.err(m.value.pos, format!("host `{}`: {e}", m.key)),
            }
        }
    }
    out
}

fn postures(cx: &mut Ctx, v: &Value) -> Vec<PostureDef> {
    let mut out = Vec::new();
    for m in cx.object(v, "postures") {
        match m.key.strip_prefix("posture:") {
            Some(n) if valid_name(n) => {}
            _ => {
                cx.err(
                    m.key_pos,
                    format!("posture name `{}`: expected posture:NAME", m.key),
                );
                continue;
            }
        }
        let mut conditions = Vec::new();
        for (s, x) in cx.strings(&m.value, &m.key) {
            match condition::parse(s) {
                Ok(c) => conditions.push(c),
                Err((off, msg)) => {
                    cx.err(inside(x, char_offset(s, off)), format!("{}: {msg}", m.key))
                }
            }
        }
        out.push(PostureDef {
            name: m.key.clone(),
            conditions,
        });
    }
    out
}

fn posture_refs(cx: &mut Ctx, v: &Value, ix: &BTreeMap<&str, usize>, what: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (s, x) in cx.strings(v, what) {
        match ix.get(s) {
            Some(i) => {
                if !out.contains(i) {
                    out.push(*i)
                }
            }
            None => cx.err(
                x.pos,
                format!("undefined posture `{s}`: expected a posture declared in `postures`"),
            ),
        }
    }
    out
}

fn selectors(cx: &mut Ctx, v: &Value, names: &Names<'_>, what: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    for (s, x) in cx.strings(v, what) {
        match target::resolve(s, names) {
            Ok(sel) => out.push(sel),
            Err(e) => cx.err(x.pos, e),
        }
    }
    out
}

/// Reads a rule's keys, refusing unknown ones and reporting missing required ones.
fn rule_fields<'v>(
    cx: &mut Ctx,
    v: &'v Value,
    what: &str,
    allowed: &[&str],
    required: &[&str],
) -> Option<BTreeMap<&'v str, &'v Value>> {
    let Kind::Object(ms) = &v.kind else {
        cx.err(
            v.pos,
            format!("{what}: expected an object, found {}", v.type_name()),
        );
        return None;
    };
    let mut f = BTreeMap::new();
    for m in ms {
        if allowed.contains(&m.key.as_str()) {
            f.insert(m.key.as_str(), &m.value);
        } else {
            cx.err(
                m.key_pos,
                format!(
                    "{what}: unknown field `{}`: expected {}",
                    m.key,
                    allowed.join(", ")
                ),
            );
        }
    }
    for r in required {
        if !f.contains_key(r) {
            cx.err(v.pos, format!("{what}: missing field `{r}`"));
        }
    }
    Some(f)
}

fn rule_posture(
    cx: &mut Ctx,
    f: &BTreeMap<&str, &Value>,
    ix: &BTreeMap<&str, usize>,
    default: &[usize],
    what: &str,
) -> PostureReq {
    match f.get("srcPosture") {
        Some(v) => PostureReq {
            postures: posture_refs(cx, v, ix, &format!("{what}.srcPosture")),
            all: false,
        },
        None => PostureReq {
            postures: default.to_vec(),
            all: true,
        },
    }
}

fn acl(
    cx: &mut Ctx,
    v: &Value,
    i: usize,
    names: &Names<'_>,
    ix: &BTreeMap<&str, usize>,
    default: &[usize],
) -> Option<Rule> {
    let what = format!("acls[{i}]");
    let f = rule_fields(
        cx,
        v,
        &what,
        &["action", "src", "dst", "proto", "srcPosture"],
        &["action", "src", "dst"],
    )?;
    let before = cx.problems.len();
    if let Some(a) = f.get("action") {
        if let Some(s) = cx.string(a, &format!("{what}.action")) {
            if s != "accept" {
                cx.err(a.pos, format!("{what}: action `{s}`: expected \"accept\" (rules only allow; everything else is denied)"));
            }
        }
    }
    let protos = match f.get("proto") {
        None => target::sorted_default(),
        Some(p) => {
            let s = match &p.kind {
                Kind::Str(s) => Some(s.clone()),
                Kind::Number(t, _) => Some(t.clone()),
                _ => None,
            };
            match s.map(|s| target::parse_proto(&s)) {
                Some(Ok(n)) => vec![n],
                Some(Err(e)) => {
                    cx.err(p.pos, format!("{what}.proto: {e}"));
                    vec![]
                }
                None => {
                    cx.err(
                        p.pos,
                        format!(
                            "{what}.proto: expected a protocol name or number, found {}",
                            p.type_name()
                        ),
                    );
                    vec![]
                }
            }
        }
    };
    let src = f
        .get("src")
        .map(|v| selectors(cx, v, names, &format!("{what}.src")))
        .unwrap_or_default();
    let mut dst = Vec::new();
    if let Some(d) = f.get("dst") {
        for (s, x) in cx.strings(d, &format!("{what}.dst")) {
            match dst_entry(s, names, &protos) {
                // An invalid `proto` was reported already.
                Ok(_) | Err(_) if protos.is_empty() => {}
                Ok(e) => dst.push(e),
                Err((off, e)) => cx.err(inside(x, char_offset(s, off)), e),
            }
        }
    }
    let posture = rule_posture(cx, &f, ix, default, &what);
    (cx.problems.len() == before).then_some(Rule {
        section: Section::Acls,
        index: i,
        pos: v.pos,
        src,
        dst,
        posture,
    })
}

/// `TARGET:PORTS` of an acl; the error carries the byte offset it refers to.
fn dst_entry(s: &str, names: &Names<'_>, protos: &[u8]) -> Result<DstEntry, (usize, String)> {
    let (t, ports) = target::split_target_ports(s).map_err(|e| (0, e))?;
    let selector = target::resolve(t, names).map_err(|e| (0, e))?;
    let port_off = s.len() - ports.len();
    let ports = target::parse_ports(ports).map_err(|e| (port_off, e))?;
    if protos.is_empty() {
        return Err((0, "no valid protocol".into()));
    }
    let cap = Cap::new(protos.to_vec(), ports).map_err(|e| (port_off, e))?;
    Ok(DstEntry {
        selector,
        caps: vec![cap],
    })
}

fn grant(
    cx: &mut Ctx,
    v: &Value,
    i: usize,
    names: &Names<'_>,
    ix: &BTreeMap<&str, usize>,
    default: &[usize],
) -> Option<Rule> {
    let what = format!("grants[{i}]");
    let f = rule_fields(
        cx,
        v,
        &what,
        &["src", "dst", "ip", "srcPosture"],
        &["src", "dst", "ip"],
    )?;
    let before = cx.problems.len();
    let src = f
        .get("src")
        .map(|v| selectors(cx, v, names, &format!("{what}.src")))
        .unwrap_or_default();
    let dsts = f
        .get("dst")
        .map(|v| selectors(cx, v, names, &format!("{what}.dst")))
        .unwrap_or_default();
    let mut caps = Vec::new();
    if let Some(ipv) = f.get("ip") {
        for (s, x) in cx.strings(ipv, &format!("{what}.ip")) {
            match target::parse_ip_spec(s) {
                Ok(c) => caps.push(c),
                Err(e) => cx.err(x.pos, format!("{what}.ip `{s}`: {e}")),
            }
        }
    }
    let posture = rule_posture(cx, &f, ix, default, &what);
    (cx.problems.len() == before).then_some(Rule {
        section: Section::Grants,
        index: i,
        pos: v.pos,
        src,
        dst: dsts
            .into_iter()
            .map(|selector| DstEntry {
                selector,
                caps: caps.clone(),
            })
            .collect(),
        posture,
    })
}

fn auto_approvers(cx: &mut Ctx, v: &Value, names: &Names<'_>) -> AutoApprovers {
    let mut out = AutoApprovers::default();
    for m in cx.object(v, "autoApprovers") {
        match m.key.as_str() {
            "routes" => {
                for r in cx.object(&m.value, "autoApprovers.routes") {
                    match target::parse_prefix(&r.key) {
                        Ok(net) => {
                            let who = selectors(cx, &r.value, names, "autoApprovers.routes");
                            out.routes.push((net, who));
                        }
                        Err(e) => cx.err(r.key_pos, format!("autoApprovers.routes: {e}")),
                    }
                }
            }
            "exitNode" => {
                out.exit_node = selectors(cx, &m.value, names, "autoApprovers.exitNode");
            }
            other => cx.err(
                m.key_pos,
                format!("autoApprovers: unknown field `{other}`: expected routes or exitNode"),
            ),
        }
    }
    out
}

fn tests(cx: &mut Ctx, v: &Value, names: &Names<'_>) -> Vec<PolicyTest> {
    let mut out = Vec::new();
    for (i, t) in cx.list(v, "tests").iter().enumerate() {
        let what = format!("tests[{i}]");
        let Some(f) = rule_fields(
            cx,
            t,
            &what,
            &["src", "srcPostureAttrs", "proto", "accept", "deny"],
            &["src"],
        ) else {
            continue;
        };
        let before = cx.problems.len();
        let src = f
            .get("src")
            .and_then(|s| cx.string(s, &format!("{what}.src")).map(|x| (x, *s)));
        if let Some((s, sv)) = src {
            match target::resolve(s, names) {
                Ok(Selector::All | Selector::Tagged) => cx.err(
                    sv.pos,
                    format!("{what}.src `{s}`: expected a user, group, tag, host or IP address"),
                ),
                Ok(_) => {}
                Err(e) => cx.err(sv.pos, e),
            }
        }
        let proto = match f.get("proto") {
            None => proto::TCP,
            Some(p) => {
                let s = match &p.kind {
                    Kind::Str(s) => s.clone(),
                    Kind::Number(t, _) => t.clone(),
                    _ => String::new(),
                };
                match target::parse_proto(&s) {
                    Ok(n) => n,
                    Err(e) => {
                        cx.err(p.pos, format!("{what}.proto: {e}"));
                        proto::TCP
                    }
                }
            }
        };
        let mut src_attrs = PostureAttrs::new();
        if let Some(a) = f.get("srcPostureAttrs") {
            for m in cx.object(a, &format!("{what}.srcPostureAttrs")) {
                let known = condition::is_known_attr(&m.key);
                if !known {
                    cx.err(m.key_pos, format!("{what}.srcPostureAttrs: unknown attribute `{}`: expected node:NAME or custom:NAME", m.key));
                    continue;
                }
                match AttrValue::from_json(&m.value.to_json()) {
                    Some(val) => {
                        src_attrs.insert(m.key.clone(), val);
                    }
                    None => cx.err(
                        m.value.pos,
                        format!("{what}.srcPostureAttrs.{}: expected a string, number, boolean or list of strings", m.key),
                    ),
                }
            }
        }
        let mut lists = [Vec::new(), Vec::new()];
        for (k, key) in ["accept", "deny"].iter().enumerate() {
            if let Some(l) = f.get(key) {
                for (s, x) in cx.strings(l, &format!("{what}.{key}")) {
                    match test_dst(s, names, proto) {
                        Ok(()) => lists[k].push((s.to_string(), x.pos)),
                        Err((off, e)) => cx.err(inside(x, char_offset(s, off)), e),
                    }
                }
            }
        }
        if cx.problems.len() == before {
            if let Some((s, sv)) = src {
                let [accept, deny] = lists;
                out.push(PolicyTest {
                    index: i,
                    pos: sv.pos,
                    src: s.to_string(),
                    src_attrs,
                    proto,
                    accept,
                    deny,
                });
            }
        }
    }
    out
}

/// Checks a test destination: `TARGET:PORT` with one port (the port may be left out for a
/// protocol without ports).
fn test_dst(s: &str, names: &Names<'_>, proto: u8) -> Result<(), (usize, String)> {
    let (t, port) = parse_test_dst(s, proto).map_err(|e| (0, e))?;
    let _ = port;
    match target::resolve(t, names) {
        Ok(Selector::All | Selector::Member | Selector::Tagged) => Err((
            0,
            format!("`{t}`: a test destination must name a user, group, tag, host or IP address"),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err((0, e)),
    }
}

/// Splits a test or query destination into its target and single port.
pub(super) fn parse_test_dst(s: &str, proto: u8) -> Result<(&str, Option<u16>), String> {
    if !proto::has_ports(proto) {
        // No ports: `TARGET` or `TARGET:*`.
        return Ok((s.strip_suffix(":*").unwrap_or(s), None));
    }
    let (t, ports) = target::split_target_ports(s)?;
    match target::parse_ports(ports) {
        Ok(r) if r.len() == 1 && r[0].first == r[0].last => Ok((t, Some(r[0].first))),
        Ok(_) => Err(format!("`{s}`: expected one port, e.g. {t}:443")),
        Err(e) => Err(e),
    }
}

fn lifetimes(cx: &mut Ctx, v: &Value) -> Lifetimes {
    let mut l = Lifetimes::default();
    for m in cx.object(v, "lifetimes") {
        let slot = match m.key.as_str() {
            "credential" => &mut l.credential,
            "reauth" => &mut l.reauth,
            "postureReport" => &mut l.posture_report,
            other => {
                cx.err(
                    m.key_pos,
                    format!("lifetimes: unknown field `{other}`: expected credential, reauth or postureReport"),
                );
                continue;
            }
        };
        let Some(s) = cx.string(&m.value, &format!("lifetimes.{}", m.key)) else {
            continue;
        };
        match parse_duration(s) {
            Ok(d) if d.is_zero() => cx.err(
                m.value.pos,
                format!("lifetimes.{}: expected a duration above zero", m.key),
            ),
            Ok(d) => *slot = d,
            Err(e) => cx.err(m.value.pos, format!("lifetimes.{}: {e}", m.key)),
        }
    }
    l
}
