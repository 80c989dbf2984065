//! `ztmesh-dp-test`: a TEST HARNESS for the data plane, not part of the product. The netns tests
//! and the benchmark run it inside namespaces with `ip netns exec` (never setns from a threaded
//! process):
//!
//! - `run CONFIG.json`: start a data plane with the identity and view in the file, then obey
//!   stdin lines: `netmap FILE.json` (replace the view), `status` (print status JSON), `quit`.
//!   Prints `ready PORT` once up.
//! - `echo-server ADDR`: TCP echo server; prints `accepted PEER` and `closed PEER REASON`.
//! - `echo-client ADDR BYTES`: send BYTES through an echo server and verify them; exit 0 if all
//!   came back.
//! - `hold ADDR MS`: keep a connection busy (one exchange every 20 ms) for up to MS; prints
//!   `broken AFTER_MS REASON` or `held`.
//! - `gen-pair DIR UNDERLAY_A UNDERLAY_B PORT TUN_A TUN_B`: write `a.json` and `b.json` for two
//!   data planes that may reach each other on everything (for the benchmark), signed by a
//!   throwaway coordinator key.
//!
//! `run CONFIG --wait` ignores stdin and runs until killed (for scripts).

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use ztmesh_client::dataplane::{self, DataPlaneConfig};
use ztmesh_common::credential::SignedCredential;
use ztmesh_common::ids::CoordinatorPublicKey;
use ztmesh_common::netmap::NetMap;

#[derive(Deserialize)]
struct Config {
    tun: String,
    port: u16,
    /// X25519 secret, standard base64.
    secret: String,
    credential: SignedCredential,
    coordinator: CoordinatorPublicKey,
    netmap: NetMap,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("run") => run(
            args.get(2).context("run CONFIG")?,
            args.get(3).map(String::as_str) == Some("--wait"),
        ),
        Some("gen-pair") => gen_pair(&args[2..]),
        Some("echo-server") => echo_server(args.get(2).context("echo-server ADDR")?.parse()?),
        Some("echo-client") => echo_client(
            args.get(2).context("echo-client ADDR BYTES")?.parse()?,
            args.get(3).context("BYTES")?.parse()?,
        ),
        Some("hold") => hold(
            args.get(2).context("hold ADDR MS")?.parse()?,
            args.get(3).context("MS")?.parse()?,
        ),
        _ => bail!("usage: ztmesh-dp-test run|echo-server|echo-client|hold ..."),
    }
}

fn run(path: &str, wait: bool) -> Result<()> {
    let cfg: Config = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let secret: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(cfg.secret.trim())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("secret must be 32 bytes"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dp = rt.block_on(dataplane::start(DataPlaneConfig {
        tun_name: cfg.tun.clone(),
        listen_port: cfg.port,
        mtu: ztmesh_common::addr::OVERLAY_MTU,
    }))?;
    dp.set_identity(
        x25519_dalek::StaticSecret::from(secret),
        cfg.credential,
        cfg.coordinator,
    )?;
    dp.set_netmap(cfg.netmap);
    // Wait until the TUN has its addresses, so that callers can use the overlay at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::process::Command::new("ip")
        .args(["-4", "addr", "show", "dev", &cfg.tun])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("inet "))
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            bail!("TUN addresses not set");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("ready {}", dp.local_port());
    std::io::stdout().flush()?;
    if wait {
        loop {
            std::thread::park();
        }
    }
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("netmap"), Some(file)) => {
                let map: NetMap = serde_json::from_str(&std::fs::read_to_string(file)?)?;
                dp.set_netmap(map);
                println!("ok");
            }
            (Some("status"), _) => println!("{}", serde_json::to_string(&dp.status())?),
            (Some("events"), _) => println!("{}", serde_json::to_string(&dp.take_events())?),
            (Some("quit"), _) => break,
            _ => println!("error unknown command"),
        }
        std::io::stdout().flush()?;
    }
    rt.block_on(dp.shutdown());
    Ok(())
}

fn echo_server(addr: SocketAddr) -> Result<()> {
    let l = TcpListener::bind(addr)?;
    println!("listening {}", l.local_addr()?);
    std::io::stdout().flush()?;
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            println!("accepted {peer}");
            let _ = std::io::stdout().flush();
            let mut buf = vec![0u8; 64 * 1024];
            let reason = loop {
                match c.read(&mut buf) {
                    Ok(0) => break "eof".to_string(),
                    Ok(n) => {
                        if let Err(e) = c.write_all(&buf[..n]) {
                            break format!("{:?}", e.kind());
                        }
                    }
                    Err(e) => break format!("{:?}", e.kind()),
                }
            };
            println!("closed {peer} {reason}");
            let _ = std::io::stdout().flush();
        });
    }
    Ok(())
}

fn echo_client(addr: SocketAddr, bytes: usize) -> Result<()> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    // Bounded both ways: a tunnel that stops carrying data fails the client, never hangs it.
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + 3) as u8).collect();
    let mut reader = c.try_clone()?;
    let expect = data.clone();
    let check = std::thread::spawn(move || -> Result<()> {
        let mut got = vec![0u8; expect.len()];
        reader.read_exact(&mut got)?;
        if got != expect {
            bail!("echo mismatch");
        }
        Ok(())
    });
    c.write_all(&data)?;
    check
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    println!("ok {bytes}");
    Ok(())
}

fn hold(addr: SocketAddr, ms: u64) -> Result<()> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    println!("connected");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let mut buf = [0u8; 4];
    while start.elapsed() < Duration::from_millis(ms) {
        let r = c.write_all(b"ping").and_then(|_| c.read_exact(&mut buf));
        if let Err(e) = r {
            println!("broken {} {:?}", start.elapsed().as_millis(), e.kind());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("held");
    Ok(())
}

fn gen_pair(args: &[String]) -> Result<()> {
    use ztmesh_common::credential::{coordinator_public_key, NodeCredential};
    use ztmesh_common::ids::{MachinePublicKey, NodeId, WgPublicKey};
    use ztmesh_common::netmap::{proto, FilterRule, PeerEntry, PortRange};
    use ztmesh_common::time::UnixMillis;
    let [dir, ua, ub, port, tun_a, tun_b] = args else {
        bail!("gen-pair DIR UNDERLAY_A UNDERLAY_B PORT TUN_A TUN_B");
    };
    let port: u16 = port.parse()?;
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let mk = |index: u32| {
        let secret = x25519_dalek::StaticSecret::random_from_rng(rand::thread_rng());
        let (v4, v6) = ztmesh_common::addr::overlay_addrs(index).expect("index in range");
        let cred = NodeCredential {
            node_id: NodeId(index as u64),
            hostname: format!("bench{index}"),
            user: None,
            tags: vec!["tag:bench".into()],
            machine_key: MachinePublicKey([index as u8; 32]),
            wg_public_key: WgPublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes()),
            addresses: vec![v4.into(), v6.into()],
            posture_digest: [0; 32],
            not_before: UnixMillis(now - 60_000),
            issued_at: UnixMillis(now),
            expires_at: UnixMillis(now + 24 * 3_600_000),
            serial: 1,
        };
        (secret, cred)
    };
    let nodes = [mk(1), mk(2)];
    let underlay = [ua, ub];
    let tuns = [tun_a, tun_b];
    for me in 0..2 {
        let other = 1 - me;
        let (secret, cred) = &nodes[me];
        let peer = &nodes[other].1;
        let filter = vec![FilterRule {
            src: ztmesh_common::addr::host_nets(&peer.addresses),
            dst: ztmesh_common::addr::host_nets(&cred.addresses),
            protos: proto::DEFAULT.to_vec(),
            ports: vec![PortRange::ALL],
        }];
        let map = NetMap {
            version: 1,
            peers: vec![PeerEntry {
                credential: peer.sign(&key),
                endpoints: vec![format!("{}:{port}", underlay[other]).parse()?],
            }],
            filter,
        };
        let cfg = serde_json::json!({
            "tun": tuns[me],
            "port": port,
            "secret": base64::engine::general_purpose::STANDARD.encode(secret.to_bytes()),
            "credential": cred.sign(&key),
            "coordinator": coordinator_public_key(&key),
            "netmap": map,
        });
        let name = if me == 0 { "a.json" } else { "b.json" };
        let path = std::path::Path::new(dir).join(name);
        std::fs::write(&path, cfg.to_string())?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    Ok(())
}
