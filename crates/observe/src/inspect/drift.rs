//! Drift statistics over binned distributions, and the rolling windows that hold the bins.
//!
//! Binning: a numeric signal with edges e0 < … < e(n-1) has n + 1 bins `(-inf, e0]`,
//! `(e0, e1]`, …, `(e(n-1), +inf)` (a value equal to an edge falls in the bin it closes, like a
//! Prometheus `le` bucket and numpy's `searchsorted(edges, x, side="left")`); a categorical
//! signal has one bin per listed category plus one for everything else.
//!
//! - PSI = Σ (a_i − e_i) · ln(a_i / e_i) over bin shares, zero shares replaced by 0.0001
//!   (Evidently's convention), `e` the expected (reference) and `a` the actual distribution.
//! - JS is the Jensen–Shannon *distance* (the square root of the divergence, natural log), as
//!   `scipy.spatial.distance.jensenshannon` and Evidently compute it; 0 ≤ JS ≤ √ln 2.

use std::collections::VecDeque;

/// Zero shares become this before PSI takes logarithms.
pub const PSI_EPSILON: f64 = 1e-4;
/// Slices per rolling window: the window moves in steps of a tenth.
pub const SLICES: u64 = 10;

/// How values fall into bins.
#[derive(Debug, Clone, PartialEq)]
pub enum Bins {
    /// Upper edges of a numeric signal.
    Numeric(Vec<f64>),
    /// Categories (plus an implicit `other`).
    Categorical(Vec<String>),
}

impl Bins {
    /// Number of bins.
    pub fn len(&self) -> usize {
        match self {
            Self::Numeric(e) => e.len() + 1,
            Self::Categorical(c) => c.len() + 1,
        }
    }

    /// Whether there are no bins (never: there is always an overflow bin).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bin of a number (numeric signals only).
    pub fn of_number(&self, x: f64) -> Option<usize> {
        match self {
            Self::Numeric(edges) if !x.is_nan() => Some(edges.partition_point(|e| *e < x)),
            _ => None,
        }
    }

    /// The bin of a category (categorical signals only).
    pub fn of_category(&self, label: &str) -> Option<usize> {
        match self {
            Self::Categorical(c) => Some(c.iter().position(|x| x == label).unwrap_or(c.len())),
            Self::Numeric(_) => None,
        }
    }
}

/// The standard normal's 99th percentile.
const Z_99: f64 = 2.326_347_874;

/// Pearson's χ² statistic's 99th percentile with `bins − 1` degrees of freedom (Wilson and
/// Hilferty's approximation, within 1 % from 2 degrees of freedom up).
fn chi2_99(bins: usize) -> f64 {
    let k = bins.saturating_sub(1).max(1) as f64;
    let c = 2.0 / (9.0 * k);
    k * (1.0 - c + Z_99 * c.sqrt()).powi(3)
}

/// The PSI that chance alone stays under 99 % of the time: `samples` values in `bins` bins
/// drawn from the expected distribution itself. For small differences PSI (a symmetric
/// Kullback–Leibler divergence) is Pearson's χ² over the sample size, so n·PSI follows χ² with
/// bins − 1 degrees of freedom. `samples` is the effective size: n for a sample against a
/// reference, n₁n₂ / (n₁ + n₂) for two samples. A PSI under it is noise whatever the thresholds
/// say (100 healthy values in 10 bins reach PSI 0.1 one time in three; this bound is 0.22).
pub fn psi_noise(bins: usize, samples: f64) -> f64 {
    chi2_99(bins) / samples.max(1.0)
}

/// The same bound for the Jensen–Shannon distance: the divergence is χ²/(8n) for small
/// differences (natural log), the distance its square root.
pub fn js_noise(bins: usize, samples: f64) -> f64 {
    (chi2_99(bins) / (8.0 * samples.max(1.0))).sqrt()
}

fn shares(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| if total > 0.0 { c / total } else { 0.0 })
        .collect()
}

/// Population stability index of `actual` against `expected` (counts or shares, same bins).
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    let (e, a) = (shares(expected), shares(actual));
    e.iter()
        .zip(&a)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(0.0), a.max(0.0));
            let e = if e == 0.0 { PSI_EPSILON } else { e };
            let a = if a == 0.0 { PSI_EPSILON } else { a };
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Jensen–Shannon distance between two distributions (counts or shares, same bins).
pub fn js(p: &[f64], q: &[f64]) -> f64 {
    let (p, q) = (shares(p), shares(q));
    let rel = |x: f64, y: f64| {
        if x > 0.0 && y > 0.0 {
            x * (x / y).ln()
        } else {
            0.0
        }
    };
    let sum: f64 = p
        .iter()
        .zip(&q)
        .map(|(&p, &q)| {
            let m = (p + q) / 2.0;
            rel(p, m) + rel(q, m)
        })
        .sum();
    (sum / 2.0).max(0.0).sqrt()
}

/// Counts per bin over the last [`SLICES`] time slices.
#[derive(Debug, Clone)]
pub struct Window {
    bins: usize,
    slices: VecDeque<(u64, Vec<u64>)>,
}

impl Window {
    /// An empty window over `bins` bins.
    pub fn new(bins: usize) -> Self {
        Self {
            bins,
            slices: VecDeque::new(),
        }
    }

    /// Add `n` to `bin` in time slice `now` (slice numbers never decrease).
    pub fn add(&mut self, now: u64, bin: usize, n: u64) {
        if bin >= self.bins {
            return;
        }
        self.expire(now);
        if self.slices.back().is_none_or(|(s, _)| *s != now) {
            self.slices.push_back((now, vec![0; self.bins]));
        }
        if let Some((_, counts)) = self.slices.back_mut() {
            counts[bin] += n;
        }
    }

    /// Whether the window ending in slice `now` holds nothing.
    pub fn is_empty(&self, now: u64) -> bool {
        !self.slices.iter().any(|(s, _)| *s + SLICES > now)
    }

    fn expire(&mut self, now: u64) {
        while self.slices.front().is_some_and(|(s, _)| *s + SLICES <= now) {
            self.slices.pop_front();
        }
    }

    /// Counts per bin over the window ending in slice `now`.
    pub fn totals(&self, now: u64) -> Vec<u64> {
        let mut out = vec![0; self.bins];
        for (_, counts) in self.slices.iter().filter(|(s, _)| *s + SLICES > now) {
            for (o, c) in out.iter_mut().zip(counts) {
                *o += c;
            }
        }
        out
    }
}

/// Counts as floats.
pub fn as_f64(counts: &[u64]) -> Vec<f64> {
    counts.iter().map(|c| *c as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_and_js_match_hand_computed_values() {
        let e = [0.5, 0.5];
        let a = [0.25, 0.75];
        let want_psi = (0.25 - 0.5) * (0.25f64 / 0.5).ln() + (0.75 - 0.5) * (0.75f64 / 0.5).ln();
        assert!((psi(&e, &a) - want_psi).abs() < 1e-15);
        assert_eq!(psi(&[1.0, 3.0], &[2.0, 6.0]), 0.0, "counts are normalised");
        let zero = psi(&[1.0, 0.0], &[0.5, 0.5]);
        let want = (0.5 - 1.0) * 0.5f64.ln() + (0.5 - PSI_EPSILON) * (0.5 / PSI_EPSILON).ln();
        assert!((zero - want).abs() < 1e-12);
        assert_eq!(js(&e, &e), 0.0);
        let disjoint = js(&[1.0, 0.0], &[0.0, 1.0]);
        assert!((disjoint - 2f64.ln().sqrt()).abs() < 1e-15);
    }

    #[test]
    fn values_fall_in_le_bins_and_other() {
        let b = Bins::Numeric(vec![0.0, 1.0]);
        assert_eq!(
            [-1.0, 0.0, 0.5, 1.0, 2.0].map(|x| b.of_number(x)),
            [Some(0), Some(0), Some(1), Some(1), Some(2)]
        );
        assert_eq!(b.of_number(f64::NAN), None);
        let c = Bins::Categorical(vec!["a".into(), "b".into()]);
        assert_eq!(c.of_category("b"), Some(1));
        assert_eq!(c.of_category("zzz"), Some(2));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn windows_forget_old_slices() {
        let mut w = Window::new(2);
        w.add(0, 0, 5);
        w.add(3, 1, 1);
        w.add(3, 1, 1);
        assert_eq!(w.totals(3), [5, 2]);
        assert_eq!(w.totals(SLICES), [0, 2], "slice 0 left the window");
        w.add(SLICES + 3, 0, 1);
        assert_eq!(w.totals(SLICES + 3), [1, 0]);
        w.add(0, 7, 1);
    }

    #[test]
    fn chance_alone_rarely_passes_the_noise_bound() {
        // χ² 99th percentiles: 21.67 with 9 degrees of freedom, 11.34 with 3.
        assert!(
            (psi_noise(10, 100.0) - 0.2167).abs() < 0.003,
            "{}",
            psi_noise(10, 100.0)
        );
        assert!((psi_noise(4, 1000.0) - 0.01134).abs() < 0.0003);
        // 2,000 windows of 100 values drawn from the 10-bin reference itself.
        let reference = [0.1; 10];
        let mut seed: u64 = 7;
        let (mut warned, mut past_noise, mut js_past_noise) = (0, 0, 0);
        for _ in 0..2_000 {
            let mut counts = [0u64; 10];
            for _ in 0..100 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                counts[((seed >> 33) % 10) as usize] += 1;
            }
            let actual = as_f64(&counts);
            let p = psi(&reference, &actual);
            warned += usize::from(p >= 0.1);
            past_noise += usize::from(p > psi_noise(10, 100.0));
            js_past_noise += usize::from(js(&reference, &actual) > js_noise(10, 100.0));
        }
        // The warning threshold alone fires on healthy traffic this often; the bound does not.
        assert!(warned > 400, "{warned}");
        assert!(past_noise < 60, "{past_noise}");
        assert!(js_past_noise < 60, "{js_past_noise}");
        // A real shift of 100 values is far past it.
        let shifted = as_f64(&[0, 0, 0, 0, 0, 10, 20, 30, 20, 20]);
        assert!(psi(&reference, &shifted) > 3.0 * psi_noise(10, 100.0));
    }
}
