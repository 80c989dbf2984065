//! The admin CLI's HTTP client: finds the API (the data directory of a local coordinator, or
//! `--api URL`), loads the bearer token, and pins TLS to the coordinator's own certificate.

use crate::bootstrap::{self, ADMIN_TOKEN_FILE, TLS_CERT_FILE};
use crate::serve::{HTTP_CERT_FP_FILE, HTTP_URL_FILE};
use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

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
    pub pin: Option<String>,
}

/// Accepts exactly one certificate, by its SHA-256 fingerprint; still checks handshake signatures.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The pin is the trust anchor: names and validity dates of a self-signed
        // certificate add nothing once its exact bytes are pinned.
        if bootstrap::fingerprint(end_entity).eq_ignore_ascii_case(&self.fingerprint) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pinned_tls(fingerprint: String) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint,
                provider,
            }))
            .with_no_client_auth(),
    )
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
                (api.trim_end_matches('/').to_owned(), token, a.pin.clone())
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
                    Some(fp) => fp,
                    None => {
                        let cert = std::fs::read(dir.join(TLS_CERT_FILE)).with_context(|| {
                            format!("reading the certificate in {}", dir.display())
                        })?;
                        bootstrap::fingerprint(&cert)
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
        let resp = req.send().await.with_context(|| {
            format!(
                "reaching the coordinator at {} (admin commands go through the API of a \
                     running `ztmesh-coordinator serve`: is it running?)",
                self.base
            )
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
