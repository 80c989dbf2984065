//! The admin CLI's HTTP client: finds the API (the data directory of a local coordinator, or
//! `--api URL`), loads the bearer token, and pins TLS to the coordinator's own certificate.

use crate::bootstrap::{self, ADMIN_TOKEN_FILE, TLS_CERT_FILE};
use crate::serve::{HTTP_CERT_FP_FILE, HTTP_URL_FILE};
use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use ztmesh_common::cert_pin::{CertFingerprint, PinnedCertVerifier, PIN_MISMATCH};

/// Where the API is and how to authenticate.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiArgs {
    /// Data directory of a coordinator on this host: its admin token, its certificate and
    /// the address it listens on are read from there.
    #[arg(long, env = "ZTMESH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Base URL of the API of a remote coordinator (with --token-file).
    #[arg(long, env = "ZTMESH_API", global = true)]
    pub api: Option<String>,
    /// File holding the bearer token (for --api).
    #[arg(long, env = "ZTMESH_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Pin the server certificate by fingerprint (`sha256:HEX`, as in the join URL) instead
    /// of trusting the web PKI (for --api).
    #[arg(long, env = "ZTMESH_API_PIN", global = true)]
    pub pin: Option<CertFingerprint>,
}

fn error_chain_mentions(e: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains(needle) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn pinned_tls(pin: CertFingerprint) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertVerifier::new(pin, &provider));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A connected admin API client.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<String>,
}

impl ApiClient {
    pub fn from_args(a: &ApiArgs) -> anyhow::Result<ApiClient> {
        let (base, token, pin) = match (&a.api, &a.data_dir) {
            (Some(api), _) => {
                let tf = a.token_file.as_ref().context("--api needs --token-file")?;
                let token = std::fs::read_to_string(tf)
                    .with_context(|| format!("reading {}", tf.display()))?;
                (api.trim_end_matches('/').to_owned(), token, a.pin)
            }
            (None, Some(dir)) => {
                let url = bootstrap::read_recorded(dir, HTTP_URL_FILE)?.with_context(|| {
                    format!(
                        "{} has no recorded HTTP address: is the coordinator running there?",
                        dir.display()
                    )
                })?;
                let tf = a
                    .token_file
                    .clone()
                    .unwrap_or_else(|| dir.join(ADMIN_TOKEN_FILE));
                let token = std::fs::read_to_string(&tf)
                    .with_context(|| format!("reading {}", tf.display()))?;
                let fp = match bootstrap::read_recorded(dir, HTTP_CERT_FP_FILE)? {
                    Some(fp) => fp
                        .parse::<CertFingerprint>()
                        .with_context(|| format!("{} in {}", HTTP_CERT_FP_FILE, dir.display()))?,
                    None => {
                        let cert = std::fs::read(dir.join(TLS_CERT_FILE)).with_context(|| {
                            format!("reading the certificate in {}", dir.display())
                        })?;
                        CertFingerprint::of(&cert)
                    }
                };
                (url, token, Some(fp))
            }
            (None, None) => {
                bail!("say which coordinator: --data-dir DIR, or --api URL --token-file FILE")
            }
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            bail!("the token file is empty");
        }
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        if let Some(fp) = pin {
            b = b.use_preconfigured_tls(pinned_tls(fp)?);
        }
        Ok(ApiClient {
            http: b.build()?,
            base,
            token,
        })
    }

    /// Send a request; a JSON body on success, an [`ApiFailure`] on an error status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            let hint = if error_chain_mentions(&e, PIN_MISMATCH) {
                "the server is not the one pinned: check --pin"
            } else if error_chain_mentions(&e, "invalid peer certificate") {
                // No --pin, and the web PKI does not vouch for the certificate: the usual case
                // of a coordinator with its own self-signed certificate. Not a connectivity
                // problem, so do not ask whether it is running.
                "the server's certificate is not trusted (a coordinator's own certificate is \
                 self-signed): pin it with --pin sha256:HEX, the value in DATA_DIR/http-cert-fp \
                 on the coordinator's host"
            } else {
                "admin commands go through the API of a running `ztmesh-coordinator serve`: \
                 is it running?"
            };
            anyhow::Error::new(e).context(format!(
                "reaching the coordinator at {} ({hint})",
                self.base
            ))
        })?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(v);
        }
        Err(ApiFailure {
            status,
            message: v["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}")),
            details: v["details"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
        .into())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }
}
