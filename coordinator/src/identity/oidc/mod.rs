//! OpenID Connect relying party: discovery, authorization code + PKCE + nonce + state, ID
//! token verification (JWKS signature, `iss`, `aud`, `exp`, `nonce`), MFA via `amr`, groups
//! mapping, and refresh-token re-verification.
//!
//! [`OidcProvider`] holds the protocol; [`router`] serves `GET /oidc/start/{login_id}` and
//! `GET /oidc/callback` and hands finished logins to a [`super::LoginSink`].

mod claims;
mod config;
mod pending;
mod provider;
mod routes;

pub use claims::{check_mfa, map_groups};
pub use config::{OidcConfig, SecretString};
pub use openidconnect::ClaimsVerificationError;
pub use provider::{CallbackError, OidcProvider, VerifiedLogin};
pub use routes::router;

/// Why an OIDC sign-in or re-verification failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("invalid OIDC configuration: {0}")]
    Config(String),
    #[error("OIDC discovery at {issuer} failed: {reason}")]
    Discovery { issuer: String, reason: String },
    #[error("invalid login id")]
    InvalidLoginId,
    #[error("too many sign-ins in progress; try again later")]
    TooManyPending,
    #[error("unknown or already used sign-in state (start the sign-in again)")]
    UnknownState,
    #[error("this sign-in took too long and expired; start it again")]
    LoginExpired,
    #[error("the authorization response names issuer {got}, expected {expected}")]
    IssuerMismatch { got: String, expected: String },
    #[error("the identity provider refused the sign-in: {0}")]
    Provider(String),
    #[error("could not reach the identity provider: {0}")]
    Transport(String),
    #[error("the identity provider answered unexpectedly: {0}")]
    BadResponse(String),
    #[error("the identity provider refused the token request: {0}")]
    TokenRequest(String),
    #[error("the identity provider returned no ID token")]
    NoIdToken,
    #[error("ID token rejected: {0}")]
    IdToken(#[source] ClaimsVerificationError),
    #[error(
        "multi-factor authentication is required: the identity provider reports only {amr:?}; \
         sign in with a second factor"
    )]
    MfaRequired {
        amr: Vec<String>,
        /// The user the (otherwise valid) ID token names, for the audit log.
        user: Option<String>,
    },
    #[error("the identity provider says the email address is not verified")]
    EmailNotVerified,
    #[error("the ID token lacks the '{0}' claim")]
    MissingClaim(String),
    #[error("the refreshed ID token names subject {got}, expected {expected}")]
    SubjectChanged { got: String, expected: String },
    #[error("re-verification refused by the identity provider: {0}")]
    RefreshRejected(String),
}

impl OidcError {
    /// The user an otherwise valid ID token named, when the refusal came after it was read.
    pub fn user(&self) -> Option<&str> {
        match self {
            OidcError::MfaRequired { user, .. } => user.as_deref(),
            _ => None,
        }
    }

    /// Whether the fault lies with the user or the token (as opposed to reaching the IdP or
    /// our configuration). Re-verification should end a session only on a refusal and retry
    /// later otherwise, so that an IdP outage does not cut every OIDC user off.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            OidcError::Config(_)
                | OidcError::Discovery { .. }
                | OidcError::Transport(_)
                | OidcError::BadResponse(_)
                | OidcError::TooManyPending
        )
    }
}
