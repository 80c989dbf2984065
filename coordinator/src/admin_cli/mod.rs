//! The admin CLI (`ztmesh-coordinator policy|devices|users|preauth|audit|tokens ...`): thin
//! commands over the admin API, so that the API is the one place where rules are enforced.

pub mod client;

use crate::audit::format_time;
use crate::policy_cli::{self, PolicyFileCmd};
use crate::store::AuditRecord;
use anyhow::{bail, Context};
use clap::Subcommand;
use client::{ApiArgs, ApiClient, ApiFailure};
use reqwest::Method;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use ztmesh_common::time::UnixMillis;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Print the policy in force.
    Get,
    /// Validate FILE, run its tests, and put it in force (pushed to every device). A refused
    /// policy leaves the running one in force; every problem is printed.
    Set { file: PathBuf },
    /// List the stored policy versions (author, time).
    History,
    #[command(flatten)]
    File(PolicyFileCmd),
}

#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// List devices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one device (id like n3 or 3, or hostname).
    Show { device: String },
    /// Revoke a device: out of every peer's view at once; it cannot log in again.
    Revoke {
        device: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Set a custom:* attribute (MDM/EDR feeds), e.g. custom:managed=true.
    SetAttr {
        device: String,
        /// KEY=VALUE; VALUE is JSON (true, 3, ["a","b"]) or else a string.
        assignment: String,
    },
    /// Remove a custom:* attribute.
    UnsetAttr { device: String, key: String },
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a local account; prints its TOTP secret and otpauth:// URL once.
    Add {
        login: String,
        /// Policy groups, e.g. group:eng,group:ops.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Read the password from stdin (first line) instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account and revoke every device of that user.
    Disable { login: String },
}

#[derive(Debug, Subcommand)]
pub enum PreauthCmd {
    /// Create a pre-auth key for servers and connectors; the key is printed alone on the last line.
    Create {
        /// Tags the devices join with (declared in the policy's tagOwners).
        #[arg(long, value_delimiter = ',', required = true)]
        tags: Vec<String>,
        #[arg(long)]
        reusable: bool,
        /// Lifetime (30m, 1h, 7d; default 1h).
        #[arg(long)]
        expires: Option<String>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The newest audit records.
    Tail {
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain of the whole log; exit 1 when it is broken.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create an API token (printed once, alone on the last line).
    Create {
        #[arg(long)]
        role: crate::store::Role,
    },
    List,
    Revoke {
        id: String,
    },
}

/// `flows`: what the devices' packet filters reported (denied packets, and the first packet
/// of each inbound connection they allowed).
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Only this device (id like n3, or hostname).
    #[arg(long)]
    pub device: Option<String>,
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// Only events of this verdict [default: both].
    #[arg(long, value_parser = ["denied", "allowed"])]
    pub verdict: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// One admin command with its connection arguments.
#[derive(Debug)]
pub enum AdminCmd {
    Flows(FlowsArgs),
    Policy(PolicyCmd),
    Devices(DevicesCmd),
    Users(UsersCmd),
    Preauth(PreauthCmd),
    Audit(AuditCmd),
    Tokens(TokensCmd),
}

/// Run an admin command; errors are printed, the exit code says success.
pub fn run(api: &ApiArgs, cmd: AdminCmd) -> ExitCode {
    // The file-only policy commands need no coordinator.
    if let AdminCmd::Policy(PolicyCmd::File(c)) = cmd {
        return policy_cli::run(c);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_async(api, cmd)) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<ApiFailure>() {
                Some(f) => {
                    eprintln!("error: {}", f.message);
                    for d in &f.details {
                        eprintln!("  {d}");
                    }
                }
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn when(ms: &Value) -> String {
    ms.as_u64()
        .map(|t| format_time(UnixMillis(t)))
        .unwrap_or_else(|| "-".into())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

async fn run_async(api: &ApiArgs, cmd: AdminCmd) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(api)?;
    match cmd {
        AdminCmd::Policy(p) => policy(&c, p).await,
        AdminCmd::Devices(d) => devices(&c, d).await,
        AdminCmd::Users(u) => users(&c, u).await,
        AdminCmd::Preauth(p) => preauth(&c, p).await,
        AdminCmd::Audit(a) => audit(&c, a).await,
        AdminCmd::Tokens(t) => tokens(&c, t).await,
        AdminCmd::Flows(f) => flows(&c, f).await,
    }
}

async fn policy(c: &ApiClient, cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Get => {
            let v = c.get("/api/v1/policy").await?;
            print!("{}", s(&v["text"]));
            if !s(&v["text"]).ends_with('\n') {
                println!();
            }
        }
        PolicyCmd::Set { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            // Text that is not UTF-8 gets the offline check's located error.
            let text = ztmesh_common::policy::policy_text(&bytes, &file.display().to_string())
                .map_err(|located| anyhow::anyhow!("{located}"))?;
            let body = json!({ "text": text, "file": file.display().to_string() });
            // The coordinator stops reading a body over its limit and drops the connection,
            // which would look like an unreachable server: refuse here, and say why.
            let size = serde_json::to_vec(&body)?.len();
            if size > crate::api::POLICY_BODY_LIMIT {
                bail!(
                    "{} is too large: {size} bytes as a request (JSON-encoded), over the \
                     coordinator's limit of {} MiB for a policy",
                    file.display(),
                    crate::api::POLICY_BODY_LIMIT / (1024 * 1024)
                );
            }
            let v = c.call(Method::PUT, "/api/v1/policy", Some(body)).await?;
            println!("policy v{} is in force", s(&v["version"]));
            for w in v["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", s(w));
            }
        }
        PolicyCmd::History => {
            let v = c.get("/api/v1/policy/history").await?;
            for p in v.as_array().into_iter().flatten() {
                println!(
                    "v{}\t{}\t{}",
                    s(&p["version"]),
                    when(&p["at"]),
                    s(&p["author"])
                );
            }
        }
        PolicyCmd::File(f) => return Ok(policy_cli::run(f)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn devices(c: &ApiClient, cmd: DevicesCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DevicesCmd::List { json } => {
            let v = c.get("/api/v1/devices").await?;
            if json {
                println!("{}", pretty(&v));
                return Ok(ExitCode::SUCCESS);
            }
            println!("ID\tHOSTNAME\tUSER/TAGS\tADDRESSES\tPOSTURE\tSTATE\tCREDENTIAL EXPIRES");
            for d in v.as_array().into_iter().flatten() {
                let owner = if d["user"].is_null() {
                    list(&d["tags"])
                } else {
                    s(&d["user"])
                };
                let posture = match d["posture_ok"].as_bool() {
                    Some(true) => "ok".to_owned(),
                    Some(false) => "failed".to_owned(),
                    None => "-".to_owned(),
                };
                let state = if d["revoked"].as_bool() == Some(true) {
                    "revoked"
                } else if d["admitted"].as_bool() == Some(true) {
                    if d["online"].as_bool() == Some(true) {
                        "online"
                    } else {
                        "admitted"
                    }
                } else {
                    "offline"
                };
                println!(
                    "n{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    s(&d["id"]),
                    s(&d["hostname"]),
                    owner,
                    list(&d["addresses"]),
                    posture,
                    state,
                    when(&d["credential_expires_at"])
                );
            }
        }
        DevicesCmd::Show { device } => {
            let v = c.get(&format!("/api/v1/devices/{device}")).await?;
            println!("{}", pretty(&v));
        }
        DevicesCmd::Revoke { device, reason } => {
            let v = c
                .post(
                    &format!("/api/v1/devices/{device}/revoke"),
                    json!({ "reason": reason }),
                )
                .await?;
            println!("revoked n{}", s(&v["revoked"]));
        }
        DevicesCmd::SetAttr { device, assignment } => {
            let (k, raw) = assignment
                .split_once('=')
                .context("expected KEY=VALUE, e.g. custom:managed=true")?;
            let value = serde_json::from_str::<Value>(raw)
                .ok()
                .filter(|v| !v.is_object() && !v.is_null())
                .unwrap_or_else(|| Value::String(raw.to_owned()));
            c.call(
                Method::PUT,
                &format!("/api/v1/devices/{device}/attrs/{k}"),
                Some(json!({ "value": value })),
            )
            .await?;
            println!("{device}: {k} = {value}");
        }
        DevicesCmd::UnsetAttr { device, key } => {
            c.call(
                Method::DELETE,
                &format!("/api/v1/devices/{device}/attrs/{key}"),
                None,
            )
            .await?;
            println!("{device}: {key} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn users(c: &ApiClient, cmd: UsersCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        UsersCmd::Add {
            login,
            groups,
            password_stdin,
        } => {
            let (password, generated) = if password_stdin {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf)?;
                (buf.lines().next().unwrap_or("").to_owned(), false)
            } else {
                (crate::bootstrap::new_token(""), true)
            };
            let v = c
                .post(
                    "/api/v1/users",
                    json!({ "login": login, "password": password, "groups": groups }),
                )
                .await?;
            println!(
                "user {} created (groups: {})",
                s(&v["login"]),
                list(&v["groups"])
            );
            if generated {
                println!("password: {password}");
            }
            println!(
                "TOTP secret (shown once; add it to an authenticator app): {}",
                s(&v["totp_secret"])
            );
            println!("{}", s(&v["otpauth_url"]));
        }
        UsersCmd::List { json } => {
            let v = c.get("/api/v1/users").await?;
            if json {
                println!("{}", pretty(&v));
            } else {
                println!("LOGIN\tGROUPS\tSTATE\tCREATED");
                for u in v.as_array().into_iter().flatten() {
                    let st = if u["disabled"].as_bool() == Some(true) {
                        "disabled"
                    } else {
                        "active"
                    };
                    println!(
                        "{}\t{}\t{st}\t{}",
                        s(&u["login"]),
                        list(&u["groups"]),
                        when(&u["created_at"])
                    );
                }
            }
        }
        UsersCmd::Disable { login } => {
            let v = c
                .post(&format!("/api/v1/users/{login}/disable"), json!({}))
                .await?;
            println!(
                "user {login} disabled; devices revoked: {}",
                list(&v["revoked_devices"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn preauth(c: &ApiClient, cmd: PreauthCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PreauthCmd::Create {
            tags,
            reusable,
            expires,
        } => {
            let v = c
                .post(
                    "/api/v1/preauth",
                    json!({ "tags": tags, "reusable": reusable, "expires": expires }),
                )
                .await?;
            println!(
                "pre-auth key {} ({}, tags {}, expires {})",
                s(&v["id"]),
                if reusable { "reusable" } else { "single-use" },
                list(&v["tags"]),
                when(&v["expires_at"])
            );
            // Alone on the last line, so scripts can take it with `tail -n1`.
            println!("{}", s(&v["key"]));
        }
        PreauthCmd::List { json } => {
            let v = c.get("/api/v1/preauth").await?;
            if json {
                println!("{}", pretty(&v));
            } else {
                println!("ID\tTAGS\tKIND\tSTATE\tEXPIRES\tUSED BY");
                for k in v.as_array().into_iter().flatten() {
                    let kind = if k["reusable"].as_bool() == Some(true) {
                        "reusable"
                    } else {
                        "single-use"
                    };
                    let state = if k["revoked"].as_bool() == Some(true) {
                        "revoked"
                    } else if k["used"].as_bool() == Some(true) && kind == "single-use" {
                        "used"
                    } else {
                        "valid"
                    };
                    println!(
                        "{}\t{}\t{kind}\t{state}\t{}\t{}",
                        s(&k["id"]),
                        list(&k["tags"]),
                        when(&k["expires_at"]),
                        list(&k["used_by"])
                    );
                }
            }
        }
        PreauthCmd::Revoke { id } => {
            c.post(&format!("/api/v1/preauth/{id}/revoke"), json!({}))
                .await?;
            println!("pre-auth key {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(c: &ApiClient, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Tail { lines, json } => {
            let v = c.get(&format!("/api/v1/audit?limit={lines}")).await?;
            let recs: Vec<AuditRecord> = serde_json::from_value(v)?;
            for r in recs {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{}", crate::audit::format_line(&r));
                }
            }
        }
        AuditCmd::Verify { json } => {
            let v = c.get("/api/v1/audit/verify").await?;
            let ok = v["problems"].as_array().is_some_and(|p| p.is_empty());
            if json {
                println!("{}", pretty(&v));
            } else if ok {
                println!(
                    "audit log intact: {} records, head {}",
                    s(&v["records"]),
                    s(&v["head_hash"])
                );
            } else {
                println!("audit log BROKEN:");
                for p in v["problems"].as_array().into_iter().flatten() {
                    println!("  {}", s(p));
                }
            }
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn flows(c: &ApiClient, args: FlowsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/flows?limit={}", args.lines);
    if let Some(d) = &args.device {
        path.push_str(&format!("&device={}", url_component(d)));
    }
    if let Some(v) = &args.verdict {
        path.push_str(&format!("&verdict={v}"));
    }
    let v = c.get(&path).await?;
    let records = v.as_array().cloned().unwrap_or_default();
    if args.json {
        for r in &records {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        println!("no flow events reported");
    }
    for r in &records {
        let port = r["dst_port"]
            .as_u64()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        println!(
            "{}  {:<7} {} (n{}) reported {} -> {}{port} proto {} x{}",
            when(&r["at"]),
            s(&r["verdict"]),
            s(&r["hostname"]),
            s(&r["node"]),
            s(&r["src"]),
            s(&r["dst"]),
            s(&r["proto"]),
            s(&r["count"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encode a query value (hostnames are plain, but an id or name is never trusted).
fn url_component(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn tokens(c: &ApiClient, cmd: TokensCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokensCmd::Create { role } => {
            let v = c.post("/api/v1/tokens", json!({ "role": role })).await?;
            println!(
                "token {} ({}) created; it is shown once:",
                s(&v["id"]),
                s(&v["role"])
            );
            println!("{}", s(&v["token"]));
        }
        TokensCmd::List => {
            let v = c.get("/api/v1/tokens").await?;
            println!("ID\tROLE\tSTATE\tCREATED\tBY");
            for t in v.as_array().into_iter().flatten() {
                let st = if t["revoked"].as_bool() == Some(true) {
                    "revoked"
                } else {
                    "valid"
                };
                println!(
                    "{}\t{}\t{st}\t{}\t{}",
                    s(&t["id"]),
                    s(&t["role"]),
                    when(&t["created_at"]),
                    s(&t["created_by"])
                );
            }
        }
        TokensCmd::Revoke { id } => {
            c.post(&format!("/api/v1/tokens/{id}/revoke"), json!({}))
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
