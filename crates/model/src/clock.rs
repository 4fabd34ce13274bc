//! The one monotonic clock that rolling windows, verdict windows, automatic rollback and
//! drain read: tokio's. A test that pauses tokio's time (`#[tokio::test(start_paused = true)]`,
//! `tokio::time::advance`) moves every window, verdict and timer read on that runtime, so no
//! such test waits for real time to pass. (A sidecar's control plane runs a runtime of its own,
//! whose clock a test's pause does not move.)
//! Outside a paused runtime (production, and threads without a runtime) it is the system's
//! monotonic clock at the same cost: tokio only adds a check when built with `test-util`,
//! which only test builds enable.

/// A point on the clock.
pub type Instant = tokio::time::Instant;

/// Now, on the clock.
pub fn now() -> Instant {
    Instant::now()
}
