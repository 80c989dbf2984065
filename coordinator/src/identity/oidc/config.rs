//! Configuration of the OIDC relying party (the `[oidc]` table of the coordinator's TOML).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::OidcError;

/// A secret string from the configuration; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// OIDC relying-party settings.
///
/// ```toml
/// [oidc]
/// issuer = "https://idp.example.com"
/// client_id = "ztmesh"
/// client_secret_file = "/etc/ztmesh/oidc-client-secret"   # omit for a public client
/// redirect_base = "https://coordinator.example.com:7080"   # + /oidc/callback
/// require_mfa = true
/// groups_claim = "groups"
/// group_prefix = "group:"
/// [oidc.group_map]
/// "Engineering" = "group:eng"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery is at `{issuer}/.well-known/openid-configuration` and the ID
    /// token's `iss` must equal it exactly.
    pub issuer: String,
    pub client_id: String,
    /// Client secret for a confidential client (sent with HTTP Basic auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretString>,
    /// File holding the client secret (preferred over `client_secret`; trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Public base URL of the coordinator's HTTP listener; the redirect URI registered at
    /// the IdP is `{redirect_base}/oidc/callback`.
    pub redirect_base: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Ask for consent explicitly (`prompt=consent`); some IdPs issue refresh tokens only then.
    #[serde(default = "default_true")]
    pub prompt_consent: bool,
    /// ID token claim that names the user in policies.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// ID token claim holding the user's groups (a string array, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// IdP group -> policy group, e.g. `"Engineering" = "group:eng"`. Wins over the prefix.
    #[serde(default)]
    pub group_map: BTreeMap<String, String>,
    /// Prefix for IdP groups not in `group_map` (`eng` -> `group:eng`).
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Whether groups not listed in `group_map` are kept (with the prefix) or dropped.
    #[serde(default = "default_true")]
    pub map_unlisted_groups: bool,
    /// Refuse logins whose ID token `amr` names no second factor.
    #[serde(default = "default_true")]
    pub require_mfa: bool,
    /// `amr` values (RFC 8176) that count as the second factor.
    #[serde(default = "default_mfa_amr")]
    pub mfa_amr_values: Vec<String>,
    /// Extra PEM CA certificate trusted for the IdP's TLS (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca_cert: Option<PathBuf>,
    /// Allow an `http://` issuer. For tests and labs only: tokens then travel in clear.
    #[serde(default)]
    pub allow_http_issuer: bool,
    /// How long a started sign-in may take before its state is discarded.
    #[serde(default = "default_login_timeout")]
    pub login_timeout_secs: u64,
    /// Timeout of each request to the IdP.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_secs: u64,
}

fn default_true() -> bool {
    true
}
fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile", "groups", "offline_access"]
        .map(String::from)
        .to_vec()
}
fn default_user_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_group_prefix() -> String {
    "group:".into()
}
fn default_mfa_amr() -> Vec<String> {
    // RFC 8176 values that name a factor beyond a password, plus "mfa" itself.
    [
        "mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "iris", "retina", "vbm",
    ]
    .map(String::from)
    .to_vec()
}
fn default_login_timeout() -> u64 {
    600
}
fn default_http_timeout() -> u64 {
    10
}

impl OidcConfig {
    /// A configuration with every optional field at its default.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        redirect_base: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: None,
            client_secret_file: None,
            redirect_base: redirect_base.into(),
            scopes: default_scopes(),
            prompt_consent: true,
            user_claim: default_user_claim(),
            groups_claim: default_groups_claim(),
            group_map: BTreeMap::new(),
            group_prefix: default_group_prefix(),
            map_unlisted_groups: true,
            require_mfa: true,
            mfa_amr_values: default_mfa_amr(),
            extra_ca_cert: None,
            allow_http_issuer: false,
            login_timeout_secs: default_login_timeout(),
            http_timeout_secs: default_http_timeout(),
        }
    }

    /// The redirect URI registered at the IdP.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oidc/callback", self.redirect_base.trim_end_matches('/'))
    }

    /// The client secret, from the file if one is configured.
    pub(crate) fn load_client_secret(&self) -> Result<Option<SecretString>, OidcError> {
        if let Some(path) = &self.client_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                OidcError::Config(format!(
                    "cannot read client_secret_file {}: {e}",
                    path.display()
                ))
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(OidcError::Config(format!(
                    "client_secret_file {} is empty",
                    path.display()
                )));
            }
            return Ok(Some(SecretString::new(secret)));
        }
        Ok(self.client_secret.clone())
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), OidcError> {
        let issuer = openidconnect::url::Url::parse(&self.issuer)
            .map_err(|e| OidcError::Config(format!("issuer {:?}: {e}", self.issuer)))?;
        match issuer.scheme() {
            "https" => {}
            "http" if self.allow_http_issuer => {}
            "http" => {
                return Err(OidcError::Config(format!(
                    "issuer {} uses http; set allow_http_issuer = true for a test IdP",
                    self.issuer
                )))
            }
            other => {
                return Err(OidcError::Config(format!(
                    "issuer scheme {other} unsupported"
                )))
            }
        }
        openidconnect::url::Url::parse(&self.redirect_uri()).map_err(|e| {
            OidcError::Config(format!("redirect_base {:?}: {e}", self.redirect_base))
        })?;
        if self.client_id.is_empty() {
            return Err(OidcError::Config("client_id is empty".into()));
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(OidcError::Config("scopes must include openid".into()));
        }
        if self.require_mfa && self.mfa_amr_values.is_empty() {
            return Err(OidcError::Config(
                "require_mfa is set but mfa_amr_values is empty".into(),
            ));
        }
        if self.login_timeout_secs == 0 || self.http_timeout_secs == 0 {
            return Err(OidcError::Config("timeouts must be positive".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults() {
        let cfg: OidcConfig = toml::from_str(
            r#"
            issuer = "https://idp.example"
            client_id = "ztmesh"
            client_secret = "hunter2"
            redirect_base = "https://coord.example:7080/"
            [group_map]
            "Engineering" = "group:eng"
            "#,
        )
        .unwrap();
        assert!(cfg.require_mfa);
        assert_eq!(cfg.groups_claim, "groups");
        assert_eq!(
            cfg.redirect_uri(),
            "https://coord.example:7080/oidc/callback"
        );
        assert_eq!(cfg.group_map["Engineering"], "group:eng");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        cfg.validate().unwrap();
    }

    #[test]
    fn http_issuer_needs_opt_in() {
        let mut cfg = OidcConfig::new("http://127.0.0.1:1", "c", "http://127.0.0.1:2");
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("allow_http_issuer"));
        cfg.allow_http_issuer = true;
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<OidcConfig>(
            "issuer='https://i'\nclient_id='c'\nredirect_base='https://r'\nrequire_mfaa=false",
        )
        .unwrap_err();
        assert!(err.to_string().contains("require_mfaa"), "{err}");
    }
}
