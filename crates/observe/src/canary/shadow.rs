//! Shadow traffic bookkeeping: per (model, primary version, shadow version), how many mirrored
//! calls succeeded, failed or timed out, how long they took, and how often the shadow's
//! predictions agreed with the primary's (over the rolling window, and in all). The sending
//! lives in the proxy; the comparison of predictions is here, pure.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;

use super::verdict::Agreement;
use crate::inspect::drift::{SLICES, Window};
use crate::inspect::table::{Columns, Value};

/// Shadow call latency buckets (seconds).
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How a mirrored call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx from the shadow.
    Ok,
    /// Refused, reset or non-2xx.
    Error,
    /// Over `shadow.timeout`.
    Timeout,
}

/// Why a request was not mirrored (its client was served as usual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowSkip {
    /// `shadow.max_in_flight` calls were already running.
    InFlight,
    /// The request or the primary response was not copied whole (over the cap or budget).
    NoCopy,
    /// The primary failed: nothing to compare with.
    PrimaryFailed,
}

impl ShadowSkip {
    const ALL: [Self; 3] = [Self::InFlight, Self::NoCopy, Self::PrimaryFailed];

    fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::NoCopy => "no_copy",
            Self::PrimaryFailed => "primary_failed",
        }
    }
}

#[derive(Debug)]
struct Pair {
    outcomes: [u64; 3],
    agree: u64,
    disagree: u64,
    window: Window,
    latency: [u64; BUCKETS.len() + 1],
    latency_sum: f64,
}

/// Shadow stats for a sidecar.
#[derive(Debug)]
pub struct ShadowStats {
    pairs: Mutex<BTreeMap<(String, String, String), Pair>>,
    skipped: [AtomicU64; 3],
    start: Instant,
    slice: Duration,
}

/// Whether two predictions agree: same class, or numbers within the tolerances.
pub fn agree(a: &Value, b: &Value, abs: f64, rel: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let d = (x - y).abs();
            d <= abs || d <= rel * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

/// Whether every prediction of the first output agrees, row by row (`None` when either side
/// has no predictions, or their row counts differ).
pub fn compare_predictions(
    primary: &Columns,
    shadow: &Columns,
    abs: f64,
    rel: f64,
) -> Option<bool> {
    let (_, p) = primary.columns().first()?;
    let s = shadow
        .get(&primary.columns()[0].0)
        .or_else(|| shadow.columns().first().map(|(_, v)| v.as_slice()))?;
    (p.len() == s.len() && !p.is_empty())
        .then(|| p.iter().zip(s).all(|(a, b)| agree(a, b, abs, rel)))
}

impl ShadowStats {
    /// Empty stats with agreement windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            pairs: Mutex::new(BTreeMap::new()),
            skipped: Default::default(),
            start: Instant::now(),
            slice: window / u32::try_from(SLICES).unwrap_or(10),
        }
    }

    fn slice_now(&self) -> u64 {
        let n = self.start.elapsed().as_nanos() / self.slice.as_nanos().max(1);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Count a request that was not mirrored.
    pub fn skip(&self, why: ShadowSkip) {
        self.skipped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Record one mirrored call; `agreed` is `None` when predictions could not be compared.
    pub fn record(
        &self,
        key: (&str, &str, &str),
        outcome: Outcome,
        latency: Duration,
        agreed: Option<bool>,
    ) {
        let slice = self.slice_now();
        let mut pairs = self.pairs.lock().unwrap_or_else(PoisonError::into_inner);
        let p = pairs
            .entry((key.0.to_string(), key.1.to_string(), key.2.to_string()))
            .or_insert_with(|| Pair {
                outcomes: [0; 3],
                agree: 0,
                disagree: 0,
                window: Window::new(2),
                latency: [0; BUCKETS.len() + 1],
                latency_sum: 0.0,
            });
        p.outcomes[outcome as usize] += 1;
        let s = latency.as_secs_f64();
        p.latency[BUCKETS.partition_point(|b| *b < s)] += 1;
        p.latency_sum += s;
        match agreed {
            Some(true) => {
                p.agree += 1;
                p.window.add(slice, 0, 1);
            }
            Some(false) => {
                p.disagree += 1;
                p.window.add(slice, 1, 1);
            }
            None => {}
        }
    }

    /// Agreement of `candidate` (the shadow) with `baseline` (the primary) over the window.
    pub fn agreement(&self, model: &str, baseline: &str, candidate: &str) -> Option<Agreement> {
        let pairs = self.pairs.lock().unwrap_or_else(PoisonError::into_inner);
        let p = pairs.get(&(
            model.to_string(),
            baseline.to_string(),
            candidate.to_string(),
        ))?;
        let t = p.window.totals(self.slice_now());
        let compared = t[0] + t[1];
        (compared > 0).then(|| Agreement {
            compared,
            ratio: t[0] as f64 / compared as f64,
        })
    }
}

type NoExemplar<'a> = Option<&'a Exemplar<Vec<(String, String)>, f64>>;

fn counter(m: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet, v: u64) -> fmt::Result {
    m.encode_family(labels)?
        .encode_counter(&v, None as NoExemplar<'_>)
}

/// Encodes the shadow families on each scrape.
#[derive(Debug)]
pub struct ShadowCollector(pub Arc<ShadowStats>);

impl Collector for ShadowCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = &self.0;
        let mut m = enc.encode_descriptor(
            "shadow_skipped",
            "Requests not mirrored to the shadow version, by reason",
            None,
            MetricType::Counter,
        )?;
        for why in ShadowSkip::ALL {
            let n = stats.skipped[why as usize].load(Ordering::Relaxed);
            counter(&mut m, &[("reason", why.as_str())], n)?;
        }
        let slice = stats.slice_now();
        let pairs = stats.pairs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut m = enc.encode_descriptor(
            "shadow_requests",
            "Mirrored calls to the shadow version, by result (ok, error, timeout)",
            None,
            MetricType::Counter,
        )?;
        for ((model, base, cand), p) in pairs.iter() {
            for (i, result) in ["ok", "error", "timeout"].into_iter().enumerate() {
                let labels = [
                    ("model", model.as_str()),
                    ("baseline", base.as_str()),
                    ("candidate", cand.as_str()),
                    ("result", result),
                ];
                counter(&mut m, &labels, p.outcomes[i])?;
            }
        }
        let mut m = enc.encode_descriptor(
            "shadow_comparisons",
            "Shadow predictions compared with the primary's, by result (agree, disagree)",
            None,
            MetricType::Counter,
        )?;
        for ((model, base, cand), p) in pairs.iter() {
            for (result, n) in [("agree", p.agree), ("disagree", p.disagree)] {
                let labels = [
                    ("model", model.as_str()),
                    ("baseline", base.as_str()),
                    ("candidate", cand.as_str()),
                    ("result", result),
                ];
                counter(&mut m, &labels, n)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "shadow_agreement_ratio",
            "Share of shadow predictions agreeing with the primary's over the rolling window",
            None,
            MetricType::Gauge,
        )?;
        for ((model, base, cand), p) in pairs.iter() {
            let t = p.window.totals(slice);
            if t[0] + t[1] == 0 {
                continue;
            }
            let labels = [
                ("model", model.as_str()),
                ("baseline", base.as_str()),
                ("candidate", cand.as_str()),
            ];
            m.encode_family(&labels)?
                .encode_gauge(&(t[0] as f64 / (t[0] + t[1]) as f64))?;
        }
        let mut m = enc.encode_descriptor(
            "shadow_duration_seconds",
            "Latency of mirrored calls",
            None,
            MetricType::Histogram,
        )?;
        for ((model, base, cand), p) in pairs.iter() {
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(p.latency.iter().copied())
                .collect();
            let labels = [
                ("model", model.as_str()),
                ("baseline", base.as_str()),
                ("candidate", cand.as_str()),
            ];
            m.encode_family(&labels)?
                .encode_histogram::<Vec<(String, String)>>(
                    p.latency_sum,
                    p.latency.iter().sum(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_agree_by_class_or_within_tolerance() {
        assert!(agree(
            &Value::Number(0.5),
            &Value::Number(0.5004),
            1e-6,
            1e-3
        ));
        assert!(!agree(
            &Value::Number(0.5),
            &Value::Number(0.51),
            1e-6,
            1e-3
        ));
        assert!(agree(&Value::Number(0.0), &Value::Number(1e-7), 1e-6, 0.0));
        assert!(agree(
            &Value::Text("churn".into()),
            &Value::Text("churn".into()),
            0.0,
            0.0
        ));
        assert!(!agree(
            &Value::Text("churn".into()),
            &Value::Text("stay".into()),
            1.0,
            1.0
        ));
        let mut a = Columns::default();
        let mut b = Columns::default();
        for x in [0.1, 0.9] {
            a.push("p", Value::Number(x));
            b.push("p", Value::Number(x + 1e-9));
        }
        assert_eq!(compare_predictions(&a, &b, 1e-6, 0.0), Some(true));
        b.push("p", Value::Number(0.3));
        assert_eq!(
            compare_predictions(&a, &b, 1e-6, 0.0),
            None,
            "row counts differ"
        );
        assert_eq!(
            compare_predictions(&Columns::default(), &a, 1e-6, 0.0),
            None
        );
    }

    #[test]
    fn agreement_is_windowed_per_pair() {
        let s = ShadowStats::new(Duration::from_secs(60));
        for i in 0..10 {
            s.record(
                ("m", "1", "2"),
                Outcome::Ok,
                Duration::from_millis(3),
                Some(i != 0),
            );
        }
        s.record(
            ("m", "1", "2"),
            Outcome::Timeout,
            Duration::from_secs(5),
            None,
        );
        let a = s.agreement("m", "1", "2");
        assert_eq!(a.map(|a| (a.compared, a.ratio)), Some((10, 0.9)));
        assert_eq!(s.agreement("m", "1", "3"), None);
    }
}
