//! Credential issuing, as pure functions of the device, the lifetimes and `now`.

use std::net::IpAddr;
use std::time::Duration;
use ztmesh_common::credential::NodeCredential;
use ztmesh_common::ids::{MachinePublicKey, NodeId, WgPublicKey};
use ztmesh_common::posture::{self, PostureAttrs};
use ztmesh_common::time::UnixMillis;

/// How far `not_before` lies before `issued_at`, so that peers whose clocks run a little
/// behind do not refuse a fresh credential.
pub const NOT_BEFORE_SKEW_MS: u64 = 60_000;

/// Who a credential is for.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    pub node_id: NodeId,
    pub hostname: &'a str,
    pub user: Option<&'a str>,
    pub tags: &'a [String],
    pub machine_key: MachinePublicKey,
    pub wg_public_key: WgPublicKey,
    pub addresses: &'a [IpAddr],
    pub posture: &'a PostureAttrs,
}

/// The credential for `subject`, valid from a little before `now` for `lifetime`.
pub fn build(
    subject: &Subject<'_>,
    now: UnixMillis,
    lifetime: Duration,
    serial: u64,
) -> NodeCredential {
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    NodeCredential {
        node_id: subject.node_id,
        hostname: subject.hostname.to_owned(),
        user: subject.user.map(str::to_owned),
        tags: subject.tags.to_vec(),
        machine_key: subject.machine_key,
        wg_public_key: subject.wg_public_key,
        addresses: subject.addresses.to_vec(),
        posture_digest: posture::digest(subject.posture),
        not_before: now.saturating_sub_ms(NOT_BEFORE_SKEW_MS),
        issued_at: now,
        expires_at: now.saturating_add_ms(lifetime_ms),
        serial,
    }
}

/// When the device should renew: two thirds into the lifetime, leaving a third for retries.
pub fn renew_at(issued_at: UnixMillis, expires_at: UnixMillis) -> UnixMillis {
    issued_at.saturating_add_ms(issued_at.until(expires_at) / 3 * 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use ztmesh_common::credential::coordinator_public_key;

    #[test]
    fn credential_window_and_signature() {
        let addrs: Vec<IpAddr> = vec!["100.64.0.5".parse().unwrap()];
        let tags = vec!["tag:server".to_owned()];
        let posture = PostureAttrs::new();
        let s = Subject {
            node_id: NodeId(5),
            hostname: "db",
            user: None,
            tags: &tags,
            machine_key: MachinePublicKey([1; 32]),
            wg_public_key: WgPublicKey([2; 32]),
            addresses: &addrs,
            posture: &posture,
        };
        let now = UnixMillis(10_000_000);
        let c = build(&s, now, Duration::from_secs(3600), 42);
        assert_eq!(c.not_before, UnixMillis(10_000_000 - NOT_BEFORE_SKEW_MS));
        assert_eq!(c.expires_at, UnixMillis(10_000_000 + 3_600_000));
        assert_eq!(c.serial, 42);
        let key = SigningKey::from_bytes(&[3; 32]);
        let signed = c.sign(&key);
        assert_eq!(
            signed.verify(&coordinator_public_key(&key), now).unwrap(),
            c
        );
        assert_eq!(
            renew_at(c.issued_at, c.expires_at),
            UnixMillis(10_000_000 + 2_400_000)
        );
    }
}
