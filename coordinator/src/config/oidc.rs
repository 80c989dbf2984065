//! The `[oidc]` settings as `serve` flags and `ZTMESH_OIDC_*` variables, merged over the file's
//! `[oidc]` table: a flag or variable wins over the file, the file over the defaults.

use super::ConfigError;
use crate::identity::oidc::{OidcConfig, SecretString};
use std::path::PathBuf;

/// `--oidc-*` flags, one per field of [`OidcConfig`]. Lists are comma-separated in variables.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OidcArgs {
    /// OIDC issuer URL; enables OIDC sign-in (with --oidc-client-id).
    #[arg(long, env = "ZTMESH_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Client id registered at the IdP.
    #[arg(long, env = "ZTMESH_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// Client secret (prefer --oidc-client-secret-file: a flag shows in the process list).
    #[arg(long, env = "ZTMESH_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// File holding the client secret.
    #[arg(long, env = "ZTMESH_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// Public base URL the IdP redirects to (+ /oidc/callback) [default: the HTTP base URL].
    #[arg(long, env = "ZTMESH_OIDC_REDIRECT_BASE")]
    pub oidc_redirect_base: Option<String>,
    /// Scopes to ask for (openid among them).
    #[arg(long, env = "ZTMESH_OIDC_SCOPES", value_delimiter = ',')]
    pub oidc_scopes: Option<Vec<String>>,
    /// Ask for consent explicitly (true|false).
    #[arg(long, env = "ZTMESH_OIDC_PROMPT_CONSENT")]
    pub oidc_prompt_consent: Option<bool>,
    /// ID token claim naming the user.
    #[arg(long, env = "ZTMESH_OIDC_USER_CLAIM")]
    pub oidc_user_claim: Option<String>,
    /// ID token claim holding the groups.
    #[arg(long, env = "ZTMESH_OIDC_GROUPS_CLAIM")]
    pub oidc_groups_claim: Option<String>,
    /// IdP group mapped onto a policy group, as IDP_GROUP=group:NAME (repeatable).
    #[arg(long, env = "ZTMESH_OIDC_GROUP_MAP", value_delimiter = ',', value_parser = group_mapping)]
    pub oidc_group_map: Option<Vec<(String, String)>>,
    /// Prefix for IdP groups not in the map.
    #[arg(long, env = "ZTMESH_OIDC_GROUP_PREFIX")]
    pub oidc_group_prefix: Option<String>,
    /// Keep IdP groups that are not in the map, with the prefix (true|false).
    #[arg(long, env = "ZTMESH_OIDC_MAP_UNLISTED_GROUPS")]
    pub oidc_map_unlisted_groups: Option<bool>,
    /// Refuse sign-ins without a second factor in `amr` (true|false).
    #[arg(long, env = "ZTMESH_OIDC_REQUIRE_MFA")]
    pub oidc_require_mfa: Option<bool>,
    /// `amr` values that count as a second factor.
    #[arg(long, env = "ZTMESH_OIDC_MFA_AMR_VALUES", value_delimiter = ',')]
    pub oidc_mfa_amr_values: Option<Vec<String>>,
    /// Extra PEM CA certificate trusted for the IdP.
    #[arg(long, env = "ZTMESH_OIDC_EXTRA_CA_CERT")]
    pub oidc_extra_ca_cert: Option<PathBuf>,
    /// Allow an http:// issuer (tests and labs only) (true|false).
    #[arg(long, env = "ZTMESH_OIDC_ALLOW_HTTP_ISSUER")]
    pub oidc_allow_http_issuer: Option<bool>,
    /// Seconds a started sign-in may take.
    #[arg(long, env = "ZTMESH_OIDC_LOGIN_TIMEOUT_SECS")]
    pub oidc_login_timeout_secs: Option<u64>,
    /// Seconds each request to the IdP may take.
    #[arg(long, env = "ZTMESH_OIDC_HTTP_TIMEOUT_SECS")]
    pub oidc_http_timeout_secs: Option<u64>,
}

fn group_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((idp, group)) if !idp.is_empty() && !group.is_empty() => {
            Ok((idp.to_owned(), group.to_owned()))
        }
        _ => Err(format!("{s:?}: expected IDP_GROUP=group:NAME")),
    }
}

impl OidcArgs {
    fn any(&self) -> bool {
        let OidcArgs {
            oidc_issuer,
            oidc_client_id,
            oidc_client_secret,
            oidc_client_secret_file,
            oidc_redirect_base,
            oidc_scopes,
            oidc_prompt_consent,
            oidc_user_claim,
            oidc_groups_claim,
            oidc_group_map,
            oidc_group_prefix,
            oidc_map_unlisted_groups,
            oidc_require_mfa,
            oidc_mfa_amr_values,
            oidc_extra_ca_cert,
            oidc_allow_http_issuer,
            oidc_login_timeout_secs,
            oidc_http_timeout_secs,
        } = self;
        oidc_issuer.is_some()
            || oidc_client_id.is_some()
            || oidc_client_secret.is_some()
            || oidc_client_secret_file.is_some()
            || oidc_redirect_base.is_some()
            || oidc_scopes.is_some()
            || oidc_prompt_consent.is_some()
            || oidc_user_claim.is_some()
            || oidc_groups_claim.is_some()
            || oidc_group_map.is_some()
            || oidc_group_prefix.is_some()
            || oidc_map_unlisted_groups.is_some()
            || oidc_require_mfa.is_some()
            || oidc_mfa_amr_values.is_some()
            || oidc_extra_ca_cert.is_some()
            || oidc_allow_http_issuer.is_some()
            || oidc_login_timeout_secs.is_some()
            || oidc_http_timeout_secs.is_some()
    }

    /// The effective OIDC settings: these flags over the file's table. Without a table, the
    /// flags must name the issuer and the client id; the redirect base defaults to
    /// `http_base_url`. `None`: OIDC is off.
    pub fn merge(
        &self,
        file: Option<OidcConfig>,
        http_base_url: &str,
    ) -> Result<Option<OidcConfig>, ConfigError> {
        let mut cfg = match file {
            Some(c) => c,
            None if !self.any() => return Ok(None),
            None => match (&self.oidc_issuer, &self.oidc_client_id) {
                (Some(issuer), Some(client_id)) => {
                    OidcConfig::new(issuer.clone(), client_id.clone(), http_base_url)
                }
                _ => return Err(ConfigError::Invalid(
                    "OIDC settings need --oidc-issuer and --oidc-client-id (or an [oidc] table)"
                        .into(),
                )),
            },
        };
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut cfg.issuer, &self.oidc_issuer);
        set(&mut cfg.client_id, &self.oidc_client_id);
        if let Some(s) = &self.oidc_client_secret {
            cfg.client_secret = Some(SecretString::new(s.clone()));
        }
        if let Some(f) = &self.oidc_client_secret_file {
            cfg.client_secret_file = Some(f.clone());
        }
        set(&mut cfg.redirect_base, &self.oidc_redirect_base);
        set(&mut cfg.scopes, &self.oidc_scopes);
        set(&mut cfg.prompt_consent, &self.oidc_prompt_consent);
        set(&mut cfg.user_claim, &self.oidc_user_claim);
        set(&mut cfg.groups_claim, &self.oidc_groups_claim);
        if let Some(map) = &self.oidc_group_map {
            cfg.group_map = map.iter().cloned().collect();
        }
        set(&mut cfg.group_prefix, &self.oidc_group_prefix);
        set(&mut cfg.map_unlisted_groups, &self.oidc_map_unlisted_groups);
        set(&mut cfg.require_mfa, &self.oidc_require_mfa);
        set(&mut cfg.mfa_amr_values, &self.oidc_mfa_amr_values);
        if let Some(p) = &self.oidc_extra_ca_cert {
            cfg.extra_ca_cert = Some(p.clone());
        }
        set(&mut cfg.allow_http_issuer, &self.oidc_allow_http_issuer);
        set(&mut cfg.login_timeout_secs, &self.oidc_login_timeout_secs);
        set(&mut cfg.http_timeout_secs, &self.oidc_http_timeout_secs);
        cfg.validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        oidc: OidcArgs,
    }

    fn flags(args: &[&str]) -> OidcArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
            .oidc
    }

    #[test]
    fn flags_win_over_the_file_field_by_field() {
        let mut file = OidcConfig::new("https://file.example", "file-client", "https://r.example");
        file.user_claim = "preferred_username".into();
        let got = flags(&[
            "--oidc-issuer",
            "https://flag.example",
            "--oidc-require-mfa=false",
            "--oidc-scopes",
            "openid,email",
            "--oidc-group-map",
            "Engineering=group:eng",
            "--oidc-group-map",
            "Ops=group:ops",
        ])
        .merge(Some(file), "https://base.example")
        .unwrap()
        .unwrap();
        assert_eq!(got.issuer, "https://flag.example");
        assert_eq!(got.client_id, "file-client", "kept from the file");
        assert_eq!(got.user_claim, "preferred_username", "kept from the file");
        assert_eq!(got.redirect_base, "https://r.example");
        assert!(!got.require_mfa);
        assert_eq!(got.scopes, ["openid", "email"]);
        assert_eq!(got.group_map["Ops"], "group:ops");
        assert_eq!(got.group_map.len(), 2);
    }

    #[test]
    fn flags_alone_configure_oidc_or_say_what_is_missing() {
        assert!(flags(&[]).merge(None, "https://b").unwrap().is_none());
        let got = flags(&[
            "--oidc-issuer",
            "https://idp.example",
            "--oidc-client-id",
            "ztmesh",
        ])
        .merge(None, "https://coord.example:7080")
        .unwrap()
        .unwrap();
        assert_eq!(
            got.redirect_uri(),
            "https://coord.example:7080/oidc/callback"
        );
        assert!(got.require_mfa, "defaults as for the file");
        let err = flags(&["--oidc-require-mfa=false"])
            .merge(None, "https://b")
            .unwrap_err();
        assert!(err.to_string().contains("--oidc-issuer"), "{err}");
        // The merged result is validated like the file.
        let err = flags(&["--oidc-issuer", "http://idp", "--oidc-client-id", "c"])
            .merge(None, "https://b")
            .unwrap_err();
        assert!(err.to_string().contains("allow_http_issuer"), "{err}");
        assert!(Cli::try_parse_from(["serve", "--oidc-group-map", "nogroup"]).is_err());
    }
}
