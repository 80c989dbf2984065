//! The TUN device: created with the `tun` crate (non-blocking, no packet-information header,
//! optionally `IFF_VNET_HDR`), and its overlay addresses and routes,
//! set with iproute2 so that 100.64.0.0/10 and the ULA /48 route into the tunnel.

use std::net::IpAddr;
use std::process::Command;
use ztmesh_common::addr::{OVERLAY_V4, OVERLAY_V6};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("creating TUN device {name}: {source}")]
    Create { name: String, source: tun::Error },
    #[error("TUN device: {0}")]
    Io(#[from] std::io::Error),
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
}

/// Create the TUN device `name` with `mtu`, up, without addresses; with `vnet_hdr`, every
/// packet read or written carries a `virtio_net_hdr` (see [`super::tunio::VnetTun`]).
pub fn create(name: &str, mtu: u16, vnet_hdr: bool) -> Result<tun::Device, TunError> {
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(name).mtu(mtu).up();
    cfg.platform_config(|p| {
        p.vnet_hdr(vnet_hdr);
    });
    let dev = tun::create(&cfg).map_err(|source| TunError::Create {
        name: name.to_string(),
        source,
    })?;
    dev.set_nonblock()?;
    Ok(dev)
}

fn ip(args: &[&str]) -> Result<(), TunError> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(TunError::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Replace the device's overlay addresses with `addrs` (host prefixes) and route the overlay
/// prefixes into it.
pub fn set_addresses(name: &str, addrs: &[IpAddr]) -> Result<(), TunError> {
    ip(&["-4", "addr", "flush", "dev", name])?;
    // Only global scope: keep the kernel's link-local IPv6 address.
    ip(&["-6", "addr", "flush", "dev", name, "scope", "global"])?;
    for a in addrs {
        match a {
            IpAddr::V4(v4) => {
                ip(&["addr", "add", &format!("{v4}/32"), "dev", name])?;
                ip(&[
                    "-4",
                    "route",
                    "replace",
                    &OVERLAY_V4.to_string(),
                    "dev",
                    name,
                    "src",
                    &v4.to_string(),
                ])?;
            }
            IpAddr::V6(v6) => {
                ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/128"),
                    "dev",
                    name,
                    "nodad",
                ])?;
                ip(&[
                    "-6",
                    "route",
                    "replace",
                    &OVERLAY_V6.to_string(),
                    "dev",
                    name,
                    "src",
                    &v6.to_string(),
                ])?;
            }
        }
    }
    Ok(())
}
