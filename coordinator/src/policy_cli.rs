//! `ztmesh-coordinator policy check|explain`: validate a policy file and run its tests, or
//! explain one decision. Reads the file here; all logic lives in `ztmesh_common::policy`.

use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ztmesh_common::policy::{condition, Decision, Policy, Query};
use ztmesh_common::posture::PostureAttrs;

/// Policy file subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyFileCmd {
    /// Validate a policy file and run its `tests`: exit 0 when valid and every test holds,
    /// 1 otherwise (every problem on stderr as file:line:column).
    Check {
        /// The policy file (HuJSON).
        file: PathBuf,
    },
    /// Explain whether SRC may reach DST: the decision and every rule that allows it, or why
    /// none does. Exit 0 on accept, 1 on deny, 2 when the file or the query is invalid.
    Explain {
        /// The policy file (HuJSON).
        file: PathBuf,
        /// Source: a user, group:NAME, tag:NAME, hosts alias or IP address.
        #[arg(long)]
        src: String,
        /// Destination as TARGET:PORT (TARGET alone for protocols without ports).
        #[arg(long)]
        dst: String,
        /// Protocol name or number (default tcp).
        #[arg(long)]
        proto: Option<String>,
        /// A posture attribute of the source device, KEY=VALUE (repeatable), e.g.
        /// node:diskEncrypted=true, node:edr=falcon,clamav.
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attrs: Vec<String>,
        /// Print {"decision":..,"rules":[..],"reasons":[..]} as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a policy subcommand; prints results and returns the exit code.
pub fn run(cmd: PolicyFileCmd) -> ExitCode {
    match cmd {
        PolicyFileCmd::Check { file } => check(&file),
        PolicyFileCmd::Explain {
            file,
            src,
            dst,
            proto,
            attrs,
            json,
        } => explain(&file, &src, &dst, proto.as_deref(), &attrs, json),
    }
}

fn load(file: &Path) -> Result<Policy, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    Policy::parse_bytes(&bytes, &file.display().to_string()).map_err(|e| e.to_string())
}

fn check(file: &Path) -> ExitCode {
    let policy = match load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let failures = policy.run_tests();
    if failures.is_empty() {
        let checks: usize = policy
            .tests()
            .iter()
            .map(|t| t.accept.len() + t.deny.len())
            .sum();
        println!(
            "{}: OK ({} rules, {} tests, {} checks passed)",
            file.display(),
            policy.rules().len(),
            policy.tests().len(),
            checks
        );
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("{f}");
        }
        eprintln!(
            "{}: {} test check(s) failed",
            file.display(),
            failures.len()
        );
        ExitCode::from(1)
    }
}

fn parse_attrs(attrs: &[String]) -> Result<PostureAttrs, String> {
    let mut out = PostureAttrs::new();
    for a in attrs {
        let Some((k, v)) = a.split_once('=') else {
            return Err(format!("--attr `{a}`: expected KEY=VALUE"));
        };
        let val = condition::attr_value_from_str(k, v).map_err(|e| format!("--attr: {e}"))?;
        out.insert(k.to_string(), val);
    }
    Ok(out)
}

fn explain(
    file: &Path,
    src: &str,
    dst: &str,
    proto: Option<&str>,
    attrs: &[String],
    json: bool,
) -> ExitCode {
    let policy = match load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let query = match parse_attrs(attrs).and_then(|a| Query::new(src, dst, proto, a)) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = policy.check_query(&query) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let ex = policy.explain(&query);
    if json {
        println!("{}", ex.to_json());
    } else {
        println!("{}: {src} -> {dst}", ex.decision);
        for r in &ex.rules {
            println!("  allowed by {r}");
        }
        for r in &ex.reasons {
            println!("  {r}");
        }
    }
    match ex.decision {
        Decision::Accept => ExitCode::SUCCESS,
        Decision::Deny => ExitCode::from(1),
    }
}
