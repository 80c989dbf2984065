//! The in-memory mesh driven by the real coordinator: the coordinator's netmap engine
//! (`ztmesh_coordinator::control::mesh::Mesh`, the code `serve` runs) compiles a HuJSON policy
//! over the fleet's inventory, and the netmaps and deltas it pushes are applied to the client
//! engines on the simulated network. So these tests follow a policy decision, a posture drift, a
//! revocation and a renewal from the coordinator's engine down to the packets, in virtual time.

mod sim;
use sim::*;

use std::collections::BTreeSet;
use std::sync::Arc;
use ztmesh_common::policy::{InventoryNode, Policy};
use ztmesh_common::posture::{AttrValue, PostureAttrs};
use ztmesh_coordinator::control::mesh::{Mesh, Push};

const ALICE: usize = 0;
const BOB: usize = 1;
const WEB: usize = 2;
const DB: usize = 3;

/// eng may reach the web servers on 443 (and ping them) from an encrypted laptop; web servers
/// reach the database on 5432; sales is granted nothing.
const POLICY: &str = r#"{
  "groups": {
    "group:eng": ["alice@example.com"],
    "group:sales": ["bob@example.com"],
  },
  "tagOwners": { "tag:web": ["group:eng"], "tag:db": ["group:eng"] },
  "postures": { "posture:encrypted": ["node:diskEncrypted == true"] },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"],
      "srcPosture": ["posture:encrypted"] },
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:web:*"], "proto": "icmp" },
    { "action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"] },
  ],
}"#;

fn policy(source: &str) -> Arc<Policy> {
    Arc::new(Policy::parse(source, "policy.hujson").expect("test policy is valid"))
}

/// The simulated engines plus the coordinator's engine, with the inventory it was given.
struct Fleet {
    sim: Sim,
    mesh: Mesh,
    inventory: Vec<InventoryNode>,
}

impl Fleet {
    /// alice (eng, encrypted disk), bob (sales), a `tag:web` server and a `tag:db` server, all
    /// admitted and connected.
    fn new() -> Fleet {
        let mut sim = Sim::new(4, 11);
        let owners: [(Option<&str>, &[&str]); 4] = [
            (Some("alice@example.com"), &[]),
            (Some("bob@example.com"), &[]),
            (None, &["tag:web"]),
            (None, &["tag:db"]),
        ];
        let mut inventory = Vec::new();
        for (i, (user, tags)) in owners.into_iter().enumerate() {
            let node = &mut sim.nodes[i].cred;
            node.user = user.map(str::to_owned);
            node.tags = tags.iter().map(|t| t.to_string()).collect();
            let mut posture = PostureAttrs::new();
            posture.insert("node:diskEncrypted".into(), AttrValue::Bool(true));
            inventory.push(InventoryNode {
                id: node.node_id,
                user: node.user.clone(),
                user_groups: vec![],
                tags: node.tags.clone(),
                addresses: node.addresses.clone(),
                posture,
            });
            sim.install_identity(i);
        }
        let mut fleet = Fleet {
            sim,
            mesh: Mesh::new(policy(POLICY)),
            inventory,
        };
        for i in 0..4 {
            let cred = fleet.sim.sign(&fleet.sim.nodes[i].cred);
            let udp = fleet.sim.nodes[i].udp;
            let pushes = fleet
                .mesh
                .upsert(fleet.inventory[i].clone(), cred, Some(vec![udp]));
            fleet.deliver(pushes);
            fleet.connect(i);
        }
        fleet
    }

    fn index(&self, id: NodeId) -> usize {
        self.sim
            .nodes
            .iter()
            .position(|n| n.cred.node_id == id)
            .expect("pushes go to simulated nodes")
    }

    /// The node connects: the coordinator sends its full netmap.
    fn connect(&mut self, i: usize) {
        let id = self.sim.nodes[i].cred.node_id;
        let map = self.mesh.subscribe(id).expect("node is admitted");
        let now = self.sim.now;
        self.sim.call(i, |e, s| e.set_netmap(now, map, s));
    }

    /// Applies the coordinator's deltas; every one must follow the node's current version.
    fn deliver(&mut self, pushes: Vec<Push>) {
        for push in pushes {
            let i = self.index(push.to);
            let now = self.sim.now;
            self.sim.call(i, |e, s| {
                e.apply_delta(now, push.delta, s)
                    .expect("a pushed delta applies to the view it was computed from")
            });
        }
    }

    /// The peers an engine has installed, by simulated index.
    fn peers_of(&self, i: usize) -> BTreeSet<usize> {
        self.sim.nodes[i]
            .engine
            .status(self.sim.now)
            .peers
            .iter()
            .map(|p| self.index(p.node_id))
            .collect()
    }

    /// Sends a TCP SYN from `from` to `to:port`; true when it reached `to`'s TUN.
    fn syn_reaches(&mut self, from: usize, to: usize, sport: u16, port: u16) -> bool {
        let (a, b) = (self.sim.nodes[from].v4(), self.sim.nodes[to].v4());
        self.sim
            .send_tun(from, &tcp(a, b, sport, port, 1000, 0, TCP_SYN, b""));
        self.sim.advance(50);
        self.arrived(from, to, sport, port, TCP_SYN)
    }

    /// Whether `to`'s TUN received a segment of `from:sport -> to:port` with `flags` (and
    /// nothing else is taken for it: a reset the engine wrote itself does not count).
    fn arrived(&mut self, from: usize, to: usize, sport: u16, port: u16, flags: u8) -> bool {
        let src = self.sim.nodes[from].v4();
        let written = self.sim.nodes[to].take_tun();
        written
            .iter()
            .filter_map(|p| packet::parse(p).ok())
            .any(|p| {
                p.src == src
                    && p.src_port == sport
                    && p.dst_port == port
                    && p.tcp.is_some_and(|t| t.flags == flags)
            })
    }

    /// Opens a TCP connection `from` -> `to:port` (SYN, SYN-ACK, data), asserting each step.
    fn open(&mut self, from: usize, to: usize, sport: u16, port: u16) {
        assert!(self.syn_reaches(from, to, sport, port), "SYN delivered");
        let (a, b) = (self.sim.nodes[from].v4(), self.sim.nodes[to].v4());
        let syn_ack = tcp(b, a, port, sport, 5000, 1001, TCP_SYN | TCP_ACK, b"");
        self.sim.send_tun(to, &syn_ack);
        self.sim.advance(50);
        assert_eq!(
            self.sim.nodes[from].take_tun().len(),
            1,
            "SYN-ACK delivered"
        );
        assert!(
            self.data_reaches(from, to, sport, port, 1001),
            "data delivered"
        );
    }

    /// Sends a data segment on an open connection; true when it reached `to`'s TUN.
    fn data_reaches(&mut self, from: usize, to: usize, sport: u16, port: u16, seq: u32) -> bool {
        let (a, b) = (self.sim.nodes[from].v4(), self.sim.nodes[to].v4());
        self.sim
            .send_tun(from, &tcp(a, b, sport, port, seq, 5001, TCP_ACK, b"data"));
        self.sim.advance(50);
        self.arrived(from, to, sport, port, TCP_ACK)
    }

    /// The TCP resets `i`'s engine wrote to its TUN, as (source, destination port) pairs.
    fn resets_at(&mut self, i: usize) -> Vec<(IpAddr, u16)> {
        self.sim.nodes[i]
            .take_tun()
            .iter()
            .filter_map(|p| packet::parse(p).ok())
            .filter(|p| p.tcp.is_some_and(|t| t.flags & TCP_RST != 0))
            .map(|p| (p.src, p.dst_port))
            .collect()
    }
}

#[test]
fn compiled_views_decide_who_sees_and_reaches_whom() {
    let mut f = Fleet::new();
    // Both ends of every allowed flow, and nobody else.
    assert_eq!(f.peers_of(ALICE), BTreeSet::from([WEB]));
    assert_eq!(
        f.peers_of(BOB),
        BTreeSet::new(),
        "sales does not even see web"
    );
    assert_eq!(f.peers_of(WEB), BTreeSet::from([ALICE, DB]));
    assert_eq!(f.peers_of(DB), BTreeSet::from([WEB]));

    f.open(ALICE, WEB, 40000, 443);
    assert!(
        !f.syn_reaches(ALICE, WEB, 40001, 22),
        "web's SSH is not granted"
    );
    assert!(
        !f.syn_reaches(WEB, ALICE, 40002, 22),
        "grants have a direction"
    );
    assert!(
        !f.syn_reaches(BOB, WEB, 40003, 443),
        "bob has no route to web"
    );
    f.open(WEB, DB, 40004, 5432);
    assert!(
        !f.syn_reaches(ALICE, DB, 40005, 5432),
        "alice is not db's peer"
    );
    // Outside her view: refused locally, with an ICMP unreachable to her own stack.
    let local = f.sim.nodes[ALICE].take_tun();
    let unreachable = packet::parse(&local[0]).expect("an ICMP error");
    assert!(matches!(unreachable.icmp, packet::IcmpKind::Error { .. }));
    assert_eq!(unreachable.src, f.sim.nodes[DB].v4());
    f.sim.nodes[BOB].take_tun();

    // ICMP as the policy says: eng may ping web, web may not ping eng.
    let (a, w) = (f.sim.nodes[ALICE].v4(), f.sim.nodes[WEB].v4());
    f.sim.send_tun(ALICE, &ping(a, w, false, 7));
    f.sim.advance(50);
    assert_eq!(
        f.sim.nodes[WEB].take_tun().len(),
        1,
        "alice's ping reaches web"
    );
    f.sim.send_tun(WEB, &ping(w, a, false, 8));
    f.sim.advance(50);
    assert!(
        f.sim.nodes[ALICE].take_tun().is_empty(),
        "web may not ping alice"
    );

    let denied = f.sim.nodes[WEB].engine.take_flow_events();
    assert!(
        denied
            .iter()
            .any(|e| e.verdict == FlowVerdict::Denied && e.dst_port == Some(22)),
        "web reports the denied SSH attempt: {denied:?}"
    );
}

#[test]
fn posture_drift_reported_to_the_coordinator_cuts_the_open_connection() {
    let mut f = Fleet::new();
    f.open(ALICE, WEB, 40000, 443);
    f.sim.nodes[WEB].take_tun();

    // alice's disk is no longer encrypted: the inventory changes, nothing else.
    let mut drifted = f.inventory[ALICE].clone();
    drifted
        .posture
        .insert("node:diskEncrypted".into(), AttrValue::Bool(false));
    let pushes = f.mesh.update_inventory(drifted);
    let to: BTreeSet<usize> = pushes.iter().map(|p| f.index(p.to)).collect();
    assert_eq!(to, BTreeSet::from([WEB]), "only web's filter depends on it");
    f.deliver(pushes);

    let resets = f.resets_at(WEB);
    assert_eq!(
        resets,
        vec![(f.sim.nodes[ALICE].v4(), 443)],
        "the 443 flow is cut"
    );
    assert!(!f.data_reaches(ALICE, WEB, 40000, 443, 1005));
    assert!(
        !f.syn_reaches(ALICE, WEB, 40001, 443),
        "and cannot be reopened"
    );
    // The ICMP rule has no posture condition: alice stays web's peer for it.
    assert_eq!(f.peers_of(WEB), BTreeSet::from([ALICE, DB]));
}

#[test]
fn policy_swap_pushes_deltas_that_cut_what_is_no_longer_allowed() {
    let mut f = Fleet::new();
    f.open(ALICE, WEB, 40000, 443);
    f.open(WEB, DB, 40001, 5432);
    f.sim.nodes[WEB].take_tun();

    // The admin moves the web service to 8443 and drops the database rule.
    let tightened = POLICY.replace("tag:web:443", "tag:web:8443").replace(
        r#"{ "action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"] },"#,
        "",
    );
    let pushes = f.mesh.set_policy(policy(&tightened));
    f.deliver(pushes);

    // web's stack sees both connections reset: alice's inbound one, its own to db.
    let mut resets = f.resets_at(WEB);
    resets.sort();
    let (alice, db) = (f.sim.nodes[ALICE].v4(), f.sim.nodes[DB].v4());
    assert_eq!(resets, vec![(alice, 443), (db, 40001)]);
    assert_eq!(f.peers_of(DB), BTreeSet::new(), "db lost its only peer");
    assert!(
        !f.data_reaches(ALICE, WEB, 40000, 443, 1005),
        "443 flow is gone"
    );
    assert!(
        !f.data_reaches(WEB, DB, 40001, 5432, 1005),
        "db flow is gone"
    );
    f.open(ALICE, WEB, 40002, 8443);
}

#[test]
fn revocation_removes_the_node_from_every_view_and_cuts_its_flows() {
    let mut f = Fleet::new();
    f.open(ALICE, WEB, 40000, 443);
    f.open(WEB, DB, 40001, 5432);
    f.sim.nodes[WEB].take_tun();

    let alice = f.sim.nodes[ALICE].cred.node_id;
    let pushes = f.mesh.remove(alice);
    assert!(
        pushes.iter().all(|p| p.to != alice),
        "the revoked node gets no view"
    );
    f.deliver(pushes);

    assert_eq!(f.peers_of(WEB), BTreeSet::from([DB]));
    assert_eq!(f.resets_at(WEB), vec![(f.sim.nodes[ALICE].v4(), 443)]);
    assert!(!f.data_reaches(ALICE, WEB, 40000, 443, 1005));
    assert!(
        f.data_reaches(WEB, DB, 40001, 5432, 1005),
        "others are untouched"
    );
    assert!(
        f.mesh.subscribe(alice).is_none(),
        "a revoked node cannot resubscribe"
    );
}

#[test]
fn renewal_with_a_new_key_keeps_the_connection_and_reconnects_resume() {
    let mut f = Fleet::new();
    f.open(ALICE, WEB, 40000, 443);

    // alice renews: new WireGuard key, new credential; the coordinator's engine pushes it.
    f.sim.nodes[ALICE].secret = StaticSecret::random_from_rng(&mut f.sim.rng);
    f.sim.nodes[ALICE].cred.wg_public_key = wg_public(&f.sim.nodes[ALICE].secret);
    f.sim.nodes[ALICE].cred.serial = 2;
    f.sim.install_identity(ALICE);
    let cred = f.sim.sign(&f.sim.nodes[ALICE].cred);
    let pushes = f.mesh.upsert(f.inventory[ALICE].clone(), cred, None);
    let to: BTreeSet<usize> = pushes.iter().map(|p| f.index(p.to)).collect();
    assert_eq!(
        to,
        BTreeSet::from([WEB]),
        "only alice's peers learn the new key"
    );
    f.deliver(pushes);

    let mut seq = 1005;
    for _ in 0..10 {
        assert!(
            f.data_reaches(ALICE, WEB, 40000, 443, seq),
            "stream continues"
        );
        seq += 4;
    }
    let key = f.sim.nodes[ALICE].cred.wg_public_key;
    let at_web = f.sim.nodes[WEB].engine.status(f.sim.now);
    assert!(at_web.peers.iter().any(|p| p.wg_public_key == key));
    assert_eq!(f.sim.nodes[WEB].engine.counters().flows_cut, 0);

    // web's control connection drops and comes back: a full netmap with a newer version.
    let web = f.sim.nodes[WEB].cred.node_id;
    f.mesh.unsubscribe(web);
    f.connect(WEB);
    assert_eq!(f.peers_of(WEB), BTreeSet::from([ALICE, DB]));
    assert!(
        f.data_reaches(ALICE, WEB, 40000, 443, seq),
        "flow survives the resync"
    );
    // And later deltas follow that netmap's version.
    let pushes = f
        .mesh
        .set_policy(policy(&POLICY.replace("tag:web:443", "tag:web:8443")));
    f.deliver(pushes);
    assert!(!f.data_reaches(ALICE, WEB, 40000, 443, seq + 4));
}
