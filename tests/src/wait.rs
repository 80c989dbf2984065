//! Readiness by polling: wait for a condition with a deadline instead of sleeping blindly.

use crate::LabError;
use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Some`, or fails after `timeout` naming `what` it waited for.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs_f64(),
            });
        }
        std::thread::sleep(POLL);
    }
}
