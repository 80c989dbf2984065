//! Control-plane benchmark: N simulated devices in this process connect over real QUIC on
//! loopback to a real `ztmesh-coordinator serve` (a child process), log in with pre-auth keys
//! and receive their credentials and views; then policy changes are pushed to all of them.
//!
//! Reports the connect rate, the time from `policy set` to the last device updated, and the
//! coordinator's resident memory per connected device, against the targets of issue 3.
//!
//! ```sh
//! cargo build --release -p ztmesh-coordinator --bins --examples
//! target/release/examples/control_bench --clients 1000 --clients 5000
//! ```

mod fleet;
mod server;

use anyhow::Context;
use clap::Parser;
use fleet::{Expect, Fleet, Seat};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use server::Coordinator;
use std::time::{Duration, Instant};
use ztmesh_coordinator::admin_cli::client::{ApiArgs, ApiClient};
use ztmesh_coordinator::bootstrap::TLS_CERT_FILE;

/// Targets from the issue.
const TARGET_PUSH: Duration = Duration::from_secs(2);
const TARGET_KIB_PER_CLIENT: f64 = 50.0;

#[derive(Parser, Debug)]
#[command(about = "ztmesh control-plane benchmark")]
struct Args {
    /// Number of devices; repeat for several runs (each against a fresh coordinator).
    #[arg(long = "clients", default_values_t = vec![1000, 5000])]
    clients: Vec<usize>,
    /// Devices per group: a group's devices reach each other, so each device sees
    /// `group-size - 1` peers.
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// Devices sharing one client UDP socket (QUIC endpoint).
    #[arg(long, default_value_t = 250)]
    per_endpoint: usize,
    /// Devices connecting and logging in at the same time (below the coordinator's limit of
    /// 512 unauthenticated connections).
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Upper bound for every phase, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// The policies, by step. Every group `tag:gI` reaches itself on 443 (each device's view: the
/// other devices of its group, and an inbound filter). `open_port` adds 8443 to every rule (a
/// new filter for every device); `pair_groups` then lets groups 2k and 2k+1 reach each other
/// (every device gains `group-size` peers).
#[derive(Clone, Copy)]
enum Step {
    Initial,
    OpenPort,
    PairGroups,
}

fn policy(groups: usize, step: Step) -> String {
    let tags: Vec<String> = (0..groups).map(|g| format!("\"tag:g{g}\": []")).collect();
    let ports = match step {
        Step::Initial => "443",
        Step::OpenPort | Step::PairGroups => "443,8443",
    };
    let mut acls: Vec<String> = (0..groups)
        .map(|g| {
            format!(r#"{{ "action": "accept", "src": ["tag:g{g}"], "dst": ["tag:g{g}:{ports}"] }}"#)
        })
        .collect();
    if let Step::PairGroups = step {
        for g in (0..groups.saturating_sub(1)).step_by(2) {
            let h = g + 1;
            acls.push(format!(
                r#"{{ "action": "accept", "src": ["tag:g{g}", "tag:g{h}"], "dst": ["tag:g{g}:443", "tag:g{h}:443"] }}"#
            ));
        }
        if groups % 2 == 1 && groups > 1 {
            let g = groups - 1;
            acls.push(format!(
                r#"{{ "action": "accept", "src": ["tag:g{g}", "tag:g0"], "dst": ["tag:g{g}:443", "tag:g0:443"] }}"#
            ));
        }
    }
    format!(
        r#"{{
  "tagOwners": {{ {} }},
  "postures": {{ "posture:fw": ["node:firewall == true"] }},
  "defaultSrcPosture": ["posture:fw"],
  "acls": [
    {}
  ],
}}"#,
        tags.join(", "),
        acls.join(",\n    ")
    )
}

/// One run's figures.
struct Row {
    clients: usize,
    /// Devices that joined before the measured ones.
    warm: usize,
    warm_rss: u64,
    connect: Duration,
    connect_cpu: Duration,
    pushes: Vec<(&'static str, Duration, Duration, Duration)>,
    base_rss: u64,
    rss: u64,
    rss_after: u64,
}

impl Row {
    fn measured(&self) -> usize {
        self.clients - self.warm
    }

    /// What each measured device added to the coordinator's resident memory.
    fn kib_per_client(&self) -> f64 {
        self.rss.saturating_sub(self.warm_rss) as f64 / 1024.0 / self.measured() as f64
    }

    /// Everything since start-up, fixed costs included, over all devices.
    fn kib_per_client_overall(&self) -> f64 {
        self.rss.saturating_sub(self.base_rss) as f64 / 1024.0 / self.clients as f64
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(args: &Args, n: usize) -> anyhow::Result<Row> {
    let limit = Duration::from_secs(args.timeout);
    let groups = n.div_ceil(args.group_size);
    let work = tempfile::tempdir()?;
    let coord = Coordinator::start(work.path(), &policy(groups, Step::Initial)).await?;
    let api = ApiClient::from_args(&ApiArgs {
        data_dir: Some(coord.data_dir.clone()),
        api: None,
        token_file: None,
        pin: None,
    })?;
    let mut keys = Vec::with_capacity(groups);
    for g in 0..groups {
        let v = api
            .post(
                "/api/v1/preauth",
                json!({ "tags": [format!("tag:g{g}")], "reusable": true, "expires": "2h" }),
            )
            .await?;
        keys.push(
            v["key"]
                .as_str()
                .context("no key in the answer")?
                .to_owned(),
        );
    }
    let cert = CertificateDer::from(std::fs::read(coord.data_dir.join(TLS_CERT_FILE))?);
    // Let start-up allocations settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_rss = coord.rss()?;
    let seat = |i: usize| Seat {
        hostname: format!("bench-{i}"),
        key: keys[i / args.group_size].clone(),
    };
    // A first tenth joins before the measurement: what the first devices cost once (code
    // paths paged in, store buffers, worker threads) is not a cost per device.
    let warm = (n / 10).max(1);
    let mut fleet = Fleet::new(n, cert, args.per_endpoint)?;
    fleet
        .join(
            0,
            (0..warm).map(seat).collect(),
            coord.control,
            args.concurrency,
            limit,
        )
        .await?;
    fleet
        .settle(Duration::from_secs(1), Duration::from_secs(60))
        .await?;
    let warm_rss = coord.rss()?;
    let cpu0 = coord.cpu()?;
    let connect = fleet
        .join(
            warm,
            (warm..n).map(seat).collect(),
            coord.control,
            args.concurrency,
            limit,
        )
        .await?;
    let connect_cpu = coord.cpu()?.saturating_sub(cpu0);
    fleet
        .settle(Duration::from_secs(1), Duration::from_secs(60))
        .await?;
    let rss = coord.rss()?;
    if let Some(secs) = std::env::var("CONTROL_BENCH_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // For profiling: a quiet moment with every device connected.
        eprintln!(
            "n={n}: holding {secs} s with every device connected (coordinator pid {})",
            coord.pid
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    eprintln!(
        "n={n}: {} devices joined in {connect:.2?} after {warm} warm-up devices, {} messages so far; coordinator RSS {} -> {} -> {} MiB",
        n - warm,
        fleet.messages(),
        base_rss >> 20,
        warm_rss >> 20,
        rss >> 20
    );
    let mut pushes = Vec::new();
    for (name, step, expect) in [
        ("open a port (new filter)", Step::OpenPort, Expect::Filter),
        ("pair groups (new peers)", Step::PairGroups, Expect::Peers),
    ] {
        let text = policy(groups, step);
        let t0 = fleet.expect(expect);
        api.call(
            reqwest::Method::PUT,
            "/api/v1/policy",
            Some(json!({ "text": text })),
        )
        .await
        .with_context(|| format!("policy set ({name})"))?;
        let answered = t0.elapsed();
        let lat = fleet.updated(t0, limit).await?;
        let last = *lat.last().expect("at least one device");
        eprintln!(
            "n={n}: {name}: API answered after {answered:.2?}; p50 {:.2?}, p99 {:.2?}, last {last:.2?}",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        pushes.push((name, answered, pct(&lat, 0.5), last));
        fleet
            .settle(Duration::from_millis(500), Duration::from_secs(60))
            .await?;
    }
    let rss_after = coord.rss()?;
    fleet.close().await;
    coord.stop().await?;
    Ok(Row {
        clients: n,
        warm,
        warm_rss,
        connect,
        connect_cpu,
        pushes,
        base_rss,
        rss,
        rss_after,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn print(rows: &[Row], args: &Args) {
    println!();
    println!(
        "groups of {} devices (each device sees {} peers, then {}); {} devices connecting at once; \
         the first tenth joins before the measured devices",
        args.group_size,
        args.group_size - 1,
        2 * args.group_size - 1,
        args.concurrency
    );
    println!();
    println!("| clients | measured joins | connect rate | coordinator CPU per join | RSS start -> warm -> all (after pushes) | per measured client | vs 50 KiB | overall per client |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let kib = r.kib_per_client();
        println!(
            "| {} | {} in {:.2} s | {:.0} clients/s | {:.2} ms | {:.1} -> {:.1} -> {:.1} ({:.1}) MiB | {:.1} KiB | {:.2}x | {:.1} KiB |",
            r.clients,
            r.measured(),
            r.connect.as_secs_f64(),
            r.measured() as f64 / r.connect.as_secs_f64(),
            r.connect_cpu.as_secs_f64() * 1000.0 / r.measured() as f64,
            mib(r.base_rss),
            mib(r.warm_rss),
            mib(r.rss),
            mib(r.rss_after),
            kib,
            kib / TARGET_KIB_PER_CLIENT,
            r.kib_per_client_overall(),
        );
    }
    println!();
    println!("| clients | policy change | API answered | p50 device updated | last device updated | vs 2 s |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        for (name, answered, p50, last) in &r.pushes {
            println!(
                "| {} | {name} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2}x |",
                r.clients,
                answered.as_secs_f64() * 1000.0,
                p50.as_secs_f64() * 1000.0,
                last.as_secs_f64() * 1000.0,
                last.as_secs_f64() / TARGET_PUSH.as_secs_f64(),
            );
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.group_size >= 2, "--group-size must be at least 2");
    anyhow::ensure!(
        (1..512).contains(&args.concurrency),
        "--concurrency must be 1..511 (the coordinator admits 512 unauthenticated connections)"
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in &args.clients {
        rows.push(
            run(&args, n)
                .await
                .with_context(|| format!("run with {n} clients"))?,
        );
    }
    print(&rows, &args);
    eprintln!("total {:.1?}", started.elapsed());
    Ok(())
}
