//! Wall-clock instants as plain numbers, so that every piece of logic takes `now` as an argument.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch (UTC). The only notion of wall-clock time on the wire.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub fn saturating_add_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }
    pub fn saturating_sub_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_sub(ms))
    }
    /// Milliseconds from `self` until `later` (0 if `later` is not later).
    pub fn until(self, later: UnixMillis) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
