//! From evidence to a ranked account of what changed and why a version degraded. Pure: the
//! same evidence always gives the same ranking, whether it comes from the sidecar or from
//! Prometheus. Each rule adds at most one cause per subject, with a score in [0, 1]:
//!
//! | rule | fires when | score |
//! |---|---|---|
//! | `version_mismatch` | the model server reported another version than the registry resolved | 0.95 |
//! | `upstream_data` | a feature's issue rate is above `max_issue_rate` on every live version | 0.6 + 0.4·min(1, rate/0.5) |
//! | `version_errors` | a version's error rate exceeds the best other live version's by more than `max_error_rate_increase`, p < `alpha` | 0.7 + 0.25·min(1, Δ/0.1) |
//! | `environment_latency` | a version's p99 is above `max_latency_ratio` × the fastest other's (and at least 10 ms above it) and its lineage differs in `environment.*` | 0.6 + 0.2·min(1, (ratio−1)/2) |
//! | `stale_lineage` | a version serving traffic was trained on a dataset that has a newer digest | 0.75 |
//! | `version_data` | a feature's issue rate is above `max_issue_rate` on some live versions only | 0.55 |
//! | `latency` | as `environment_latency`, without an environment difference | 0.45 |
//! | `upstream_drift` | a feature's PSI against its reference is at least `psi_alert` (and past chance) on every live version | 0.55 + 0.3·min(1, PSI/1) |
//! | `prediction_drift` | a version's prediction PSI against its reference is at least `psi_alert` (the features that moved on it are named) | 0.4 + 0.2·min(1, PSI/1) |
//! | `registry_outage` | the registry was unreachable in the window | 0.3 |
//!
//! A version counts as live with at least `min_requests / 4` requests in the window (and always
//! when it is the only one with traffic).

use serde::{Deserialize, Serialize};

use super::journal::{Event, Kind};
use crate::canary::diff::{Change, lineage_diff};
use crate::canary::stats::error_rate_p_value;
use crate::codec::time::rfc3339_ms;
use crate::config::{Inspect, Thresholds};
use crate::registry::LineageRecord;

/// The smallest p99 increase (seconds) reported as a latency regression.
pub const MIN_LATENCY_REGRESSION: f64 = 0.010;

/// What is known about one version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionHealth {
    /// Version.
    pub version: String,
    /// Lineage ID.
    pub lineage_id: String,
    /// The record (for the lineage diff), when known.
    #[serde(skip)]
    pub record: Option<LineageRecord>,
    /// Requests in the window.
    pub requests: u64,
    /// 5xx in the window.
    pub errors: u64,
    /// Median latency (s).
    pub p50: Option<f64>,
    /// p99 latency (s).
    pub p99: Option<f64>,
    /// Split weight, when the model is split.
    pub weight: Option<u32>,
    /// Aliases pointing at it.
    pub aliases: Vec<String>,
    /// `dataset trained_on -> latest (seen in)` when stale.
    pub stale: Option<String>,
    /// Windowed issue rates `(feature, issue, rate)`.
    pub issue_rates: Vec<(String, String, f64)>,
    /// Prediction PSI against the registry's reference, when past what chance gives a window
    /// this size.
    pub prediction_psi: Option<f64>,
    /// Features whose distribution moved from the registry's reference in the window by more
    /// than chance explains (drift past its noise bound, `inspect/drift.rs`).
    #[serde(default)]
    pub feature_drift: Vec<FeatureDrift>,
}

/// A feature's distribution against the registry's reference, in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// The feature.
    pub feature: String,
    /// Its PSI against the reference.
    pub psi: f64,
    /// Its Jensen–Shannon distance from the reference (when known).
    pub js: Option<f64>,
}

impl VersionHealth {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Everything `explain` looks at.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Model.
    pub model: String,
    /// Start of the window (ms since the epoch).
    pub from_ms: i64,
    /// End of the window.
    pub to_ms: i64,
    /// Per-version health.
    pub versions: Vec<VersionHealth>,
    /// The journal's events in the window.
    pub events: Vec<Event>,
    /// Version mismatches `(expected, reported, responses)`.
    pub mismatches: Vec<(String, String, u64)>,
    /// Upstream source per feature (from the lineage records).
    pub sources: Vec<(String, String)>,
    /// Canary thresholds.
    pub thresholds: Option<Thresholds>,
    /// Drift thresholds.
    pub inspect: Option<Inspect>,
    /// The alias a route of this model serves (`champion`), if any.
    pub serving_alias: Option<String>,
}

/// One likely cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    /// The rule that found it.
    pub rule: String,
    /// 0..=1, higher is more likely.
    pub score: f64,
    /// One line.
    pub title: String,
    /// The numbers behind it.
    pub evidence: Vec<String>,
    /// Lineage fields involved.
    pub lineage: Vec<Change>,
}

/// The account `explain` gives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    /// Model.
    pub model: String,
    /// Window start (RFC 3339).
    pub from: String,
    /// Window end.
    pub to: String,
    /// What changed, oldest first.
    pub timeline: Vec<Event>,
    /// Per-version health.
    pub health: Vec<VersionHealth>,
    /// Likely causes, most likely first.
    pub causes: Vec<Cause>,
}

/// A value as people quote it: digests and commits by their first four characters (after an
/// algorithm prefix such as `sha256:`), other values whole.
fn short(s: &str) -> &str {
    let s = s.rsplit(':').next().unwrap_or(s);
    if s.len() > 6 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        s.get(..4).unwrap_or(s)
    } else {
        s
    }
}

/// The diff fields people ask about first, as "digest e5d3 → 9a41 and commit 97f4 → 1c2b".
fn headline(diff: &[Change], prefix: &[&str]) -> String {
    let mut picked: Vec<&Change> = Vec::new();
    for p in prefix {
        for c in diff.iter().filter(|c| c.field.starts_with(p)) {
            if !picked.iter().any(|x| x.field == c.field) {
                picked.push(c);
            }
        }
    }
    let parts: Vec<String> = picked
        .into_iter()
        .take(3)
        .map(|c| {
            let v = |s: &Option<String>| {
                s.as_deref()
                    .map_or("(none)".to_string(), |s| short(s).to_string())
            };
            let name = match c.field.as_str() {
                "training_data.digest" => "dataset digest".to_string(),
                "code.commit" => "commit".to_string(),
                f => f.to_string(),
            };
            format!("{name} {} → {}", v(&c.baseline), v(&c.candidate))
        })
        .collect();
    parts.join(" and ")
}

fn first_event(events: &[Event], kind: Kind, pred: impl Fn(&Event) -> bool) -> Option<&Event> {
    events.iter().find(|e| e.kind == kind && pred(e))
}

fn time_of(e: &Event) -> String {
    rfc3339_ms(e.at_ms)
}

/// Rank the likely causes.
pub fn explain(ev: &Evidence) -> Explanation {
    let t = ev
        .thresholds
        .clone()
        .unwrap_or_else(|| crate::config::Canary::defaults().thresholds);
    let live: Vec<&VersionHealth> = {
        let min = (t.min_requests / 4).max(1);
        let with_traffic: Vec<&VersionHealth> =
            ev.versions.iter().filter(|v| v.requests > 0).collect();
        if with_traffic.len() == 1 {
            with_traffic
        } else {
            with_traffic
                .into_iter()
                .filter(|v| v.requests >= min)
                .collect()
        }
    };
    let mut causes = Vec::new();
    mismatch(ev, &mut causes);
    data_quality(ev, &live, &t, &mut causes);
    regressions(ev, &live, &t, &mut causes);
    stale(&live, &mut causes);
    feature_drift(ev, &live, &mut causes);
    drift(ev, &live, &mut causes);
    if let Some(e) = first_event(&ev.events, Kind::RegistryDown, |_| true) {
        causes.push(Cause {
            rule: "registry_outage".into(),
            score: 0.3,
            title: format!(
                "the registry was unreachable from {}: lineage may be out of date",
                time_of(e)
            ),
            evidence: vec![e.summary.clone()],
            lineage: Vec::new(),
        });
    }
    causes.sort_by(|a, b| b.score.total_cmp(&a.score));
    Explanation {
        model: ev.model.clone(),
        from: rfc3339_ms(ev.from_ms),
        to: rfc3339_ms(ev.to_ms),
        timeline: ev.events.clone(),
        health: ev.versions.clone(),
        causes,
    }
}

fn record_of<'a>(ev: &'a Evidence, version: &str) -> Option<&'a LineageRecord> {
    ev.versions
        .iter()
        .find(|v| v.version == version)?
        .record
        .as_ref()
}

fn mismatch(ev: &Evidence, out: &mut Vec<Cause>) {
    for (expected, reported, n) in ev.mismatches.iter().filter(|m| m.2 > 0) {
        let aliases = ev
            .versions
            .iter()
            .find(|v| &v.version == expected)
            .map(|v| v.aliases.as_slice())
            .unwrap_or_default();
        let alias = ev
            .serving_alias
            .as_ref()
            .filter(|a| aliases.contains(a))
            .or_else(|| aliases.first())
            .map_or_else(
                || "the route".to_string(),
                |a| format!("the registry alias {a}"),
            );
        let lineage = match (record_of(ev, expected), record_of(ev, reported)) {
            (Some(a), Some(b)) => lineage_diff(a, b),
            _ => Vec::new(),
        };
        out.push(Cause {
            rule: "version_mismatch".into(),
            score: 0.95,
            title: format!(
                "the model server reports version {reported} while {alias} points to {expected}"
            ),
            evidence: vec![format!(
                "{n} responses stamped {expected} reported model_version {reported} (modelstamp_version_mismatch_total)"
            )],
            lineage,
        });
    }
}

fn data_quality(ev: &Evidence, live: &[&VersionHealth], t: &Thresholds, out: &mut Vec<Cause>) {
    let mut keys: Vec<(String, String)> = live
        .iter()
        .flat_map(|v| v.issue_rates.iter().map(|(f, i, _)| (f.clone(), i.clone())))
        .collect();
    keys.sort();
    keys.dedup();
    for (feature, issue) in keys {
        let rates: Vec<(&str, f64)> = live
            .iter()
            .map(|v| {
                let r = v
                    .issue_rates
                    .iter()
                    .find(|(f, i, _)| *f == feature && *i == issue)
                    .map_or(0.0, |x| x.2);
                (v.version.as_str(), r)
            })
            .collect();
        let over: Vec<&(&str, f64)> = rates
            .iter()
            .filter(|(_, r)| *r > t.max_issue_rate)
            .collect();
        if over.is_empty() {
            continue;
        }
        let source = ev
            .sources
            .iter()
            .find(|(f, _)| *f == feature)
            .map_or("unknown", |(_, s)| s.as_str());
        let since = first_event(&ev.events, Kind::DataQuality, |e| {
            e.fields.get("feature") == Some(&feature) && e.fields.get("issue") == Some(&issue)
        })
        .map_or_else(
            || "in the window".to_string(),
            |e| format!("since {}", time_of(e)),
        );
        let evidence: Vec<String> = rates
            .iter()
            .map(|(v, r)| format!("version {v}: {issue} on {:.1}% of rows", 100.0 * r))
            .collect();
        let max = over.iter().map(|(_, r)| *r).fold(0.0, f64::max);
        let label = if issue == "null" {
            "NULL".to_string()
        } else {
            issue.clone()
        };
        if over.len() == rates.len() {
            out.push(Cause {
                rule: "upstream_data".into(),
                score: 0.6 + 0.4 * (max / 0.5).min(1.0),
                title: format!(
                    "feature `{feature}` {label} rate 0% → {:.0}% {since} on all versions: upstream source {source}",
                    100.0 * max
                ),
                evidence,
                lineage: Vec::new(),
            });
        } else {
            let versions: Vec<&str> = over.iter().map(|(v, _)| *v).collect();
            out.push(Cause {
                rule: "version_data".into(),
                score: 0.55,
                title: format!(
                    "feature `{feature}` {label} on {:.0}% of rows of version {} only ({since}): how its callers build inputs changed",
                    100.0 * max,
                    versions.join(", ")
                ),
                evidence,
                lineage: Vec::new(),
            });
        }
    }
}

fn regressions(ev: &Evidence, live: &[&VersionHealth], t: &Thresholds, out: &mut Vec<Cause>) {
    for v in live {
        let others: Vec<&&VersionHealth> = live.iter().filter(|o| o.version != v.version).collect();
        let Some(best) = others
            .iter()
            .min_by(|a, b| a.error_rate().total_cmp(&b.error_rate()))
        else {
            continue;
        };
        let diff = match (&best.record, &v.record) {
            (Some(a), Some(b)) => lineage_diff(a, b),
            _ => Vec::new(),
        };
        let delta = v.error_rate() - best.error_rate();
        let p = error_rate_p_value(best.errors, best.requests, v.errors, v.requests);
        if delta > t.max_error_rate_increase && p < t.alpha {
            let since = first_event(&ev.events, Kind::WeightsChanged, |e| {
                e.version.as_deref() == Some(&v.version)
            })
            .or_else(|| {
                first_event(&ev.events, Kind::VersionAdded, |e| {
                    e.version.as_deref() == Some(&v.version)
                })
            })
            .map_or_else(String::new, |e| format!(" since {}", time_of(e)));
            let what = headline(
                &diff,
                &[
                    "training_data.digest",
                    "code.commit",
                    "training_data.",
                    "environment.",
                ],
            );
            let trained = if what.is_empty() {
                String::new()
            } else {
                format!(": trained with {what}")
            };
            out.push(Cause {
                rule: "version_errors".into(),
                score: 0.7 + 0.25 * (delta / 0.1).min(1.0),
                title: format!(
                    "errors started with version {} (lineage {}){since}{trained}",
                    v.version, v.lineage_id
                ),
                evidence: vec![format!(
                    "error rate {:.2}% vs {:.2}% on version {} (p = {p:.2e})",
                    100.0 * v.error_rate(),
                    100.0 * best.error_rate(),
                    best.version
                )],
                lineage: diff.clone(),
            });
        }
        let fastest = others
            .iter()
            .filter_map(|o| o.p99.map(|p| (o, p)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some((fast, base)), Some(p99)) = (fastest, v.p99) {
            let ratio = if base > 0.0 { p99 / base } else { 0.0 };
            let enough = v.requests >= t.min_requests / 4 && fast.requests >= t.min_requests / 4;
            // A ratio between two tiny latencies is noise: the regression must also be felt.
            if ratio > t.max_latency_ratio && p99 - base >= MIN_LATENCY_REGRESSION && enough {
                let diff = match (&fast.record, &v.record) {
                    (Some(a), Some(b)) => lineage_diff(a, b),
                    _ => Vec::new(),
                };
                let env: Vec<Change> = diff
                    .into_iter()
                    .filter(|c| c.field.starts_with("environment."))
                    .collect();
                let evidence = vec![format!(
                    "p99 {:.1} ms vs {:.1} ms on version {} ({ratio:.1}x)",
                    p99 * 1e3,
                    base * 1e3,
                    fast.version
                )];
                if env.is_empty() {
                    out.push(Cause {
                        rule: "latency".into(),
                        score: 0.45,
                        title: format!(
                            "latency regression with version {} ({ratio:.1}x p99)",
                            v.version
                        ),
                        evidence,
                        lineage: Vec::new(),
                    });
                } else {
                    out.push(Cause {
                        rule: "environment_latency".into(),
                        score: 0.6 + 0.2 * ((ratio - 1.0) / 2.0).min(1.0),
                        title: format!(
                            "latency regression with version {} ({ratio:.1}x p99) after an environment change: {}",
                            v.version,
                            headline(&env, &["environment."])
                        ),
                        evidence,
                        lineage: env,
                    });
                }
            }
        }
    }
}

fn stale(live: &[&VersionHealth], out: &mut Vec<Cause>) {
    for v in live {
        if let Some(s) = &v.stale {
            out.push(Cause {
                rule: "stale_lineage".into(),
                score: 0.75,
                title: format!(
                    "version {} serves traffic but its training dataset has a newer digest: {s}",
                    v.version
                ),
                evidence: vec![format!(
                    "{} requests in the window on version {}",
                    v.requests, v.version
                )],
                lineage: Vec::new(),
            });
        }
    }
}

/// The features of a version that moved at least `alert` from their reference, most first.
fn moved(v: &VersionHealth, alert: f64) -> Vec<&FeatureDrift> {
    let mut moved: Vec<&FeatureDrift> = v.feature_drift.iter().filter(|d| d.psi >= alert).collect();
    moved.sort_by(|a, b| b.psi.total_cmp(&a.psi).then(a.feature.cmp(&b.feature)));
    moved
}

/// A feature whose distribution left its training reference (inside its schema's range or not:
/// a unit or semantics change upstream), named with its upstream source. Every version of a split
/// is fed from the same upstream: a feature counts as moved when it moved on every live version
/// (one version alone past the threshold is its share of the traffic, not a cause; its
/// predictions' drift names it).
fn feature_drift(ev: &Evidence, live: &[&VersionHealth], out: &mut Vec<Cause>) {
    let alert = ev.inspect.as_ref().map_or(0.25, |i| i.psi_alert);
    let mut features: Vec<&str> = live
        .iter()
        .flat_map(|v| moved(v, alert))
        .map(|d| d.feature.as_str())
        .collect();
    features.sort_unstable();
    features.dedup();
    for feature in features {
        let on: Vec<(&str, &FeatureDrift)> = live
            .iter()
            .filter_map(|v| {
                let d = moved(v, alert).into_iter().find(|d| d.feature == feature)?;
                Some((v.version.as_str(), d))
            })
            .collect();
        if on.len() < live.len() {
            continue;
        }
        let max = on.iter().map(|(_, d)| d.psi).fold(0.0, f64::max);
        let source = ev
            .sources
            .iter()
            .find(|(f, _)| f == feature)
            .map_or("unknown", |(_, s)| s.as_str());
        let signal = format!("feature:{feature}");
        let since = first_event(&ev.events, Kind::Drift, |e| {
            e.fields.get("signal") == Some(&signal)
        })
        .map_or_else(
            || "in the window".to_string(),
            |e| format!("since {}", time_of(e)),
        );
        let evidence = on
            .iter()
            .map(|(v, d)| {
                let js = d.js.map_or_else(String::new, |js| format!(", JS {js:.3}"));
                format!(
                    "version {v}: PSI {:.3}{js} against the training reference (≥ {alert})",
                    d.psi
                )
            })
            .collect();
        let whom = match on.as_slice() {
            [(only, _)] => format!("on version {only} (the only one with traffic)"),
            _ => "on all versions".to_string(),
        };
        out.push(Cause {
            rule: "upstream_drift".into(),
            score: 0.55 + 0.3 * max.min(1.0),
            title: format!(
                "feature `{feature}` moved from its training distribution (PSI {max:.2}) {whom} {since}: upstream source {source}"
            ),
            evidence,
            lineage: Vec::new(),
        });
    }
}

fn drift(ev: &Evidence, live: &[&VersionHealth], out: &mut Vec<Cause>) {
    let alert = ev.inspect.as_ref().map_or(0.25, |i| i.psi_alert);
    for v in live {
        if let Some(psi) = v.prediction_psi.filter(|p| *p >= alert) {
            let inputs = moved(v, alert);
            let title = match inputs.is_empty() {
                true => format!(
                    "predictions of version {} drifted from its reference: PSI {psi:.2}",
                    v.version
                ),
                false => {
                    let names: Vec<String> =
                        inputs.iter().map(|d| format!("`{}`", d.feature)).collect();
                    format!(
                        "predictions of version {} drifted from its reference (PSI {psi:.2}) as its inputs {} moved",
                        v.version,
                        names.join(", ")
                    )
                }
            };
            let mut evidence = vec![format!("PSI {psi:.3} ≥ {alert}")];
            evidence.extend(inputs.iter().map(|d| {
                format!(
                    "input `{}`: PSI {:.3} against its reference",
                    d.feature, d.psi
                )
            }));
            out.push(Cause {
                rule: "prediction_drift".into(),
                score: 0.4 + 0.2 * psi.min(1.0),
                title,
                evidence,
                lineage: Vec::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Code, Environment, TrainingData};

    fn record(commit: &str, digest: &str, lock: &str) -> LineageRecord {
        LineageRecord {
            code: Code {
                commit: Some(commit.into()),
                ..Code::default()
            },
            training_data: Some(TrainingData {
                name: "churn-train".into(),
                digest: Some(digest.into()),
                ..TrainingData::default()
            }),
            environment: Environment {
                lock_digest: Some(lock.into()),
                ..Environment::default()
            },
            ..LineageRecord::default()
        }
    }

    fn health(v: &str, requests: u64, errors: u64, p99: f64, r: LineageRecord) -> VersionHealth {
        VersionHealth {
            version: v.into(),
            lineage_id: format!("ln_{v}"),
            record: Some(r),
            requests,
            errors,
            p50: Some(p99 / 3.0),
            p99: Some(p99),
            ..VersionHealth::default()
        }
    }

    fn evidence(versions: Vec<VersionHealth>) -> Evidence {
        Evidence {
            model: "churn".into(),
            versions,
            ..Evidence::default()
        }
    }

    fn top(ev: &Evidence) -> Cause {
        explain(ev)
            .causes
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no cause"))
    }

    #[test]
    fn a_version_trained_on_changed_data_is_blamed_with_its_lineage() {
        let ev = evidence(vec![
            health("1", 1000, 2, 0.01, record("97f4aaa", "e5d3aaa", "l1")),
            health("2", 1000, 80, 0.01, record("1c2baaa", "9a41aaa", "l1")),
        ]);
        let c = top(&ev);
        assert_eq!(c.rule, "version_errors");
        assert_eq!(
            c.title,
            "errors started with version 2 (lineage ln_2): trained with dataset digest e5d3 → 9a41 and commit 97f4 → 1c2b"
        );
        assert_eq!(explain(&ev).causes.len(), 1, "nothing else fires");
    }

    #[test]
    fn an_upstream_field_turning_null_on_all_versions_outranks_everything_else() {
        let mut a = health("1", 500, 5, 0.01, record("a", "d", "l"));
        let mut b = health("2", 500, 6, 0.01, record("b", "e", "l"));
        a.issue_rates = vec![("plan_type".into(), "null".into(), 0.38)];
        b.issue_rates = vec![("plan_type".into(), "null".into(), 0.40)];
        let mut ev = evidence(vec![a, b]);
        ev.sources = vec![("plan_type".into(), "crm.accounts".into())];
        let c = top(&ev);
        assert_eq!(c.rule, "upstream_data");
        assert!(c.title.starts_with("feature `plan_type` NULL rate 0% → 40% in the window on all versions: upstream source crm.accounts"), "{}", c.title);
        assert!(
            explain(&ev)
                .causes
                .iter()
                .all(|c| c.rule != "version_errors")
        );
    }

    #[test]
    fn version_only_data_drift_and_registry_outage_rank_below_the_strong_rules() {
        let mut a = health("1", 500, 0, 0.01, record("a", "d", "l"));
        let mut b = health("2", 500, 0, 0.01, record("b", "e", "l"));
        b.issue_rates = vec![("plan".into(), "unseen_category".into(), 0.2)];
        a.prediction_psi = Some(0.5);
        let mut ev = evidence(vec![a, b]);
        ev.events.push(Event {
            at_ms: 1_000,
            kind: Kind::RegistryDown,
            model: String::new(),
            version: None,
            summary: "the registry is unreachable".into(),
            fields: Default::default(),
        });
        let e = explain(&ev);
        let got: Vec<(&str, f64)> = e
            .causes
            .iter()
            .map(|c| (c.rule.as_str(), c.score))
            .collect();
        assert_eq!(
            got,
            [
                ("version_data", 0.55),
                ("prediction_drift", 0.5),
                ("registry_outage", 0.3)
            ]
        );
        assert!(
            e.causes[0].title.contains("of version 2 only"),
            "{}",
            e.causes[0].title
        );
        assert!(
            e.causes[2]
                .title
                .starts_with("the registry was unreachable from 1970-01-01T00:00:01")
        );
        // A mismatch outranks all of them.
        ev.mismatches = vec![("1".into(), "3".into(), 5)];
        assert_eq!(explain(&ev).causes[0].rule, "version_mismatch");
    }

    #[test]
    fn mismatch_stale_and_environment_latency_each_win_their_scenario() {
        let mut ev = evidence(vec![health("2", 500, 0, 0.01, record("a", "d", "l"))]);
        ev.versions[0].aliases = vec!["champion".into()];
        ev.mismatches = vec![("2".into(), "1".into(), 40)];
        assert_eq!(
            top(&ev).title,
            "the model server reports version 1 while the registry alias champion points to 2"
        );

        let mut ev = evidence(vec![health("1", 500, 0, 0.01, record("a", "d", "l"))]);
        ev.versions[0].stale = Some("churn-train trained on e5d3, latest 77aa".into());
        assert_eq!(top(&ev).rule, "stale_lineage");

        let ev = evidence(vec![
            health("1", 500, 0, 0.010, record("a", "d", "sha256:aaaa")),
            health("2", 500, 0, 0.030, record("a", "d", "sha256:bbbb")),
        ]);
        let tiny = evidence(vec![
            health("1", 500, 0, 0.002, record("a", "d", "sha256:aaaa")),
            health("2", 500, 0, 0.006, record("a", "d", "sha256:bbbb")),
        ]);
        assert!(explain(&tiny).causes.is_empty(), "3x of 2 ms is noise");
        let c = top(&ev);
        assert_eq!(c.rule, "environment_latency");
        assert!(
            c.title.ends_with("environment.lock_digest aaaa → bbbb"),
            "{}",
            c.title
        );
        assert_eq!(c.lineage[0].field, "environment.lock_digest");

        let same_env = evidence(vec![
            health("1", 500, 0, 0.010, record("a", "d", "l")),
            health("2", 500, 0, 0.030, record("b", "d", "l")),
        ]);
        assert_eq!(top(&same_env).rule, "latency");
        let quiet = evidence(vec![
            health("1", 500, 1, 0.01, record("a", "d", "l")),
            health("2", 500, 1, 0.01, record("a", "d", "l")),
        ]);
        assert!(explain(&quiet).causes.is_empty());
    }

    #[test]
    fn a_feature_that_moved_is_named_with_its_source_and_explains_the_predictions() {
        let moved = |feature: &str, psi: f64| FeatureDrift {
            feature: feature.into(),
            psi,
            js: Some(0.4),
        };
        let mut a = health("1", 400, 0, 0.05, record("97f4", "e5d3", "l1"));
        let mut b = health("2", 400, 0, 0.05, record("97f4", "e5d3", "l1"));
        a.feature_drift = vec![moved("tenure", 1.19), moved("plan", 0.02)];
        b.feature_drift = vec![moved("tenure", 0.9)];
        a.prediction_psi = Some(0.6);
        let mut ev = evidence(vec![a.clone(), b.clone()]);
        ev.sources = vec![("tenure".into(), "crm.accounts.tenure_months".into())];
        let causes = explain(&ev).causes;
        let first = &causes[0];
        assert_eq!(first.rule, "upstream_drift", "{causes:?}");
        assert!(first.title.contains("feature `tenure`"), "{}", first.title);
        assert!(first.title.contains("PSI 1.19"), "{}", first.title);
        assert!(
            first
                .title
                .ends_with("upstream source crm.accounts.tenure_months")
        );
        assert!(
            !causes
                .iter()
                .any(|c| c.title.contains("`plan`") && c.rule != "prediction_drift")
        );
        let predictions = causes
            .iter()
            .find(|c| c.rule == "prediction_drift")
            .unwrap();
        assert!(
            predictions.title.contains("inputs `tenure` moved"),
            "{}",
            predictions.title
        );
        assert!(predictions.score < first.score);
        // Past the threshold on one of two live versions fed by the same upstream: not a cause
        // of its own; that version's predictions name it.
        b.feature_drift.clear();
        let ev = Evidence {
            sources: ev.sources.clone(),
            ..evidence(vec![a.clone(), b.clone()])
        };
        let causes = explain(&ev).causes;
        assert!(
            causes.iter().all(|c| c.rule != "upstream_drift"),
            "{causes:?}"
        );
        assert!(
            causes[0].title.contains("inputs `tenure` moved"),
            "{causes:?}"
        );
        // The healthy control: under the alert threshold, nothing.
        a.feature_drift = vec![moved("tenure", 0.2)];
        a.prediction_psi = Some(0.1);
        let quiet = explain(&evidence(vec![a, b])).causes;
        assert!(quiet.iter().all(|c| !c.rule.contains("drift")), "{quiet:?}");
    }
}
