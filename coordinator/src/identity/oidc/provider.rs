//! The relying party itself: one discovered provider, its pending sign-ins, and the token
//! checks.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::url::Url;
use openidconnect::{
    reqwest, AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpClientError,
    IdTokenClaims, IdTokenFields, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    RedirectUrl, RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::claims::{check_mfa, map_groups, user_name};
use super::pending::{Pending, PendingLogins};
use super::{ClaimsVerificationError, OidcConfig, OidcError};
use crate::identity::{AuthMethod, Identity, RefreshToken};

/// Every ID token claim beyond the standard ones (the groups claim name is configurable, so
/// they are kept as a map).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub claims: Map<String, Value>,
}
impl AdditionalClaims for ExtraClaims {}

type RpIdTokenFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type RpTokenResponse = StandardTokenResponse<RpIdTokenFields, CoreTokenType>;
type RpClaims = IdTokenClaims<ExtraClaims, CoreGenderClaim>;
type RpClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    RpTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type TokenError = RequestTokenError<
    HttpClientError<reqwest::Error>,
    StandardErrorResponse<CoreErrorResponseType>,
>;

/// A finished sign-in: which pending login it belongs to, and who the user is.
#[derive(Debug)]
pub struct VerifiedLogin {
    pub login_id: String,
    pub identity: Identity,
}

/// A refused callback, with the pending login it belonged to when its state was valid (so
/// that the waiting device can be told).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CallbackError {
    pub login_id: Option<String>,
    #[source]
    pub error: OidcError,
}

/// The IdP's keys are fetched again at most this often when a token names a key id we do
/// not know (key rotation), so forged key ids cannot make us hammer the IdP.
const JWKS_REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// One discovered OpenID provider and this coordinator's registration at it.
pub struct OidcProvider {
    config: OidcConfig,
    metadata: CoreProviderMetadata,
    client_secret: Option<ClientSecret>,
    /// Rebuilt (with fresh JWKS) when the IdP rotates its signing key.
    client: RwLock<Arc<RpClient>>,
    /// When the JWKS was last fetched again after discovery.
    jwks_refetched: Mutex<Option<Instant>>,
    http: reqwest::Client,
    issuer: IssuerUrl,
    pending: PendingLogins,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

fn build_http_client(cfg: &OidcConfig) -> Result<reqwest::Client, OidcError> {
    // No redirects: the OIDC endpoints must answer directly (SSRF hardening, as the
    // openidconnect docs advise).
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(cfg.http_timeout_secs));
    if let Some(path) = &cfg.extra_ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            OidcError::Config(format!("cannot read extra_ca_cert {}: {e}", path.display()))
        })?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| OidcError::Config(format!("extra_ca_cert {}: {e}", path.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))
}

/// The full error chain, for messages (reqwest hides the cause in `source()`).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(cause) = cur {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        cur = cause.source();
    }
    text
}

fn token_error(err: TokenError) -> OidcError {
    match err {
        RequestTokenError::ServerResponse(resp) => {
            let mut text = resp.error().as_ref().to_string();
            if let Some(desc) = resp.error_description() {
                text.push_str(": ");
                text.push_str(desc);
            }
            OidcError::TokenRequest(text)
        }
        RequestTokenError::Request(e) => OidcError::Transport(chain(&e)),
        // An unparseable answer (an HTML error page from a proxy, a 5xx) says nothing about the
        // user: it is not a refusal.
        other => OidcError::BadResponse(chain(&other)),
    }
}

fn build_client(
    config: &OidcConfig,
    metadata: CoreProviderMetadata,
    secret: Option<ClientSecret>,
) -> Result<RpClient, OidcError> {
    let redirect = RedirectUrl::new(config.redirect_uri())
        .map_err(|e| OidcError::Config(format!("redirect_base: {e}")))?;
    Ok(
        Client::from_provider_metadata(metadata, ClientId::new(config.client_id.clone()), secret)
            .set_redirect_uri(redirect),
    )
}

/// Login ids come from the control plane (random, URL-safe); anything else is refused before
/// it reaches a log line or the state table.
fn valid_login_id(id: &str) -> bool {
    (8..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl OidcProvider {
    /// Fetches the provider's discovery document and JWKS and builds the client.
    pub async fn discover(config: OidcConfig) -> Result<Self, OidcError> {
        config.validate()?;
        let http = build_http_client(&config)?;
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer.clone(), &http)
            .await
            .map_err(|e| OidcError::Discovery {
                issuer: config.issuer.clone(),
                reason: chain(&e),
            })?;
        let secret = config
            .load_client_secret()?
            .map(|s| ClientSecret::new(s.expose().to_string()));
        let client = build_client(&config, metadata.clone(), secret.clone())?;
        tracing::info!(issuer = %config.issuer, client_id = %config.client_id, "OIDC provider discovered");
        let pending = PendingLogins::new(Duration::from_secs(config.login_timeout_secs));
        Ok(Self {
            config,
            metadata,
            client_secret: secret,
            client: RwLock::new(Arc::new(client)),
            jwks_refetched: Mutex::new(None),
            http,
            issuer,
            pending,
        })
    }

    fn client(&self) -> Arc<RpClient> {
        self.client.read().expect("client lock poisoned").clone()
    }

    /// Fetches the IdP's JWKS again and rebuilds the client with it, unless that was done
    /// less than [`JWKS_REFETCH_MIN_INTERVAL`] ago. Returns whether the keys were refreshed.
    async fn refetch_jwks(&self) -> Result<bool, OidcError> {
        {
            let mut last = self.jwks_refetched.lock().expect("jwks lock poisoned");
            if last.is_some_and(|t| t.elapsed() < JWKS_REFETCH_MIN_INTERVAL) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        let jwks = CoreJsonWebKeySet::fetch_async(self.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Transport(format!("fetching the IdP's keys: {}", chain(&e))))?;
        let metadata = self.metadata.clone().set_jwks(jwks);
        let client = build_client(&self.config, metadata, self.client_secret.clone())?;
        *self.client.write().expect("client lock poisoned") = Arc::new(client);
        tracing::info!(issuer = %self.config.issuer, "OIDC signing keys fetched again (unknown key id)");
        Ok(true)
    }

    /// Verifies the response's ID token; if it names a key id the cached JWKS lacks (the IdP
    /// rotated its key), fetches the JWKS once and verifies again.
    async fn verify(
        &self,
        response: &RpTokenResponse,
        nonce: Option<&Nonce>,
        expected_subject: Option<&str>,
    ) -> Result<Identity, OidcError> {
        match self.identity_from(&self.client(), response, nonce, expected_subject) {
            Err(OidcError::IdToken(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            ))) if self.refetch_jwks().await? => {
                self.identity_from(&self.client(), response, nonce, expected_subject)
            }
            other => other,
        }
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Sign-ins started and not yet finished or expired.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Starts a sign-in for `login_id`: returns the IdP authorization URL to send the browser
    /// to (with a fresh PKCE challenge, nonce and state).
    pub fn start(&self, login_id: &str) -> Result<Url, OidcError> {
        if !valid_login_id(login_id) {
            return Err(OidcError::InvalidLoginId);
        }
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if self.config.prompt_consent {
            request = request.add_prompt(CoreAuthPrompt::Consent);
        }
        let (url, state, nonce) = request.url();
        self.pending.insert(
            state.secret().clone(),
            Pending {
                login_id: login_id.to_string(),
                pkce_verifier: verifier,
                nonce,
                started: Instant::now(),
            },
            Instant::now(),
        )?;
        tracing::info!(login_id, "OIDC sign-in started");
        Ok(url)
    }

    /// Abandons the sign-in for `state` (e.g. the IdP answered with an error), so the state
    /// cannot be used afterwards. Returns its login id if it was pending.
    pub fn abandon(&self, state: &str) -> Option<String> {
        self.pending
            .take(state, Instant::now())
            .ok()
            .map(|p| p.login_id)
    }

    /// Finishes a sign-in from the redirect's `code` and `state` (and `iss`, RFC 9207, if the
    /// IdP sent it): exchanges the code with the PKCE verifier, verifies the ID token and maps
    /// it to an [`Identity`].
    pub async fn callback(
        &self,
        code: &str,
        state: &str,
        iss: Option<&str>,
    ) -> Result<VerifiedLogin, CallbackError> {
        // The state is consumed before anything else, so that a failed attempt cannot be
        // retried with the same state.
        let pending = self
            .pending
            .take(state, Instant::now())
            .map_err(|error| CallbackError {
                login_id: None,
                error,
            })?;
        let login_id = pending.login_id.clone();
        let failed = |error| CallbackError {
            login_id: Some(login_id.clone()),
            error,
        };
        if let Some(got) = iss {
            if got != self.issuer.as_str() {
                return Err(failed(OidcError::IssuerMismatch {
                    got: got.to_string(),
                    expected: self.issuer.to_string(),
                }));
            }
        }
        let response = self
            .client()
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| failed(OidcError::Config(format!("token endpoint: {e}"))))?
            .set_pkce_verifier(pending.pkce_verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| failed(token_error(e)))?;
        let identity = self
            .verify(&response, Some(&pending.nonce), None)
            .await
            .map_err(failed)?;
        tracing::info!(
            login_id = %pending.login_id,
            user = %identity.user,
            groups = ?identity.groups,
            "OIDC sign-in verified"
        );
        Ok(VerifiedLogin {
            login_id: pending.login_id,
            identity,
        })
    }

    /// Re-verifies a user with their refresh token: the IdP must still issue a fresh ID token
    /// (a disabled user's refresh fails) that passes every check of a sign-in. If `subject`
    /// is given, the new ID token must name the same `sub`. The returned identity carries the
    /// newest refresh token (providers may rotate it).
    pub async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        subject: Option<&str>,
    ) -> Result<Identity, OidcError> {
        let token = openidconnect::RefreshToken::new(refresh_token.expose().to_string());
        let response = self
            .client()
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::Config(format!("token endpoint: {e}")))?
            .request_async(&self.http)
            .await
            .map_err(|e| match token_error(e) {
                OidcError::TokenRequest(text) => OidcError::RefreshRejected(text),
                other => other,
            })?;
        // A refreshed ID token carries no new nonce (OIDC Core 12.2): it is not checked here;
        // signature, iss, aud and exp are.
        let mut identity = self.verify(&response, None, subject).await?;
        if identity.refresh_token.is_none() {
            identity.refresh_token = Some(refresh_token.clone());
        }
        tracing::info!(user = %identity.user, "OIDC re-verification passed");
        Ok(identity)
    }

    fn identity_from(
        &self,
        client: &RpClient,
        response: &RpTokenResponse,
        nonce: Option<&Nonce>,
        expected_subject: Option<&str>,
    ) -> Result<Identity, OidcError> {
        let id_token = response
            .extra_fields()
            .id_token()
            .ok_or(OidcError::NoIdToken)?;
        let verifier = client.id_token_verifier();
        let claims: &RpClaims = match nonce {
            Some(nonce) => id_token.claims(&verifier, nonce),
            None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(OidcError::IdToken)?;
        let subject = claims.subject().as_str().to_string();
        if let Some(expected) = expected_subject {
            if expected != subject {
                return Err(OidcError::SubjectChanged {
                    got: subject,
                    expected: expected.to_string(),
                });
            }
        }
        let amr: Vec<String> = claims
            .auth_method_refs()
            .map(|v| v.iter().map(|a| a.as_str().to_string()).collect())
            .unwrap_or_default();
        // Standard claims are parsed into typed fields; the user claim may be one of them
        // (email, preferred_username) or a custom one, so look at the standard ones first.
        let extra = &claims.additional_claims().claims;
        let mut lookup = extra.clone();
        if let Some(email) = claims.email() {
            lookup
                .entry("email")
                .or_insert(Value::String(email.as_str().to_string()));
        }
        if let Some(name) = claims.preferred_username() {
            lookup
                .entry("preferred_username")
                .or_insert(Value::String(name.as_str().to_string()));
        }
        lookup
            .entry("sub")
            .or_insert(Value::String(subject.clone()));
        // An unverified email must not name a user: anyone could register it at some IdPs.
        if self.config.user_claim == "email" && claims.email_verified() == Some(false) {
            return Err(OidcError::EmailNotVerified);
        }
        let user = user_name(&lookup, &self.config)?;
        check_mfa(&amr, &self.config).map_err(|e| match e {
            OidcError::MfaRequired { amr, .. } => OidcError::MfaRequired {
                amr,
                user: Some(user.clone()),
            },
            other => other,
        })?;
        let groups = map_groups(lookup.get(&self.config.groups_claim), &self.config);
        Ok(Identity {
            user,
            groups,
            method: AuthMethod::Oidc,
            refresh_token: response
                .refresh_token()
                .map(|t| RefreshToken::new(t.secret().clone())),
            amr,
            subject: Some(subject),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_ids() {
        assert!(valid_login_id("abcdEFGH-123_x"));
        assert!(!valid_login_id("short"));
        assert!(!valid_login_id("has space in it"));
        assert!(!valid_login_id(&"x".repeat(129)));
        assert!(!valid_login_id("../../etc/passwd"));
    }
}
