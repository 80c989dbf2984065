//! The lab topology: an "internet" bridge with the coordinator and the IdP, two NAT routers
//! each with a LAN behind it, and the hosts a test asks for; built from namespaces and veths,
//! removed on drop (also during a panic).
//!
//! ```text
//!  coord 203.0.113.10   idp 203.0.113.20   internet hosts 203.0.113.100+
//!        \                  |                 /
//!         +------ inet: bridge br0 (203.0.113.0/24) ------+
//!                 |                                  |
//!      r1 wan 203.0.113.11 (NAT)          r2 wan 203.0.113.12 (NAT)
//!      lanbr 198.18.1.1/24                lanbr 198.18.2.1/24
//!        LAN 1 hosts 198.18.1.10+           LAN 2 hosts 198.18.2.10+
//! ```
//! The routers masquerade LAN -> WAN, forward only LAN -> WAN plus established/related (and
//! explicit port forwards), and drop unsolicited traffic arriving on the WAN side.

use crate::{bins, netns, process, LabError, Process};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The "internet" segment (TEST-NET-3).
pub const INTERNET_PREFIX: &str = "203.0.113";
pub const COORD_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const IDP_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// Number of NAT routers (and LANs): LAN n is 198.18.n.0/24 behind router `rn`.
pub const LANS: u8 = 2;
const RESERVED: [&str; 5] = ["coord", "idp", "inet", "r1", "r2"];

/// Where a host is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// Directly on the internet segment, with a public address (203.0.113.100+).
    Internet,
    /// On LAN n (1 or 2), behind NAT router `rn` (198.18.n.10+).
    Lan(u8),
}

/// A host of the lab: one namespace with one underlay address.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    pub site: Site,
}

/// Which hosts to add to the fixed part (internet, coordinator, IdP, two NAT routers).
#[derive(Debug, Default)]
pub struct LabBuilder {
    hosts: Vec<(String, Site)>,
}

impl LabBuilder {
    /// Adds a host named `name` (short: it becomes part of a namespace name) at `site`.
    pub fn host(mut self, name: &str, site: Site) -> Self {
        self.hosts.push((name.to_string(), site));
        self
    }

    /// Builds the topology. On any error, what was built so far is removed again.
    pub fn build(self) -> Result<Lab, LabError> {
        for (name, site) in &self.hosts {
            if RESERVED.contains(&name.as_str()) || name.len() > 12 || name.is_empty() {
                return Err(LabError::Setup(format!(
                    "host name `{name}` is reserved or not 1..=12 characters"
                )));
            }
            if let Site::Lan(n) = site {
                if !(1..=LANS).contains(n) {
                    return Err(LabError::Setup(format!("there is no LAN {n}")));
                }
            }
        }
        netns::clean_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{}{}x{}-",
            netns::NS_PREFIX,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("ztmesh-lab-{}", prefix.trim_end_matches('-')));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut lab = Lab {
            prefix,
            dir,
            hosts: BTreeMap::new(),
            namespaces: Vec::new(),
            logs: Mutex::new(Vec::new()),
        };
        // On error `lab` is dropped here, which removes the namespaces already created.
        lab.build_fixed()?;
        let mut next_inet = 100u8;
        let mut next_lan = [10u8; LANS as usize];
        for (name, site) in self.hosts {
            let addr = match site {
                Site::Internet => {
                    next_inet += 1;
                    Ipv4Addr::new(203, 0, 113, next_inet - 1)
                }
                Site::Lan(n) => {
                    let slot = &mut next_lan[n as usize - 1];
                    *slot += 1;
                    Ipv4Addr::new(198, 18, n, *slot - 1)
                }
            };
            lab.add_host(&name, site, addr)?;
        }
        Ok(lab)
    }
}

/// A running topology. Dropping it kills every process in its namespaces and deletes them.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    hosts: BTreeMap<String, Host>,
    /// In creation order; deleted in reverse.
    namespaces: Vec<String>,
    logs: Mutex<Vec<(String, PathBuf)>>,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The namespace name prefix of this lab (`ztm<PID>x<SEQ>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of a lab node (host, router `r1`/`r2`, or `inet`).
    pub fn ns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    /// This lab's scratch directory (logs, state dirs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh subdirectory of the scratch directory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, LabError> {
        let p = self.dir.join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    pub fn host(&self, name: &str) -> Result<&Host, LabError> {
        self.hosts
            .get(name)
            .ok_or_else(|| LabError::UnknownHost(name.to_string()))
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// The WAN address of router `rn` (what hosts on LAN n look like from the internet).
    pub fn router_wan(lan: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, 10 + lan)
    }

    fn create_ns(&mut self, node: &str) -> Result<String, LabError> {
        let ns = self.ns(node);
        netns::add(&ns)?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    fn build_fixed(&mut self) -> Result<(), LabError> {
        let inet = self.create_ns("inet")?;
        netns::ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
        netns::ip(&["-n", &inet, "link", "set", "br0", "up"])?;
        self.add_host("coord", Site::Internet, COORD_ADDR)?;
        self.add_host("idp", Site::Internet, IDP_ADDR)?;
        for n in 1..=LANS {
            self.add_router(n)?;
        }
        Ok(())
    }

    /// Creates a namespace and plugs it into the internet bridge or a router's LAN bridge.
    fn add_host(&mut self, name: &str, site: Site, addr: Ipv4Addr) -> Result<(), LabError> {
        let ns = self.create_ns(name)?;
        let (switch_ns, bridge, gateway) = match site {
            Site::Internet => (self.ns("inet"), "br0", None),
            Site::Lan(n) => (
                self.ns(&format!("r{n}")),
                "lanbr",
                Some(Ipv4Addr::new(198, 18, n, 1)),
            ),
        };
        let port = format!("h{}", self.namespaces.len());
        plug(
            &switch_ns,
            bridge,
            &port,
            &ns,
            "eth0",
            &format!("{addr}/24"),
        )?;
        if let Some(gw) = gateway {
            netns::ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
        }
        self.hosts.insert(
            name.to_string(),
            Host {
                name: name.to_string(),
                ns,
                addr,
                site,
            },
        );
        Ok(())
    }

    /// Router `rn`: WAN on the internet bridge, LAN bridge 198.18.n.1/24, forwarding, NAT.
    fn add_router(&mut self, n: u8) -> Result<(), LabError> {
        let ns = self.create_ns(&format!("r{n}"))?;
        let port = format!("w{n}");
        let wan = format!("{}/24", Self::router_wan(n));
        plug(&self.ns("inet"), "br0", &port, &ns, "wan", &wan)?;
        netns::ip(&["-n", &ns, "link", "add", "lanbr", "type", "bridge"])?;
        netns::ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            "lanbr",
        ])?;
        netns::ip(&["-n", &ns, "link", "set", "lanbr", "up"])?;
        netns::exec(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        nft(&ns, NAT_RULES)?;
        Ok(())
    }

    /// A port forward on router `r{lan}`: `proto` ("tcp"/"udp") traffic to its WAN address
    /// port `wan_port` goes to `host`:`port`.
    pub fn forward(
        &self,
        lan: u8,
        proto: &str,
        wan_port: u16,
        host: &str,
        port: u16,
    ) -> Result<(), LabError> {
        let h = self.host(host)?;
        if h.site != Site::Lan(lan) {
            return Err(LabError::Setup(format!("{host} is not on LAN {lan}")));
        }
        let rule = format!(
            "add rule ip ztmnat prerouting iifname \"wan\" {proto} dport {wan_port} dnat to {}:{port}\n",
            h.addr
        );
        nft(&self.ns(&format!("r{lan}")), &rule)
    }

    /// Starts `program args` on `host`, logging to `logs/<name>.log`.
    pub fn spawn(
        &self,
        host: &str,
        name: &str,
        program: &Path,
        args: &[&str],
    ) -> Result<Process, LabError> {
        self.spawn_env(host, name, program, args, &[])
    }

    /// [`Lab::spawn`] with extra environment variables.
    pub fn spawn_env(
        &self,
        host: &str,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Process, LabError> {
        let ns = self.host(host)?.ns.clone();
        let log = self.new_log(name);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Process::spawn(&ns, name, program, &args, &env, &log)
    }

    fn new_log(&self, name: &str) -> PathBuf {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let n = logs.iter().filter(|(l, _)| l == name).count();
        let file = if n == 0 {
            format!("{name}.log")
        } else {
            format!("{name}.{n}.log")
        };
        let path = self.dir.join("logs").join(file);
        logs.push((name.to_string(), path.clone()));
        path
    }

    /// Runs `program args` on `host` to completion (bounded by `timeout`). The output is also
    /// appended to `logs/exec.log`, so the panic check sees it.
    pub fn exec(
        &self,
        host: &str,
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, LabError> {
        let ns = self.host(host)?.ns.clone();
        let prog = program.to_string_lossy();
        let mut full = vec!["netns", "exec", ns.as_str(), prog.as_ref()];
        full.extend_from_slice(args);
        let out = netns::output("ip", &full, timeout)?;
        self.record_exec(host, &prog, args, &out);
        Ok(out)
    }

    fn record_exec(&self, host: &str, prog: &str, args: &[&str], out: &Output) {
        use std::io::Write;
        let path = self.dir.join("logs").join("exec.log");
        {
            let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            if !logs.iter().any(|(_, p)| p == &path) {
                logs.push(("exec".into(), path.clone()));
            }
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = writeln!(
                f,
                "# {host}: {prog} {} -> {}\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The lab's own tool binary (`ztmesh-lab`: service, probes, headless browser).
    pub fn tool() -> Result<PathBuf, LabError> {
        bins::binary("ztmesh-lab")
    }

    /// Every process log (and command output) that mentions a panic: (name, matching lines).
    pub fn panics(&self) -> Vec<(String, String)> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.iter()
            .filter_map(|(name, path)| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let hits: Vec<&str> = text.lines().filter(|l| l.contains("panicked")).collect();
                (!hits.is_empty()).then(|| (name.clone(), hits.join("\n")))
            })
            .collect()
    }

    /// Fails the test if any process of this lab panicked.
    pub fn assert_no_panics(&self) {
        let p = self.panics();
        assert!(p.is_empty(), "processes panicked: {p:#?}");
    }

    /// The last lines of every log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, path) in logs.iter() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            out.push_str(&format!(
                "----- {name} ({}) -----\n{}\n",
                path.display(),
                process::tail(&text, lines)
            ));
        }
        out
    }

    /// Deletes every namespace (killing what runs in them) and the scratch directory.
    fn teardown(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            netns::delete(&ns);
        }
        if std::env::var_os("ZTMESH_LAB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "lab {} logs at failure:\n{}",
                self.prefix,
                self.log_tails(30)
            );
        }
        let panics = if panicking { Vec::new() } else { self.panics() };
        self.teardown();
        if !panics.is_empty() {
            panic!("processes of lab {} panicked: {panics:#?}", self.prefix);
        }
    }
}

/// The routers' firewall: masquerade to the WAN, forward LAN -> WAN and replies only (plus
/// explicit DNAT port forwards), drop unsolicited input from the WAN.
const NAT_RULES: &str = r#"
table ip ztmnat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct status dnat accept
    iifname "lanbr" oifname "wan" accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }
}
"#;

/// Loads an nft script into namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), LabError> {
    let path = std::env::temp_dir().join(format!("{ns}-{}.nft", crate::now_ms()));
    std::fs::write(&path, script)?;
    let r = netns::exec(ns, "nft", &["-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    r.map(|_| ())
}

/// A veth from bridge `bridge` in `switch_ns` (port `port`) to `dev` in `host_ns`, addressed
/// and up. The veth is created inside `switch_ns` and its peer moved straight into `host_ns`,
/// so the root namespace never holds an interface.
fn plug(
    switch_ns: &str,
    bridge: &str,
    port: &str,
    host_ns: &str,
    dev: &str,
    cidr: &str,
) -> Result<(), LabError> {
    netns::ip(&[
        "-n", switch_ns, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", host_ns,
    ])?;
    netns::ip(&["-n", switch_ns, "link", "set", port, "master", bridge, "up"])?;
    netns::ip(&["-n", host_ns, "addr", "add", cidr, "dev", dev])?;
    netns::ip(&["-n", host_ns, "link", "set", dev, "up"])?;
    Ok(())
}
