//! `ztmesh-demo`: the narrated demo (README's first command runs it through
//! `packaging/demo.sh`). It plays the story of `ztmesh_tests::story` in a fresh lab, prints a
//! pass/fail mark per step and the measured times, and exits non-zero if any step failed.

use std::io::Write;
use ztmesh_tests::story::{self, Narrator, Step};

struct Stdout;

impl Narrator for Stdout {
    fn say(&mut self, text: &str) {
        println!("    {text}");
        let _ = std::io::stdout().flush();
    }

    fn step(&mut self, step: &Step) {
        let mark = if step.ok { "PASS" } else { "FAIL" };
        println!("[{mark}] {}\n       {}", step.name, step.detail);
        let _ = std::io::stdout().flush();
    }
}

fn ms(v: Option<u64>) -> String {
    v.map(|m| format!("{m} ms"))
        .unwrap_or_else(|| "not measured".into())
}

fn main() {
    println!("ztmesh demo: a zero-trust mesh in network namespaces, with the real binaries\n");
    let report = story::run(&mut Stdout);
    let t = &report.timings;
    println!("\nTimes:");
    println!(
        "  login to first packet:         {}",
        ms(t.login_to_first_packet)
    );
    println!(
        "  policy change to enforcement:  {}",
        ms(t.policy_to_enforcement)
    );
    println!("  revoke to cut:                 {}", ms(t.revoke_to_cut));
    println!("  credential expiry to cut:      {}", ms(t.expiry_to_cut));
    let failed = report.steps.iter().filter(|s| !s.ok).count();
    if failed == 0 {
        println!("\nAll {} steps passed.", report.steps.len());
    } else {
        println!("\n{failed} of {} steps FAILED.", report.steps.len());
        std::process::exit(1);
    }
}
