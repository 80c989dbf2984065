//! Policy compile benchmark: a generated (seeded, so every run sees the same input) policy of
//! 500 groups and 1,000 rules over 10,000 nodes. Measures the full compile of every view, the
//! recompute after one node changes, and prints the heap bytes the views hold.
//!
//! The shared 2-core machines drift by tens of percent between runs, so the group `reference`
//! measures a fixed workload (sorting a million seeded integers) in the same run: the ratios
//! to it are comparable between runs, the absolute times only roughly.
//!
//! `cargo bench -p ztmesh-common --bench policy` runs it at full size. Run without `--bench`
//! (as `cargo test --benches` does), it checks each routine once on a small inventory.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion};
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use ztmesh_common::addr::overlay_addrs;
use ztmesh_common::ids::NodeId;
use ztmesh_common::policy::{InventoryNode, Policy, ViewCompiler};
use ztmesh_common::posture::{attr, AttrValue, PostureAttrs};

/// SplitMix64: a tiny seeded generator, so the input is identical on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

/// Sizes of the generated world.
struct Shape {
    users: usize,
    user_devices: usize,
    tagged_devices: usize,
    tags: usize,
    groups: usize,
    /// Groups that only the IdP fills (declared with an empty list).
    idp_groups: usize,
    rules: usize,
    /// Integers the reference workload sorts.
    reference_len: usize,
}

const FULL: Shape = Shape {
    users: 4_000,
    user_devices: 8_000,
    tagged_devices: 2_000,
    tags: 200,
    groups: 500,
    idp_groups: 50,
    rules: 1_000,
    reference_len: 1_000_000,
};

const SMOKE: Shape = Shape {
    users: 100,
    user_devices: 200,
    tagged_devices: 50,
    tags: 10,
    groups: 20,
    idp_groups: 4,
    rules: 40,
    reference_len: 10_000,
};

fn user(i: usize) -> String {
    format!("u{i}@example.com")
}

const PORTS: &[&str] = &[
    "22",
    "443",
    "80,443",
    "5432",
    "8000-8999",
    "*",
    "3000,3001,9090",
    "6379",
];
const IP_SPECS: &[&str] = &["tcp:443", "udp:53", "icmp", "*", "tcp:22,80", "8080"];
const POSTURES: &[&str] = &["posture:encrypted", "posture:current", "posture:managed"];

/// The policy text: groups, tags, hosts, three postures and `rules` acls and grants whose
/// sources and destinations mix every target form.
/// Returns the text and the members of the SRE group (which may SSH to every server).
fn policy_text(s: &Shape, rng: &mut Rng) -> (String, Vec<String>) {
    let mut p = String::from("{\n\"groups\": {\n");
    let mut sre_members = Vec::new();
    for g in 0..s.groups {
        if g < s.idp_groups {
            writeln!(p, "  \"group:g{g}\": [],").unwrap();
            continue;
        }
        // 6..26 members: every user is in about two groups on average.
        let members: Vec<String> = (0..6 + rng.below(21))
            .map(|_| user(rng.below(s.users)))
            .collect();
        if g == s.idp_groups {
            sre_members = members.clone();
        }
        writeln!(p, "  \"group:g{g}\": [{}],", quoted(&members)).unwrap();
    }
    p.push_str("},\n\"tagOwners\": {\n");
    for t in 0..s.tags {
        writeln!(p, "  \"tag:t{t}\": [\"group:g{}\"],", rng.below(s.groups)).unwrap();
    }
    p.push_str("},\n\"hosts\": {\n");
    for h in 0..10 {
        writeln!(p, "  \"office{h}\": \"198.18.{h}.0/24\",").unwrap();
        // Overlay ranges: these cover real nodes' addresses.
        writeln!(p, "  \"range{h}\": \"100.64.{}.0/26\",", 4 + h).unwrap();
    }
    p.push_str(
        "},\n\"postures\": {\n\
         \"posture:encrypted\": [\"node:diskEncrypted == true\", \"node:firewall == true\"],\n\
         \"posture:current\": [\"node:clientVersion >= '0.2.0'\", \"node:lastUpdateDays <= 30\"],\n\
         \"posture:managed\": [\"node:os IN ['linux', 'macos']\", \"custom:managed IS SET\"],\n\
         },\n",
    );
    let group = |rng: &mut Rng| format!("group:g{}", rng.below(s.groups));
    let tag = |rng: &mut Rng| format!("tag:t{}", rng.below(s.tags));
    // Most rules connect a team (a group, a few named users) to its services (tags); some
    // name offices or overlay ranges by address. The broad rules come first, below.
    let src = |rng: &mut Rng| -> Vec<String> {
        (0..1 + rng.below(2))
            .map(|_| match rng.below(100) {
                0..=69 => group(rng),
                70..=81 => user(rng.below(s.users)),
                82..=91 => tag(rng),
                92..=95 => format!("office{}", rng.below(10)),
                96..=97 => format!("range{}", rng.below(10)),
                _ => format!("100.64.{}.{}", rng.below(40), rng.below(256)),
            })
            .collect()
    };
    let dst = |rng: &mut Rng| -> String {
        match rng.below(100) {
            0..=79 => tag(rng),
            80..=86 => group(rng),
            87..=92 => user(rng.below(s.users)),
            93..=96 => format!("range{}", rng.below(10)),
            _ => format!("100.64.{}.0/28", rng.below(40)),
        }
    };
    let posture = |rng: &mut Rng| -> String {
        if rng.pct(5) {
            format!(
                ", \"srcPosture\": [\"{}\"]",
                POSTURES[rng.below(POSTURES.len())]
            )
        } else {
            String::new()
        }
    };
    let acls = s.rules * 7 / 10;
    // The broad rules of a real policy: everyone reaches the intranet and DNS servers, SREs
    // and monitoring reach every server, every server ships logs to the collectors.
    let sre = format!("group:g{}", s.idp_groups);
    let broad = [
        "{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"tag:t0:443\", \"tag:t1:443\"]}",
        "{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"tag:t2:53\"], \"proto\": \"udp\"}",
        "{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"tag:t3:80,443\"], \"srcPosture\": [\"posture:managed\"]}",
        &format!("{{\"action\": \"accept\", \"src\": [\"{sre}\"], \"dst\": [\"autogroup:tagged:22\"], \"srcPosture\": [\"posture:encrypted\"]}}"),
        "{\"action\": \"accept\", \"src\": [\"tag:t4\"], \"dst\": [\"autogroup:tagged:9100-9199\"]}",
        "{\"action\": \"accept\", \"src\": [\"autogroup:tagged\"], \"dst\": [\"tag:t5:514,6514\"]}",
    ];
    p.push_str("\"acls\": [\n");
    for b in broad {
        writeln!(p, "  {b},").unwrap();
    }
    for _ in broad.len()..acls {
        let srcs = quoted(&src(rng));
        let dsts = quoted(
            &(0..1 + rng.below(2))
                .map(|_| format!("{}:{}", dst(rng), PORTS[rng.below(PORTS.len())]))
                .collect::<Vec<_>>(),
        );
        let proto = match rng.below(10) {
            0 => ", \"proto\": \"tcp\"",
            1 => ", \"proto\": \"udp\"",
            _ => "",
        };
        let post = posture(rng);
        writeln!(
            p,
            "  {{\"action\": \"accept\", \"src\": [{srcs}], \"dst\": [{dsts}]{proto}{post}}},"
        )
        .unwrap();
    }
    p.push_str("],\n\"grants\": [\n");
    for _ in acls..s.rules {
        let srcs = quoted(&src(rng));
        let dsts = quoted(&(0..1 + rng.below(2)).map(|_| dst(rng)).collect::<Vec<_>>());
        let ips = quoted(
            &(0..1 + rng.below(2))
                .map(|_| IP_SPECS[rng.below(IP_SPECS.len())].to_string())
                .collect::<Vec<_>>(),
        );
        let post = posture(rng);
        writeln!(
            p,
            "  {{\"src\": [{srcs}], \"dst\": [{dsts}], \"ip\": [{ips}]{post}}},"
        )
        .unwrap();
    }
    p.push_str("],\n}\n");
    (p, sre_members)
}

fn quoted(xs: &[String]) -> String {
    xs.iter()
        .map(|x| format!("\"{x}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn posture_attrs(rng: &mut Rng) -> PostureAttrs {
    let mut a = PostureAttrs::new();
    let os = ["linux", "macos", "windows"][rng.below(3)];
    a.insert(attr::OS.into(), AttrValue::String(os.into()));
    a.insert(attr::DISK_ENCRYPTED.into(), AttrValue::Bool(rng.pct(85)));
    a.insert(attr::FIREWALL.into(), AttrValue::Bool(rng.pct(90)));
    a.insert(
        attr::CLIENT_VERSION.into(),
        AttrValue::String(format!("0.{}.{}", rng.below(4), rng.below(10))),
    );
    a.insert(
        attr::LAST_UPDATE_DAYS.into(),
        AttrValue::Number(rng.below(60) as f64),
    );
    if rng.pct(70) {
        a.insert("custom:managed".into(), AttrValue::Bool(true));
    }
    a
}

/// User devices first (two per user on average, some with IdP groups), then tagged servers
/// (one tag, sometimes two). Every node has a v4 and a v6 overlay address.
fn inventory(s: &Shape, rng: &mut Rng) -> Vec<InventoryNode> {
    let mut nodes = Vec::with_capacity(s.user_devices + s.tagged_devices);
    for i in 0..s.user_devices + s.tagged_devices {
        let (v4, v6) = overlay_addrs(i as u32 + 1).expect("index in range");
        let tagged = i >= s.user_devices;
        let tags = if tagged {
            let mut t = vec![format!("tag:t{}", (i - s.user_devices) % s.tags)];
            if rng.pct(20) {
                t.push(format!("tag:t{}", rng.below(s.tags)));
                t.dedup();
            }
            t
        } else {
            vec![]
        };
        let user_groups = if !tagged && rng.pct(30) {
            vec![format!("group:g{}", rng.below(s.idp_groups))]
        } else {
            vec![]
        };
        nodes.push(InventoryNode {
            id: NodeId(i as u64 + 1),
            user: (!tagged).then(|| user(i % s.users)),
            user_groups,
            tags,
            addresses: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
            posture: posture_attrs(rng),
        });
    }
    nodes
}

struct World {
    policy: Arc<Policy>,
    nodes: Vec<InventoryNode>,
    sre_members: Vec<String>,
}

fn world(s: &Shape) -> World {
    let mut rng = Rng(0x5eed_2026);
    let (text, sre_members) = policy_text(s, &mut rng);
    let policy = Arc::new(Policy::parse(&text, "bench.hujson").expect("generated policy parses"));
    assert_eq!(policy.rules().len(), s.rules);
    let nodes = inventory(s, &mut rng);
    World {
        policy,
        nodes,
        sre_members,
    }
}

fn compiled(w: &World) -> ViewCompiler {
    let mut c = ViewCompiler::new(w.policy.clone());
    c.bulk_load(w.nodes.iter().cloned());
    c
}

/// Prints what the views hold, and how much of the inventory each view reaches.
fn report_memory(w: &World) {
    let c = compiled(w);
    let views = c.views().count();
    let heap = c.views_heap_bytes();
    let owned: usize = c.views().map(|(_, v)| v.heap_bytes()).sum();
    let (mut server, mut laptop) = ((0, 0), (0, 0));
    for (id, v) in c.views() {
        let side = if c.node(id).is_some_and(|n| n.tags.is_empty()) {
            &mut laptop
        } else {
            &mut server
        };
        side.0 += 1;
        side.1 += v.peers.len();
    }
    let rules: usize = c.views().map(|(_, v)| v.filter.len()).sum();
    println!(
        "policy views: {views} views of {} rules: heap {heap} bytes = {:.0} bytes per view \
         ({:.0} owned, {:.0} shared lists); {:.1} filter rules per view; peers per view: \
         {:.0} on {} laptops, {:.0} on {} servers",
        w.policy.rules().len(),
        heap as f64 / views as f64,
        owned as f64 / views as f64,
        (heap - owned) as f64 / views as f64,
        rules as f64 / views as f64,
        laptop.1 as f64 / laptop.0.max(1) as f64,
        laptop.0,
        server.1 as f64 / server.0.max(1) as f64,
        server.0,
    );
}

/// A node that flips between two states.
struct Toggle {
    states: [InventoryNode; 2],
    at: usize,
}

impl Toggle {
    fn new(a: InventoryNode, b: InventoryNode) -> Self {
        Toggle {
            states: [a, b],
            at: 1,
        }
    }
    fn next(&mut self) -> InventoryNode {
        self.at ^= 1;
        self.states[self.at].clone()
    }
}

fn with_disk_encrypted(n: &InventoryNode, on: bool) -> InventoryNode {
    let mut n = n.clone();
    n.posture
        .insert(attr::DISK_ENCRYPTED.into(), AttrValue::Bool(on));
    n
}

/// Measures `upsert_node` of a node flipping between two states, after printing how many
/// views one flip changes.
fn bench_flip(
    g: &mut BenchmarkGroup<'_, WallTime>,
    c: &mut ViewCompiler,
    name: &str,
    mut t: Toggle,
) {
    let changed = c.upsert_node(t.next()).len();
    let back = c.upsert_node(t.next()).len();
    println!("policy one-node change `{name}`: {changed} views change, then {back} back");
    g.bench_function(name, |b| b.iter(|| black_box(c.upsert_node(t.next()))));
}

fn benches(c: &mut Criterion, s: &Shape) {
    let mut g = c.benchmark_group("reference");
    g.sample_size(20);
    g.bench_function("sort_u64", |b| {
        b.iter_batched(
            || {
                let mut rng = Rng(7);
                (0..s.reference_len)
                    .map(|_| rng.next())
                    .collect::<Vec<u64>>()
            },
            |mut v| {
                v.sort_unstable();
                v
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let w = world(s);
    report_memory(&w);

    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("full_compile", |b| {
        b.iter_batched(
            || w.nodes.clone(),
            |nodes| {
                let mut c = ViewCompiler::new(w.policy.clone());
                black_box(c.bulk_load(nodes));
                c
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("policy_one_node");
    let mut compiler = compiled(&w);
    // A typical laptop whose disk encryption goes off and on: the first laptop whose view
    // reaches a rule that requires `posture:encrypted`.
    let is_sre = |n: &InventoryNode| n.user.as_ref().is_some_and(|u| w.sre_members.contains(u));
    let laptop = w.nodes[..s.user_devices]
        .iter()
        .filter(|n| !is_sre(n))
        .find(|n| {
            let changed = compiler.upsert_node(with_disk_encrypted(n, false)).len();
            compiler.upsert_node((*n).clone());
            changed > 1
        })
        .expect("some laptop depends on its disk encryption");
    let flip = Toggle::new(
        with_disk_encrypted(laptop, false),
        with_disk_encrypted(laptop, true),
    );
    bench_flip(&mut g, &mut compiler, "laptop_posture", flip);
    // The worst case: an SRE's laptop, whose encryption gates SSH to every server.
    let sre_laptop = w.nodes[..s.user_devices]
        .iter()
        .find(|n| is_sre(n))
        .expect("the SRE group has a member with a laptop");
    let flip = Toggle::new(
        with_disk_encrypted(sre_laptop, false),
        with_disk_encrypted(sre_laptop, true),
    );
    bench_flip(&mut g, &mut compiler, "sre_laptop_posture", flip);
    // A server that gains and loses a second tag.
    let server = w.nodes[s.user_devices + 3].clone();
    let mut retagged = server.clone();
    retagged.tags = vec![server.tags[0].clone(), format!("tag:t{}", s.tags / 2)];
    bench_flip(
        &mut g,
        &mut compiler,
        "server_tag",
        Toggle::new(retagged, server),
    );
    // A laptop that joins, then leaves.
    let mut joiner = w.nodes[42].clone();
    joiner.id = NodeId(1_000_000);
    let (v4, v6) = overlay_addrs((s.user_devices + s.tagged_devices) as u32 + 7).expect("range");
    joiner.addresses = vec![IpAddr::V4(v4), IpAddr::V6(v6)];
    let joined = compiler.upsert_node(joiner.clone()).len();
    let left = compiler.remove_node(joiner.id).len();
    println!("policy one-node change `laptop_join_leave`: {joined} views change, then {left}");
    g.bench_function("laptop_join_leave", |b| {
        b.iter(|| {
            black_box(compiler.upsert_node(joiner.clone()));
            black_box(compiler.remove_node(joiner.id))
        })
    });
    g.finish();
}

fn policy_benches(c: &mut Criterion) {
    // cargo bench passes --bench; anything else (cargo test --benches) is a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    benches(c, if full { &FULL } else { &SMOKE });
}

criterion_group! {
    name = policy;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    targets = policy_benches
}

criterion_main!(policy);
