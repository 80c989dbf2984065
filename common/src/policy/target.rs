//! Targets (`*`, users, `group:`, `tag:`, autogroups, hosts aliases, IP prefixes), port lists
//! and protocols: their syntax, and what each one selects.

use crate::netmap::{proto, PortRange};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// What a `src` or `dst` entry selects, after resolution against the policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `*`: every node and every address.
    All,
    /// A user's login name: the devices that user owns (never tagged ones).
    User(String),
    /// `group:NAME`: devices of the group's users (never tagged ones).
    Group(String),
    /// `tag:NAME`: devices carrying the tag.
    Tag(String),
    /// `autogroup:member`: every user-owned (untagged) device.
    Member,
    /// `autogroup:tagged`: every tagged device.
    Tagged,
    /// An IP address or prefix, written literally or through a `hosts` alias.
    Prefix { net: IpNet, alias: Option<String> },
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("*"),
            Selector::User(u) => f.write_str(u),
            Selector::Group(g) | Selector::Tag(g) => f.write_str(g),
            Selector::Member => f.write_str("autogroup:member"),
            Selector::Tagged => f.write_str("autogroup:tagged"),
            Selector::Prefix { alias: Some(a), .. } => f.write_str(a),
            Selector::Prefix { net, alias: None } => {
                if net.prefix_len() == net.max_prefix_len() {
                    write!(f, "{}", net.addr())
                } else {
                    write!(f, "{net}")
                }
            }
        }
    }
}

/// The declared names a target may refer to.
pub struct Names<'a> {
    pub groups: &'a BTreeMap<String, Vec<String>>,
    pub tags: &'a BTreeMap<String, Vec<String>>,
    pub hosts: &'a BTreeMap<String, IpNet>,
}

const TARGET_FORMS: &str = "*, a user (name@domain), group:NAME, tag:NAME, autogroup:member, \
autogroup:tagged, a hosts alias, or an IP address or prefix";

/// Parses an IP address or prefix; a prefix must have no host bits set.
pub fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(a) = inner.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    match inner.parse::<IpNet>() {
        Ok(n) if n.trunc() == n => Ok(n),
        Ok(n) => Err(format!(
            "prefix `{s}` has host bits set: expected {}",
            n.trunc()
        )),
        Err(_) => Err(format!("`{s}` is not an IP address or prefix")),
    }
}

fn looks_like_ip(s: &str) -> bool {
    let s = s.trim_start_matches('[');
    s.chars().next().is_some_and(|c| c.is_ascii_hexdigit())
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '/' | ']'))
}

/// Resolves a target (without ports) against the declared names.
pub fn resolve(s: &str, names: &Names<'_>) -> Result<Selector, String> {
    if s == "*" {
        return Ok(Selector::All);
    }
    if let Some(rest) = s.strip_prefix("group:") {
        if rest.is_empty() {
            return Err("expected a group name after `group:`".into());
        }
        return if names.groups.contains_key(s) {
            Ok(Selector::Group(s.to_string()))
        } else {
            Err(format!(
                "undefined group `{s}`: expected a group declared in `groups`"
            ))
        };
    }
    if let Some(rest) = s.strip_prefix("tag:") {
        if rest.is_empty() {
            return Err("expected a tag name after `tag:`".into());
        }
        return if names.tags.contains_key(s) {
            Ok(Selector::Tag(s.to_string()))
        } else {
            Err(format!(
                "undefined tag `{s}`: expected a tag declared in `tagOwners`"
            ))
        };
    }
    if s.starts_with("autogroup:") {
        return match s {
            "autogroup:member" => Ok(Selector::Member),
            "autogroup:tagged" => Ok(Selector::Tagged),
            _ => Err(format!(
                "unsupported autogroup `{s}`: expected autogroup:member or autogroup:tagged"
            )),
        };
    }
    if s.starts_with("posture:") {
        return Err(format!(
            "`{s}` is a posture, not a target: postures go in `srcPosture`"
        ));
    }
    if let Some(net) = names.hosts.get(s) {
        return Ok(Selector::Prefix {
            net: *net,
            alias: Some(s.to_string()),
        });
    }
    if let Some((local, domain)) = s.split_once('@') {
        if local.is_empty()
            || domain.contains('@')
            || s.chars().any(|c| c.is_whitespace() || c == ':')
        {
            return Err(format!("`{s}` is not a valid user login name"));
        }
        return Ok(Selector::User(s.to_string()));
    }
    if looks_like_ip(s) {
        return parse_prefix(s).map(|net| Selector::Prefix { net, alias: None });
    }
    Err(format!("unknown target `{s}`: expected {TARGET_FORMS}"))
}

/// Splits `TARGET:PORTS` (IPv6 in brackets: `[2001:db8::1]:443`).
pub fn split_target_ports(s: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(format!("`{s}`: expected ']' after the IPv6 address"));
        };
        let addr = &s[..close + 2];
        return match rest[close + 1..].strip_prefix(':') {
            Some(ports) => Ok((addr, ports)),
            None => Err(format!("`{s}`: expected `:PORTS` after `{addr}`")),
        };
    }
    let Some((target, ports)) = s.rsplit_once(':') else {
        return Err(format!(
            "`{s}`: expected TARGET:PORTS, e.g. tag:web:443 or 100.64.0.1:*"
        ));
    };
    // `tag:web` alone would read as target `tag`, port `web`: the port is what is missing.
    if ["tag", "group", "autogroup"].contains(&target) {
        return Err(format!(
            "`{s}`: expected TARGET:PORTS, e.g. {s}:443 (a port is needed for tcp and udp)"
        ));
    }
    let prefixed = ["tag:", "group:", "autogroup:"]
        .iter()
        .any(|p| target.starts_with(p));
    if target.contains(':') && !prefixed {
        return Err(format!(
            "`{s}`: IPv6 addresses need brackets when a port follows, e.g. [2001:db8::1]:443"
        ));
    }
    if target.is_empty() {
        return Err(format!("`{s}`: expected a target before `:`"));
    }
    Ok((target, ports))
}

/// Parses `*`, `22`, `80,443`, `1000-2000` and lists mixing them; sorted and merged.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        if item == "*" {
            out.push(PortRange::ALL);
            continue;
        }
        let num = |x: &str| -> Result<u16, String> {
            if x.is_empty() || !x.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "bad port `{item}`: expected a number 0-65535, a range LOW-HIGH, or *"
                ));
            }
            x.parse::<u16>()
                .map_err(|_| format!("port `{x}` is out of range: expected 0-65535"))
        };
        let r = match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!(
                        "port range `{item}` runs backwards: expected LOW-HIGH"
                    ));
                }
                PortRange { first: a, last: b }
            }
            None => PortRange::single(num(item)?),
        };
        out.push(r);
    }
    Ok(merge_ports(out))
}

/// Sorts ranges and merges overlapping or adjacent ones.
pub fn merge_ports(mut v: Vec<PortRange>) -> Vec<PortRange> {
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if r.first as u32 <= l.last as u32 + 1 => l.last = l.last.max(r.last),
            _ => out.push(r),
        }
    }
    out
}

/// Formats ports as written in a policy (`*`, `22`, `80,443`, `1000-2000`).
pub fn fmt_ports(ports: &[PortRange]) -> String {
    if ports == [PortRange::ALL] {
        return "*".into();
    }
    ports
        .iter()
        .map(|r| {
            if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a protocol name or number.
pub fn parse_proto(s: &str) -> Result<u8, String> {
    Ok(match s {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "icmp" => proto::ICMP,
        "ipv6-icmp" | "icmpv6" => proto::ICMPV6,
        "sctp" => 132,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "igmp" => 2,
        _ => match s.parse::<u8>() {
            Ok(n) => n,
            Err(_) => {
                return Err(format!(
                    "unknown protocol `{s}`: expected tcp, udp, icmp, ipv6-icmp, sctp, gre, esp, ah, igmp or a number 0-255"
                ))
            }
        },
    })
}

/// A protocol's name as the policy language writes it.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// One permission on a destination: these protocols, these ports.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cap {
    /// Sorted, never empty.
    pub protos: Vec<u8>,
    /// Sorted and merged; `[ALL]` for protocols without ports.
    pub ports: Vec<PortRange>,
}

impl Cap {
    /// Builds a cap; ports on a protocol that has none are an error.
    pub fn new(mut protos: Vec<u8>, ports: Vec<PortRange>) -> Result<Cap, String> {
        protos.sort_unstable();
        protos.dedup();
        if ports != [PortRange::ALL] {
            if let Some(p) = protos.iter().find(|p| !proto::has_ports(**p)) {
                if protos.len() == 1 {
                    return Err(format!(
                        "protocol {} has no ports: expected `*` as the port",
                        proto_name(*p)
                    ));
                }
            }
        }
        Ok(Cap { protos, ports })
    }

    /// Whether a packet of `proto` to `port` is covered.
    pub fn allows(&self, p: u8, port: Option<u16>) -> bool {
        self.protos.contains(&p)
            && (!proto::has_ports(p)
                || port.is_some_and(|x| self.ports.iter().any(|r| r.contains(x))))
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protos = if self.protos == sorted_default() {
            "tcp/udp/icmp".to_string()
        } else {
            self.protos
                .iter()
                .map(|p| proto_name(*p))
                .collect::<Vec<_>>()
                .join("/")
        };
        write!(f, "{protos}:{}", fmt_ports(&self.ports))
    }
}

/// `proto::DEFAULT`, sorted.
pub fn sorted_default() -> Vec<u8> {
    let mut v = proto::DEFAULT.to_vec();
    v.sort_unstable();
    v
}

/// Parses one entry of a grant's `ip` list: `*`, `tcp:443`, `udp:53`, `icmp`, `tcp`, `443`,
/// `47:*`.
pub fn parse_ip_spec(s: &str) -> Result<Cap, String> {
    if s == "*" {
        return Cap::new(sorted_default(), vec![PortRange::ALL]);
    }
    if let Some((p, ports)) = s.split_once(':') {
        return Cap::new(vec![parse_proto(p)?], parse_ports(ports)?);
    }
    // A bare port list means the default protocols; a protocol by number needs `N:PORTS`.
    if s.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        return Cap::new(sorted_default(), parse_ports(s)?);
    }
    Cap::new(vec![parse_proto(s)?], vec![PortRange::ALL])
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decls = (
        BTreeMap<String, Vec<String>>,
        BTreeMap<String, Vec<String>>,
        BTreeMap<String, IpNet>,
    );

    fn names() -> Decls {
        let mut g = BTreeMap::new();
        g.insert("group:eng".to_string(), vec!["a@x.com".to_string()]);
        let mut t = BTreeMap::new();
        t.insert("tag:web".to_string(), vec![]);
        let mut h = BTreeMap::new();
        h.insert("db".to_string(), "10.0.0.0/24".parse().unwrap());
        (g, t, h)
    }

    #[test]
    fn targets_resolve() {
        let (g, t, h) = names();
        let n = Names {
            groups: &g,
            tags: &t,
            hosts: &h,
        };
        assert_eq!(resolve("*", &n), Ok(Selector::All));
        assert_eq!(
            resolve("group:eng", &n),
            Ok(Selector::Group("group:eng".into()))
        );
        assert_eq!(resolve("tag:web", &n), Ok(Selector::Tag("tag:web".into())));
        assert_eq!(resolve("a@x.com", &n), Ok(Selector::User("a@x.com".into())));
        assert_eq!(resolve("autogroup:member", &n), Ok(Selector::Member));
        assert_eq!(resolve("autogroup:tagged", &n), Ok(Selector::Tagged));
        assert!(matches!(
            resolve("db", &n),
            Ok(Selector::Prefix { alias: Some(_), .. })
        ));
        assert!(matches!(
            resolve("10.1.2.3", &n),
            Ok(Selector::Prefix { alias: None, .. })
        ));
        assert!(matches!(
            resolve("fd00::/8", &n),
            Ok(Selector::Prefix { .. })
        ));
        assert!(matches!(
            resolve("[fd00::1]", &n),
            Ok(Selector::Prefix { .. })
        ));
        assert!(resolve("group:ops", &n)
            .unwrap_err()
            .contains("undefined group"));
        assert!(resolve("tag:db", &n).unwrap_err().contains("undefined tag"));
        assert!(resolve("autogroup:self", &n)
            .unwrap_err()
            .contains("unsupported"));
        assert!(resolve("10.0.0.1/8", &n).unwrap_err().contains("host bits"));
        assert!(resolve("nothing", &n)
            .unwrap_err()
            .contains("unknown target"));
        assert!(resolve("posture:x", &n).unwrap_err().contains("posture"));
    }

    #[test]
    fn ports_forms() {
        assert_eq!(parse_ports("*").unwrap(), vec![PortRange::ALL]);
        assert_eq!(parse_ports("22").unwrap(), vec![PortRange::single(22)]);
        assert_eq!(
            parse_ports("443,80").unwrap(),
            vec![PortRange::single(80), PortRange::single(443)]
        );
        assert_eq!(
            parse_ports("1000-2000,2001,5").unwrap(),
            vec![
                PortRange::single(5),
                PortRange {
                    first: 1000,
                    last: 2001
                }
            ]
        );
        assert_eq!(parse_ports("0,65535").unwrap().len(), 2);
        assert!(parse_ports("65536").unwrap_err().contains("out of range"));
        assert!(parse_ports("20-10").unwrap_err().contains("backwards"));
        assert!(parse_ports("").is_err());
        assert!(parse_ports("80,").is_err());
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("-5").is_err());
    }

    #[test]
    fn target_port_split() {
        assert_eq!(split_target_ports("tag:web:443"), Ok(("tag:web", "443")));
        assert_eq!(split_target_ports("*:*"), Ok(("*", "*")));
        assert_eq!(
            split_target_ports("[2001:db8::1]:443"),
            Ok(("[2001:db8::1]", "443"))
        );
        assert_eq!(split_target_ports("a@b.c:22"), Ok(("a@b.c", "22")));
        assert!(split_target_ports("2001:db8::1:443")
            .unwrap_err()
            .contains("brackets"));
        assert!(split_target_ports("tag").is_err());
        let missing = split_target_ports("tag:web").unwrap_err();
        assert!(missing.contains("e.g. tag:web:443"), "{missing}");
        assert!(split_target_ports("group:eng").is_err());
        assert!(split_target_ports("[::1]443").is_err());
    }

    #[test]
    fn protos_and_ip_specs() {
        assert_eq!(parse_proto("tcp"), Ok(6));
        assert_eq!(parse_proto("ipv6-icmp"), Ok(58));
        assert_eq!(parse_proto("47"), Ok(47));
        assert!(parse_proto("256").is_err());
        assert!(parse_proto("tcpx").is_err());
        let c = parse_ip_spec("tcp:443").unwrap();
        assert!(c.allows(6, Some(443)) && !c.allows(17, Some(443)) && !c.allows(6, Some(80)));
        let c = parse_ip_spec("icmp").unwrap();
        assert!(c.allows(1, None) && !c.allows(6, Some(1)));
        let c = parse_ip_spec("*").unwrap();
        assert!(c.allows(17, Some(9)) && c.allows(58, None));
        let c = parse_ip_spec("443").unwrap();
        assert!(c.allows(6, Some(443)) && c.allows(17, Some(443)) && !c.allows(6, Some(1)));
        assert!(parse_ip_spec("icmp:22").unwrap_err().contains("no ports"));
        assert!(parse_ip_spec("tcp:99999").is_err());
    }
}
