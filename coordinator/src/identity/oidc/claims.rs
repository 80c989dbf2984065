//! Pure checks on verified ID token claims: the user name, the MFA requirement (`amr`) and
//! the mapping of IdP groups onto policy groups.

use serde_json::{Map, Value};

use super::{OidcConfig, OidcError};

/// Characters a mapped group name may contain after its prefix. Policy group names are
/// identifiers; an IdP group such as "Domain Users" is dropped (with a log line) rather than
/// turned into a name the policy cannot refer to.
fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Maps the raw groups claim onto policy groups: `group_map` first, then `group_prefix` for
/// the rest (if `map_unlisted_groups`). Sorted, deduplicated. A missing claim means no groups.
pub fn map_groups(claim: Option<&Value>, cfg: &OidcConfig) -> Vec<String> {
    let raw: Vec<&str> = match claim {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(one)) => vec![one.as_str()],
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for group in raw {
        if let Some(mapped) = cfg.group_map.get(group) {
            out.push(mapped.clone());
        } else if cfg.map_unlisted_groups {
            if valid_group_name(group) {
                out.push(format!("{}{}", cfg.group_prefix, group));
            } else {
                tracing::warn!(group, "IdP group name not usable in policies; dropped");
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Refuses the login when MFA is required and `amr` names no second factor.
pub fn check_mfa(amr: &[String], cfg: &OidcConfig) -> Result<(), OidcError> {
    if !cfg.require_mfa {
        return Ok(());
    }
    if amr.iter().any(|a| cfg.mfa_amr_values.contains(a)) {
        Ok(())
    } else {
        Err(OidcError::MfaRequired {
            amr: amr.to_vec(),
            user: None,
        })
    }
}

/// The user name from the configured claim; it must be a non-empty string.
pub fn user_name(claims: &Map<String, Value>, cfg: &OidcConfig) -> Result<String, OidcError> {
    match claims.get(&cfg.user_claim) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(OidcError::MissingClaim(cfg.user_claim.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> OidcConfig {
        OidcConfig::new("https://i", "c", "https://r")
    }

    #[test]
    fn groups_prefix_map_and_dedup() {
        let mut c = cfg();
        c.group_map.insert("Engineering".into(), "group:eng".into());
        let got = map_groups(
            Some(&json!([
                "ops",
                "Engineering",
                "eng",
                "ops",
                "Domain Users",
                7
            ])),
            &c,
        );
        assert_eq!(got, vec!["group:eng", "group:ops"]);
        c.map_unlisted_groups = false;
        assert_eq!(
            map_groups(Some(&json!(["ops", "Engineering"])), &c),
            vec!["group:eng"]
        );
        assert_eq!(map_groups(Some(&json!("ops")), &cfg()), vec!["group:ops"]);
        assert!(map_groups(None, &cfg()).is_empty());
    }

    #[test]
    fn mfa_rules() {
        let c = cfg();
        check_mfa(&["pwd".into(), "otp".into()], &c).unwrap();
        let err = check_mfa(&["pwd".into()], &c).unwrap_err();
        assert!(
            err.to_string()
                .contains("multi-factor authentication is required"),
            "{err}"
        );
        assert!(check_mfa(&[], &c).is_err());
        let mut off = cfg();
        off.require_mfa = false;
        check_mfa(&["pwd".into()], &off).unwrap();
    }

    #[test]
    fn user_claim_required() {
        let c = cfg();
        let claims = json!({"email": "a@x", "sub": "1"});
        assert_eq!(user_name(claims.as_object().unwrap(), &c).unwrap(), "a@x");
        let err = user_name(json!({"sub": "1"}).as_object().unwrap(), &c).unwrap_err();
        assert!(matches!(err, OidcError::MissingClaim(ref n) if n == "email"));
    }
}
