//! When a refused batch is sent again.

use std::time::Duration;

use super::Refused;

/// How a batch is retried: up to [`Retry::ATTEMPTS`] attempts, exponential back-off from
/// [`Retry::FIRST`] (capped at [`Retry::CAP`]) with full jitter (a random wait up to the
/// back-off, so sidecars that lost the same collector do not come back in step), or the
/// collector's `Retry-After` as given; an attempt is only made if it can end (its timeout
/// included) within [`Retry::BUDGET`] of the first, so the export thread moves on to newer
/// spans.
pub struct Retry;

impl Retry {
    /// Attempts per batch, the first included.
    pub const ATTEMPTS: u32 = 5;
    /// The first back-off.
    pub const FIRST: Duration = Duration::from_millis(200);
    /// The longest back-off (a `Retry-After` is waited as given, within the budget).
    pub const CAP: Duration = Duration::from_secs(5);
    /// Time from the first attempt after which a batch is given up.
    pub const BUDGET: Duration = Duration::from_secs(30);

    /// The wait after attempt `attempt` (1 = the first) failed, or `None` to give up; `elapsed`
    /// since the first attempt, `timeout` per attempt.
    pub fn wait(
        attempt: u32,
        refused: &Refused,
        elapsed: Duration,
        timeout: Duration,
    ) -> Option<Duration> {
        if !refused.retryable || attempt >= Self::ATTEMPTS {
            return None;
        }
        let wait = match refused.after {
            Some(after) => after,
            None => {
                let backoff = Self::FIRST
                    .saturating_mul(1 << attempt.saturating_sub(1).min(16))
                    .min(Self::CAP);
                let random = std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    attempt,
                );
                backoff.mul_f64((random % 1_000_001) as f64 / 1_000_000.0)
            }
        };
        // A collector's wait may be any number of seconds: past the budget, not an overflow.
        let done = elapsed
            .checked_add(wait)
            .and_then(|t| t.checked_add(timeout));
        done.is_some_and(|t| t <= Self::BUDGET).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_within_the_attempts_and_the_budget() {
        const T: Duration = Duration::from_secs(1);
        let retry = Refused::retry("unavailable".into(), None);
        for attempt in 1..Retry::ATTEMPTS {
            let ceiling = Retry::FIRST
                .saturating_mul(1 << (attempt - 1))
                .min(Retry::CAP);
            let waits: Vec<_> = (0..50)
                .filter_map(|_| Retry::wait(attempt, &retry, Duration::ZERO, T))
                .collect();
            assert_eq!(waits.len(), 50, "attempt {attempt} is retried");
            assert!(
                waits.iter().all(|w| *w <= ceiling),
                "{waits:?} <= {ceiling:?}"
            );
            // Full jitter: not one fixed wait that every sidecar would share.
            assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
        }
        assert_eq!(
            Retry::wait(Retry::ATTEMPTS, &retry, Duration::ZERO, T),
            None
        );
        assert!(Retry::wait(0, &retry, Duration::ZERO, T).is_some_and(|w| w <= Retry::FIRST));
        assert_eq!(
            Retry::wait(1, &Refused::fatal("bad".into()), Duration::ZERO, T),
            None
        );
        // The collector's Retry-After is waited for as asked, within the budget.
        let after = Refused::retry("busy".into(), Some(Duration::from_secs(7)));
        assert_eq!(
            Retry::wait(1, &after, Duration::ZERO, T),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            Retry::wait(1, &after, Retry::BUDGET - Duration::from_secs(7), T),
            None
        );
        let forever = Refused {
            after: Some(Duration::from_secs(u64::MAX)),
            ..after
        };
        assert_eq!(Retry::wait(1, &forever, Duration::ZERO, T), None);
    }
}
