//! Real data planes on real TUN devices in network namespaces this test creates (names carry
//! the pid; stale ones of dead runs are removed; everything is deleted on drop, also after a
//! panic). Each data plane runs as the `ztmesh-dp-test` harness under `ip netns exec`, with an
//! identity signed by a test coordinator key.
//!
//! - two ztmesh data planes: TCP both families, the filter (allowed port, denied port, denied
//!   direction), ICMP as the filter says, and a view change that cuts an open connection.
//! - a 1280-byte underlay (IPv4 and IPv6) under the default overlay MTU: TCP both families.
//! - interop: a ztmesh data plane and a stock `boringtun-cli` configured with `wg`, ping and
//!   TCP both ways.
//! - a TUN device deleted under a running data plane stops it with a clear error.
//!
//! Every test fails when a process it started printed `panicked` (checked when its lab ends).

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use x25519_dalek::{PublicKey, StaticSecret};
use ztmesh_common::addr::{host_nets, overlay_addrs};
use ztmesh_common::credential::{coordinator_public_key, NodeCredential};
use ztmesh_common::ids::{MachinePublicKey, NodeId, WgPublicKey};
use ztmesh_common::netmap::{proto, FilterRule, NetMap, PeerEntry, PortRange};
use ztmesh_common::time::UnixMillis;

const BIN: &str = env!("CARGO_BIN_EXE_ztmesh-dp-test");
const PREFIX: &str = "ztdp";

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Remove namespaces of earlier runs whose process is gone.
fn clean_stale() {
    let list = sh(&["ip", "netns", "list"]);
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.rsplit('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A running process whose stdout lines arrive on a channel; killed on drop. Its stderr is
/// passed on to the test's; both are kept in `log` for the panic check.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    name: String,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdin = child.stdin.take();
        let log = Arc::new(Mutex::new(String::new()));
        let keep = |log: &Arc<Mutex<String>>, line: &str| {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(line);
            log.push('\n');
        };
        let (tx, rx) = mpsc::channel();
        let out_log = log.clone();
        let out = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                keep(&out_log, &line);
                let _ = tx.send(line);
            }
        });
        let (err_log, tag) = (log.clone(), name.to_string());
        let err = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                keep(&err_log, &line);
            }
        });
        Proc {
            child,
            stdin,
            lines: rx,
            name: name.to_string(),
            log,
            readers: vec![out, err],
        }
    }

    /// Kill the process and return everything it printed.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipes close with the process; a descendant holding them must not hang the test.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The next line starting with `prefix` within `timeout`.
    fn expect(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(_) => panic!(
                    "{}: no line starting with {prefix:?} in {timeout:?}",
                    self.name
                ),
            }
        }
    }

    /// Forget lines already printed.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // `ip netns exec` execs the harness, so this pid is the process itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Namespaces joined pairwise by veth links on 198.18.2xx.0/24; deleted on drop.
struct Lab {
    ns: Vec<String>,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl Lab {
    fn new(names: &[&str]) -> Lab {
        clean_stale();
        let pid = std::process::id();
        let ns: Vec<String> = names.iter().map(|n| format!("{PREFIX}{n}-{pid}")).collect();
        for n in &ns {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        Lab {
            ns,
            dir: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
        }
    }

    /// Link namespaces `a` and `b` with a veth pair on 198.18.`net`.0/24 (.1 and .2).
    fn link(&self, a: usize, b: usize, net: u8) {
        let pid = std::process::id() % 100_000;
        let (ia, ib) = (format!("zv{pid}a{net}"), format!("zv{pid}b{net}"));
        sh(&[
            "ip",
            "link",
            "add",
            &ia,
            "netns",
            &self.ns[a],
            "type",
            "veth",
            "peer",
            "name",
            &ib,
            "netns",
            &self.ns[b],
        ]);
        for (ns, ifc, host) in [(&self.ns[a], &ia, 1), (&self.ns[b], &ib, 2)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("198.18.{net}.{host}/24"),
                "dev",
                ifc,
            ]);
            sh(&["ip", "-n", ns, "link", "set", ifc, "up"]);
        }
    }

    /// Like [`Lab::link`], then set both ends to `mtu` and, with `v6`, also give them
    /// 2001:db8:`net`::1 and ::2 (/64).
    fn link_with(&self, a: usize, b: usize, net: u8, mtu: u16, v6: bool) {
        self.link(a, b, net);
        let pid = std::process::id() % 100_000;
        for (ns, ifc, host) in [
            (&self.ns[a], format!("zv{pid}a{net}"), 1),
            (&self.ns[b], format!("zv{pid}b{net}"), 2),
        ] {
            sh(&["ip", "-n", ns, "link", "set", &ifc, "mtu", &mtu.to_string()]);
            if v6 {
                sh(&[
                    "ip",
                    "-n",
                    ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("2001:db8:{net}::{host}/64"),
                    "dev",
                    &ifc,
                    "nodad",
                ]);
            }
        }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panics: Vec<String> = self
            .procs
            .iter_mut()
            .flat_map(|p| {
                let log = p.stop();
                let name = p.name.clone();
                log.lines()
                    .filter(|l| l.contains("panicked"))
                    .map(move |l| format!("{name}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.procs.clear();
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        if !panics.is_empty() && !std::thread::panicking() {
            panic!("a process of the test panicked:\n{}", panics.join("\n"));
        }
    }
}

struct Node {
    secret: StaticSecret,
    cred: NodeCredential,
    endpoint: SocketAddr,
}

impl Node {
    fn new(index: u32, endpoint: &str, now: u64) -> Node {
        let secret = StaticSecret::random_from_rng(rand::thread_rng());
        Node::with_secret(index, endpoint, now, secret)
    }

    fn with_secret(index: u32, endpoint: &str, now: u64, secret: StaticSecret) -> Node {
        let (v4, v6) = overlay_addrs(index).unwrap();
        let cred = NodeCredential {
            node_id: NodeId(index as u64),
            hostname: format!("host{index}"),
            user: None,
            tags: vec!["tag:test".into()],
            machine_key: MachinePublicKey([index as u8; 32]),
            wg_public_key: WgPublicKey(PublicKey::from(&secret).to_bytes()),
            addresses: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
            posture_digest: [0; 32],
            not_before: UnixMillis(now - 60_000),
            issued_at: UnixMillis(now),
            expires_at: UnixMillis(now + 3_600_000),
            serial: 1,
        };
        Node {
            secret,
            cred,
            endpoint: endpoint.parse().unwrap(),
        }
    }

    fn v4(&self) -> IpAddr {
        self.cred.addresses[0]
    }
    fn v6(&self) -> IpAddr {
        self.cred.addresses[1]
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn allow(from: &Node, to: &Node, protos: &[u8], ports: &[u16]) -> FilterRule {
    FilterRule {
        src: host_nets(&from.cred.addresses),
        dst: host_nets(&to.cred.addresses),
        protos: protos.to_vec(),
        ports: ports.iter().map(|&p| PortRange::single(p)).collect(),
    }
}

fn netmap(key: &SigningKey, version: u64, peers: &[&Node], filter: Vec<FilterRule>) -> NetMap {
    NetMap {
        version,
        peers: peers
            .iter()
            .map(|p| PeerEntry {
                credential: p.cred.sign(key),
                endpoints: vec![p.endpoint],
            })
            .collect(),
        filter,
    }
}

fn start_dp(
    lab: &mut Lab,
    ns: usize,
    tun: &str,
    node: &Node,
    key: &SigningKey,
    map: &NetMap,
) -> usize {
    let cfg = serde_json::json!({
        "tun": tun,
        "port": node.endpoint.port(),
        "secret": base64::engine::general_purpose::STANDARD.encode(node.secret.to_bytes()),
        "credential": node.cred.sign(key),
        "coordinator": coordinator_public_key(key),
        "netmap": map,
    });
    let path = lab.file(&format!("{tun}.json"), &cfg.to_string());
    let p = Proc::spawn(
        tun,
        in_ns(&lab.ns[ns], &[BIN, "run", path.to_str().unwrap()]),
    );
    p.expect("ready", Duration::from_secs(10));
    lab.procs.push(p);
    lab.procs.len() - 1
}

fn echo_server(lab: &mut Lab, ns: usize, port: u16) -> usize {
    let p = Proc::spawn(
        "echo-server",
        in_ns(&lab.ns[ns], &[BIN, "echo-server", &format!("[::]:{port}")]),
    );
    p.expect("listening", Duration::from_secs(5));
    lab.procs.push(p);
    lab.procs.len() - 1
}

fn sock(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// Run the echo client in `ns` against `to`; whether all bytes came back.
fn echo(lab: &Lab, ns: usize, to: &str, bytes: usize) -> bool {
    in_ns(&lab.ns[ns], &[BIN, "echo-client", to, &bytes.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn ping(lab: &Lab, ns: usize, to: IpAddr) -> bool {
    in_ns(
        &lab.ns[ns],
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", &to.to_string()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .unwrap()
    .success()
}

#[test]
fn two_data_planes_carry_tcp_and_enforce_the_view() {
    let mut lab = Lab::new(&["a", "b"]);
    lab.link(0, 1, 200);
    let now = unix_now();
    let key = SigningKey::from_bytes(&rand::random());
    let a = Node::new(1, "198.18.200.1:51820", now);
    let b = Node::new(2, "198.18.200.2:51820", now);
    // a may reach b on TCP 7000 and ICMP; nothing may reach a.
    let b_filter = vec![allow(
        &a,
        &b,
        &[proto::TCP, proto::ICMP, proto::ICMPV6],
        &[7000],
    )];
    let pid = std::process::id() % 100_000;
    start_dp(
        &mut lab,
        0,
        &format!("zt{pid}a"),
        &a,
        &key,
        &netmap(&key, 1, &[&b], vec![]),
    );
    let dp_b = start_dp(
        &mut lab,
        1,
        &format!("zt{pid}b"),
        &b,
        &key,
        &netmap(&key, 1, &[&a], b_filter),
    );
    let server_b = echo_server(&mut lab, 1, 7000);
    echo_server(&mut lab, 1, 7001);
    echo_server(&mut lab, 0, 7000);

    assert!(
        echo(&lab, 0, &sock(b.v4(), 7000), 1 << 20),
        "TCP over IPv4 overlay"
    );
    assert!(
        echo(&lab, 0, &sock(b.v6(), 7000), 256 << 10),
        "TCP over IPv6 overlay"
    );
    assert!(ping(&lab, 0, b.v4()), "ICMP allowed a -> b");
    assert!(!ping(&lab, 1, a.v4()), "ICMP denied b -> a");
    assert!(!echo(&lab, 0, &sock(b.v4(), 7001), 10), "denied port");
    assert!(!echo(&lab, 1, &sock(a.v4(), 7000), 10), "denied direction");

    // Status shows the peer with a handshake and traffic; denied flows are listed.
    lab.procs[dp_b].send("status");
    let st: serde_json::Value =
        serde_json::from_str(&lab.procs[dp_b].expect("{", Duration::from_secs(5))).unwrap();
    assert_eq!(st["peers"][0]["name"], "host1");
    assert!(st["peers"][0]["last_handshake"].is_u64());
    assert!(st["counters"]["rx_denied"].as_u64().unwrap() > 0);

    // An open connection is cut within 1 s when b's view drops a.
    let hold = Proc::spawn(
        "hold",
        in_ns(&lab.ns[0], &[BIN, "hold", &sock(b.v4(), 7000), "10000"]),
    );
    hold.expect("connected", Duration::from_secs(5));
    lab.procs[server_b].expect("accepted", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(200));
    lab.procs[server_b].drain();
    let map = lab.file(
        "b2.json",
        &serde_json::to_string(&netmap(&key, 2, &[], vec![])).unwrap(),
    );
    let t = Instant::now();
    lab.procs[dp_b].send(&format!("netmap {}", map.display()));
    let closed = lab.procs[server_b].expect("closed", Duration::from_secs(1));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(closed.ends_with("ConnectionReset"), "{closed}");
    drop(hold);
}

/// Two data planes over a veth of MTU 1280 (the IPv6 minimum) with the default overlay MTU of
/// 1420: full-size tunnel packets become 1480-byte (IPv4 underlay) or 1500-byte (IPv6 underlay)
/// datagrams, which must be fragmented on the way rather than dropped. 1 MiB of TCP over each
/// inner family comes back intact.
fn tcp_over_1280_byte_underlay(v6_underlay: bool, net: u8, tuns: [&str; 2]) {
    let mut lab = Lab::new(&[tuns[0], tuns[1]]);
    lab.link_with(0, 1, net, 1280, v6_underlay);
    let now = unix_now();
    let key = SigningKey::from_bytes(&rand::random());
    let ep = |host: u8| {
        if v6_underlay {
            format!("[2001:db8:{net}::{host}]:51820")
        } else {
            format!("198.18.{net}.{host}:51820")
        }
    };
    let a = Node::new(1, &ep(1), now);
    let b = Node::new(2, &ep(2), now);
    let b_filter = vec![allow(&a, &b, &[proto::TCP], &[7000])];
    let pid = std::process::id() % 100_000;
    start_dp(
        &mut lab,
        0,
        &format!("zt{pid}{}", tuns[0]),
        &a,
        &key,
        &netmap(&key, 1, &[&b], vec![]),
    );
    start_dp(
        &mut lab,
        1,
        &format!("zt{pid}{}", tuns[1]),
        &b,
        &key,
        &netmap(&key, 1, &[&a], b_filter),
    );
    echo_server(&mut lab, 1, 7000);
    assert!(
        echo(&lab, 0, &sock(b.v4(), 7000), 1 << 20),
        "1 MiB of TCP over the IPv4 overlay, underlay MTU 1280"
    );
    assert!(
        echo(&lab, 0, &sock(b.v6(), 7000), 1 << 20),
        "1 MiB of TCP over the IPv6 overlay, underlay MTU 1280"
    );
}

#[test]
fn tcp_over_1280_byte_ipv4_underlay() {
    tcp_over_1280_byte_underlay(false, 202, ["m", "n"]);
}

#[test]
fn tcp_over_1280_byte_ipv6_underlay() {
    tcp_over_1280_byte_underlay(true, 203, ["p", "q"]);
}

fn find_tool(name: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([PathBuf::from(home).join(".cargo/bin")])
    {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install it (see notes/ci-deps.md)");
}

#[test]
fn interoperates_with_stock_boringtun_cli() {
    let boringtun = find_tool("boringtun-cli");
    find_tool("wg");
    let mut lab = Lab::new(&["z", "c"]);
    lab.link(0, 1, 201);
    let now = unix_now();
    let key = SigningKey::from_bytes(&rand::random());
    let z = Node::new(1, "198.18.201.1:51820", now);
    let c = Node::new(9, "198.18.201.2:51821", now);
    let pid = std::process::id() % 100_000;
    let z_filter = vec![allow(
        &c,
        &z,
        &[proto::TCP, proto::ICMP, proto::ICMPV6],
        &[7000],
    )];
    start_dp(
        &mut lab,
        0,
        &format!("zt{pid}z"),
        &z,
        &key,
        &netmap(&key, 1, &[&c], z_filter),
    );

    // The stock peer: boringtun-cli in foreground, configured with wg and ip.
    let ifc = format!("ztbt{pid}");
    let mut bt = in_ns(
        &lab.ns[1],
        &[
            boringtun.to_str().unwrap(),
            "-f",
            "--disable-drop-privileges",
            &ifc,
        ],
    );
    bt.env("WG_LOG_LEVEL", "error");
    lab.procs.push(Proc::spawn("boringtun-cli", bt));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_ns(&lab.ns[1], &["wg", "show", &ifc])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "boringtun-cli did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let keyfile = lab.file(
        "c.key",
        &base64::engine::general_purpose::STANDARD.encode(c.secret.to_bytes()),
    );
    let ns = lab.ns[1].clone();
    let run = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend_from_slice(args);
        sh(&full);
    };
    run(&[
        "wg",
        "set",
        &ifc,
        "private-key",
        keyfile.to_str().unwrap(),
        "listen-port",
        "51821",
        "peer",
        &z.cred.wg_public_key.to_base64(),
        "endpoint",
        "198.18.201.1:51820",
        "allowed-ips",
        &format!("{}/32,{}/128", z.v4(), z.v6()),
    ]);
    run(&["ip", "addr", "add", &format!("{}/32", c.v4()), "dev", &ifc]);
    run(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/128", c.v6()),
        "dev",
        &ifc,
        "nodad",
    ]);
    run(&["ip", "link", "set", &ifc, "mtu", "1420", "up"]);
    run(&["ip", "route", "add", "100.64.0.0/10", "dev", &ifc]);
    run(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd5a:746d:6573::/48",
        "dev",
        &ifc,
    ]);

    echo_server(&mut lab, 0, 7000);
    echo_server(&mut lab, 1, 7000);
    assert!(ping(&lab, 1, z.v4()), "boringtun -> ztmesh ping v4");
    assert!(ping(&lab, 1, z.v6()), "boringtun -> ztmesh ping v6");
    assert!(
        ping(&lab, 0, c.v4()),
        "ztmesh -> boringtun ping (reply tracked)"
    );
    assert!(
        echo(&lab, 1, &sock(z.v4(), 7000), 1 << 20),
        "TCP boringtun -> ztmesh"
    );
    assert!(
        echo(&lab, 0, &sock(c.v4(), 7000), 1 << 20),
        "TCP ztmesh -> boringtun"
    );
    assert!(
        echo(&lab, 0, &sock(c.v6(), 7000), 64 << 10),
        "TCP6 ztmesh -> boringtun"
    );
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifc}.sock"));
}

/// The panic check itself: a process that prints `panicked` fails the test that started it.
#[test]
fn a_process_that_panicked_fails_its_test() {
    let r = std::panic::catch_unwind(|| {
        let mut lab = Lab::new(&[]);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo \"thread 'dp-rx' panicked at shell.rs:1:1\" >&2"]);
        let mut p = Proc::spawn("panicker", cmd);
        let _ = p.child.wait();
        lab.procs.push(p);
    });
    let msg = r.expect_err("the lab must fail the test");
    let msg = msg.downcast_ref::<String>().expect("a panic message");
    assert!(msg.contains("panicker: thread 'dp-rx' panicked"), "{msg}");
}

#[test]
fn a_deleted_tun_device_stops_the_data_plane_with_a_clear_error() {
    let mut lab = Lab::new(&["g"]);
    let now = unix_now();
    let key = SigningKey::from_bytes(&rand::random());
    let a = Node::new(1, "198.18.202.1:51820", now);
    let tun = format!("zt{}g", std::process::id() % 100_000);
    let i = start_dp(&mut lab, 0, &tun, &a, &key, &netmap(&key, 1, &[], vec![]));
    let ns = lab.ns[0].clone();
    sh(&["ip", "-n", &ns, "link", "del", &tun]);

    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        lab.procs[i].send("status");
        let status = lab.procs[i].expect("{", Duration::from_secs(5));
        if status.contains("\"failure\"") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let failure = status["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains(&format!("TUN device {tun} is gone")),
        "status after the TUN was deleted: {status}"
    );

    // Both I/O threads ended: nothing is left to spin on the dead descriptor.
    let tasks = format!("/proc/{}/task", lab.procs[i].child.id());
    let io_threads = || {
        std::fs::read_dir(&tasks)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.starts_with("dp-tx") || c.starts_with("dp-rx"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while io_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "data plane threads still run after the TUN device is gone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
