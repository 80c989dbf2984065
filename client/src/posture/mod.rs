//! Posture collection: runs the probes against a host view and assembles the attributes the
//! device reports (names from `ztmesh_common::posture::attr`).

pub mod firewall;
pub mod host;
pub mod probes;

use host::{HostView, RootDir};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use ztmesh_common::posture::{attr, AttrValue, PostureAttrs};

/// Reported in addition to the well-known names: which agents were seen.
pub const EDR_AGENTS: &str = "node:edrAgents";
/// The os-release NAME, for humans.
pub const OS_NAME: &str = "node:osName";
/// The os-release ID (e.g. `debian`).
pub const OS_DISTRO: &str = "node:osDistro";

/// Process names of common EDR/AV agents on Linux (CrowdStrike, Defender, SentinelOne,
/// Elastic, Sophos, ClamAV, osquery, Wazuh).
pub const DEFAULT_EDR_PROCESSES: &[&str] = &[
    "falcon-sensor",
    "wdavdaemon",
    "sentinelagent",
    "elastic-endpoint",
    "sophos-spl",
    "clamd",
    "osqueryd",
    "wazuh-agentd",
];

/// The `[posture]` section of the client configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureConfig {
    /// Process names (as in `/proc/PID/comm`) that count as an EDR/AV agent.
    pub edr_processes: Option<Vec<String>>,
    /// Custom facts, reported as `custom:NAME`.
    #[serde(default)]
    pub custom: BTreeMap<String, toml::Value>,
}

/// Collects posture from one host view.
#[derive(Clone)]
pub struct Prober {
    host: Arc<dyn HostView>,
    edr: Vec<String>,
    custom: PostureAttrs,
}

impl Prober {
    /// Probes under `root` (`/` for the real system).
    pub fn new(root: impl Into<PathBuf>, config: &PostureConfig) -> Self {
        Self::with_host(Arc::new(RootDir::new(root)), config)
    }

    pub fn with_host(host: Arc<dyn HostView>, config: &PostureConfig) -> Self {
        let edr = config.edr_processes.clone().unwrap_or_else(|| {
            DEFAULT_EDR_PROCESSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        let custom = config
            .custom
            .iter()
            .filter_map(|(k, v)| {
                let v = toml_to_attr(v).or_else(|| {
                    tracing::warn!(fact = %k, "custom fact has no attribute form; skipped");
                    None
                })?;
                Some((format!("{}{}", attr::CUSTOM_PREFIX, k), v))
            })
            .collect();
        Prober { host, edr, custom }
    }

    /// Runs every probe now.
    pub fn collect(&self, now: SystemTime) -> PostureAttrs {
        let h = self.host.as_ref();
        let mut a = PostureAttrs::new();
        let s = |v: &str| AttrValue::String(v.to_string());
        a.insert(attr::OS.into(), s(std::env::consts::OS));
        let osr = probes::os_release(h);
        if let Some(v) = osr.get("VERSION_ID") {
            a.insert(attr::OS_VERSION.into(), s(v));
        }
        if let Some(v) = osr.get("ID") {
            a.insert(OS_DISTRO.into(), s(v));
        }
        if let Some(v) = osr.get("PRETTY_NAME").or(osr.get("NAME")) {
            a.insert(OS_NAME.into(), s(v));
        }
        if let Some(k) = probes::kernel_version(h) {
            a.insert(attr::KERNEL_VERSION.into(), s(&k));
        }
        a.insert(
            attr::DISK_ENCRYPTED.into(),
            AttrValue::Bool(probes::root_fs_encrypted(h)),
        );
        a.insert(
            attr::FIREWALL.into(),
            AttrValue::Bool(firewall::firewall_active(h)),
        );
        a.insert(
            attr::SECURE_BOOT.into(),
            AttrValue::Bool(probes::secure_boot(h)),
        );
        let agents = probes::running_agents(h, &self.edr);
        a.insert(attr::EDR.into(), AttrValue::Bool(!agents.is_empty()));
        a.insert(EDR_AGENTS.into(), AttrValue::List(agents));
        if let Some(d) = probes::days_since_update(h, now) {
            a.insert(attr::LAST_UPDATE_DAYS.into(), AttrValue::Number(d as f64));
        }
        a.insert(attr::CLIENT_VERSION.into(), s(env!("CARGO_PKG_VERSION")));
        a.insert(
            attr::POSTURE_SOURCE.into(),
            s(if h.is_system() { "system" } else { "fixture" }),
        );
        for (k, v) in &self.custom {
            a.insert(k.clone(), v.clone());
        }
        a
    }
}

fn toml_to_attr(v: &toml::Value) -> Option<AttrValue> {
    Some(match v {
        toml::Value::Boolean(b) => AttrValue::Bool(*b),
        toml::Value::Integer(i) => AttrValue::Number(*i as f64),
        toml::Value::Float(f) => AttrValue::Number(*f),
        toml::Value::String(s) => AttrValue::String(s.clone()),
        toml::Value::Array(xs) => AttrValue::List(
            xs.iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

/// Renders attributes for `ztmesh posture` (one `name = value` per line).
pub fn render(attrs: &PostureAttrs) -> String {
    attrs
        .iter()
        .map(|(k, v)| format!("{k} = {}\n", v.to_json()))
        .collect()
}
