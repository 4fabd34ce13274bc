//! A lock-free rolling window per model version: requests, errors and a log-scale latency
//! histogram over the last ten slices of the window. Recording is a handful of relaxed atomic
//! adds; the canary comparison reads it. A slice is recycled by whichever request first sees it
//! stale, so a few counts can be lost at slice boundaries under concurrency (a statistics window,
//! not a ledger: the Prometheus counters stay exact).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Instant;

/// Slices per window.
pub const SLICES: usize = 10;
/// Latency buckets: bucket `i` holds latencies up to `FIRST · GROWTH^i` (50 µs · 1.15^i; the
/// last one is unbounded), so a quantile is known to within 15 %.
pub const BUCKETS: usize = 100;
const FIRST: f64 = 50e-6;
const GROWTH: f64 = 1.15;

#[derive(Debug)]
struct Slice {
    epoch: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Slice {
    fn new() -> Self {
        Self {
            epoch: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Requests, errors and latencies of one version over a rolling window. The slices (8 KB) are
/// allocated by the first request, so versions that take no traffic cost next to nothing.
#[derive(Debug)]
pub struct RollingWindow {
    start: Instant,
    slice: Duration,
    slices: std::sync::OnceLock<Box<[Slice; SLICES]>>,
}

/// What a window holds now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowTotals {
    /// Requests.
    pub requests: u64,
    /// Requests that failed (5xx, or no response).
    pub errors: u64,
    /// Latency counts per bucket.
    pub latency: Vec<u64>,
}

/// The latency bucket of a duration in seconds.
pub fn bucket(seconds: f64) -> usize {
    if seconds <= FIRST {
        return 0;
    }
    let i = ((seconds / FIRST).ln() / GROWTH.ln()).ceil();
    if i.is_finite() && i >= 0.0 {
        (i as usize).min(BUCKETS - 1)
    } else {
        BUCKETS - 1
    }
}

/// The upper bound of a latency bucket, in seconds.
pub fn bucket_upper(i: usize) -> f64 {
    FIRST * GROWTH.powi(i32::try_from(i).unwrap_or(i32::MAX))
}

impl WindowTotals {
    /// A latency quantile (the upper bound of the bucket holding it); `None` without data.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(i));
            }
        }
        Some(bucket_upper(BUCKETS - 1))
    }
}

impl RollingWindow {
    /// A window of `length` (ten slices).
    pub fn new(length: Duration) -> Self {
        Self {
            start: Instant::now(),
            slice: (length / u32::try_from(SLICES).unwrap_or(10)).max(Duration::from_millis(1)),
            slices: std::sync::OnceLock::new(),
        }
    }

    fn epoch(&self, at: Instant) -> u64 {
        let n = at.saturating_duration_since(self.start).as_nanos() / self.slice.as_nanos();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Record one request.
    pub fn record(&self, latency: Duration, error: bool) {
        let epoch = self.epoch(Instant::now());
        let slices = self
            .slices
            .get_or_init(|| Box::new(std::array::from_fn(|_| Slice::new())));
        let s = &slices[(epoch % SLICES as u64) as usize];
        let seen = s.epoch.load(Ordering::Acquire);
        if seen != epoch
            && s.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            s.requests.store(0, Ordering::Relaxed);
            s.errors.store(0, Ordering::Relaxed);
            for b in &s.latency {
                b.store(0, Ordering::Relaxed);
            }
        }
        s.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.latency[bucket(latency.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests and errors per slice, the current slice first, then one slice further back
    /// each (`SLICES` entries; a slice without traffic is `(0, 0)`), with how long ago the
    /// current slice started.
    pub fn by_slice(&self) -> (Vec<(u64, u64)>, Duration) {
        let at = Instant::now();
        let now = self.epoch(at);
        let mut out = vec![(0, 0); SLICES];
        for s in self.slices.get().into_iter().flat_map(|b| b.iter()) {
            let e = s.epoch.load(Ordering::Acquire);
            if e == u64::MAX || e > now || now - e >= SLICES as u64 {
                continue;
            }
            out[(now - e) as usize] = (
                s.requests.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
            );
        }
        let since = at.saturating_duration_since(self.start).as_nanos() % self.slice.as_nanos();
        (out, Duration::from_nanos(u64::try_from(since).unwrap_or(0)))
    }

    /// How long one slice lasts (a tenth of the window).
    pub fn slice_length(&self) -> Duration {
        self.slice
    }

    /// Totals over the window ending now.
    pub fn totals(&self) -> WindowTotals {
        let now = self.epoch(Instant::now());
        let mut t = WindowTotals {
            latency: vec![0; BUCKETS],
            ..WindowTotals::default()
        };
        for s in self.slices.get().into_iter().flat_map(|b| b.iter()) {
            let e = s.epoch.load(Ordering::Acquire);
            if e == u64::MAX || e > now || now - e >= SLICES as u64 {
                continue;
            }
            t.requests += s.requests.load(Ordering::Relaxed);
            t.errors += s.errors.load(Ordering::Relaxed);
            for (o, b) in t.latency.iter_mut().zip(&s.latency) {
                *o += b.load(Ordering::Relaxed);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors_are_read_per_slice_newest_first() {
        let w = RollingWindow::new(Duration::from_secs(60));
        w.record(Duration::from_millis(1), true);
        w.record(Duration::from_millis(1), false);
        let (slices, into) = w.by_slice();
        assert_eq!(slices.len(), SLICES);
        assert_eq!(slices[0], (2, 1), "the current slice comes first");
        assert!(slices[1..].iter().all(|s| *s == (0, 0)));
        assert!(into < w.slice_length());
    }

    #[test]
    fn buckets_grow_by_15_percent_and_quantiles_read_them() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(FIRST), 0);
        assert_eq!(bucket(FIRST * 1.1), 1);
        assert_eq!(bucket(1e9), BUCKETS - 1);
        for s in [1e-4, 1e-3, 0.02, 0.5, 3.0] {
            let upper = bucket_upper(bucket(s));
            assert!(upper >= s && upper < s * GROWTH * 1.0001, "{s} -> {upper}");
        }
        let w = RollingWindow::new(Duration::from_secs(60));
        assert_eq!(w.totals().requests, 0);
        assert_eq!(w.by_slice().0, vec![(0, 0); SLICES]);
        assert!(
            w.slices.get().is_none(),
            "no slices before the first request"
        );
        for i in 0..100 {
            w.record(
                Duration::from_millis(if i < 90 { 1 } else { 100 }),
                i % 10 == 0,
            );
        }
        let t = w.totals();
        assert_eq!((t.requests, t.errors), (100, 10));
        let p50 = t.quantile(0.5).unwrap_or_default();
        assert!((0.001..0.00115).contains(&p50), "{p50}");
        let p99 = t.quantile(0.99).unwrap_or_default();
        assert!((0.1..0.115).contains(&p99), "{p99}");
        assert_eq!(WindowTotals::default().quantile(0.5), None);
    }

    #[tokio::test(start_paused = true)]
    async fn old_slices_leave_the_window() {
        let w = RollingWindow::new(Duration::from_secs(300));
        w.record(Duration::from_millis(1), false);
        assert_eq!(w.totals().requests, 1);
        tokio::time::advance(Duration::from_secs(290)).await;
        assert_eq!(w.totals().requests, 1, "still inside the five minutes");
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(w.totals().requests, 0);
        w.record(Duration::from_millis(1), true);
        assert_eq!((w.totals().requests, w.totals().errors), (1, 1));
    }
}
