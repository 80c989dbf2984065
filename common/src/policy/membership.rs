//! Which rules a node takes part in: the policy's rules indexed by the selector keys they
//! use (`tag:web`, `group:eng`, a user, ...) and by their prefixes, so that a node finds its
//! rules by a few hash lookups, and what source addresses it brings to each.

use super::prefix_set::normalize;
use super::target::Selector;
use super::view::Interner;
use super::{InventoryNode, Policy};
use crate::netmap::PortRange;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A selector that names nodes (as opposed to addresses).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    All,
    User(String),
    Group(String),
    Tag(String),
    Member,
    Tagged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Role {
    Src,
    Dst(u16),
}

/// The rules of one policy, indexed for membership lookups.
pub(super) struct RuleIndex {
    pub(super) by_key: HashMap<Key, Vec<(u32, Role)>>,
    /// Prefix selectors (literal or `hosts`), with the rule and role they belong to.
    pub(super) prefixes: Vec<(IpNet, u32, Role)>,
    /// Per rule: source prefixes that go into filters as they are (only for rules without a
    /// posture requirement: with one, only devices that pass it may send).
    pub(super) raw_src: Vec<Vec<IpNet>>,
    /// Per rule: its source prefix selectors.
    pub(super) src_prefixes: Vec<Vec<IpNet>>,
    /// Per rule, per destination entry: its caps' protocols and ports, shared by every view.
    pub(super) caps: Vec<Vec<Vec<SharedCap>>>,
}

pub(super) type SharedCap = (Arc<[u8]>, Arc<[PortRange]>);

impl RuleIndex {
    pub(super) fn build(policy: &Policy) -> RuleIndex {
        let mut ix = RuleIndex {
            by_key: HashMap::new(),
            prefixes: Vec::new(),
            raw_src: Vec::new(),
            src_prefixes: Vec::new(),
            caps: Vec::new(),
        };
        // Equal protocol and port lists become one allocation, so views compare them by
        // identity.
        let mut protos = Interner::default();
        let mut ports = Interner::default();
        for (ri, rule) in policy.rules.iter().enumerate() {
            let ri = ri as u32;
            let has_posture = !rule.posture.postures.is_empty();
            let mut raw = Vec::new();
            let mut sp = Vec::new();
            let sides = rule.src.iter().map(|s| (s, Role::Src)).chain(
                rule.dst
                    .iter()
                    .enumerate()
                    .map(|(e, d)| (&d.selector, Role::Dst(e as u16))),
            );
            for (sel, role) in sides {
                let key = match sel {
                    Selector::All => {
                        if role == Role::Src && !has_posture {
                            raw.push("0.0.0.0/0".parse().expect("constant"));
                            raw.push("::/0".parse().expect("constant"));
                        }
                        Key::All
                    }
                    Selector::User(u) => Key::User(u.clone()),
                    Selector::Group(g) => Key::Group(g.clone()),
                    Selector::Tag(t) => Key::Tag(t.clone()),
                    Selector::Member => Key::Member,
                    Selector::Tagged => Key::Tagged,
                    Selector::Prefix { net, .. } => {
                        if role == Role::Src {
                            sp.push(*net);
                            if !has_posture {
                                raw.push(*net);
                            }
                        }
                        ix.prefixes.push((*net, ri, role));
                        continue;
                    }
                };
                let hits = ix.by_key.entry(key).or_default();
                if !hits.contains(&(ri, role)) {
                    hits.push((ri, role));
                }
            }
            ix.raw_src.push(normalize(raw));
            ix.src_prefixes.push(sp);
            ix.caps.push(
                rule.dst
                    .iter()
                    .map(|d| {
                        d.caps
                            .iter()
                            .map(|c| {
                                (
                                    protos.intern(c.protos.clone()),
                                    ports.intern(c.ports.clone()),
                                )
                            })
                            .collect()
                    })
                    .collect(),
            );
        }
        ix
    }
}

/// The rules one node takes part in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Memberships {
    /// (rule, matched by a node selector rather than only by address), sorted by rule.
    pub(super) src: Vec<(u32, bool)>,
    /// (rule, destination entries it matches), sorted by rule.
    pub(super) dst: Vec<(u32, Vec<u16>)>,
    /// Whether a destination entry matched through a prefix: then the filter's destination
    /// is a part of the node's addresses rather than all of them.
    pub(super) dst_by_prefix: bool,
}

/// The source addresses a member brings to rule `r`: all of its addresses when a node
/// selector matched it, else those inside the rule's source prefixes; without a posture
/// requirement, addresses the raw prefixes already cover are left out.
pub(super) fn contribution(
    policy: &Policy,
    ix: &RuleIndex,
    r: u32,
    addrs: &[IpAddr],
    by_selector: bool,
) -> Vec<IpNet> {
    let r = r as usize;
    let has_posture = !policy.rules[r].posture.postures.is_empty();
    if !has_posture && !by_selector {
        return Vec::new();
    }
    addrs
        .iter()
        .filter(|a| by_selector || ix.src_prefixes[r].iter().any(|n| n.contains(*a)))
        .filter(|a| has_posture || !ix.raw_src[r].iter().any(|n| n.contains(*a)))
        .map(|a| IpNet::from(*a))
        .collect()
}

/// Pairs up two rule-sorted lists: (rule, old entry, new entry).
pub(super) fn merge_by_rule<'a, T: PartialEq>(
    old: &'a [(u32, T)],
    new: &'a [(u32, T)],
) -> Vec<(u32, Option<&'a T>, Option<&'a T>)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < old.len() || j < new.len() {
        let a = old.get(i).map(|x| x.0);
        let b = new.get(j).map(|x| x.0);
        match (a, b) {
            (Some(x), Some(y)) if x == y => {
                out.push((x, Some(&old[i].1), Some(&new[j].1)));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                out.push((x, Some(&old[i].1), None));
                i += 1;
            }
            (Some(x), None) => {
                out.push((x, Some(&old[i].1), None));
                i += 1;
            }
            (_, Some(y)) => {
                out.push((y, None, Some(&new[j].1)));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// The rules a node takes part in, found through the index.
pub(super) fn memberships(policy: &Policy, ix: &RuleIndex, n: &InventoryNode) -> Memberships {
    if n.addresses.is_empty() {
        return Memberships::default();
    }
    let mut keys = vec![Key::All];
    if !n.tags.is_empty() {
        keys.push(Key::Tagged);
        keys.extend(n.tags.iter().map(|t| Key::Tag(t.clone())));
    } else if let Some(u) = &n.user {
        keys.push(Key::Member);
        keys.push(Key::User(u.clone()));
        keys.extend(policy.groups_of(u).iter().map(|g| Key::Group(g.clone())));
        keys.extend(n.user_groups.iter().map(|g| Key::Group(g.clone())));
    }
    // (rule, role, by node selector)
    let mut hits: Vec<(u32, Role, bool)> = Vec::new();
    for k in &keys {
        if let Some(hs) = ix.by_key.get(k) {
            hits.extend(hs.iter().map(|(r, role)| (*r, *role, true)));
        }
    }
    for (net, r, role) in &ix.prefixes {
        if n.addresses.iter().any(|a| net.contains(a)) {
            hits.push((*r, *role, false));
        }
    }
    hits.sort_unstable();
    let mut m = Memberships::default();
    let mut posture_cache: Vec<Option<bool>> = vec![None; policy.postures.len()];
    let mut holds = |p: usize| -> bool {
        *posture_cache[p].get_or_insert_with(|| policy.posture_holds(p, &n.posture))
    };
    for (r, role, by_sel) in hits {
        match role {
            Role::Src => {
                if let Some(last) = m.src.last_mut().filter(|l| l.0 == r) {
                    last.1 |= by_sel;
                    continue;
                }
                let req = &policy.rules[r as usize].posture;
                let ok = req.postures.is_empty()
                    || if req.all {
                        req.postures.iter().all(|p| holds(*p))
                    } else {
                        req.postures.iter().any(|p| holds(*p))
                    };
                if ok {
                    m.src.push((r, by_sel));
                }
            }
            Role::Dst(e) => {
                m.dst_by_prefix |= !by_sel;
                match m.dst.last_mut().filter(|l| l.0 == r) {
                    Some(last) => {
                        if !last.1.contains(&e) {
                            last.1.push(e);
                        }
                    }
                    None => m.dst.push((r, vec![e])),
                }
            }
        }
    }
    for (_, es) in &mut m.dst {
        es.sort_unstable();
    }
    m
}
