//! How the engine takes in its identity and its view: own credential (fail closed at expiry),
//! peers verified against the coordinator key (signature, validity window, address conflicts),
//! key rotation on either side without a traffic gap, peer expiry at the exact instant, and
//! cutting tracked flows that a new view no longer allows.

use super::engine::{
    Engine, EngineError, EngineEvent, Identity, Peer, RemovalReason, Session, Sink,
};
use super::filter::Filter;
use super::hsgate::HandshakeGate;
use super::packet::{self, TcpSegment, TCP_ACK, TCP_RST};
use boringtun::noise::{Tunn, TunnResult};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use ztmesh_common::credential::SignedCredential;
use ztmesh_common::ids::{CoordinatorPublicKey, NodeId, WgPublicKey};
use ztmesh_common::netmap::{proto, FilterRule, NetMap, NetMapDelta, PeerEntry};
use ztmesh_common::time::UnixMillis;

/// Own identity as shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnStatus {
    pub node_id: NodeId,
    pub hostname: String,
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub wg_public_key: WgPublicKey,
    pub expires_at: UnixMillis,
}

/// One peer as shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    pub node_id: NodeId,
    pub name: String,
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub wg_public_key: WgPublicKey,
    pub endpoint: Option<SocketAddr>,
    pub endpoint_authenticated: bool,
    /// When the current WireGuard session was established, if there is one.
    pub last_handshake: Option<UnixMillis>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub expires_at: UnixMillis,
}

/// A snapshot of the engine for `ztmesh status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineStatus {
    pub active: bool,
    pub own: Option<OwnStatus>,
    pub netmap_version: Option<u64>,
    pub peers: Vec<PeerStatus>,
    pub tracked_flows: usize,
    pub filter_rules: usize,
    pub counters: super::engine::Counters,
    pub recent_denied: Vec<ztmesh_common::wire::FlowEvent>,
    pub flow_events_overflowed: u64,
}

fn new_session(id: &Identity, keepalive: Option<u16>, peer: &WgPublicKey, index: u32) -> Session {
    let tunn = Tunn::new(
        id.secret.clone(),
        x25519_dalek::PublicKey::from(peer.0),
        None,
        keepalive,
        index,
        Some(id.handshakes.for_tunn()),
    );
    Session {
        tunn: Box::new(tunn),
        index,
    }
}

impl Engine {
    /// Install (or renew, or rotate) own identity. The credential must verify against the
    /// coordinator key and name the WireGuard key of `secret`. An expired credential is refused;
    /// one not valid yet is kept and takes effect at `not_before`.
    pub fn set_identity(
        &mut self,
        now: UnixMillis,
        secret: x25519_dalek::StaticSecret,
        signed: SignedCredential,
        coordinator: CoordinatorPublicKey,
        sink: &mut impl Sink,
    ) -> Result<(), EngineError> {
        let cred = signed.verify_signature(&coordinator)?;
        let public = x25519_dalek::PublicKey::from(&secret);
        if cred.wg_public_key.0 != public.to_bytes() {
            return Err(EngineError::KeyMismatch);
        }
        if let Err(e @ ztmesh_common::credential::CredentialError::Expired { .. }) =
            cred.check_validity(now)
        {
            return Err(e.into());
        }
        let old = self.identity.take();
        let key_changed = old.as_ref().is_none_or(|o| o.public != public);
        let coordinator_changed = old.as_ref().is_some_and(|o| o.coordinator != coordinator);
        let addresses_changed = old
            .as_ref()
            .is_some_and(|o| o.cred.addresses != cred.addresses);
        // The sessions keep their key (and its gate) unless the key changes.
        let handshakes = match old {
            Some(o) if !key_changed => o.handshakes,
            _ => HandshakeGate::new(&public, self.cfg.handshake_rate_limit),
        };
        tracing::info!(
            node = %cred.node_id,
            expires_at = %cred.expires_at,
            key_changed,
            "data plane identity set"
        );
        self.identity = Some(Identity {
            secret,
            public,
            cred,
            coordinator,
            handshakes,
        });
        let mut buf = vec![0u8; 2048];
        if coordinator_changed {
            // Every peer was verified against the old key: start over from the next view.
            let all: Vec<NodeId> = self.peers.keys().copied().collect();
            for n in all {
                self.remove_peer(now, n, RemovalReason::Cleared, &mut buf, sink);
            }
            self.netmap_version = None;
        }
        if addresses_changed {
            self.cut_disallowed(now, &mut buf, sink);
        }
        if key_changed && self.active {
            self.rotate_all_sessions(now, &mut buf, sink);
        }
        self.refresh_activity(now, &mut buf, sink);
        if let Some(map) = self.unverified.take() {
            self.set_netmap(now, map, sink);
        }
        Ok(())
    }

    /// Replace the whole view.
    pub fn set_netmap(&mut self, now: UnixMillis, map: NetMap, sink: &mut impl Sink) {
        if self.identity.is_none() {
            self.unverified = Some(map);
            return;
        }
        let mut buf = vec![0u8; 2048];
        let mut seen = HashSet::new();
        for entry in map.peers {
            if let Some(n) = self.upsert_peer(now, entry, &mut buf, sink) {
                seen.insert(n);
            }
        }
        let gone: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|n| !seen.contains(n))
            .copied()
            .collect();
        for n in gone {
            self.remove_peer(now, n, RemovalReason::NotInView, &mut buf, sink);
        }
        self.set_filter(map.filter);
        self.netmap_version = Some(map.version);
        self.cut_disallowed(now, &mut buf, sink);
        self.ensure_sessions(now, &mut buf, sink);
    }

    /// Apply a change to the current view.
    pub fn apply_delta(
        &mut self,
        now: UnixMillis,
        delta: NetMapDelta,
        sink: &mut impl Sink,
    ) -> Result<(), EngineError> {
        if self.identity.is_none() || self.netmap_version != Some(delta.base_version) {
            let have = self.netmap_version;
            self.events.push_back(EngineEvent::NetMapOutOfSync {
                have,
                base: delta.base_version,
            });
            return Err(EngineError::DeltaOutOfSync {
                have,
                base: delta.base_version,
            });
        }
        let mut buf = vec![0u8; 2048];
        for n in delta.remove {
            self.remove_peer(now, n, RemovalReason::NotInView, &mut buf, sink);
        }
        for entry in delta.upsert {
            self.upsert_peer(now, entry, &mut buf, sink);
        }
        if let Some(f) = delta.filter {
            self.set_filter(f);
        }
        self.netmap_version = Some(delta.version);
        self.cut_disallowed(now, &mut buf, sink);
        self.ensure_sessions(now, &mut buf, sink);
        Ok(())
    }

    /// Leave the mesh: forget identity, peers and filter; reset every tracked connection.
    pub fn clear(&mut self, now: UnixMillis, sink: &mut impl Sink) {
        let mut buf = vec![0u8; 2048];
        let all: Vec<NodeId> = self.peers.keys().copied().collect();
        for n in all {
            self.remove_peer(now, n, RemovalReason::Cleared, &mut buf, sink);
        }
        self.set_filter(Vec::new());
        self.netmap_version = None;
        self.unverified = None;
        if self.active {
            self.deactivate(now, "cleared", &mut buf, sink);
        }
        self.identity = None;
        self.own_wake = None;
    }

    fn set_filter(&mut self, rules: Vec<FilterRule>) {
        if rules != self.filter_rules {
            self.filter = Filter::compile(&rules);
            self.filter_rules = rules;
        }
    }

    /// Verify and insert or update one peer. Returns its node id if accepted.
    fn upsert_peer(
        &mut self,
        now: UnixMillis,
        entry: PeerEntry,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) -> Option<NodeId> {
        let id = self.identity.as_ref()?;
        let own_node = id.cred.node_id;
        let refuse = |events: &mut std::collections::VecDeque<EngineEvent>,
                      node: Option<NodeId>,
                      reason: String| {
            tracing::warn!(node = ?node, %reason, "peer refused");
            events.push_back(EngineEvent::PeerRefused { node, reason });
        };
        let cred = match entry.credential.verify_signature(&id.coordinator) {
            Ok(c) => c,
            Err(e) => {
                refuse(&mut self.events, None, e.to_string());
                return None;
            }
        };
        let node = cred.node_id;
        if now >= cred.expires_at {
            refuse(
                &mut self.events,
                Some(node),
                format!("credential expired at {}", cred.expires_at),
            );
            return None;
        }
        if node == own_node || cred.addresses.iter().any(|a| id.cred.addresses.contains(a)) {
            refuse(
                &mut self.events,
                Some(node),
                "peer claims our own node id or address".into(),
            );
            return None;
        }
        if let Some(a) = cred
            .addresses
            .iter()
            .find(|a| self.by_addr.get(a).is_some_and(|n| *n != node))
        {
            refuse(
                &mut self.events,
                Some(node),
                format!("address {a} already belongs to another peer"),
            );
            return None;
        }
        let overlap = self.cfg.rotation_overlap_ms;
        let keepalive = self.cfg.persistent_keepalive;
        match self.peers.get_mut(&node) {
            Some(peer) => {
                let rekeyed = peer.cred.wg_public_key != cred.wg_public_key;
                let old_addrs = std::mem::take(&mut peer.cred.addresses);
                for a in &old_addrs {
                    self.by_addr.remove(a);
                }
                if rekeyed {
                    self.by_key.remove(&peer.cred.wg_public_key.0);
                    self.by_key.insert(cred.wg_public_key.0, node);
                    tracing::info!(node = %node, "peer rotated its WireGuard key");
                    self.events.push_back(EngineEvent::PeerRekeyed { node });
                }
                for a in &cred.addresses {
                    self.by_addr.insert(*a, node);
                }
                let removed: Vec<IpAddr> = old_addrs
                    .into_iter()
                    .filter(|a| !cred.addresses.contains(a))
                    .collect();
                peer.cred = cred;
                peer.signed = entry.credential;
                if !peer.endpoint_authenticated
                    || peer.endpoint.is_none_or(|e| !entry.endpoints.contains(&e))
                        && peer.last_handshake.is_none()
                {
                    peer.endpoint = entry.endpoints.first().copied();
                    peer.endpoint_authenticated = false;
                }
                peer.endpoints = entry.endpoints;
                if rekeyed && self.active {
                    if let Some(old) = peer.session.take() {
                        // New key pair: a new Tunn. The old session keeps carrying traffic until
                        // the new handshake completes, so flows do not notice the rotation.
                        let index = alloc_index(&mut self.next_index, &self.by_index);
                        let id = self.identity.as_ref()?;
                        let mut s = new_session(id, keepalive, &peer.cred.wg_public_key, index);
                        self.by_index.insert(index, node);
                        if let Some((prev, _)) = peer.previous.take() {
                            self.by_index.remove(&prev.index);
                        }
                        if let (TunnResult::WriteToNetwork(init), Some(ep)) = (
                            s.tunn.format_handshake_initiation(buf, false),
                            peer.endpoint,
                        ) {
                            sink.send_datagram(ep, init);
                            self.counters.tx_datagrams += 1;
                        }
                        peer.session = Some(s);
                        peer.previous = Some((old, now.saturating_add_ms(overlap)));
                    }
                }
                if !removed.is_empty() {
                    self.cut_flows(now, |k| removed.contains(&k.remote), buf, sink);
                }
            }
            None => {
                tracing::info!(node = %node, name = %cred.hostname, "peer added");
                self.events.push_back(EngineEvent::PeerAdded {
                    node,
                    name: cred.hostname.clone(),
                });
                for a in &cred.addresses {
                    self.by_addr.insert(*a, node);
                }
                self.by_key.insert(cred.wg_public_key.0, node);
                self.peers.insert(
                    node,
                    Peer {
                        signed: entry.credential,
                        cred,
                        endpoint: entry.endpoints.first().copied(),
                        endpoints: entry.endpoints,
                        endpoint_authenticated: false,
                        session: None,
                        previous: None,
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    },
                );
            }
        }
        Some(node)
    }

    fn remove_peer(
        &mut self,
        now: UnixMillis,
        node: NodeId,
        reason: RemovalReason,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) {
        let Some(peer) = self.peers.remove(&node) else {
            return;
        };
        tracing::info!(node = %node, ?reason, "peer removed");
        for a in &peer.cred.addresses {
            if self.by_addr.get(a) == Some(&node) {
                self.by_addr.remove(a);
            }
            self.frags.forget_source(*a);
        }
        if self.by_key.get(&peer.cred.wg_public_key.0) == Some(&node) {
            self.by_key.remove(&peer.cred.wg_public_key.0);
        }
        if let Some(s) = &peer.session {
            self.by_index.remove(&s.index);
        }
        if let Some((s, _)) = &peer.previous {
            self.by_index.remove(&s.index);
        }
        let addrs = peer.cred.addresses.clone();
        self.cut_flows(now, |k| addrs.contains(&k.remote), buf, sink);
        self.events
            .push_back(EngineEvent::PeerRemoved { node, reason });
    }

    /// Cut flows that the current view no longer allows: inbound flows the filter now denies,
    /// flows with peers that are gone, flows of addresses that are no longer ours.
    pub(super) fn cut_disallowed(&mut self, now: UnixMillis, buf: &mut [u8], sink: &mut impl Sink) {
        let filter = &self.filter;
        let by_addr = &self.by_addr;
        let own: Vec<IpAddr> = self
            .identity
            .as_ref()
            .map(|i| i.cred.addresses.clone())
            .unwrap_or_default();
        let cut = self.conntrack.cut(now, |k, origin| {
            if !own.contains(&k.local) || !by_addr.contains_key(&k.remote) {
                return true;
            }
            origin == super::conntrack::Origin::Remote
                && !filter.allows(
                    k.remote,
                    k.local,
                    k.proto,
                    proto::has_ports(k.proto).then_some(k.local_port),
                )
        });
        self.after_cut(cut, buf, sink);
    }

    fn cut_flows(
        &mut self,
        now: UnixMillis,
        doomed: impl Fn(&super::conntrack::FlowKey) -> bool,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) {
        let cut = self.conntrack.cut(now, |k, _| doomed(k));
        self.after_cut(cut, buf, sink);
    }

    /// Reset the local end of every cut TCP connection, so applications see the cut at once.
    fn after_cut(
        &mut self,
        cut: Vec<super::conntrack::CutFlow>,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) {
        if cut.is_empty() {
            return;
        }
        for c in &cut {
            if c.key.proto != proto::TCP {
                continue;
            }
            let Some(seq) = c.rst_seq else {
                continue;
            };
            let seg = TcpSegment {
                src: c.key.remote,
                dst: c.key.local,
                src_port: c.key.remote_port,
                dst_port: c.key.local_port,
                seq,
                ack: c.rst_ack.unwrap_or(0),
                flags: if c.rst_ack.is_some() {
                    TCP_RST | TCP_ACK
                } else {
                    TCP_RST
                },
                payload: &[],
            };
            if let Some(n) = packet::build_tcp(buf, &seg) {
                sink.write_tun(&buf[..n]);
            }
        }
        tracing::info!(count = cut.len(), "tracked flows cut by a view change");
        self.counters.flows_cut += cut.len() as u64;
        self.events
            .push_back(EngineEvent::FlowsCut { count: cut.len() });
    }

    /// Follow own credential validity: activate at `not_before`, fail closed at `expires_at`.
    pub(super) fn refresh_activity(
        &mut self,
        now: UnixMillis,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) {
        let validity = self.identity.as_ref().map(|i| i.cred.check_validity(now));
        match (self.active, validity) {
            (false, Some(Ok(()))) => {
                self.active = true;
                self.own_wake = None;
                tracing::info!("own credential valid: data plane active");
                self.events.push_back(EngineEvent::Activated);
                self.ensure_sessions(now, buf, sink);
            }
            (true, Some(Err(e))) => self.deactivate(now, &e.to_string(), buf, sink),
            (true, None) => self.deactivate(now, "no identity", buf, sink),
            (false, Some(Err(_))) => {
                self.own_wake = self
                    .identity
                    .as_ref()
                    .map(|i| i.cred.not_before)
                    .filter(|t| *t > now);
            }
            _ => {}
        }
    }

    /// Stop all traffic: drop every WireGuard session and reset every tracked flow.
    fn deactivate(&mut self, now: UnixMillis, reason: &str, buf: &mut [u8], sink: &mut impl Sink) {
        tracing::warn!(%reason, "data plane inactive: all traffic stopped");
        self.active = false;
        for peer in self.peers.values_mut() {
            peer.session = None;
            peer.previous = None;
            peer.last_handshake = None;
        }
        self.by_index.clear();
        let cut = self.conntrack.cut(now, |_, _| true);
        self.after_cut(cut, buf, sink);
        self.conntrack.clear();
        self.frags.clear();
        self.events.push_back(EngineEvent::Deactivated {
            reason: reason.to_string(),
        });
    }

    /// Own key changed: every peer gets a new Tunn; old sessions overlap until the new ones are up.
    fn rotate_all_sessions(&mut self, now: UnixMillis, buf: &mut [u8], sink: &mut impl Sink) {
        let Some(id) = self.identity.as_ref() else {
            return;
        };
        let until = now.saturating_add_ms(self.cfg.rotation_overlap_ms);
        for (node, peer) in self.peers.iter_mut() {
            let Some(old) = peer.session.take() else {
                continue;
            };
            if let Some((prev, _)) = peer.previous.take() {
                self.by_index.remove(&prev.index);
            }
            let index = alloc_index(&mut self.next_index, &self.by_index);
            self.by_index.insert(index, *node);
            let mut s = new_session(
                id,
                self.cfg.persistent_keepalive,
                &peer.cred.wg_public_key,
                index,
            );
            if let (TunnResult::WriteToNetwork(init), Some(ep)) = (
                s.tunn.format_handshake_initiation(buf, false),
                peer.endpoint,
            ) {
                sink.send_datagram(ep, init);
                self.counters.tx_datagrams += 1;
            }
            peer.session = Some(s);
            peer.previous = Some((old, until));
        }
    }

    /// Create sessions for peers that have none and whose credential is valid now.
    pub(super) fn ensure_sessions(
        &mut self,
        now: UnixMillis,
        _buf: &mut [u8],
        _sink: &mut impl Sink,
    ) {
        if !self.active {
            return;
        }
        let Some(id) = self.identity.as_ref() else {
            return;
        };
        for (node, peer) in self.peers.iter_mut() {
            if peer.session.is_some() || peer.cred.not_before > now {
                continue;
            }
            let index = alloc_index(&mut self.next_index, &self.by_index);
            self.by_index.insert(index, *node);
            peer.session = Some(new_session(
                id,
                self.cfg.persistent_keepalive,
                &peer.cred.wg_public_key,
                index,
            ));
        }
    }

    /// Drop peers whose credential expired, at that instant.
    pub(super) fn expire_peers(&mut self, now: UnixMillis, buf: &mut [u8], sink: &mut impl Sink) {
        let expired: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.cred.expires_at <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            self.remove_peer(now, n, RemovalReason::Expired, buf, sink);
        }
    }

    pub fn status(&self, now: UnixMillis) -> EngineStatus {
        let own = self.identity.as_ref().map(|i| OwnStatus {
            node_id: i.cred.node_id,
            hostname: i.cred.hostname.clone(),
            user: i.cred.user.clone(),
            tags: i.cred.tags.clone(),
            addresses: i.cred.addresses.clone(),
            wg_public_key: i.cred.wg_public_key,
            expires_at: i.cred.expires_at,
        });
        let mut peers: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|p| PeerStatus {
                node_id: p.cred.node_id,
                name: p.cred.hostname.clone(),
                user: p.cred.user.clone(),
                tags: p.cred.tags.clone(),
                addresses: p.cred.addresses.clone(),
                wg_public_key: p.cred.wg_public_key,
                endpoint: p.endpoint,
                endpoint_authenticated: p.endpoint_authenticated,
                last_handshake: p
                    .session
                    .as_ref()
                    .and_then(|s| s.tunn.time_since_last_handshake())
                    .map(|d| now.saturating_sub_ms(d.as_millis() as u64)),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                expires_at: p.cred.expires_at,
            })
            .collect();
        peers.sort_by_key(|p| p.node_id);
        EngineStatus {
            active: self.active,
            own,
            netmap_version: self.netmap_version,
            peers,
            tracked_flows: self.conntrack.len(),
            filter_rules: self.filter_rules.len(),
            counters: self.counters.clone(),
            recent_denied: self.flowlog.recent_denied(),
            flow_events_overflowed: self.flowlog.overflowed,
        }
    }
}

/// Next free 24-bit session index (boringtun shifts it left by 8 for its own session ids).
fn alloc_index(next: &mut u32, used: &std::collections::HashMap<u32, NodeId>) -> u32 {
    loop {
        *next = (*next + 1) & 0x00ff_ffff;
        if !used.contains_key(next) {
            return *next;
        }
    }
}
