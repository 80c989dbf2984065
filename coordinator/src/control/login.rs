//! Pending interactive logins: unguessable ids handed out in `LoginUrl`s, completed by the web
//! layer (local account form or OIDC callback) with an [`Identity`].

pub use crate::identity::Identity;
use base64::Engine as _;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;
use ztmesh_common::ids::NodeId;
use ztmesh_common::time::UnixMillis;

/// Where a login stands, for the web layer's status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginStatus {
    /// Waiting for the user.
    Pending,
    /// Finished; the device is being admitted (or was).
    Completed { user: String },
    /// Past its deadline, or its device went away.
    Expired,
}

/// Why `complete_login` did not take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("unknown login id")]
    Unknown,
    #[error("this login has expired; start again from the device")]
    Expired,
    #[error("this login was already completed")]
    AlreadyCompleted,
    #[error("the device that started this login is no longer connected")]
    DeviceGone,
    #[error("re-authentication must be done by the device's owner ({expected})")]
    WrongUser { expected: String },
}

/// What the device waiting to join learns: who logged in, or why the sign-in was refused.
pub(crate) type JoinOutcome = Result<Identity, String>;

/// What a completed login is for.
pub(crate) enum Purpose {
    /// A device waiting on its control connection for its first admission.
    Join {
        tx: oneshot::Sender<JoinOutcome>,
        hostname: String,
    },
    /// An admitted device whose login session ran out.
    Reauth { node: NodeId, user: String },
}

/// Whom a refused sign-in was for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Join { hostname: String },
    Reauth { node: NodeId, user: String },
}

struct Entry {
    purpose: Option<Purpose>,
    expires_at: UnixMillis,
    completed_by: Option<String>,
}

/// How long a login id stays usable.
pub const LOGIN_TTL_MS: u64 = 10 * 60 * 1000;
/// Bound on pending logins, so that a flood of devices cannot grow this map without end.
const MAX_PENDING: usize = 20_000;

/// The registry of pending logins.
#[derive(Default)]
pub(crate) struct Logins {
    entries: Mutex<HashMap<String, Entry>>,
}

/// A new unguessable login id: 256 random bits, URL-safe.
fn new_login_id() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Logins {
    /// Register a login; returns its id, or `None` when too many are pending.
    pub(crate) fn start(&self, purpose: Purpose, now: UnixMillis) -> Option<String> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_PENDING {
            map.retain(|_, e| e.expires_at > now);
            if map.len() >= MAX_PENDING {
                return None;
            }
        }
        let id = new_login_id();
        map.insert(
            id.clone(),
            Entry {
                purpose: Some(purpose),
                expires_at: now.saturating_add_ms(LOGIN_TTL_MS),
                completed_by: None,
            },
        );
        Some(id)
    }

    /// Take the purpose of a login that the user just finished.
    pub(crate) fn complete(
        &self,
        id: &str,
        identity: &Identity,
        now: UnixMillis,
    ) -> Result<Purpose, LoginError> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(id).ok_or(LoginError::Unknown)?;
        if entry.expires_at <= now {
            map.remove(id);
            return Err(LoginError::Expired);
        }
        if let Some(Purpose::Reauth { user, .. }) = &entry.purpose {
            if *user != identity.user {
                return Err(LoginError::WrongUser {
                    expected: user.clone(),
                });
            }
        }
        let purpose = entry.purpose.take().ok_or(LoginError::AlreadyCompleted)?;
        if let Purpose::Join { tx, .. } = &purpose {
            if tx.is_closed() {
                map.remove(id);
                return Err(LoginError::DeviceGone);
            }
        }
        entry.completed_by = Some(identity.user.clone());
        Ok(purpose)
    }

    pub(crate) fn status(&self, id: &str, now: UnixMillis) -> Option<LoginStatus> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(id)?;
        Some(match (&e.completed_by, &e.purpose) {
            (Some(user), _) => LoginStatus::Completed { user: user.clone() },
            _ if e.expires_at <= now => LoginStatus::Expired,
            (None, Some(Purpose::Join { tx, .. })) if tx.is_closed() => LoginStatus::Expired,
            _ => LoginStatus::Pending,
        })
    }

    /// A sign-in for login `id` was refused. A device waiting to join is told `reason` and the
    /// login ends; a re-authentication stays open, so that its owner can try again.
    pub(crate) fn refuse(&self, id: &str, reason: &str) -> Option<Refused> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id)?.purpose.as_ref()? {
            Purpose::Reauth { node, user } => Some(Refused::Reauth {
                node: *node,
                user: user.clone(),
            }),
            Purpose::Join { .. } => match map.remove(id)?.purpose? {
                Purpose::Join { tx, hostname } => {
                    let _ = tx.send(Err(reason.to_owned()));
                    Some(Refused::Join { hostname })
                }
                Purpose::Reauth { .. } => None,
            },
        }
    }

    /// Forget a login (its device went away or it was answered).
    pub(crate) fn forget(&self, id: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }

    /// Drop expired entries.
    pub(crate) fn prune(&self, now: UnixMillis) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| e.expires_at > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join() -> (Purpose, oneshot::Receiver<JoinOutcome>) {
        let (tx, rx) = oneshot::channel();
        let hostname = "laptop".into();
        (Purpose::Join { tx, hostname }, rx)
    }

    fn reauth_of_alice() -> Purpose {
        Purpose::Reauth {
            node: NodeId(3),
            user: "alice".into(),
        }
    }

    fn ident(user: &str) -> Identity {
        let mut i = Identity::local(user, vec![]);
        i.refresh_token = Some(crate::identity::RefreshToken::new("secret-token"));
        i
    }

    #[test]
    fn ids_are_unguessable_and_single_use() {
        let l = Logins::default();
        let now = UnixMillis(1_000);
        let (purpose, _rx) = join();
        let id = l.start(purpose, now).unwrap();
        assert_eq!(id.len(), 43);
        assert_eq!(l.status(&id, now), Some(LoginStatus::Pending));
        assert!(matches!(
            l.complete(&id, &ident("a"), now),
            Ok(Purpose::Join { .. })
        ));
        assert_eq!(
            l.status(&id, now),
            Some(LoginStatus::Completed { user: "a".into() })
        );
        assert!(matches!(
            l.complete(&id, &ident("a"), now),
            Err(LoginError::AlreadyCompleted)
        ));
        assert!(matches!(
            l.complete("nope", &ident("a"), now),
            Err(LoginError::Unknown)
        ));
    }

    #[test]
    fn expired_and_orphaned_logins_are_refused() {
        let l = Logins::default();
        let now = UnixMillis(1_000);
        let (purpose, rx) = join();
        let id = l.start(purpose, now).unwrap();
        drop(rx);
        assert_eq!(l.status(&id, now), Some(LoginStatus::Expired));
        assert!(matches!(
            l.complete(&id, &ident("a"), now),
            Err(LoginError::DeviceGone)
        ));
        let (purpose, _rx) = join();
        let id = l.start(purpose, now).unwrap();
        let later = now.saturating_add_ms(LOGIN_TTL_MS);
        assert!(matches!(
            l.complete(&id, &ident("a"), later),
            Err(LoginError::Expired)
        ));
    }

    #[test]
    fn a_refused_join_tells_the_device_and_ends_a_refused_reauth_stays_open() {
        let l = Logins::default();
        let now = UnixMillis(1_000);
        let (purpose, mut rx) = join();
        let id = l.start(purpose, now).unwrap();
        assert_eq!(
            l.refuse(&id, "no MFA"),
            Some(Refused::Join {
                hostname: "laptop".into()
            })
        );
        assert_eq!(rx.try_recv().unwrap(), Err("no MFA".to_owned()));
        assert_eq!(l.status(&id, now), None, "the login is over");
        assert_eq!(l.refuse(&id, "again"), None);
        let id = l.start(reauth_of_alice(), now).unwrap();
        assert!(matches!(
            l.refuse(&id, "no MFA"),
            Some(Refused::Reauth { .. })
        ));
        assert_eq!(l.status(&id, now), Some(LoginStatus::Pending), "may retry");
    }

    #[test]
    fn reauth_must_be_the_same_user_and_debug_hides_tokens() {
        let l = Logins::default();
        let now = UnixMillis(1_000);
        let id = l.start(reauth_of_alice(), now).unwrap();
        assert!(matches!(
            l.complete(&id, &ident("mallory"), now),
            Err(LoginError::WrongUser { .. })
        ));
        assert!(matches!(
            l.complete(&id, &ident("alice"), now),
            Ok(Purpose::Reauth { .. })
        ));
        assert!(!format!("{:?}", ident("a")).contains("secret-token"));
    }
}
