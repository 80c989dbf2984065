//! `serve`: bootstrap the data directory, open the store, install the first policy, start the
//! control plane (QUIC) and the HTTP listener (admin API, login pages, OIDC routes, `/healthz`),
//! and run until the shutdown future resolves (SIGTERM/SIGINT in the binary).

use crate::accounts::{self, Authenticator, LoginPages};
use crate::api::{self, ApiState};
use crate::audit;
use crate::bootstrap::{self, HTTP_ADDR_FILE, PUBLIC_ADDR_FILE};
use crate::config::{host_of, Config, HttpMode};
use crate::control::{ControlConfig, ControlPlane};
use crate::identity::oidc::OidcProvider;
use crate::identity::LoginSink;
use crate::store::{Decision, SledStore, Store};
use anyhow::{bail, Context};
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};
use ztmesh_common::policy::Policy;

/// File recording the local URL of the HTTP listener, for the admin CLI on this host.
pub const HTTP_URL_FILE: &str = "http-url";
/// File recording the bound control (QUIC) address.
pub const CONTROL_ADDR_FILE: &str = "control-addr";
/// File recording the fingerprint of the HTTP listener's certificate (the CLI pins it).
pub const HTTP_CERT_FP_FILE: &str = "http-cert-fp";
/// How long open HTTP connections get to finish at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(3);

/// Install the first policy from `--policy` when the store has none. It must parse and pass
/// its tests: an operator who named a file wants that file, not a silent deny-all.
fn install_initial_policy(store: &dyn Store, cfg: &Config) -> anyhow::Result<()> {
    if store.current_policy()?.is_some() {
        if cfg.initial_policy.is_some() {
            info!("a policy is already stored; --policy is used only on first start");
        }
        return Ok(());
    }
    let Some(path) = &cfg.initial_policy else {
        info!("no policy stored and none given: everything is denied until `policy set`");
        return Ok(());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the initial policy {}", path.display()))?;
    let policy = Policy::parse(&text, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("initial policy refused:\n{e}"))?;
    let failures = policy.run_tests();
    if !failures.is_empty() {
        let lines: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        bail!(
            "initial policy refused: its tests fail:\n{}",
            lines.join("\n")
        );
    }
    let v = store.put_policy(&text, "bootstrap", audit::now())?;
    audit::record(
        store,
        "system",
        "policy.set",
        &format!("policy v{}", v.version),
        Decision::Allow,
        &format!("initial policy from {}", path.display()),
    )?;
    info!(version = v.version, file = %path.display(), "initial policy installed");
    Ok(())
}

/// The local URL the admin CLI on this host uses to reach the HTTP listener.
fn local_url(bound: SocketAddr, mode: HttpMode) -> String {
    let ip = if bound.ip().is_unspecified() {
        match bound {
            SocketAddr::V4(_) => "127.0.0.1".to_owned(),
            SocketAddr::V6(_) => "[::1]".to_owned(),
        }
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    let scheme = match mode {
        HttpMode::Tls => "https",
        HttpMode::Plain => "http",
    };
    format!("{scheme}://{ip}:{}", bound.port())
}

/// A line for the operator on stdout. `serve` ignores SIGPIPE, so a write to a closed stdout
/// (`serve | head -1`, a supervisor that closed it) fails, and `println!` would panic: the
/// server must keep running, so the failure is ignored.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Run the coordinator until `shutdown` resolves.
pub async fn run(mut cfg: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let dir = &cfg.data_dir;
    // Before anything is written: a second `serve` on this directory must change nothing.
    let _lock = bootstrap::lock(dir)?;
    let (ident, created) =
        bootstrap::init(dir, host_of(&cfg.public_addr)).context("preparing the data directory")?;
    let join_url = bootstrap::join_url(&cfg.public_addr, &ident.cert_der);
    bootstrap::record(dir, PUBLIC_ADDR_FILE, &cfg.public_addr)?;
    if created {
        info!(dir = %dir.display(), "first start: made the signing key, TLS certificate and admin token (mode 0600)");
    }
    // stdout, not the log: scripts and the operator read it.
    say(&format!("join URL: {join_url}"));

    // Bind HTTP first: with port 0 the login links must name the port actually bound.
    let listener = TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", cfg.http_listen))?;
    let http_addr = listener.local_addr()?;
    if cfg.http_base_derived && cfg.http_listen.port() == 0 {
        if let Some((head, _)) = cfg.http_base_url.rsplit_once(':') {
            cfg.http_base_url = format!("{head}:{}", http_addr.port());
        }
    }

    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.join(bootstrap::DB_DIR)).context("opening the store")?);
    install_initial_policy(store.as_ref(), &cfg)?;

    let control = ControlPlane::new(
        store.clone(),
        ident.signing_key.clone(),
        ControlConfig {
            http_base: cfg.http_base_url.clone(),
            ..ControlConfig::default()
        },
    )
    .context("starting the control plane")?;
    let quic = control
        .start_quic(
            cfg.control_listen,
            vec![ident.cert_der.clone()],
            ident.tls_key(),
        )
        .with_context(|| format!("binding the control endpoint on {}", cfg.control_listen))?;
    let control_addr = quic.local_addr()?;

    let sink: Arc<dyn LoginSink> = Arc::new(control.clone());
    let mut app = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .merge(api::router(ApiState::new(
            store.clone(),
            control.clone(),
            &ident.admin_token,
        )))
        .merge(accounts::router(LoginPages {
            auth: Arc::new(Authenticator::new(store.clone())),
            sink: sink.clone(),
            store: store.clone(),
            oidc_enabled: cfg.oidc.is_some(),
        }));
    if let Some(oidc) = cfg.oidc.clone() {
        let provider = Arc::new(
            OidcProvider::discover(oidc)
                .await
                .context("OIDC discovery at the configured issuer")?,
        );
        control.set_reverifier(provider.clone());
        app = app.merge(crate::identity::oidc::router(provider, sink.clone()));
        info!("OIDC sign-in enabled");
    }
    // The login pages' limit; the API's routes carry their own (docs/api.md).
    let app = app.layer(axum::extract::DefaultBodyLimit::max(api::BODY_LIMIT));

    bootstrap::record(dir, HTTP_ADDR_FILE, &http_addr.to_string())?;
    bootstrap::record(dir, HTTP_URL_FILE, &local_url(http_addr, cfg.http_mode))?;
    bootstrap::record(dir, CONTROL_ADDR_FILE, &control_addr.to_string())?;
    let tls = match cfg.http_mode {
        HttpMode::Tls => {
            let (chain, key) = match &cfg.http_tls {
                Some((c, k)) => load_pem(c, k)?,
                None => (vec![ident.cert_der.clone()], ident.tls_key()),
            };
            // The CLI on this host pins whatever certificate the listener presents.
            bootstrap::record(dir, HTTP_CERT_FP_FILE, &bootstrap::fingerprint(&chain[0]))?;
            Some(tls_acceptor(chain, key)?)
        }
        HttpMode::Plain => {
            if !http_addr.ip().is_loopback() {
                warn!(%http_addr, "plain HTTP on a non-loopback address: a TLS-terminating proxy must be in front");
            }
            None
        }
    };
    info!(
        control = %control_addr,
        http = %http_addr,
        tls = tls.is_some(),
        base_url = %cfg.http_base_url,
        "coordinator ready"
    );
    say(&format!("ready: control={control_addr} http={http_addr}"));

    serve_http(listener, app, tls, shutdown).await;
    info!("shutting down");
    quic.close().await;
    // Dropping the last store handles flushes sled; every write was flushed already.
    drop(control);
    drop(store);
    info!("stopped");
    Ok(())
}

/// A PEM certificate chain and private key.
fn load_pem(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    Ok((chain, key))
}

fn tls_acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Accept HTTP connections (over TLS when `tls` is set) until `shutdown`, then give open
/// connections a moment to finish.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        let svc = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        let tls = tls.clone();
        conns.spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let svc = TowerToHyperService::new(svc);
            let res = match tls {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await {
                        Ok(Ok(stream)) => builder.serve_connection(TokioIo::new(stream), svc).await,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => builder.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = res {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(HTTP_DRAIN, drain).await.is_err() {
        error!("HTTP connections still open after the drain period; closing them");
        conns.abort_all();
    }
}
