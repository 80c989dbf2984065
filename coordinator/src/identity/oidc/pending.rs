//! Sign-ins started but not yet finished: keyed by the OAuth `state`, single-use, expiring.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::{Nonce, PkceCodeVerifier};

use super::OidcError;

/// Upper bound on concurrent sign-ins, so unauthenticated `/oidc/start` calls cannot grow
/// memory without limit.
pub const MAX_PENDING: usize = 10_000;

/// What the callback needs to finish one sign-in.
pub struct Pending {
    pub login_id: String,
    pub pkce_verifier: PkceCodeVerifier,
    pub nonce: Nonce,
    pub started: Instant,
}

pub struct PendingLogins {
    ttl: Duration,
    map: Mutex<HashMap<String, Pending>>,
}

impl PendingLogins {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers a sign-in under `state`, dropping expired ones first.
    pub fn insert(&self, state: String, pending: Pending, now: Instant) -> Result<(), OidcError> {
        let mut map = self.map.lock().expect("pending logins lock poisoned");
        map.retain(|_, p| now.saturating_duration_since(p.started) < self.ttl);
        if map.len() >= MAX_PENDING {
            return Err(OidcError::TooManyPending);
        }
        map.insert(state, pending);
        Ok(())
    }

    /// Takes the sign-in for `state` out (it cannot be used twice); expired ones are refused.
    pub fn take(&self, state: &str, now: Instant) -> Result<Pending, OidcError> {
        let pending = self
            .map
            .lock()
            .expect("pending logins lock poisoned")
            .remove(state)
            .ok_or(OidcError::UnknownState)?;
        if now.saturating_duration_since(pending.started) >= self.ttl {
            return Err(OidcError::LoginExpired);
        }
        Ok(pending)
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("pending logins lock poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(login: &str, at: Instant) -> Pending {
        Pending {
            login_id: login.into(),
            pkce_verifier: PkceCodeVerifier::new("v".repeat(43)),
            nonce: Nonce::new("n".into()),
            started: at,
        }
    }

    #[test]
    fn single_use_and_expiry() {
        let t0 = Instant::now();
        let p = PendingLogins::new(Duration::from_secs(600));
        p.insert("s1".into(), pending("l1", t0), t0).unwrap();
        p.insert("s2".into(), pending("l2", t0), t0).unwrap();
        assert_eq!(p.take("s1", t0).unwrap().login_id, "l1");
        assert!(matches!(p.take("s1", t0), Err(OidcError::UnknownState)));
        let late = t0 + Duration::from_secs(601);
        assert!(matches!(p.take("s2", late), Err(OidcError::LoginExpired)));
        assert!(matches!(p.take("nope", t0), Err(OidcError::UnknownState)));
    }

    #[test]
    fn expired_entries_are_swept_on_insert() {
        let t0 = Instant::now();
        let p = PendingLogins::new(Duration::from_secs(10));
        p.insert("a".into(), pending("l", t0), t0).unwrap();
        let later = t0 + Duration::from_secs(11);
        p.insert("b".into(), pending("l", later), later).unwrap();
        assert_eq!(p.len(), 1);
    }
}
