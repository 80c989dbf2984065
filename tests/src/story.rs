//! The demo's story, step by step, over the real binaries in a lab: one implementation that
//! the `ztmesh-demo` binary narrates and the end-to-end test asserts.

use crate::mesh::{Client, Coordinator, Posture};
use crate::{now_ms, wait, IdpUser, Lab, LabError, ProbeOutcome, Site};
use std::time::Duration;

pub const POLICY: &str = include_str!("../fixtures/demo-policy.hujson");
pub const POLICY_TIGHT: &str = include_str!("../fixtures/demo-policy-tight.hujson");
/// The credential lifetime of the demo policy.
pub const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(15);

/// One step's outcome.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The times the demo prints (milliseconds).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub login_to_first_packet: Option<u64>,
    pub policy_to_enforcement: Option<u64>,
    pub revoke_to_cut: Option<u64>,
    pub expiry_to_cut: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub steps: Vec<Step>,
    pub timings: Timings,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }
}

/// Where the narration goes (stdout for the demo, the test log for the test).
pub trait Narrator {
    fn say(&mut self, text: &str);
    fn step(&mut self, step: &Step);
}

const WEB_PORTS: [u16; 3] = [443, 8443, 22];
const PROBE: Duration = Duration::from_millis(700);

struct Story<'a> {
    lab: Lab,
    n: &'a mut dyn Narrator,
    report: Report,
}

/// Runs the whole story; every step is recorded even when an earlier one failed, as far as
/// it can still run.
pub fn run(n: &mut dyn Narrator) -> Report {
    let lab = match Lab::builder()
        // The server has a public address; the laptops sit on two LANs behind NAT routers
        // and reach it the way WireGuard clients behind NAT do (they send first, the server
        // answers the address their authenticated packets came from).
        .host("web", Site::Internet)
        .host("alice", Site::Lan(1))
        .host("dave", Site::Lan(1))
        .host("bob", Site::Lan(2))
        .host("carol", Site::Lan(2))
        .build()
    {
        Ok(l) => l,
        Err(e) => {
            let step = Step {
                name: "build the lab",
                ok: false,
                detail: e.to_string(),
            };
            n.step(&step);
            return Report {
                steps: vec![step],
                timings: Timings::default(),
            };
        }
    };
    let mut s = Story {
        lab,
        n,
        report: Report::default(),
    };
    if let Err(e) = s.play() {
        s.record("story", false, format!("stopped: {e}"));
        s.n.say(&s.lab.log_tails(15));
    }
    let panics = s.lab.panics();
    s.record(
        "no process panicked",
        panics.is_empty(),
        if panics.is_empty() {
            "every log of the lab's processes was searched".to_string()
        } else {
            format!("{panics:?}")
        },
    );
    s.report
}

fn users() -> [IdpUser; 4] {
    [
        IdpUser::new("alice", "alice-pw", Some("JBSWY3DPEHPK3PXP"), &["eng"]),
        IdpUser::new("dave", "dave-pw", Some("KRSXG5CTMVRXEZLU"), &["eng"]),
        IdpUser::new("bob", "bob-pw", Some("MFRGGZDFMZTWQ2LK"), &["sales"]),
        IdpUser::new("carol", "carol-pw", Some("GEZDGNBVGY3TQOJQ"), &["eng"]),
    ]
}

impl Story<'_> {
    fn record(&mut self, name: &'static str, ok: bool, detail: String) -> bool {
        let step = Step { name, ok, detail };
        self.n.step(&step);
        self.report.steps.push(step);
        ok
    }

    fn play(&mut self) -> Result<(), LabError> {
        let lab = &self.lab;
        self.n
            .say("Starting the identity provider (npm oidc-provider) and the coordinator.");
        let users = users();
        let idp = lab.start_idp(&users, &[crate::mesh::oidc_redirect_uri()])?;
        let coord = lab.start_coordinator(POLICY, Some(&idp))?;
        self.n
            .say(&format!("Coordinator up; join URL {}", coord.join_url));

        // A server joins with a pre-auth key as tag:web.
        let lab = &self.lab;
        let web = lab.start_client("web", Posture::Compliant)?;
        let _svc = lab.serve("web", "web-service", &WEB_PORTS, &[])?;
        let key = coord.preauth_key(lab, &["tag:web"])?;
        let (code, out) = web.up_with_key(lab, &coord.join_url, &key)?;
        let st = web.status(lab)?;
        let web_ip = st.overlay_v4().unwrap_or_default();
        let ok = code == 0 && st.self_.tags.iter().any(|t| t == "tag:web") && !web_ip.is_empty();
        self.record(
            "a server joins with a pre-auth key as tag:web",
            ok,
            format!(
                "`ztmesh up --auth-key` exit {code}: {} (tags {})",
                out.trim(),
                st.self_.tags.join(",")
            ),
        );
        if !ok {
            return Err(LabError::Setup("the web server did not join".into()));
        }

        // alice logs in through the IdP with MFA and reaches tag:web:443, not :22.
        let (alice, t_login) = self.login("alice", &users[0], Posture::Compliant, &coord)?;
        let web443 = format!("{web_ip}:443");
        let lab = &self.lab;
        let first = wait::until(
            "alice's first packet to web:443",
            Duration::from_secs(20),
            || {
                lab.probe_tcp("alice", &web443, PROBE)
                    .ok()
                    .filter(ProbeOutcome::is_ok)
            },
        );
        let t_first = now_ms();
        let ssh = lab.probe_tcp("alice", &format!("{web_ip}:22"), PROBE)?;
        self.report.timings.login_to_first_packet =
            first.is_ok().then(|| t_first.saturating_sub(t_login));
        self.record(
            "alice (eng, MFA) reaches web:443 and is refused on :22",
            first.is_ok() && !ssh.is_ok(),
            format!("web:443 {}; web:22 {ssh}", crate::probe::describe(&first)),
        );
        self.directions(&alice, &web, &web_ip)?;
        self.n.say(
            "dave (eng, alice's colleague on LAN 1) signs in too: he keeps an open connection \
             for the outage steps at the end.",
        );
        let (dave, _) = self.login("dave", &users[1], Posture::Compliant, &coord)?;

        // bob (sales) does not even see the web server.
        let (bob, _) = self.login("bob", &users[2], Posture::Compliant, &coord)?;
        let lab = &self.lab;
        let st = bob.status(lab)?;
        let probe = lab.probe_tcp("bob", &web443, PROBE)?;
        let pinged = lab.ping("bob", &web_ip, 2)?;
        self.record(
            "bob (sales) does not see the web server",
            st.state == "running" && !st.has_peer("web") && !probe.is_ok() && !pinged,
            format!(
                "bob is {}, his peers: [{}]; web:443 {probe}; ping {}",
                st.state,
                peer_names(&st).join(", "),
                if pinged { "answered" } else { "unanswered" }
            ),
        );

        // carol's laptop fails posture and is told why.
        self.carol(&users[3], &coord)?;

        // The admin tightens the policy live.
        let lab = &self.lab;
        let t0 = now_ms();
        let set = coord.set_policy(lab, POLICY_TIGHT);
        let cut = wait::until(
            "web:443 to close for alice",
            Duration::from_secs(10),
            || {
                lab.probe_tcp("alice", &web443, Duration::from_millis(300))
                    .ok()
                    .filter(|o| !o.is_ok())
            },
        );
        let t1 = now_ms();
        let still = lab.probe_tcp("alice", &format!("{web_ip}:8443"), PROBE)?;
        self.report.timings.policy_to_enforcement = cut.is_ok().then(|| t1.saturating_sub(t0));
        self.record(
            "the admin tightens the policy live (443 closes, 8443 stays)",
            set.is_ok() && cut.is_ok() && still.is_ok(),
            format!(
                "{}; web:443 then {}; web:8443 {still}",
                match &set {
                    Ok(out) => out.trim().to_string(),
                    Err(e) => format!("policy set failed: {e}"),
                },
                crate::probe::describe(&cut)
            ),
        );

        // The admin revokes alice's laptop; her open connection dies.
        self.revoke(&alice, &coord, &web_ip)?;

        // The coordinator stops; the mesh keeps working until credentials expire.
        self.expiry(coord, &dave, &web, &web_ip)?;
        drop((alice, bob, dave, web, idp));
        Ok(())
    }

    /// Starts a client and logs it in through the IdP (SSO with password + TOTP); returns it
    /// with the time the login began.
    fn login(
        &mut self,
        host: &str,
        user: &IdpUser,
        posture: Posture,
        coord: &Coordinator,
    ) -> Result<(Client, u64), LabError> {
        let lab = &self.lab;
        let c = lab.start_client(host, posture)?;
        let _up = c.up_interactive(lab, &coord.join_url)?;
        let st = c.wait_status(lab, "a login URL", Duration::from_secs(20), |s| {
            s.login_url.is_some() || !s.refused.is_empty()
        })?;
        let t = now_ms();
        let Some(url) = st.login_url else {
            return Ok((c, t));
        };
        let r = lab.browser_login(host, &url, user, true)?;
        if let crate::BrowseOutcome::Error { message } = &r {
            return Err(LabError::Setup(format!("{host}'s login failed: {message}")));
        }
        c.wait_status(lab, "running or refused", Duration::from_secs(20), |s| {
            s.state == "running" || s.state == "refused"
        })?;
        Ok((c, t))
    }

    /// ICMP as the policy says (the acl names no protocol, so ICMP and ICMPv6 are in), and
    /// only in the direction it grants: the server cannot open a connection to the laptop.
    fn directions(&mut self, alice: &Client, web: &Client, web_ip: &str) -> Result<(), LabError> {
        let lab = &self.lab;
        let web_v6 = web
            .status(lab)?
            .self_
            .addresses
            .into_iter()
            .find(|a| a.contains(':'))
            .unwrap_or_default();
        let v4 = lab.ping("alice", web_ip, 2)?;
        let v6 = !web_v6.is_empty() && lab.ping("alice", &web_v6, 2)?;
        let (cli_code, cli_out) = alice.run_cli(lab, &["ping", "web", "--count", "2"])?;
        let alice_ip = alice.status(lab)?.overlay_v4().unwrap_or_default();
        let _svc = lab.serve("alice", "alice-service", &[9000], &[])?;
        let reverse = lab.probe_tcp("web", &format!("{alice_ip}:9000"), PROBE)?;
        self.record(
            "ICMP and direction as the policy says",
            v4 && v6 && cli_code == 0 && !reverse.is_ok(),
            format!(
                "ping web over IPv4 {}, over IPv6 {}; `ztmesh ping web`: {}; \
                 web -> alice:9000 {reverse}",
                if v4 { "answered" } else { "unanswered" },
                if v6 { "answered" } else { "unanswered" },
                cli_out.lines().last().unwrap_or_default().trim()
            ),
        );
        Ok(())
    }

    fn carol(&mut self, user: &IdpUser, coord: &Coordinator) -> Result<(), LabError> {
        let (carol, _) = self.login("carol", user, Posture::NoDiskEncryption, coord)?;
        let st = carol.status(&self.lab)?;
        let told = st.refused.iter().any(|r| r.contains("diskEncrypted"));
        self.record(
            "carol's laptop fails posture and is told why",
            st.state == "refused" && told && st.self_.addresses.is_empty(),
            format!("carol is {}: {}", st.state, st.refused.join("; ")),
        );
        Ok(())
    }

    fn revoke(
        &mut self,
        alice: &Client,
        coord: &Coordinator,
        web_ip: &str,
    ) -> Result<(), LabError> {
        let lab = &self.lab;
        let hold = lab.hold("alice", &format!("{web_ip}:8443"), Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_millis(300));
        let node = alice.status(lab)?.self_.node_id.unwrap_or(0);
        let t0 = now_ms();
        let r = coord.revoke(lab, node);
        let cut = hold.wait_cut(Duration::from_secs(5));
        let st = alice.status(lab)?;
        // The connection stopped carrying data within one echo interval after its last echo.
        let ms = cut
            .as_ref()
            .ok()
            .map(|(last, _)| (last + 50).saturating_sub(t0));
        self.report.timings.revoke_to_cut = ms;
        self.record(
            "the admin revokes alice's laptop and her open connection dies",
            r.is_ok() && ms.is_some_and(|m| m <= 1000),
            format!(
                "{}; alice's held connection to web:8443 {}; alice's status: {} ({})",
                match &r {
                    Ok(out) => out.trim().to_string(),
                    Err(e) => format!("revoke failed: {e}"),
                },
                match ms {
                    Some(m) => format!("stopped {m} ms after the revoke"),
                    None => format!("did not stop: {cut:?}"),
                },
                st.state,
                st.revoked.as_deref().unwrap_or("no reason shown")
            ),
        );
        Ok(())
    }

    fn expiry(
        &mut self,
        mut coord: Coordinator,
        dave: &Client,
        web: &Client,
        web_ip: &str,
    ) -> Result<(), LabError> {
        let lab = &self.lab;
        let hold = lab.hold("dave", &format!("{web_ip}:8443"), Duration::from_secs(120))?;
        coord.process.stop();
        let t_stop = now_ms();
        std::thread::sleep(Duration::from_secs(2));
        let probe = lab.probe_tcp("dave", &format!("{web_ip}:8443"), PROBE)?;
        let works = hold.is_open() && probe.is_ok();
        self.record(
            "the coordinator stops and the mesh keeps working",
            works,
            format!(
                "coordinator stopped; dave's held connection {}; a new connection {probe}",
                if hold.is_open() { "still open" } else { "cut" }
            ),
        );
        let lab = &self.lab;
        let exp = |c: &Client| c.status(lab).ok().and_then(|s| s.self_.expires_at_ms);
        let expiry = match (exp(dave), exp(web)) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a
                .or(b)
                .unwrap_or(t_stop + CREDENTIAL_LIFETIME.as_millis() as u64),
        };
        let cut = hold.wait_cut(CREDENTIAL_LIFETIME + Duration::from_secs(15));
        let after = lab.probe_tcp("dave", &format!("{web_ip}:8443"), PROBE)?;
        let ms = cut
            .as_ref()
            .ok()
            .map(|(last, _)| (last + 50).saturating_sub(expiry));
        self.report.timings.expiry_to_cut = ms;
        let before_expiry = cut.as_ref().is_ok_and(|(last, _)| *last + 1000 < expiry);
        self.record(
            "access ends when the credentials expire",
            cut.is_ok() && !before_expiry && ms.is_some_and(|m| m <= 1000) && !after.is_ok(),
            format!(
                "the demo policy issues {} s credentials (default 1 h); the first expired {} ms \
                 after the stop; the held connection {}; a new connection: {after}",
                CREDENTIAL_LIFETIME.as_secs(),
                expiry.saturating_sub(t_stop),
                match ms {
                    Some(m) if !before_expiry => format!("stopped {m} ms after the expiry"),
                    Some(_) => "stopped BEFORE the expiry".to_string(),
                    None => format!("did not stop: {cut:?}"),
                }
            ),
        );
        Ok(())
    }
}

fn peer_names(st: &crate::mesh::Status) -> Vec<String> {
    st.peers.iter().map(|p| p.name.clone()).collect()
}
