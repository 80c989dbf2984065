//! The control client: the QUIC connection to the coordinator and the session that keeps the
//! device admitted (login, credentials, views, renewal, posture, endpoints, flow logs).

pub mod backoff;
pub mod conn;
pub mod endpoints;
pub mod plane;
pub mod session;
pub mod state;
pub mod tls;
pub mod url;

pub use plane::{PeerStats, Plane, PlaneSnapshot};
pub use session::{Deps, SessionCmd, SessionConfig, SessionEnd};
pub use state::{Event, Phase, Shared};
pub use url::JoinUrl;
