//! The lab itself: topology, NAT behaviour, port forwards, process supervision, panic
//! detection and cleanup (also after a panic, and of dead runs).

use std::time::Duration;
use ztmesh_tests::lab::{COORD_ADDR, IDP_ADDR};
use ztmesh_tests::{netns, Lab, ProbeOutcome, Site};

const T: Duration = Duration::from_secs(2);

fn lab_namespaces(prefix: &str) -> Vec<String> {
    netns::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn nat_routers_masquerade_and_drop_unsolicited_inbound() {
    let lab = Lab::builder()
        .host("c1", Site::Lan(1))
        .host("c2", Site::Lan(2))
        .host("legacy", Site::Lan(1))
        .host("pub", Site::Internet)
        .build()
        .expect("lab");
    let c1 = lab.host("c1").unwrap().addr.to_string();
    assert!(c1.starts_with("198.18.1."), "{c1}");
    let pub_addr = lab.host("pub").unwrap().addr.to_string();

    let _coord_svc = lab.serve("coord", "coord-svc", &[7000], &[3478]).unwrap();
    let _c2_svc = lab.serve("c2", "c2-svc", &[7000], &[]).unwrap();
    let _legacy_svc = lab.serve("legacy", "legacy-svc", &[443], &[]).unwrap();
    let _pub_svc = lab.serve("pub", "pub-svc", &[7000], &[]).unwrap();

    // LAN hosts reach the internet through their router.
    let coord_tcp = format!("{COORD_ADDR}:7000");
    assert!(lab.probe_tcp("c1", &coord_tcp, T).unwrap().is_ok());
    assert!(lab.probe_tcp("c2", &coord_tcp, T).unwrap().is_ok());
    assert!(lab.probe_tcp("idp", &coord_tcp, T).unwrap().is_ok());
    assert!(lab
        .probe_tcp("pub", &format!("{IDP_ADDR}:1"), T)
        .unwrap()
        .eq(&ProbeOutcome::Refused));

    // ... and appear as the router's WAN address (masquerade).
    let seen = lab
        .probe_udp("c1", &format!("{COORD_ADDR}:3478"), "whoami", T)
        .unwrap();
    match seen {
        ProbeOutcome::Ok { reply, .. } => {
            assert!(
                reply.starts_with(&format!("{}:", Lab::router_wan(1))),
                "{reply}"
            )
        }
        other => panic!("whoami: {other:?}"),
    }

    // Unsolicited inbound: a LAN host is reachable neither from the internet (even with a
    // route to its private LAN) nor from the other LAN via the router's WAN address.
    let r1 = Lab::router_wan(1).to_string();
    assert_eq!(
        lab.probe_tcp("c2", &format!("{r1}:443"), T).unwrap(),
        ProbeOutcome::Timeout
    );
    netns::ip(&[
        "-n",
        &lab.host("coord").unwrap().ns,
        "route",
        "add",
        "198.18.1.0/24",
        "via",
        &r1,
    ])
    .unwrap();
    let legacy = format!("{}:443", lab.host("legacy").unwrap().addr);
    assert_eq!(
        lab.probe_tcp("coord", &legacy, T).unwrap(),
        ProbeOutcome::Timeout
    );
    // Internet hosts reach each other directly; LAN hosts reach internet hosts.
    assert!(lab
        .probe_tcp("c1", &format!("{pub_addr}:7000"), T)
        .unwrap()
        .is_ok());
    // LAN to LAN only through NAT, and there is no forward: c1 cannot open c2.
    let c2 = format!("{}:7000", lab.host("c2").unwrap().addr);
    assert!(!lab.probe_tcp("c1", &c2, T).unwrap().is_ok());

    // An explicit port forward opens exactly that port.
    lab.forward(1, "tcp", 8443, "legacy", 443).unwrap();
    let fwd = lab.probe_tcp("pub", &format!("{r1}:8443"), T).unwrap();
    assert!(fwd.is_ok(), "{fwd:?}");
    assert_eq!(
        lab.probe_tcp("pub", &format!("{r1}:8444"), T).unwrap(),
        ProbeOutcome::Timeout
    );
    lab.assert_no_panics();
}

#[test]
fn held_connection_reports_the_cut() {
    let lab = Lab::builder().host("a", Site::Internet).build().unwrap();
    let svc = lab.serve("coord", "svc", &[7000], &[]).unwrap();
    let hold = lab
        .hold("a", &format!("{COORD_ADDR}:7000"), Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(hold.is_open());
    // Cut the path silently (as a data plane that drops packets would), not with a reset.
    let cut_at = ztmesh_tests::now_ms();
    netns::ip(&[
        "-n",
        &lab.host("a").unwrap().ns,
        "link",
        "set",
        "eth0",
        "down",
    ])
    .unwrap();
    let (last_ok, detected) = hold.wait_cut(Duration::from_secs(5)).unwrap();
    assert!(
        last_ok <= cut_at + 100,
        "echo after the cut: {last_ok} vs {cut_at}"
    );
    assert!(
        detected - cut_at < 1000,
        "detected {} ms after",
        detected - cut_at
    );
    drop(svc);
}

#[test]
fn processes_are_supervised_and_panics_are_found() {
    let lab = Lab::builder().build().unwrap();
    let mut svc = lab.serve("coord", "svc", &[7001], &[]).unwrap();
    let pid = svc.pid() as i32;
    assert!(netns::pids(&lab.host("coord").unwrap().ns).contains(&pid));
    svc.stop();
    assert!(!netns::pids(&lab.host("coord").unwrap().ns).contains(&pid));

    assert!(lab.panics().is_empty());
    let sh = std::path::Path::new("/bin/sh");
    let mut p = lab
        .spawn(
            "idp",
            "crasher",
            sh,
            &["-c", "echo \"thread 'main' panicked at src/x.rs:1:1\""],
        )
        .unwrap();
    p.wait_exit(Duration::from_secs(5)).unwrap();
    let panics = lab.panics();
    assert_eq!(panics.len(), 1, "{panics:?}");
    assert_eq!(panics[0].0, "crasher");
    // The lab would now fail the test on drop; this test expects that.
    let prefix = lab.prefix().to_string();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(lab)));
    assert!(
        r.is_err(),
        "dropping a lab with a panicked process must fail"
    );
    assert!(lab_namespaces(&prefix).is_empty());
}

#[test]
fn everything_is_removed_on_drop_after_a_panic_and_of_dead_runs() {
    // Normal drop.
    let lab = Lab::builder().host("h", Site::Lan(2)).build().unwrap();
    let prefix = lab.prefix().to_string();
    let dir = lab.dir().to_path_buf();
    let _svc = lab.serve("h", "svc", &[7002], &[]).unwrap();
    assert_eq!(
        lab_namespaces(&prefix).len(),
        6,
        "{:?}",
        lab_namespaces(&prefix)
    );
    drop(_svc);
    drop(lab);
    assert!(lab_namespaces(&prefix).is_empty());
    assert!(!dir.exists());

    // A panic while the lab is alive.
    let mut seen = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::builder().host("h", Site::Internet).build().unwrap();
        seen = lab.prefix().to_string();
        let _svc = lab.serve("h", "svc", &[7003], &[]).unwrap();
        panic!("test failure inside a lab");
    }));
    assert!(r.is_err());
    assert!(!seen.is_empty());
    assert!(lab_namespaces(&seen).is_empty());

    // A run that died without cleaning up: its pid does not exist (above pid_max).
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stale = format!("ztm{}x0-coord", pid_max + 1);
    netns::add(&stale).unwrap();
    // (A lab built in parallel by another test may remove it first; either way it must go.)
    netns::clean_stale();
    assert!(!netns::list().contains(&stale));
}
