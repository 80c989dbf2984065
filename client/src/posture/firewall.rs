//! The firewall probe: is a packet filter actually filtering? Reads what `nft list ruleset`,
//! `iptables-save` and `ip6tables-save` (and their `-legacy-` variants, whose rules nftables
//! cannot see) print. A table that only exists, or chains that accept everything with no rule,
//! are not a firewall: it takes at least one rule or a dropping policy in a filter chain. NAT
//! and mangle rules do not count.

use super::host::HostView;

/// A firewall dump the probe reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirewallDump {
    Nft,
    Iptables,
    Ip6tables,
    IptablesLegacy,
    Ip6tablesLegacy,
}

impl FirewallDump {
    pub const ALL: [FirewallDump; 5] = [
        FirewallDump::Nft,
        FirewallDump::Iptables,
        FirewallDump::Ip6tables,
        FirewallDump::IptablesLegacy,
        FirewallDump::Ip6tablesLegacy,
    ];

    /// The command that prints it on a real system.
    pub fn command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            FirewallDump::Nft => ("nft", &["list", "ruleset"]),
            FirewallDump::Iptables => ("iptables-save", &[]),
            FirewallDump::Ip6tables => ("ip6tables-save", &[]),
            FirewallDump::IptablesLegacy => ("iptables-legacy-save", &[]),
            FirewallDump::Ip6tablesLegacy => ("ip6tables-legacy-save", &[]),
        }
    }

    /// The file holding it in a fixture root.
    pub fn fixture_file(self) -> &'static str {
        match self {
            FirewallDump::Nft => "/nft-ruleset",
            FirewallDump::Iptables => "/iptables-save",
            FirewallDump::Ip6tables => "/ip6tables-save",
            FirewallDump::IptablesLegacy => "/iptables-legacy-save",
            FirewallDump::Ip6tablesLegacy => "/ip6tables-legacy-save",
        }
    }
}

/// Whether any readable dump shows a filter that filters.
pub fn firewall_active(host: &dyn HostView) -> bool {
    FirewallDump::ALL.iter().any(|&d| {
        host.firewall_dump(d).is_some_and(|text| match d {
            FirewallDump::Nft => nft_filters(&text),
            _ => iptables_filters(&text),
        })
    })
}

#[derive(PartialEq)]
enum Block {
    Table,
    Chain,
    /// A set, map, flowtable, or a rule's anonymous set spread over lines.
    Other,
}

/// `nft list ruleset`: a table with a filter base chain, and in it a rule in any chain or a
/// filter base chain whose policy drops.
pub fn nft_filters(text: &str) -> bool {
    let mut stack: Vec<Block> = Vec::new();
    let (mut table_filters, mut table_has_rule, mut table_drops) = (false, false, false);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if stack.last() == Some(&Block::Chain) && !line.starts_with('}') {
            if line.starts_with("type ") && line.contains(" hook ") {
                if line.starts_with("type filter ") {
                    table_filters = true;
                    table_drops |= line.contains("policy drop");
                }
            } else if !line.starts_with("comment ") && !line.starts_with("policy ") {
                table_has_rule = true;
            }
        }
        let keyword = line.split_whitespace().next();
        for c in line.chars() {
            match c {
                '{' => {
                    let kind = match (keyword, stack.last()) {
                        (Some("table"), None) => Block::Table,
                        (Some("chain"), Some(Block::Table)) => Block::Chain,
                        _ => Block::Other,
                    };
                    stack.push(kind);
                }
                // The guard pops on every '}'; only closing a table needs more.
                '}' if stack.pop() == Some(Block::Table) => {
                    if table_filters && (table_has_rule || table_drops) {
                        return true;
                    }
                    (table_filters, table_has_rule, table_drops) = (false, false, false);
                }
                _ => {}
            }
        }
    }
    false
}

/// `iptables-save` / `ip6tables-save`: in the `filter` table, a rule or a built-in chain whose
/// policy is not ACCEPT.
pub fn iptables_filters(text: &str) -> bool {
    let mut in_filter = false;
    for line in text.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_filter = table == "filter";
        } else if line == "COMMIT" {
            in_filter = false;
        } else if in_filter {
            if line.starts_with("-A ") {
                return true;
            }
            if let Some(chain) = line.strip_prefix(':') {
                // `:INPUT DROP [0:0]`; user-defined chains show `-`.
                let policy = chain.split_whitespace().nth(1).unwrap_or("-");
                if policy != "ACCEPT" && policy != "-" {
                    return true;
                }
            }
        }
    }
    false
}
