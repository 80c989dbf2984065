//! Who a user is once they have proven it, and where a finished login is handed over.
//!
//! [`oidc`] is the OpenID Connect relying party. The control plane receives every finished
//! login, local or OIDC, as an [`Identity`] through the [`LoginSink`] trait, so that this module
//! does not depend on the control plane's types.

pub mod oidc;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// How the user proved their identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Local account: argon2 password + TOTP.
    LocalTotp,
    /// OpenID Connect relying party.
    Oidc,
}

/// An OIDC refresh token. A bearer secret: its `Debug` is redacted so that an `Identity` can be
/// logged; use [`RefreshToken::expose`] only to store or send it.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// A verified user identity, as handed to the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name policies refer to (for OIDC the configured `user_claim`, e.g. the email).
    pub user: String,
    /// Policy groups, already mapped (e.g. `group:eng`), sorted and without duplicates.
    pub groups: Vec<String>,
    pub method: AuthMethod,
    /// For OIDC logins that asked for `offline_access`: the token for later re-verification
    /// with [`oidc::OidcProvider::refresh`]. Providers may rotate it: store the newest one.
    pub refresh_token: Option<RefreshToken>,
    /// Authentication method references (RFC 8176) the IdP reported, e.g. `["pwd","otp"]`.
    pub amr: Vec<String>,
    /// For OIDC: the IdP's stable subject (`sub`), to check that a refresh names the same user.
    pub subject: Option<String>,
}

impl Identity {
    /// An identity proven by a local account (password + TOTP).
    pub fn local(user: impl Into<String>, groups: Vec<String>) -> Self {
        Self {
            user: user.into(),
            groups,
            method: AuthMethod::LocalTotp,
            refresh_token: None,
            amr: vec!["pwd".into(), "otp".into()],
            subject: None,
        }
    }
}

/// Why the control plane refused a finished login; shown to the user on the result page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoginRejected(pub String);

/// Future returned by [`LoginSink::complete_login`].
pub type LoginFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LoginRejected>> + Send + 'a>>;

/// Future returned by [`LoginSink::fail_login`].
pub type RefusalFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where a finished login goes: implemented by the control plane (`ControlPlane`).
pub trait LoginSink: Send + Sync + 'static {
    /// Whether `login_id` names a login that waits for a user. Checked before sending the
    /// browser to the IdP, so that a stale or made-up link fails early with a clear page.
    fn login_pending(&self, login_id: &str) -> bool {
        let _ = login_id;
        true
    }

    /// Attach `identity` to the device waiting on `login_id`.
    fn complete_login<'a>(&'a self, login_id: &'a str, identity: Identity) -> LoginFuture<'a>;

    /// The sign-in for `login_id` was refused (by the IdP, or by the checks on its answer):
    /// record it, and tell the device waiting on it why. `user` when the IdP named one.
    fn fail_login<'a>(
        &'a self,
        login_id: &'a str,
        user: Option<&'a str>,
        reason: &'a str,
    ) -> RefusalFuture<'a> {
        let _ = (login_id, user, reason);
        Box::pin(async {})
    }
}

/// Adapts a closure into a [`LoginSink`] (tests, or wiring before the control plane exists).
pub struct FnLoginSink<F>(pub F);

impl<F, Fut> LoginSink for FnLoginSink<F>
where
    F: Fn(String, Identity) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), LoginRejected>> + Send + 'static,
{
    fn complete_login<'a>(&'a self, login_id: &'a str, identity: Identity) -> LoginFuture<'a> {
        Box::pin((self.0)(login_id.to_string(), identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_token_debug_is_redacted() {
        let mut id = Identity::local("alice", vec![]);
        id.refresh_token = Some(RefreshToken::new("super-secret-value"));
        let shown = format!("{id:?}");
        assert!(!shown.contains("super-secret-value"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
