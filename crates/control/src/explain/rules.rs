//! From evidence to a ranked account of what changed and why a version degraded. Pure: the
//! same evidence always gives the same ranking, whether it comes from the sidecar or from
//! Prometheus. Each rule adds at most one cause per subject, with a base score in [0, 1]:
//!
//! | rule | fires when | score |
//! |---|---|---|
//! | `version_mismatch` | the model server reports another version than the registry resolved, still | 0.95 (0.6 once it has stopped) |
//! | `upstream_data` | a feature's issue rate is above `max_issue_rate` on every live version | 0.6 + 0.4·min(1, rate/0.5) |
//! | `version_errors` | a version's error rate exceeds the best other live version's by more than `max_error_rate_increase`, p < `alpha` | 0.7 + 0.25·min(1, Δ/0.1) |
//! | `past_errors` | the journal holds an error onset of a version the window no longer shows (it ended, or was rolled back) | 0.7 |
//! | `environment_latency` | a version's p99 is above `max_latency_ratio` × the fastest other's (and at least 10 ms above it) and its lineage differs in `environment.*` | 0.6 + 0.2·min(1, (ratio−1)/2) |
//! | `stale_lineage` | a live version's training data (or an upstream table of it) got a newer version after training, and a symptom of that version followed it (else a risk, 0.3) | 0.75 |
//! | `version_data` | a feature's issue rate is above `max_issue_rate` on some live versions only | 0.55 |
//! | `latency` | as `environment_latency`, without an environment difference | 0.45 |
//! | `upstream_drift` | a feature's PSI against its reference is at least `psi_alert` (and past chance) on every live version | 0.55 + 0.3·min(1, PSI/1) |
//! | `candidate_drift` | a candidate's predictions moved from its baseline's on the same window (PSI ≥ `max_prediction_psi`, past chance): named through its lineage diff, or through its inputs when they moved too | 0.5 + 0.3·min(1, PSI/1) |
//! | `prediction_drift` | a version's prediction PSI against its reference is at least `psi_alert` (the features that moved on it are named) | 0.4 + 0.2·min(1, PSI/1) |
//! | `registry_outage` | the registry was unreachable in the window | 0.3 |
//!
//! Then order: when the journal dates the symptom (the first error or latency onset in the
//! window), a cause that began after it cannot be its cause (score halved), a condition present
//! before it ranks below one that began with it (×0.7), one that began with it gains 0.05, and
//! a condition on every version while only some show the symptom does not move with it (×0.6).
//! "With" allows the precision onsets are known to (a tenth of the sidecar's window). Stale
//! lineage with no co-moving symptom is a risk, listed apart from the causes.
//!
//! A version counts as live with at least `min_requests / 4` requests in the window (and always
//! when it is the only one with traffic).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::journal::{Event, Kind};
use crate::canary::diff::{Change, lineage_diff};
use crate::canary::stats::error_rate_p_value;
use crate::codec::time::rfc3339_ms;
use crate::config::{Inspect, Thresholds};
use crate::registry::LineageRecord;

/// The smallest p99 increase (seconds) reported as a latency regression.
pub const MIN_LATENCY_REGRESSION: f64 = 0.010;
/// How far apart two onsets may be and still count as one moment, unless the evidence says
/// (the sidecar knows an onset to a tenth of its window).
pub const ONSET_SLACK_MS: i64 = 60 * 1000;
/// A mismatch seen within this long of the question is ongoing.
pub const ONGOING_MS: i64 = 30 * 1000;

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
    /// Why its lineage is stale, for people.
    pub stale: Option<String>,
    /// Why its lineage is stale, field by field (from the sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_detail: Option<StaleDetail>,
    /// Windowed issue rates `(feature, issue, rate)`.
    pub issue_rates: Vec<(String, String, f64)>,
    /// Prediction PSI against the registry's reference, when past what chance gives a window
    /// this size.
    pub prediction_psi: Option<f64>,
    /// Prediction PSI against the baseline version's predictions in the same window (past
    /// chance), for a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_psi_baseline: Option<f64>,
    /// Features whose distribution moved from the registry's reference in the window by more
    /// than chance explains (drift past its noise bound, `inspect/drift.rs`).
    #[serde(default)]
    pub feature_drift: Vec<FeatureDrift>,
    /// Features whose distribution differs from the baseline version's in the window (past
    /// chance), for a candidate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_drift: Vec<FeatureDrift>,
}

/// A version's stale lineage, field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StaleDetail {
    /// The dataset (or upstream table) that has a newer version.
    pub dataset: String,
    /// What the version was trained on.
    pub trained_on: String,
    /// The newer version.
    pub latest: String,
    /// When it was written (ms since the epoch).
    pub written_ms: i64,
    /// The job that wrote it (`namespace/name`), when known.
    pub job: Option<String>,
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

/// A version mismatch as the journal saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MismatchSeen {
    /// The version resolved.
    pub expected: String,
    /// The version the server reported.
    pub reported: String,
    /// Responses.
    pub responses: u64,
    /// First seen (ms since the epoch), when known.
    pub first_ms: Option<i64>,
    /// Last seen, when known.
    pub last_ms: Option<i64>,
}

/// The last known write of an upstream source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Write {
    /// The job (`namespace/name`), when known.
    pub job: Option<String>,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The version written.
    pub version: String,
}

/// Everything `explain` looks at.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Model.
    pub model: String,
    /// Start of the window asked about (ms since the epoch).
    pub from_ms: i64,
    /// End of it.
    pub to_ms: i64,
    /// When the question is asked.
    pub now_ms: i64,
    /// Where the per-version health comes from, for people (`the sidecar's rolling window
    /// (5m)`, `Prometheus`); it says when that does not cover the window asked about.
    pub health_source: String,
    /// Where the events come from (the journal in memory, a history store).
    pub events_source: String,
    /// Per-version health.
    pub versions: Vec<VersionHealth>,
    /// The journal's events in the window.
    pub events: Vec<Event>,
    /// Version mismatches in the window.
    pub mismatches: Vec<MismatchSeen>,
    /// Upstream source per feature (from the lineage records).
    pub sources: Vec<(String, String)>,
    /// The last write of each upstream source known from lineage events.
    pub writes: BTreeMap<String, Write>,
    /// Canary thresholds.
    pub thresholds: Option<Thresholds>,
    /// Drift thresholds.
    pub inspect: Option<Inspect>,
    /// The alias a route of this model serves (`champion`), if any.
    pub serving_alias: Option<String>,
    /// The split route of the model, when it has one (what `modelstamp rollback` takes).
    pub route: Option<String>,
    /// The split's baseline version.
    pub baseline: Option<String>,
    /// How precisely onsets are known (ms): two within it are one moment (0: [`ONSET_SLACK_MS`]).
    pub onset_slack_ms: i64,
}

/// One likely cause, with the fields a bot needs without reading the title.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The version it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// That version's lineage ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage_id: Option<String>,
    /// The feature it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// The feature's upstream source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The dataset (or table) it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Digests involved: `[before, after]` (trained on → latest, baseline → candidate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<String>,
    /// The pipeline job that wrote the source or dataset last, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the condition started (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<String>,
    /// The same, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset_ms: Option<i64>,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Who promoted the version (from its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The change ticket of that promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

impl Cause {
    fn new(rule: &str, score: f64, title: String) -> Self {
        Self {
            rule: rule.into(),
            score,
            title,
            ..Self::default()
        }
    }

    /// About this version: its lineage ID, owner and ticket from the evidence.
    fn of(mut self, ev: &Evidence, version: &str) -> Self {
        self.version = Some(version.to_string());
        if let Some(v) = ev.versions.iter().find(|v| v.version == version) {
            self.lineage_id = Some(v.lineage_id.clone()).filter(|s| !s.is_empty());
            if let Some(r) = &v.record {
                self.owner = r.promotion.by.clone().or_else(|| r.created_by.clone());
                self.ticket = r.promotion.ticket.clone();
            }
        }
        self
    }

    fn since(mut self, at_ms: Option<i64>) -> Self {
        self.onset_ms = at_ms;
        self.onset = at_ms.map(rfc3339_ms);
        self
    }
}

/// The account `explain` gives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Explanation {
    /// Model.
    pub model: String,
    /// Window start (RFC 3339): events and causes come from `from`..`to`.
    pub from: String,
    /// Window end.
    pub to: String,
    /// Where the per-version health comes from (and whether it covers the window).
    #[serde(default)]
    pub health_source: String,
    /// Where the timeline's events come from.
    #[serde(default)]
    pub events_source: String,
    /// When the symptom started (the first error or latency onset in the window), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symptom_onset: Option<String>,
    /// What changed, oldest first.
    pub timeline: Vec<Event>,
    /// Per-version health.
    pub health: Vec<VersionHealth>,
    /// Likely causes, most likely first.
    pub causes: Vec<Cause>,
    /// Risks with no symptom that moves with them (stale lineage), most likely first.
    #[serde(default)]
    pub risks: Vec<Cause>,
    /// What the answer could not see, and where to look instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A value as people quote it: digests and commits by their first four characters (after an
/// algorithm prefix such as `sha256:`), URIs and other values whole.
fn short(s: &str) -> &str {
    if s.contains("://") {
        return s;
    }
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

/// The dataset digests of a diff, `[baseline, candidate]`.
fn digests(diff: &[Change]) -> Vec<String> {
    diff.iter()
        .find(|c| c.field == "training_data.digest")
        .map(|c| {
            vec![
                c.baseline.clone().unwrap_or_default(),
                c.candidate.clone().unwrap_or_default(),
            ]
        })
        .unwrap_or_default()
}

fn first_event(events: &[Event], kind: Kind, pred: impl Fn(&Event) -> bool) -> Option<&Event> {
    events.iter().find(|e| e.kind == kind && pred(e))
}

fn time_of(e: &Event) -> String {
    rfc3339_ms(e.at_ms)
}

/// `since T` for a known onset, else `fallback`.
fn since_text(at: Option<i64>, fallback: &str) -> String {
    at.map_or_else(
        || fallback.to_string(),
        |t| format!("since {}", rfc3339_ms(t)),
    )
}

/// When a version started taking traffic in the window: a weight change giving it traffic, its
/// arrival, or an alias moving to it.
fn rollout_of(ev: &Evidence, version: &str) -> Option<i64> {
    ev.events
        .iter()
        .find(|e| {
            e.version.as_deref() == Some(version)
                && matches!(
                    e.kind,
                    Kind::WeightsChanged | Kind::VersionAdded | Kind::AliasMoved
                )
        })
        .map(|e| e.at_ms)
}

/// When a version's symptom (`errors`, `latency`) started, from the journal.
fn onset_of(ev: &Evidence, version: &str, signal: &str) -> Option<i64> {
    first_event(&ev.events, Kind::Onset, |e| {
        e.version.as_deref() == Some(version)
            && e.fields.get("signal").map(String::as_str) == Some(signal)
    })
    .map(|e| e.at_ms)
}

/// The command that sends a version's traffic back to the baseline, when it is the candidate of
/// a split.
fn rollback_action(ev: &Evidence, version: &str) -> Option<String> {
    let route = ev.route.as_ref()?;
    let live = ev
        .versions
        .iter()
        .any(|v| v.version == version && v.weight.is_some_and(|w| w > 0));
    (ev.baseline.as_deref() != Some(version) && live)
        .then(|| format!("modelstamp rollback {route} --reason \"…\" (sends version {version}'s traffic back to {})", ev.baseline.as_deref().unwrap_or("the baseline")))
}

fn page_owner(source: &str, job: Option<&str>) -> String {
    match job {
        Some(j) => format!("page the owner of {source} (last written by job {j})"),
        None => format!("page the owner of {source}"),
    }
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
    past_errors(ev, &mut causes);
    feature_drift(ev, &live, &mut causes);
    candidate_drift(ev, &live, &t, &mut causes);
    drift(ev, &live, &mut causes);
    if let Some(e) = first_event(&ev.events, Kind::RegistryDown, |_| true) {
        causes.push(
            Cause {
                evidence: vec![e.summary.clone()],
                action: Some(
                    "check the registry (modelstamp_registry_up, the sidecar's log)".into(),
                ),
                ..Cause::new(
                    "registry_outage",
                    0.3,
                    format!(
                        "the registry was unreachable from {}: lineage may be out of date",
                        time_of(e)
                    ),
                )
            }
            .since(Some(e.at_ms)),
        );
    }
    let symptom = first_event(&ev.events, Kind::Onset, |_| true).map(|e| e.at_ms);
    let slack = if ev.onset_slack_ms > 0 {
        ev.onset_slack_ms
    } else {
        ONSET_SLACK_MS
    };
    let (stale_causes, risks) = stale(ev, &live, slack, &causes);
    causes.extend(stale_causes);
    if let Some(s) = symptom {
        // The versions showing the symptom, of those live.
        let sick: Vec<&str> = ev
            .events
            .iter()
            .filter(|e| e.kind == Kind::Onset)
            .filter_map(|e| e.version.as_deref())
            .collect();
        let healthy: Vec<&str> = live
            .iter()
            .map(|v| v.version.as_str())
            .filter(|v| !sick.contains(v))
            .collect();
        for c in &mut causes {
            order(c, s, slack, &healthy);
        }
    }
    causes.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.rule.cmp(&b.rule)));
    let note = (live.is_empty()).then(|| {
        format!(
            "no traffic in {}: causes come from the journal only; for metric history ask with --prometheus URL",
            ev.health_source
        )
    });
    Explanation {
        model: ev.model.clone(),
        from: rfc3339_ms(ev.from_ms),
        to: rfc3339_ms(ev.to_ms),
        health_source: ev.health_source.clone(),
        events_source: ev.events_source.clone(),
        symptom_onset: symptom.map(rfc3339_ms),
        timeline: ev.events.clone(),
        health: ev.versions.clone(),
        causes,
        risks,
        note,
    }
}

/// Temporal precedence against the symptom's onset `s`, and co-movement: `healthy` are the
/// live versions without the symptom.
fn order(c: &mut Cause, s: i64, slack: i64, healthy: &[&str]) {
    if c.rule == "registry_outage" {
        return;
    }
    // A condition of every version, while some live ones are fine, does not move with it.
    let everywhere = matches!(c.rule.as_str(), "upstream_data" | "upstream_drift");
    if everywhere && !healthy.is_empty() {
        c.score *= 0.6;
        c.evidence.push(format!(
            "also on version {}, which shows no symptom",
            healthy.join(", ")
        ));
    }
    let Some(at) = c.onset_ms else { return };
    let (when, symptom) = (rfc3339_ms(at), rfc3339_ms(s));
    if at > s + slack {
        c.score *= 0.5;
        c.evidence.push(format!(
            "began at {when}, after the symptom began ({symptom}): not what started it"
        ));
    } else if c.rule == "stale_lineage" {
        // New data reaches features later than it is written: a stale flag was judged by
        // whether a symptom of its own version followed it (`stale`), not by this clock.
    } else if at < s - slack {
        c.score *= 0.7;
        c.evidence.push(format!(
            "present since {when}, before the symptom began ({symptom})"
        ));
    } else {
        c.score = (c.score + 0.05).min(1.0);
        c.evidence
            .push(format!("began at {when}, with the symptom ({symptom})"));
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
    for m in ev.mismatches.iter().filter(|m| m.responses > 0) {
        let (expected, reported, n) = (&m.expected, &m.reported, m.responses);
        let ongoing = m.last_ms.is_none_or(|l| l >= ev.now_ms - ONGOING_MS);
        let lineage = match (record_of(ev, expected), record_of(ev, reported)) {
            (Some(a), Some(b)) => lineage_diff(a, b),
            _ => Vec::new(),
        };
        let evidence = vec![format!(
            "{n} responses stamped {expected} reported model_version {reported} (modelstamp_version_mismatch_total)"
        )];
        let cause = if ongoing {
            // Today's alias map names an ongoing mismatch; a past one is told by versions only.
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
            Cause::new(
                "version_mismatch",
                0.95,
                format!(
                    "the model server reports version {reported} while {alias} points to {expected}"
                ),
            )
        } else {
            let until = m.last_ms.map(rfc3339_ms).unwrap_or_default();
            Cause::new(
                "version_mismatch",
                0.6,
                format!(
                    "the model server reported version {reported} where {expected} was resolved, until {until} (stopped)"
                ),
            )
        };
        out.push(
            Cause {
                evidence,
                digests: digests(&lineage),
                lineage,
                action: Some(format!(
                    "check what the model server loaded: it answers as version {reported}; redeploy it with version {expected}'s artifact or point the route at {reported}"
                )),
                ..cause
            }
            .of(ev, expected)
            .since(m.first_ms),
        );
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
            .map(|(_, s)| s.clone());
        let crossing = first_event(&ev.events, Kind::DataQuality, |e| {
            e.fields.get("feature") == Some(&feature) && e.fields.get("issue") == Some(&issue)
        });
        let onset = crossing.map(|e| e.at_ms);
        let since = since_text(onset, "in the window");
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
        let write = source.as_deref().and_then(|s| ev.writes.get(s));
        let job = write.and_then(|w| w.job.clone());
        let shown = source.as_deref().unwrap_or("unknown");
        if over.len() == rates.len() {
            out.push(
                Cause {
                    evidence,
                    feature: Some(feature.clone()),
                    source: source.clone(),
                    job: job.clone(),
                    action: Some(page_owner(shown, job.as_deref())),
                    ..Cause::new(
                        "upstream_data",
                        0.6 + 0.4 * (max / 0.5).min(1.0),
                        format!(
                            "feature `{feature}` {label} on {:.0}% of rows {since} on all versions: upstream source {shown}",
                            100.0 * max
                        ),
                    )
                }
                .since(onset),
            );
        } else {
            let versions: Vec<&str> = over.iter().map(|(v, _)| *v).collect();
            out.push(
                Cause {
                    evidence,
                    feature: Some(feature.clone()),
                    source: source.clone(),
                    action: Some(format!(
                        "check how callers of version {} build `{feature}`",
                        versions.join(", ")
                    )),
                    ..Cause::new(
                        "version_data",
                        0.55,
                        format!(
                            "feature `{feature}` {label} on {:.0}% of rows of version {} only ({since}): how its callers build inputs changed",
                            100.0 * max,
                            versions.join(", ")
                        ),
                    )
                }
                .of(ev, versions[0])
                .since(onset),
            );
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
            // The symptom itself: its onset when journaled, else when the version took traffic.
            let onset = onset_of(ev, &v.version, "errors").or_else(|| rollout_of(ev, &v.version));
            let since = onset.map_or_else(String::new, |t| format!(" since {}", rfc3339_ms(t)));
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
            out.push(
                Cause {
                    evidence: vec![format!(
                        "error rate {:.2}% vs {:.2}% on version {} (p = {p:.2e})",
                        100.0 * v.error_rate(),
                        100.0 * best.error_rate(),
                        best.version
                    )],
                    digests: digests(&diff),
                    lineage: diff.clone(),
                    action: rollback_action(ev, &v.version),
                    ..Cause::new(
                        "version_errors",
                        0.7 + 0.25 * (delta / 0.1).min(1.0),
                        format!(
                            "errors started with version {} (lineage {}){since}{trained}",
                            v.version, v.lineage_id
                        ),
                    )
                }
                .of(ev, &v.version)
                .since(onset),
            );
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
                let onset =
                    onset_of(ev, &v.version, "latency").or_else(|| rollout_of(ev, &v.version));
                let cause = if env.is_empty() {
                    Cause::new(
                        "latency",
                        0.45,
                        format!(
                            "latency regression with version {} ({ratio:.1}x p99)",
                            v.version
                        ),
                    )
                } else {
                    Cause::new(
                        "environment_latency",
                        0.6 + 0.2 * ((ratio - 1.0) / 2.0).min(1.0),
                        format!(
                            "latency regression with version {} ({ratio:.1}x p99) after an environment change: {}",
                            v.version,
                            headline(&env, &["environment."])
                        ),
                    )
                };
                out.push(
                    Cause {
                        evidence,
                        lineage: env,
                        action: rollback_action(ev, &v.version),
                        ..cause
                    }
                    .of(ev, &v.version)
                    .since(onset),
                );
            }
        }
    }
}

/// Error onsets the journal holds for versions whose errors the window no longer shows: the
/// question came after the window, or the version was rolled back.
fn past_errors(ev: &Evidence, out: &mut Vec<Cause>) {
    let mut seen: Vec<&str> = Vec::new();
    for e in ev.events.iter().filter(|e| {
        e.kind == Kind::Onset && e.fields.get("signal").map(String::as_str) == Some("errors")
    }) {
        let Some(version) = e.version.as_deref() else {
            continue;
        };
        let shown = out
            .iter()
            .any(|c| c.rule == "version_errors" && c.version.as_deref() == Some(version));
        if shown || seen.contains(&version) {
            continue;
        }
        seen.push(version);
        let after = |kind: Kind| {
            ev.events.iter().find(|x| {
                x.kind == kind
                    && x.at_ms >= e.at_ms
                    && x.version.as_deref() == Some(version)
                    && (kind != Kind::Recovery
                        || x.fields.get("signal").map(String::as_str) == Some("errors"))
            })
        };
        let ended = after(Kind::AutoRollback)
            .map(|r| format!(", rolled back at {}", time_of(r)))
            .or_else(|| after(Kind::Recovery).map(|r| format!(" until {}", time_of(r))))
            .unwrap_or_default();
        let baseline = ev
            .baseline
            .as_deref()
            .filter(|b| *b != version)
            .and_then(|b| Some((b, record_of(ev, b)?)));
        let diff = match (baseline, record_of(ev, version)) {
            (Some((_, a)), Some(b)) => lineage_diff(a, b),
            _ => Vec::new(),
        };
        let what = headline(
            &diff,
            &["training_data.digest", "code.commit", "environment."],
        );
        let trained = match (baseline, what.is_empty()) {
            (Some((b, _)), false) => format!(": against version {b} it was trained with {what}"),
            _ => String::new(),
        };
        let detail = e.fields.get("detail").cloned().unwrap_or_default();
        out.push(
            Cause {
                evidence: vec![format!("journal: {detail}"), "the rolling window no longer holds these requests".into()],
                digests: digests(&diff),
                lineage: diff,
                action: Some(format!(
                    "keep version {version} out of traffic until its lineage difference is understood"
                )),
                ..Cause::new(
                    "past_errors",
                    0.7,
                    format!("errors on version {version} from {}{ended}{trained}", time_of(e)),
                )
            }
            .of(ev, version)
            .since(Some(e.at_ms)),
        );
    }
}

/// Stale lineage: a cause when a symptom of that version started with or after the dataset's
/// new version, else a risk. Returns `(causes, risks)`.
fn stale(
    ev: &Evidence,
    live: &[&VersionHealth],
    slack: i64,
    causes: &[Cause],
) -> (Vec<Cause>, Vec<Cause>) {
    let (mut as_causes, mut risks) = (Vec::new(), Vec::new());
    for v in live {
        let Some(s) = &v.stale else { continue };
        let detail = v.stale_detail.as_ref();
        let written = detail.map(|d| d.written_ms);
        // A symptom of this very version (errors, latency, drift, data) moves with it when it
        // began after the new data was written; with the symptom's start unknown, when the data
        // was written inside the window asked about.
        let comoves = causes.iter().any(|c| {
            let symptom = matches!(
                c.rule.as_str(),
                "version_errors"
                    | "past_errors"
                    | "latency"
                    | "environment_latency"
                    | "prediction_drift"
                    | "version_data"
                    | "candidate_drift"
            );
            symptom
                && c.version.as_deref() == Some(v.version.as_str())
                && match (written, c.onset_ms) {
                    (Some(w), Some(began)) => w <= began + slack,
                    (Some(w), None) => w >= ev.from_ms,
                    (None, _) => true,
                }
        });
        let job = detail.and_then(|d| d.job.clone());
        let cause = Cause {
            evidence: vec![format!(
                "{} requests in the window on version {}",
                v.requests, v.version
            )],
            dataset: detail.map(|d| d.dataset.clone()),
            digests: detail
                .map(|d| vec![d.trained_on.clone(), d.latest.clone()])
                .unwrap_or_default(),
            job: job.clone(),
            action: Some(match detail {
                Some(d) => format!(
                    "retrain version {} on {} {} (or confirm the change is harmless)",
                    v.version, d.dataset, d.latest
                ),
                None => format!("retrain version {} on the newer data", v.version),
            }),
            ..Cause::new(
                "stale_lineage",
                0.75,
                format!(
                    "version {} serves traffic but its training data has a newer version: {s}",
                    v.version
                ),
            )
        }
        .of(ev, &v.version)
        .since(written);
        if comoves {
            as_causes.push(cause);
        } else {
            risks.push(Cause {
                score: 0.3,
                ..cause
            });
        }
    }
    (as_causes, risks)
}

/// The features of a version that moved at least `alert` from their reference, most first.
fn moved(drifts: &[FeatureDrift], alert: f64) -> Vec<&FeatureDrift> {
    let mut moved: Vec<&FeatureDrift> = drifts.iter().filter(|d| d.psi >= alert).collect();
    moved.sort_by(|a, b| b.psi.total_cmp(&a.psi).then(a.feature.cmp(&b.feature)));
    moved
}

/// A feature whose distribution left its training reference (inside its schema's range or not:
/// a unit or semantics change upstream), named with its upstream source and the job that wrote
/// it last. Every version of a split is fed from the same upstream: a feature counts as moved
/// when it moved on every live version (one version alone past the threshold is its share of
/// the traffic, not a cause; its predictions' drift names it).
fn feature_drift(ev: &Evidence, live: &[&VersionHealth], out: &mut Vec<Cause>) {
    let alert = ev.inspect.as_ref().map_or(0.25, |i| i.psi_alert);
    let mut features: Vec<&str> = live
        .iter()
        .flat_map(|v| moved(&v.feature_drift, alert))
        .map(|d| d.feature.as_str())
        .collect();
    features.sort_unstable();
    features.dedup();
    for feature in features {
        let on: Vec<(&str, &FeatureDrift)> = live
            .iter()
            .filter_map(|v| {
                let d = moved(&v.feature_drift, alert)
                    .into_iter()
                    .find(|d| d.feature == feature)?;
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
            .map(|(_, s)| s.clone());
        let signal = format!("feature:{feature}");
        let onset = first_event(&ev.events, Kind::Drift, |e| {
            e.fields.get("signal") == Some(&signal)
        })
        .map(|e| e.at_ms);
        let since = since_text(onset, "in the window");
        let mut evidence: Vec<String> = on
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
        let shown = source.as_deref().unwrap_or("unknown");
        let write = source.as_deref().and_then(|s| ev.writes.get(s));
        let job = write.and_then(|w| w.job.clone());
        let by = match write {
            Some(w) => {
                evidence.push(format!(
                    "{shown} last written at {}{} (version {})",
                    rfc3339_ms(w.at_ms),
                    w.job
                        .as_ref()
                        .map(|j| format!(" by job {j}"))
                        .unwrap_or_default(),
                    w.version
                ));
                w.job
                    .as_ref()
                    .map(|j| format!(", last written by job {j}"))
                    .unwrap_or_default()
            }
            None => String::new(),
        };
        out.push(
            Cause {
                evidence,
                feature: Some(feature.to_string()),
                source: source.clone(),
                job: job.clone(),
                action: Some(page_owner(shown, job.as_deref())),
                ..Cause::new(
                    "upstream_drift",
                    0.55 + 0.3 * max.min(1.0),
                    format!(
                        "feature `{feature}` moved from its training distribution (PSI {max:.2}) {whom} {since}: upstream source {shown}{by}"
                    ),
                )
            }
            .since(onset.or(write.map(|w| w.at_ms))),
        );
    }
}

/// A candidate whose predictions moved away from its baseline's on the same traffic while its
/// inputs did not: the model changed, and its lineage diff says how.
fn candidate_drift(ev: &Evidence, live: &[&VersionHealth], t: &Thresholds, out: &mut Vec<Cause>) {
    let Some(baseline) = ev.baseline.as_deref() else {
        return;
    };
    let alert = ev.inspect.as_ref().map_or(0.25, |i| i.psi_alert);
    for v in live.iter().filter(|v| v.version != baseline) {
        let Some(psi) = v
            .prediction_psi_baseline
            .filter(|p| *p >= t.max_prediction_psi)
        else {
            continue;
        };
        let inputs = moved(&v.baseline_drift, alert);
        let diff = match (record_of(ev, baseline), v.record.as_ref()) {
            (Some(a), Some(b)) => lineage_diff(a, b),
            _ => Vec::new(),
        };
        let what = headline(
            &diff,
            &[
                "training_data.digest",
                "code.commit",
                "training_data.",
                "params.",
            ],
        );
        let mut evidence = vec![format!(
            "prediction PSI {psi:.3} against version {baseline} on the same window (≥ {})",
            t.max_prediction_psi
        )];
        let title = if inputs.is_empty() {
            let trained = if what.is_empty() {
                String::new()
            } else {
                format!(": trained with {what}")
            };
            format!(
                "candidate {} predicts differently from version {baseline} on the same inputs (PSI {psi:.2}){trained}",
                v.version
            )
        } else {
            evidence.extend(inputs.iter().map(|d| {
                format!(
                    "input `{}`: PSI {:.3} against version {baseline}'s",
                    d.feature, d.psi
                )
            }));
            format!(
                "candidate {} predicts differently from version {baseline} (PSI {psi:.2}) and its callers send other inputs",
                v.version
            )
        };
        out.push(
            Cause {
                evidence,
                digests: digests(&diff),
                lineage: diff,
                action: rollback_action(ev, &v.version),
                ..Cause::new("candidate_drift", 0.5 + 0.3 * psi.min(1.0), title)
            }
            .of(ev, &v.version)
            .since(rollout_of(ev, &v.version)),
        );
    }
}

fn drift(ev: &Evidence, live: &[&VersionHealth], out: &mut Vec<Cause>) {
    let alert = ev.inspect.as_ref().map_or(0.25, |i| i.psi_alert);
    for v in live {
        if let Some(psi) = v.prediction_psi.filter(|p| *p >= alert) {
            let inputs = moved(&v.feature_drift, alert);
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
            let onset = first_event(&ev.events, Kind::Drift, |e| {
                e.version.as_deref() == Some(v.version.as_str())
                    && e.fields.get("signal").map(String::as_str) == Some("prediction")
            })
            .map(|e| e.at_ms);
            out.push(
                Cause {
                    evidence,
                    feature: inputs.first().map(|d| d.feature.clone()),
                    ..Cause::new("prediction_drift", 0.4 + 0.2 * psi.min(1.0), title)
                }
                .of(ev, &v.version)
                .since(onset),
            );
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

    fn seen_mismatch(expected: &str, reported: &str, responses: u64) -> MismatchSeen {
        MismatchSeen {
            expected: expected.into(),
            reported: reported.into(),
            responses,
            ..MismatchSeen::default()
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
        assert!(c.title.starts_with("feature `plan_type` NULL on 40% of rows in the window on all versions: upstream source crm.accounts"), "{}", c.title);
        assert_eq!(
            (c.feature.as_deref(), c.source.as_deref()),
            (Some("plan_type"), Some("crm.accounts"))
        );
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
        ev.mismatches = vec![seen_mismatch("1", "3", 5)];
        assert_eq!(explain(&ev).causes[0].rule, "version_mismatch");
    }

    #[test]
    fn mismatch_stale_and_environment_latency_each_win_their_scenario() {
        let mut ev = evidence(vec![health("2", 500, 0, 0.01, record("a", "d", "l"))]);
        ev.versions[0].aliases = vec!["champion".into()];
        ev.mismatches = vec![seen_mismatch("2", "1", 40)];
        assert_eq!(
            top(&ev).title,
            "the model server reports version 1 while the registry alias champion points to 2"
        );

        // Stale lineage alone is a risk; with a symptom of that version, a cause.
        let mut ev = evidence(vec![health("1", 500, 0, 0.01, record("a", "d", "l"))]);
        ev.versions[0].stale = Some("churn-train trained on e5d3, latest 77aa".into());
        let e = explain(&ev);
        assert!(e.causes.is_empty(), "{:?}", e.causes);
        assert_eq!(e.risks[0].rule, "stale_lineage");
        let mut ev = evidence(vec![
            health("1", 1000, 2, 0.01, record("a", "d", "l")),
            health("2", 1000, 80, 0.01, record("a", "d", "l")),
        ]);
        ev.versions[1].stale = Some("churn-train trained on e5d3, latest 77aa".into());
        let e = explain(&ev);
        assert!(e.risks.is_empty());
        assert!(
            e.causes
                .iter()
                .any(|c| c.rule == "stale_lineage" && c.version.as_deref() == Some("2"))
        );

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

    fn event(at_ms: i64, kind: Kind, version: Option<&str>, fields: &[(&str, &str)]) -> Event {
        Event {
            at_ms,
            kind,
            model: "churn".into(),
            version: version.map(Into::into),
            summary: format!("{kind:?}"),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn overlapping_changes_rank_the_one_that_started_the_symptom_first() {
        // An imputed NULL on every version since 10:00; version 2 rolled out at 10:20 and its
        // errors began with it. The NULL is stronger by score alone.
        let mut a = health("1", 1000, 2, 0.01, record("97f4aaa", "e5d3aaa", "l"));
        let mut b = health("2", 1000, 60, 0.01, record("1c2baaa", "9a41aaa", "l"));
        a.issue_rates = vec![("plan_type".into(), "null".into(), 0.45)];
        b.issue_rates = vec![("plan_type".into(), "null".into(), 0.45)];
        a.weight = Some(50);
        b.weight = Some(50);
        let mut ev = evidence(vec![a, b]);
        ev.route = Some("churn-split".into());
        ev.baseline = Some("1".into());
        ev.sources = vec![("plan_type".into(), "crm.accounts.plan_type".into())];
        let by_score = explain(&ev);
        assert_eq!(
            by_score.causes[0].rule, "upstream_data",
            "without times: {:?}",
            by_score.causes
        );
        let (t0, t1) = (1_000_000, 1_000_000 + 20 * 60_000);
        ev.events = vec![
            event(
                t0,
                Kind::DataQuality,
                None,
                &[("feature", "plan_type"), ("issue", "null")],
            ),
            event(t1, Kind::WeightsChanged, Some("2"), &[]),
            event(t1 + 4_000, Kind::Onset, Some("2"), &[("signal", "errors")]),
        ];
        let e = explain(&ev);
        let top = &e.causes[0];
        assert_eq!(top.rule, "version_errors", "{:?}", e.causes);
        assert_eq!(top.version.as_deref(), Some("2"));
        assert_eq!(top.onset_ms, Some(t1 + 4_000));
        assert_eq!(
            top.digests,
            vec!["e5d3aaa".to_string(), "9a41aaa".to_string()]
        );
        assert!(
            top.action
                .as_deref()
                .is_some_and(|a| a.starts_with("modelstamp rollback churn-split")),
            "{:?}",
            top.action
        );
        let null = e.causes.iter().find(|c| c.rule == "upstream_data").unwrap();
        assert!(
            null.evidence
                .iter()
                .any(|x| x.contains("before the symptom began")),
            "{null:?}"
        );
        assert!(
            null.evidence
                .iter()
                .any(|x| x.contains("also on version 1")),
            "{null:?}"
        );
        assert_eq!(e.symptom_onset, Some(rfc3339_ms(t1 + 4_000)));
        // A change after the symptom began did not start it.
        ev.events.push(event(
            t1 + 600_000,
            Kind::Drift,
            Some("1"),
            &[("signal", "prediction")],
        ));
        ev.versions[0].prediction_psi = Some(0.9);
        let late = explain(&ev);
        let d = late
            .causes
            .iter()
            .find(|c| c.rule == "prediction_drift")
            .unwrap();
        assert!(d.score < 0.4, "{d:?}");
    }

    #[test]
    fn an_ongoing_mismatch_outranks_one_that_stopped_and_names_no_alias_for_the_past() {
        let mut ev = evidence(vec![
            health("2", 500, 0, 0.01, record("a", "d", "l")),
            health("3", 500, 0, 0.01, record("a", "d", "l")),
        ]);
        ev.versions[0].aliases = vec!["champion".into()];
        ev.now_ms = 10_000_000;
        ev.mismatches = vec![
            MismatchSeen {
                last_ms: Some(ev.now_ms - 60_000),
                first_ms: Some(ev.now_ms - 600_000),
                ..seen_mismatch("2", "1", 807)
            },
            MismatchSeen {
                last_ms: Some(ev.now_ms - 1_000),
                first_ms: Some(ev.now_ms - 30_000),
                ..seen_mismatch("3", "9", 61)
            },
        ];
        let e = explain(&ev);
        assert_eq!(
            e.causes[0].title,
            "the model server reports version 9 while the route points to 3"
        );
        assert_eq!(e.causes[0].version.as_deref(), Some("3"));
        assert!(
            e.causes[1].title.ends_with("(stopped)"),
            "{}",
            e.causes[1].title
        );
        assert!(
            !e.causes[1].title.contains("champion"),
            "{}",
            e.causes[1].title
        );
        assert!(e.causes[1].score < e.causes[0].score);
    }

    #[test]
    fn errors_the_window_no_longer_holds_come_from_the_journal() {
        let mut ev = evidence(vec![
            health("1", 0, 0, 0.01, record("97f4aaa", "e5d3aaa", "l")),
            health("2", 0, 0, 0.01, record("1c2baaa", "9a41aaa", "l")),
        ]);
        ev.baseline = Some("1".into());
        ev.health_source = "the sidecar's rolling window".into();
        let quiet = explain(&ev);
        assert!(quiet.causes.is_empty());
        assert!(
            quiet
                .note
                .as_deref()
                .is_some_and(|n| n.contains("--prometheus"))
        );
        ev.events = vec![
            event(
                5_000,
                Kind::Onset,
                Some("2"),
                &[("signal", "errors"), ("detail", "error rate 12%")],
            ),
            event(9_000, Kind::AutoRollback, Some("2"), &[]),
        ];
        let e = explain(&ev);
        let c = &e.causes[0];
        assert_eq!(
            (c.rule.as_str(), c.version.as_deref()),
            ("past_errors", Some("2"))
        );
        assert!(
            c.title.starts_with("errors on version 2 from 1970-01-01T00:00:05.000Z, rolled back at 1970-01-01T00:00:09.000Z: against version 1 it was trained with dataset digest e5d3 → 9a41"),
            "{}",
            c.title
        );
    }

    #[test]
    fn a_candidate_predicting_differently_on_the_same_inputs_names_its_lineage() {
        let a = health("1", 500, 0, 0.01, record("97f4aaa", "e5d3aaa", "l"));
        let mut b = health("2", 500, 0, 0.01, record("97f4aaa", "9a41aaa", "l"));
        b.prediction_psi_baseline = Some(0.6);
        let mut ev = evidence(vec![a, b.clone()]);
        ev.baseline = Some("1".into());
        let c = top(&ev);
        assert_eq!(c.rule, "candidate_drift");
        assert!(
            c.title.ends_with("trained with dataset digest e5d3 → 9a41"),
            "{}",
            c.title
        );
        // The healthy control: within the threshold, nothing.
        b.prediction_psi_baseline = Some(0.05);
        let mut quiet = evidence(vec![
            health("1", 500, 0, 0.01, record("97f4aaa", "e5d3aaa", "l")),
            b,
        ]);
        quiet.baseline = Some("1".into());
        assert!(explain(&quiet).causes.is_empty());
    }

    #[test]
    fn uris_are_quoted_whole() {
        assert_eq!(
            short("s3://ml-data/churn/train.parquet"),
            "s3://ml-data/churn/train.parquet"
        );
        assert_eq!(short("sha256:9c69b58dee292bb1"), "9c69");
        assert_eq!(short("1c2b8e04a5d7"), "1c2b");
    }

    #[test]
    fn stale_lineage_is_a_cause_only_when_its_versions_symptom_followed_the_new_data() {
        let detail = |written_ms: i64| StaleDetail {
            dataset: "crm.accounts".into(),
            trained_on: "e5d3".into(),
            latest: "run-9".into(),
            written_ms,
            job: Some("dbt/accounts".into()),
        };
        let mut ev = evidence(vec![
            health("1", 1000, 2, 0.01, record("a", "d", "l")),
            health("2", 1000, 80, 0.01, record("a", "d", "l")),
        ]);
        ev.from_ms = 0;
        ev.versions[1].stale = Some("crm.accounts rewritten".into());
        ev.events = vec![event(
            50_000,
            Kind::Onset,
            Some("2"),
            &[("signal", "errors")],
        )];
        // Written before the errors of version 2 began: a cause, with the job.
        ev.versions[1].stale_detail = Some(detail(40_000));
        let e = explain(&ev);
        let c = e.causes.iter().find(|c| c.rule == "stale_lineage").unwrap();
        assert_eq!(
            (c.job.as_deref(), c.score),
            (Some("dbt/accounts"), 0.75),
            "{c:?}"
        );
        assert!(
            !c.evidence.iter().any(|x| x.contains("with the symptom")),
            "{c:?}"
        );
        // Written after they began: it did not start them; a risk.
        ev.versions[1].stale_detail = Some(detail(50_000 + 120_000));
        let e = explain(&ev);
        assert!(
            e.causes.iter().all(|c| c.rule != "stale_lineage"),
            "{:?}",
            e.causes
        );
        assert_eq!(e.risks[0].rule, "stale_lineage");
        // A symptom on another version does not make version 1's stale lineage a cause.
        ev.versions[1].stale = None;
        ev.versions[0].stale = Some("crm.accounts rewritten".into());
        ev.versions[0].stale_detail = Some(detail(40_000));
        let e = explain(&ev);
        assert_eq!(e.risks[0].version.as_deref(), Some("1"), "{:?}", e.causes);
    }
}
