//! Sets of addresses as the fewest prefixes that cover them: built at once from any list
//! (`normalize`), or kept up to date one host address at a time, so that a device joining or
//! leaving a rule of thousands of members does not re-sort the rule's whole source list.

use ipnet::IpNet;

/// Sorts prefixes, drops those inside another, and merges sibling halves into their parent,
/// so that a set of addresses is described by as few prefixes as possible.
pub(super) fn normalize(mut v: Vec<IpNet>) -> Vec<IpNet> {
    for n in &mut v {
        *n = n.trunc();
    }
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<IpNet> = Vec::with_capacity(v.len());
    for n in v {
        if out.last().is_some_and(|l| l.contains(&n)) {
            continue;
        }
        out.push(n);
        while out.len() >= 2 {
            let b = out[out.len() - 1];
            let a = out[out.len() - 2];
            let parent = match a.supernet() {
                Some(p)
                    if a.prefix_len() == b.prefix_len() && b.supernet() == Some(p) && a != b =>
                {
                    p
                }
                _ => break,
            };
            out.pop();
            out.pop();
            out.push(parent);
        }
    }
    out.shrink_to_fit();
    out
}

/// The other half of `n`'s parent (`None` for `/0`).
fn sibling(n: IpNet) -> Option<IpNet> {
    let parent = n.supernet()?;
    parent.subnets(n.prefix_len()).ok()?.find(|half| *half != n)
}

/// Index just past the last element not above `a`: the container of `a`, if any, is the
/// element before it (the set is sorted and its prefixes do not overlap).
fn position(v: &[IpNet], a: IpNet) -> usize {
    v.partition_point(|x| *x <= a)
}

/// Adds a host address to a normalised set, merging siblings upwards; returns whether the
/// set changed.
pub(super) fn insert_host(v: &mut Vec<IpNet>, a: IpNet) -> bool {
    debug_assert_eq!(a.prefix_len(), a.max_prefix_len());
    let mut i = position(v, a);
    if i > 0 && v[i - 1].contains(&a) {
        return false;
    }
    v.insert(i, a);
    let mut cur = a;
    while let (Some(parent), Some(sib)) = (cur.supernet(), sibling(cur)) {
        if sib < cur && i > 0 && v[i - 1] == sib {
            v.remove(i);
            i -= 1;
        } else if sib > cur && v.get(i + 1) == Some(&sib) {
            v.remove(i + 1);
        } else {
            break;
        }
        v[i] = parent;
        cur = parent;
    }
    true
}

/// Takes a host address out of a normalised set, splitting the prefix that held it into the
/// pieces that remain; returns whether the set changed.
pub(super) fn remove_host(v: &mut Vec<IpNet>, a: IpNet) -> bool {
    debug_assert_eq!(a.prefix_len(), a.max_prefix_len());
    let i = position(v, a);
    if i == 0 || !v[i - 1].contains(&a) {
        return false;
    }
    let held = v[i - 1];
    let mut pieces: Vec<IpNet> = (held.prefix_len() + 1..=a.prefix_len())
        .filter_map(|len| {
            IpNet::new(a.addr(), len)
                .ok()
                .and_then(|n| sibling(n.trunc()))
        })
        .collect();
    pieces.sort_unstable();
    v.splice(i - 1..i, pieces);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn normalize_merges_and_drops_covered() {
        assert_eq!(
            normalize(vec![
                n("10.0.0.1/32"),
                n("10.0.0.0/32"),
                n("10.0.0.2/32"),
                n("10.0.0.3/32")
            ]),
            vec![n("10.0.0.0/30")]
        );
        assert_eq!(
            normalize(vec![n("10.0.0.5/32"), n("10.0.0.0/24"), n("fd00::1/128")]),
            vec![n("10.0.0.0/24"), n("fd00::1/128")]
        );
        assert_eq!(
            normalize(vec![n("10.0.0.1/32"), n("10.0.0.2/32")]),
            vec![n("10.0.0.1/32"), n("10.0.0.2/32")]
        );
        assert_eq!(
            normalize(vec![n("0.0.0.0/1"), n("128.0.0.0/1")]),
            vec![n("0.0.0.0/0")]
        );
    }

    #[test]
    fn host_updates_match_a_fresh_normalize() {
        // A fixed pseudo-random walk over a few dense ranges, both families, with a raw
        // prefix that host addresses never fall into (as in the compiler).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let raw = n("198.18.1.32/27");
        let mut hosts = std::collections::BTreeSet::new();
        let mut set = vec![raw];
        for step in 0..6_000 {
            let r = next();
            let low = (r >> 8) as u8;
            let a: std::net::IpAddr = match r % 4 {
                0 => [198, 18, 1, low % 16].into(),
                1 => [100, 64, 0, low].into(),
                2 => [198, 18, 1, 16 + low % 16].into(),
                _ => std::net::Ipv6Addr::new(0xfd5a, 0, 0, 0, 0, 0, 0, u16::from(low % 64)).into(),
            };
            let a = IpNet::from(a);
            let changed = if next() % 2 == 0 {
                let fresh = hosts.insert(a);
                assert_eq!(insert_host(&mut set, a), fresh, "step {step}: insert {a}");
                fresh
            } else {
                let had = hosts.remove(&a);
                assert_eq!(remove_host(&mut set, a), had, "step {step}: remove {a}");
                had
            };
            let mut all: Vec<IpNet> = hosts.iter().copied().collect();
            all.push(raw);
            assert_eq!(set, normalize(all), "step {step} (changed: {changed})");
        }
    }
}
