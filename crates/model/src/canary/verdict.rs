//! The comparison of a candidate version with its baseline over a window, and the verdict it
//! leads to. Pure: the same inputs always give the same verdict, whether they come from the
//! sidecar's own windows or from a Prometheus server.
//!
//! Rules, in order (each is tested):
//! 1. **rollback** when any of: the candidate's error rate exceeds the baseline's by more than
//!    `max_error_rate_increase` and the one-sided two-proportion test gives p < `alpha`; both
//!    versions have `min_requests` and the candidate's p99 is more than `max_latency_ratio` times
//!    the baseline's; the candidate's prediction PSI against the baseline exceeds
//!    `max_prediction_psi`; shadow agreement (100 comparisons or more) is below
//!    `min_shadow_agreement`; a feature's issue rate on the candidate exceeds `max_issue_rate`
//!    while the baseline's stays under it.
//! 2. **hold** when either version has fewer than `min_requests` requests in the window (not
//!    enough evidence to promote), or when a data-quality issue affects both versions (upstream
//!    data, not the candidate: promoting or rolling back would not help).
//! 3. **promote** otherwise: enough traffic and nothing worse.

use serde::{Deserialize, Serialize};

use super::diff::Change;
use super::stats::error_rate_p_value;
use crate::config::Thresholds;

/// One version's side of the comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// Version.
    pub version: String,
    /// Lineage ID.
    pub lineage_id: String,
    /// Requests in the window.
    pub requests: u64,
    /// Failed requests (5xx) in the window.
    pub errors: u64,
    /// Latency quantiles in seconds (`None` without data).
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Current traffic weight, when the route splits by weight.
    pub weight: Option<u32>,
}

impl Side {
    /// Errors ÷ requests (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// A feature's data-quality issue rate on both versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueRate {
    /// Feature.
    pub feature: String,
    /// Issue.
    pub issue: String,
    /// Rate on the baseline.
    pub baseline: f64,
    /// Rate on the candidate.
    pub candidate: f64,
}

/// Pair each version's `(feature, issue, rate)` list into [`IssueRate`]s (0 where a version has
/// no such issue), ordered by feature and issue.
pub fn pair_issue_rates(
    baseline: Vec<(String, String, f64)>,
    candidate: Vec<(String, String, f64)>,
) -> Vec<IssueRate> {
    let mut rates: std::collections::BTreeMap<(String, String), IssueRate> = Default::default();
    for (is_candidate, list) in [(false, baseline), (true, candidate)] {
        for (feature, issue, rate) in list {
            let e = rates
                .entry((feature.clone(), issue.clone()))
                .or_insert_with(|| IssueRate {
                    feature,
                    issue,
                    baseline: 0.0,
                    candidate: 0.0,
                });
            if is_candidate {
                e.candidate = rate;
            } else {
                e.baseline = rate;
            }
        }
    }
    rates.into_values().collect()
}

/// Shadow agreement with the baseline's predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Comparisons made.
    pub compared: u64,
    /// Share that agreed.
    pub ratio: f64,
}

/// `promote`, `hold` or `rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The candidate can take all traffic.
    Promote,
    /// Keep going: not enough evidence, or nothing the candidate can fix.
    Hold,
    /// The candidate is worse: send its traffic back to the baseline.
    Rollback,
}

impl Verdict {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Hold => "hold",
            Self::Rollback => "rollback",
        }
    }
}

/// Everything compared, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Model.
    pub model: String,
    /// Where the numbers come from (`sidecar` or a Prometheus URL).
    pub source: String,
    /// Window length in seconds.
    pub window_seconds: f64,
    /// The baseline.
    pub baseline: Side,
    /// The candidate.
    pub candidate: Side,
    /// One-sided p-value that the candidate's error rate is higher.
    pub error_rate_p_value: f64,
    /// Candidate ÷ baseline latency, per quantile.
    pub latency_ratio: LatencyRatio,
    /// PSI of the candidate's predictions against the baseline's.
    pub prediction_psi: Option<f64>,
    /// Jensen–Shannon distance of the same.
    pub prediction_js: Option<f64>,
    /// Shadow agreement (when a shadow compares the candidate with the baseline).
    pub shadow: Option<Agreement>,
    /// Data-quality issue rates that are non-zero on either version.
    pub issue_rates: Vec<IssueRate>,
    /// What differs between the two lineage records.
    pub lineage_diff: Vec<Change>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reasons: Vec<String>,
}

/// Candidate ÷ baseline latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyRatio {
    /// p50 ratio.
    pub p50: Option<f64>,
    /// p95 ratio.
    pub p95: Option<f64>,
    /// p99 ratio.
    pub p99: Option<f64>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(base), Some(cand)) if base > 0.0 => Some(cand / base),
        _ => None,
    }
}

/// The comparison's inputs beyond the two sides.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Prediction PSI of the candidate against the baseline.
    pub prediction_psi: Option<f64>,
    /// Prediction JS distance.
    pub prediction_js: Option<f64>,
    /// Shadow agreement.
    pub shadow: Option<Agreement>,
    /// Issue rates.
    pub issue_rates: Vec<IssueRate>,
}

/// What is compared.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Model.
    pub model: String,
    /// Where the numbers come from.
    pub source: String,
    /// Window length in seconds.
    pub window_seconds: f64,
    /// The baseline.
    pub baseline: Side,
    /// The candidate.
    pub candidate: Side,
    /// Predictions, shadow, data quality.
    pub signals: Signals,
    /// Lineage differences.
    pub lineage_diff: Vec<Change>,
}

/// Compare and judge.
pub fn compare(inputs: Inputs, t: &Thresholds) -> Comparison {
    let Inputs {
        model,
        source,
        window_seconds,
        baseline,
        candidate,
        signals,
        lineage_diff,
    } = inputs;
    let p = error_rate_p_value(
        baseline.errors,
        baseline.requests,
        candidate.errors,
        candidate.requests,
    );
    let latency_ratio = LatencyRatio {
        p50: ratio(baseline.p50, candidate.p50),
        p95: ratio(baseline.p95, candidate.p95),
        p99: ratio(baseline.p99, candidate.p99),
    };
    let enough = baseline.requests >= t.min_requests && candidate.requests >= t.min_requests;
    let mut rollback = Vec::new();
    let mut hold = Vec::new();
    let increase = candidate.error_rate() - baseline.error_rate();
    if increase > t.max_error_rate_increase && p < t.alpha {
        rollback.push(format!(
            "error rate {:.2}% vs {:.2}% (+{:.2} points, p = {p:.2e} < {})",
            100.0 * candidate.error_rate(),
            100.0 * baseline.error_rate(),
            100.0 * increase,
            t.alpha
        ));
    }
    if let Some(r) = latency_ratio
        .p99
        .filter(|r| enough && *r > t.max_latency_ratio)
    {
        rollback.push(format!(
            "p99 latency {r:.2}x the baseline's (max {})",
            t.max_latency_ratio
        ));
    }
    if let Some(psi) = signals.prediction_psi.filter(|v| *v > t.max_prediction_psi) {
        rollback.push(format!(
            "predictions diverge from the baseline's: PSI {psi:.3} > {}",
            t.max_prediction_psi
        ));
    }
    if let Some(a) = signals
        .shadow
        .filter(|a| a.compared >= 100 && a.ratio < t.min_shadow_agreement)
    {
        rollback.push(format!(
            "shadow agreement {:.1}% < {:.1}% over {} comparisons",
            100.0 * a.ratio,
            100.0 * t.min_shadow_agreement,
            a.compared
        ));
    }
    for i in &signals.issue_rates {
        if i.candidate > t.max_issue_rate && i.baseline <= t.max_issue_rate {
            rollback.push(format!(
                "{} {} on {:.1}% of the candidate's rows ({:.1}% on the baseline's)",
                i.feature,
                i.issue,
                100.0 * i.candidate,
                100.0 * i.baseline
            ));
        } else if i.candidate > t.max_issue_rate {
            hold.push(format!(
                "{} {} on both versions ({:.1}% / {:.1}%): upstream data, not the candidate",
                i.feature,
                i.issue,
                100.0 * i.baseline,
                100.0 * i.candidate
            ));
        }
    }
    if !enough {
        hold.push(format!(
            "not enough traffic: baseline {} and candidate {} requests, {} each needed",
            baseline.requests, candidate.requests, t.min_requests
        ));
    }
    let (verdict, reasons) = if !rollback.is_empty() {
        (Verdict::Rollback, rollback)
    } else if !hold.is_empty() {
        (Verdict::Hold, hold)
    } else {
        let mut why = vec![format!(
            "error rate {:.2}% vs {:.2}% (p = {p:.2})",
            100.0 * candidate.error_rate(),
            100.0 * baseline.error_rate()
        )];
        if let Some(r) = latency_ratio.p99 {
            why.push(format!("p99 latency {r:.2}x the baseline's"));
        }
        if let Some(psi) = signals.prediction_psi {
            why.push(format!("prediction PSI {psi:.3}"));
        }
        (Verdict::Promote, why)
    };
    Comparison {
        model,
        source,
        window_seconds,
        error_rate_p_value: p,
        latency_ratio,
        prediction_psi: signals.prediction_psi,
        prediction_js: signals.prediction_js,
        shadow: signals.shadow,
        issue_rates: signals.issue_rates,
        lineage_diff,
        verdict,
        reasons,
        baseline,
        candidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds {
            min_requests: 200,
            alpha: 0.05,
            max_error_rate_increase: 0.01,
            max_latency_ratio: 1.5,
            max_prediction_psi: 0.25,
            min_shadow_agreement: 0.95,
            max_issue_rate: 0.05,
        }
    }

    fn side(v: &str, requests: u64, errors: u64, p99: f64) -> Side {
        Side {
            version: v.into(),
            requests,
            errors,
            p50: Some(p99 / 4.0),
            p95: Some(p99 / 2.0),
            p99: Some(p99),
            ..Side::default()
        }
    }

    fn judge(baseline: Side, candidate: Side, signals: Signals) -> Comparison {
        let inputs = Inputs {
            model: "churn".into(),
            baseline,
            candidate,
            signals,
            ..Inputs::default()
        };
        compare(inputs, &thresholds())
    }

    #[test]
    fn a_candidate_with_5_percent_errors_is_rolled_back() {
        let c = judge(
            side("1", 2000, 4, 0.01),
            side("2", 2000, 100, 0.01),
            Signals::default(),
        );
        assert_eq!(c.verdict, Verdict::Rollback, "{:?}", c.reasons);
        assert!(
            c.reasons[0].starts_with("error rate 5.00% vs 0.20%"),
            "{:?}",
            c.reasons
        );
        assert!(c.error_rate_p_value < 1e-10);
    }

    #[test]
    fn an_equal_candidate_is_promoted_once_the_sample_is_large_enough() {
        let c = judge(
            side("1", 150, 1, 0.01),
            side("2", 150, 1, 0.01),
            Signals::default(),
        );
        assert_eq!(c.verdict, Verdict::Hold);
        assert!(c.reasons[0].starts_with("not enough traffic"));
        let c = judge(
            side("1", 2000, 10, 0.01),
            side("2", 2000, 11, 0.0105),
            Signals::default(),
        );
        assert_eq!(c.verdict, Verdict::Promote, "{:?}", c.reasons);
        assert_eq!(c.latency_ratio.p99, Some(1.05));
    }

    #[test]
    fn a_small_sample_holds_even_with_a_few_errors() {
        let c = judge(
            side("1", 20, 0, 0.01),
            side("2", 20, 1, 0.01),
            Signals::default(),
        );
        assert_eq!(c.verdict, Verdict::Hold, "{:?}", c.reasons);
    }

    #[test]
    fn latency_drift_shadow_and_candidate_only_data_quality_roll_back() {
        let slow = judge(
            side("1", 500, 0, 0.01),
            side("2", 500, 0, 0.02),
            Signals::default(),
        );
        assert_eq!(slow.verdict, Verdict::Rollback);
        assert!(slow.reasons[0].contains("p99 latency 2.00x"));
        let drift = Signals {
            prediction_psi: Some(0.4),
            ..Signals::default()
        };
        let c = judge(side("1", 500, 0, 0.01), side("2", 500, 0, 0.01), drift);
        assert_eq!(c.verdict, Verdict::Rollback);
        let shadow = Signals {
            shadow: Some(Agreement {
                compared: 400,
                ratio: 0.8,
            }),
            ..Signals::default()
        };
        assert_eq!(
            judge(side("1", 500, 0, 0.01), side("2", 500, 0, 0.01), shadow).verdict,
            Verdict::Rollback
        );
        let few = Signals {
            shadow: Some(Agreement {
                compared: 20,
                ratio: 0.5,
            }),
            ..Signals::default()
        };
        assert_eq!(
            judge(side("1", 500, 0, 0.01), side("2", 500, 0, 0.01), few).verdict,
            Verdict::Promote
        );
        let issue = |b: f64, c: f64| Signals {
            issue_rates: vec![IssueRate {
                feature: "plan".into(),
                issue: "null".into(),
                baseline: b,
                candidate: c,
            }],
            ..Signals::default()
        };
        let only_candidate = judge(
            side("1", 500, 0, 0.01),
            side("2", 500, 0, 0.01),
            issue(0.0, 0.4),
        );
        assert_eq!(only_candidate.verdict, Verdict::Rollback);
        let both = judge(
            side("1", 500, 0, 0.01),
            side("2", 500, 0, 0.01),
            issue(0.4, 0.4),
        );
        assert_eq!(both.verdict, Verdict::Hold);
        assert!(both.reasons[0].contains("upstream data"));
    }
}
