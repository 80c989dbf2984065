//! Posture probes against fixture roots: encrypted vs plain root file system, Secure Boot on
//! and off, an EDR agent running or not, fresh vs stale package updates, firewall (nftables and
//! iptables dumps: a rule or a dropping policy, not an empty accept-all table), custom facts.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};
use ztmesh_client::posture::{PostureConfig, Prober, EDR_AGENTS};
use ztmesh_common::posture::{attr, AttrValue};

const SB: &str = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// A Debian 12 laptop: LVM on LUKS root, Secure Boot on, falcon-sensor running, nftables
/// rules loaded, packages updated 3 days ago.
fn good_laptop(root: &Path, now: SystemTime) {
    write(
        root,
        "etc/os-release",
        b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    );
    write(root, "proc/sys/kernel/osrelease", b"6.1.0-18-amd64\n");
    write(
        root,
        "proc/mounts",
        b"sysfs /sys sysfs rw 0 0\n/dev/mapper/vg-root / ext4 rw,relatime 0 0\n/dev/nvme0n1p1 /boot/efi vfat rw 0 0\n",
    );
    // dm-1 (vg-root, LVM) sits on dm-0 (the LUKS mapping).
    write(root, "sys/block/dm-0/dm/name", b"nvme0n1p3_crypt\n");
    write(
        root,
        "sys/block/dm-0/dm/uuid",
        b"CRYPT-LUKS2-3f2a9c0d1e2b4c5d6e7f8a9b0c1d2e3f-nvme0n1p3_crypt\n",
    );
    write(root, "sys/block/dm-1/dm/name", b"vg-root\n");
    write(root, "sys/block/dm-1/dm/uuid", b"LVM-abcdef\n");
    write(root, "sys/block/dm-1/slaves/dm-0", b"");
    write(root, SB, &[0x06, 0, 0, 0, 1]);
    write(root, "proc/1/comm", b"systemd\n");
    write(root, "proc/812/comm", b"falcon-sensor\n");
    write(root, "proc/self/comm", b"ignored\n");
    write(
        root,
        "nft-ruleset",
        b"table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n",
    );
    write(root, "var/lib/dpkg/status", b"Package: bash\n");
    let f = fs::File::options()
        .write(true)
        .open(root.join("var/lib/dpkg/status"))
        .unwrap();
    f.set_modified(now - Duration::from_secs(3 * 86_400 + 100))
        .unwrap();
}

fn probe(root: &Path, now: SystemTime) -> ztmesh_common::posture::PostureAttrs {
    Prober::new(root, &PostureConfig::default()).collect(now)
}

#[test]
fn compliant_fixture_reports_every_fact() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    good_laptop(dir.path(), now);
    let a = probe(dir.path(), now);
    let s = |v: &str| AttrValue::String(v.into());
    assert_eq!(a[attr::OS], s("linux"));
    assert_eq!(a[attr::OS_VERSION], s("12"));
    assert_eq!(a[attr::KERNEL_VERSION], s("6.1.0-18-amd64"));
    assert_eq!(a[attr::DISK_ENCRYPTED], AttrValue::Bool(true));
    assert_eq!(a[attr::SECURE_BOOT], AttrValue::Bool(true));
    assert_eq!(a[attr::FIREWALL], AttrValue::Bool(true));
    assert_eq!(a[attr::EDR], AttrValue::Bool(true));
    assert_eq!(a[EDR_AGENTS], AttrValue::List(vec!["falcon-sensor".into()]));
    assert_eq!(a[attr::LAST_UPDATE_DAYS], AttrValue::Number(3.0));
    assert_eq!(a[attr::CLIENT_VERSION], s(env!("CARGO_PKG_VERSION")));
    assert_eq!(a[attr::POSTURE_SOURCE], s("fixture"));
}

#[test]
fn plain_root_disk_is_not_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    good_laptop(dir.path(), now);
    // Root straight on a partition, while a crypt mapping exists for another mount.
    write(
        dir.path(),
        "proc/mounts",
        b"/dev/sda2 / ext4 rw 0 0\n/dev/mapper/nvme0n1p3_crypt /data ext4 rw 0 0\n",
    );
    assert_eq!(
        probe(dir.path(), now)[attr::DISK_ENCRYPTED],
        AttrValue::Bool(false)
    );
    // LVM whose only physical volume is not a crypt mapping.
    write(
        dir.path(),
        "proc/mounts",
        b"/dev/mapper/vg-root / ext4 rw 0 0\n",
    );
    write(dir.path(), "sys/block/dm-0/dm/uuid", b"LVM-pv\n");
    assert_eq!(
        probe(dir.path(), now)[attr::DISK_ENCRYPTED],
        AttrValue::Bool(false)
    );
    // A root on the crypt mapping itself, named by dm-N.
    write(dir.path(), "sys/block/dm-0/dm/uuid", b"CRYPT-PLAIN-x\n");
    write(dir.path(), "proc/mounts", b"/dev/dm-0 / ext4 rw 0 0\n");
    assert_eq!(
        probe(dir.path(), now)[attr::DISK_ENCRYPTED],
        AttrValue::Bool(true)
    );
}

#[test]
fn secure_boot_off_or_absent_reports_false() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    good_laptop(dir.path(), now);
    write(dir.path(), SB, &[0x06, 0, 0, 0, 0]);
    assert_eq!(
        probe(dir.path(), now)[attr::SECURE_BOOT],
        AttrValue::Bool(false)
    );
    fs::remove_file(dir.path().join(SB)).unwrap();
    assert_eq!(
        probe(dir.path(), now)[attr::SECURE_BOOT],
        AttrValue::Bool(false)
    );
}

#[test]
fn edr_detection_follows_configured_process_names() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    good_laptop(dir.path(), now);
    fs::remove_dir_all(dir.path().join("proc/812")).unwrap();
    let a = probe(dir.path(), now);
    assert_eq!(a[attr::EDR], AttrValue::Bool(false));
    assert_eq!(a[EDR_AGENTS], AttrValue::List(vec![]));
    // A site-specific agent name from the config file.
    write(dir.path(), "proc/4242/comm", b"acme-edr\n");
    let cfg: PostureConfig = toml::from_str(
        "edr_processes = [\"acme-edr\"]\n[custom]\nmanaged = true\nteam = \"eng\"\nlevel = 3\n",
    )
    .unwrap();
    let a = Prober::new(dir.path(), &cfg).collect(now);
    assert_eq!(a[attr::EDR], AttrValue::Bool(true));
    assert_eq!(a["custom:managed"], AttrValue::Bool(true));
    assert_eq!(a["custom:team"], AttrValue::String("eng".into()));
    assert_eq!(a["custom:level"], AttrValue::Number(3.0));
}

#[test]
fn stale_updates_and_missing_firewall_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    good_laptop(dir.path(), now);
    let f = fs::File::options()
        .write(true)
        .open(dir.path().join("var/lib/dpkg/status"))
        .unwrap();
    f.set_modified(now - Duration::from_secs(90 * 86_400))
        .unwrap();
    // An empty ruleset (nothing loaded) is no firewall.
    write(dir.path(), "nft-ruleset", b"");
    let a = probe(dir.path(), now);
    assert_eq!(a[attr::LAST_UPDATE_DAYS], AttrValue::Number(90.0));
    assert_eq!(a[attr::FIREWALL], AttrValue::Bool(false));
    // No package database at all: the attribute is absent, so a policy needing it fails closed.
    fs::remove_file(dir.path().join("var/lib/dpkg/status")).unwrap();
    assert!(!probe(dir.path(), now).contains_key(attr::LAST_UPDATE_DAYS));
}

#[test]
fn the_real_system_says_so() {
    let a = probe(Path::new("/"), SystemTime::now());
    assert_eq!(a[attr::POSTURE_SOURCE], AttrValue::String("system".into()));
    assert!(a.contains_key(attr::KERNEL_VERSION));
}

/// `node:firewall` for the laptop fixture with its firewall dumps replaced by `dumps`
/// (fixture file name, contents); the other dumps are absent.
fn firewall_with(dumps: &[(&str, &str)]) -> AttrValue {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    good_laptop(dir.path(), now);
    fs::remove_file(dir.path().join("nft-ruleset")).unwrap();
    for (name, text) in dumps {
        write(dir.path(), name, text.as_bytes());
    }
    probe(dir.path(), now)[attr::FIREWALL].clone()
}

// Dumps as nft 1.0.6 and iptables 1.8.9 print them (captured in a scratch namespace).
const NFT_ACCEPT_ALL: &str = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n";
const NFT_ONE_RULE: &str = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 22 accept\n\t}\n}\n";
const NFT_NAT_ONLY: &str = "table ip nat {\n\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmasquerade\n\t}\n}\n";
const NFT_SET_NO_RULE: &str = "table inet filter {\n\tset blocked {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1,\n\t\t\t     10.0.0.2 }\n\t}\n\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n";
const NFT_MULTILINE_RULE: &str = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr {\n\t\t\t10.0.0.1,\n\t\t\t10.0.0.2\n\t\t} drop\n\t}\n}\n";
const IPT_ACCEPT_ALL: &str = "# Generated by iptables-save v1.8.9 on Fri Dec  4 02:43:35 2026\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n# Completed on Fri Dec  4 02:43:35 2026\n";
const IPT_POLICY_DROP: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Fri Dec  4 02:43:34 2026\n*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n# Completed on Fri Dec  4 02:43:34 2026\n";
const IPT_ONE_RULE: &str = "# Generated by ip6tables-save v1.8.9 (nf_tables) on Fri Dec  4 02:43:34 2026\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\nCOMMIT\n# Completed on Fri Dec  4 02:43:34 2026\n";
const IPT_NAT_ONLY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\nCOMMIT\n";

#[test]
fn firewall_needs_a_rule_or_a_dropping_policy() {
    let off = AttrValue::Bool(false);
    let on = AttrValue::Bool(true);
    // nftables.
    assert_eq!(firewall_with(&[]), off, "no dump readable");
    assert_eq!(firewall_with(&[("nft-ruleset", "")]), off, "nothing loaded");
    assert_eq!(
        firewall_with(&[("nft-ruleset", NFT_ACCEPT_ALL)]),
        off,
        "accept-all chain"
    );
    assert_eq!(
        firewall_with(&[("nft-ruleset", NFT_SET_NO_RULE)]),
        off,
        "a set is no rule"
    );
    assert_eq!(
        firewall_with(&[("nft-ruleset", NFT_NAT_ONLY)]),
        off,
        "NAT is no filter"
    );
    assert_eq!(firewall_with(&[("nft-ruleset", NFT_ONE_RULE)]), on);
    assert_eq!(firewall_with(&[("nft-ruleset", NFT_MULTILINE_RULE)]), on);
    // iptables when nftables shows nothing: the nft backend's policy, an IPv6-only rule, and
    // legacy rules that nftables cannot see.
    let empty_nft = ("nft-ruleset", "");
    assert_eq!(
        firewall_with(&[empty_nft, ("iptables-save", IPT_ACCEPT_ALL)]),
        off
    );
    assert_eq!(
        firewall_with(&[empty_nft, ("iptables-save", IPT_NAT_ONLY)]),
        off
    );
    assert_eq!(
        firewall_with(&[empty_nft, ("iptables-save", IPT_POLICY_DROP)]),
        on
    );
    assert_eq!(
        firewall_with(&[
            empty_nft,
            ("iptables-save", IPT_ACCEPT_ALL),
            ("ip6tables-save", IPT_ONE_RULE)
        ]),
        on
    );
    assert_eq!(
        firewall_with(&[
            ("iptables-save", IPT_ACCEPT_ALL),
            ("iptables-legacy-save", IPT_ONE_RULE)
        ]),
        on
    );
    assert_eq!(
        firewall_with(&[
            ("iptables-legacy-save", IPT_ACCEPT_ALL),
            ("ip6tables-legacy-save", IPT_ACCEPT_ALL)
        ]),
        off
    );
}
