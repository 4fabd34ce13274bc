//! Per-version accumulators the worker feeds and `/metrics` reads: inspected messages and rows,
//! data-quality issues (cumulative and windowed), prediction histograms and class counts, LLM
//! tokens and finish reasons, and the rolling windows drift is computed from.

use std::collections::HashSet;
use std::sync::Arc;

use super::drift::{self, Window};
use super::openai::{FINISH_REASONS, Usage};
use super::profile::{Profile, Signal};
use super::quality::{self, Issue, Report};
use super::table::{Columns, Value};

/// A crossing the worker reports (a log line and a span event).
#[derive(Debug, Clone, PartialEq)]
pub struct QualityEvent {
    /// Schema feature index.
    pub feature: usize,
    /// The issue.
    pub issue: Issue,
    /// Issue rate over the window.
    pub rate: f64,
    /// Rows in the window.
    pub rows: u64,
}

/// One drift value.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftValue {
    /// `prediction` or `feature:<name>`.
    pub signal: String,
    /// `psi` or `js`.
    pub statistic: &'static str,
    /// `reference` or `version:<v>`.
    pub against: String,
    /// The value.
    pub value: f64,
    /// What chance alone stays under 99 % of the time for windows this size
    /// ([`drift::psi_noise`], [`drift::js_noise`]): a value under it raises no alert.
    pub noise: f64,
}

/// Numeric predictions histogram (bucket counts are not cumulative here).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds (the last bucket, +Inf, is implicit).
    pub bounds: Vec<f64>,
    /// Counts per bucket, `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
}

/// Everything counted for one model version.
#[derive(Debug, Clone)]
pub struct VersionStats {
    /// The profile in force.
    pub profile: Arc<Profile>,
    /// Requests whose features were read.
    pub requests: u64,
    /// Responses whose predictions were read.
    pub responses: u64,
    /// Rows checked against the schema.
    pub rows: u64,
    /// Cumulative issue counts per schema feature and issue.
    pub issues: Vec<[u64; 5]>,
    /// Rows (bin 0) and issues (bin 1 + 5·feature + issue) over the window.
    issue_window: Window,
    /// Feature/issue pairs above the threshold (an event was emitted; re-armed below half).
    alerted: HashSet<(usize, Issue)>,
    /// Numeric predictions.
    pub histogram: Histogram,
    /// Class counts: the listed classes then `other`.
    pub classes: Vec<u64>,
    /// LLM input and output tokens.
    pub tokens: [u64; 2],
    /// Finish reasons: [`FINISH_REASONS`] then `other`.
    pub finish: Vec<u64>,
    prediction_window: Window,
    feature_windows: Vec<Option<Window>>,
}

impl VersionStats {
    /// Empty stats shaped by a profile.
    pub fn new(profile: Arc<Profile>) -> Self {
        let features = profile.schema.len();
        let p = &profile.prediction;
        Self {
            requests: 0,
            responses: 0,
            rows: 0,
            issues: vec![[0; 5]; features],
            issue_window: Window::new(1 + 5 * features),
            alerted: HashSet::new(),
            histogram: Histogram {
                counts: vec![0; p.buckets.len() + 1],
                bounds: p.buckets.clone(),
                sum: 0.0,
            },
            classes: vec![0; p.classes.len() + 1],
            tokens: [0; 2],
            finish: vec![0; FINISH_REASONS.len() + 1],
            prediction_window: Window::new(p.signal.bins.len()),
            feature_windows: profile
                .feature_signals
                .iter()
                .map(|s| s.as_ref().map(|s| Window::new(s.bins.len())))
                .collect(),
            profile,
        }
    }

    /// Count a request's features; returns the data-quality events this message caused.
    pub fn features(&mut self, columns: &Columns, slice: u64) -> Vec<QualityEvent> {
        self.requests += 1;
        let report = quality::check(&self.profile.schema, columns);
        self.rows += report.rows;
        self.issue_window.add(slice, 0, report.rows);
        for (f, issue, n) in report.issues() {
            self.issues[f][issue as usize] += n;
            self.issue_window.add(slice, 1 + 5 * f + issue as usize, n);
        }
        for (f, signal) in self.profile.feature_signals.iter().enumerate() {
            let (Some(signal), Some(window)) = (signal, &mut self.feature_windows[f]) else {
                continue;
            };
            for v in columns.get(&self.profile.names[f]).unwrap_or(&[]) {
                if let Some(bin) = bin_of(signal, v) {
                    window.add(slice, bin, 1);
                }
            }
        }
        self.crossings(&report, slice)
    }

    fn crossings(&mut self, report: &Report, slice: u64) -> Vec<QualityEvent> {
        let totals = self.issue_window.totals(slice);
        let rows = totals[0];
        let settings = &self.profile.settings;
        let mut events = Vec::new();
        for (f, counts) in report.counts.iter().enumerate() {
            for issue in Issue::ALL {
                let key = (f, issue);
                let rate = totals[1 + 5 * f + issue as usize] as f64 / rows.max(1) as f64;
                if counts[issue as usize] > 0
                    && rows >= settings.min_samples
                    && rate >= settings.issue_rate_threshold
                    && self.alerted.insert(key)
                {
                    events.push(QualityEvent {
                        feature: f,
                        issue,
                        rate,
                        rows,
                    });
                } else if rate < settings.issue_rate_threshold / 2.0 {
                    self.alerted.remove(&key);
                }
            }
        }
        events
    }

    /// Count a response's predictions.
    pub fn predictions(&mut self, columns: &Columns, slice: u64) {
        self.responses += 1;
        let p = &self.profile.prediction;
        let values = match &p.output {
            Some(name) => columns.get(name),
            None => columns.columns().first().map(|(_, v)| v.as_slice()),
        };
        for v in values.unwrap_or(&[]) {
            if p.classes.is_empty() {
                let Value::Number(x) = v else { continue };
                let i = self.histogram.bounds.partition_point(|b| b < x);
                self.histogram.counts[i] += 1;
                self.histogram.sum += x;
            } else {
                let label = quality::category(v);
                let i = p.classes.iter().position(|c| *c == label);
                self.classes[i.unwrap_or(p.classes.len())] += 1;
            }
            if let Some(bin) = bin_of(&p.signal, v) {
                self.prediction_window.add(slice, bin, 1);
            }
        }
    }

    /// Count an LLM response.
    pub fn usage(&mut self, u: &Usage) {
        self.responses += 1;
        self.tokens[0] += u.input_tokens.unwrap_or(0);
        self.tokens[1] += u.output_tokens.unwrap_or(0);
        for r in &u.finish_reasons {
            let i = FINISH_REASONS.iter().position(|k| k == r);
            self.finish[i.unwrap_or(FINISH_REASONS.len())] += 1;
        }
    }

    /// Issue rates over the window, per schema feature and issue: `(feature, issue, rate)`, for
    /// every pair with at least one issue (empty until the window holds a row).
    pub fn issue_rates(&self, slice: u64) -> Vec<(String, Issue, f64)> {
        let totals = self.issue_window.totals(slice);
        let rows = totals[0];
        if rows == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (f, name) in self.profile.names.iter().enumerate() {
            for issue in Issue::ALL {
                let n = totals[1 + 5 * f + issue as usize];
                if n > 0 {
                    out.push((name.clone(), issue, n as f64 / rows as f64));
                }
            }
        }
        out
    }

    /// Rows in the issue window.
    pub fn window_rows(&self, slice: u64) -> u64 {
        self.issue_window.totals(slice)[0]
    }

    /// Whether no window holds a value (the version had no traffic within the window).
    pub fn idle(&self, slice: u64) -> bool {
        self.prediction_window.is_empty(slice)
            && self
                .feature_windows
                .iter()
                .all(|w| w.as_ref().is_none_or(|w| w.is_empty(slice)))
    }

    /// Windowed counts per drift signal: `(signal label, signal, counts)`.
    pub fn windows(&self, slice: u64) -> Vec<(String, &Signal, Vec<u64>)> {
        let mut out = vec![(
            "prediction".to_string(),
            &self.profile.prediction.signal,
            self.prediction_window.totals(slice),
        )];
        for (f, w) in self.feature_windows.iter().enumerate() {
            if let (Some(w), Some(s)) = (w, &self.profile.feature_signals[f]) {
                out.push((
                    format!("feature:{}", self.profile.names[f]),
                    s,
                    w.totals(slice),
                ));
            }
        }
        out
    }
}

fn bin_of(signal: &Signal, v: &Value) -> Option<usize> {
    match v {
        Value::Number(x) => signal
            .bins
            .of_number(*x)
            .or_else(|| signal.bins.of_category(&quality::category(v))),
        Value::Text(_) | Value::Bool(_) => signal.bins.of_category(&quality::category(v)),
        Value::Null | Value::Nested => None,
    }
}

/// Drift of every signal of every version of one model: against the registry's reference and
/// against each other live version with the same bins, once both windows hold `min_samples`.
/// Versions without traffic in the window (most of a large registry) cost one look each:
/// `min_samples` is at least 1, so an empty window is never compared.
pub fn drift(versions: &[&VersionStats], slice: u64) -> Vec<(usize, DriftValue)> {
    let windows: Vec<_> = versions
        .iter()
        .map(|v| (!v.idle(slice)).then(|| v.windows(slice)))
        .collect();
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let Some(own) = &windows[i] else { continue };
        let min = v.profile.settings.min_samples;
        for (label, signal, counts) in own {
            if counts.iter().sum::<u64>() < min {
                continue;
            }
            let actual = drift::as_f64(counts);
            let n = counts.iter().sum::<u64>() as f64;
            let bins = counts.len();
            // `samples`: the effective sample size of the comparison.
            let mut push = |against: String, expected: &[f64], samples: f64| {
                for (statistic, value, noise) in [
                    (
                        "psi",
                        drift::psi(expected, &actual),
                        drift::psi_noise(bins, samples),
                    ),
                    (
                        "js",
                        drift::js(expected, &actual),
                        drift::js_noise(bins, samples),
                    ),
                ] {
                    out.push((
                        i,
                        DriftValue {
                            signal: label.clone(),
                            statistic,
                            against: against.clone(),
                            value,
                            noise,
                        },
                    ));
                }
            };
            if let Some(reference) = &signal.reference {
                push("reference".into(), reference, n);
            }
            for (j, other) in versions.iter().enumerate() {
                if i == j {
                    continue;
                }
                let Some((_, s, c)) = windows[j].iter().flatten().find(|(l, _, _)| l == label)
                else {
                    continue;
                };
                let m = c.iter().sum::<u64>();
                if s.bins == signal.bins && m >= min {
                    let m = m as f64;
                    push(
                        format!("version:{}", other.profile.version),
                        &drift::as_f64(c),
                        n * m / (n + m),
                    );
                }
            }
        }
    }
    out
}

/// How far a drift value is past the configured thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Below the warning threshold.
    Ok,
    /// At or above `psi_warn` (PSI) or `js_warn` (JS).
    Warn,
    /// At or above `psi_alert` (PSI).
    Alert,
}

impl Level {
    /// The level of one value.
    pub fn of(statistic: &str, value: f64, s: &crate::config::Inspect) -> Self {
        match statistic {
            "psi" if value >= s.psi_alert => Self::Alert,
            "psi" if value >= s.psi_warn => Self::Warn,
            "js" if value >= s.js_warn => Self::Warn,
            _ => Self::Ok,
        }
    }

    /// The log field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Alert => "alert",
        }
    }
}

/// A drift series that rose to a higher level.
#[derive(Debug, Clone)]
pub struct DriftEvent {
    /// The version's profile.
    pub profile: Arc<Profile>,
    /// The value.
    pub drift: DriftValue,
    /// Its new level.
    pub level: Level,
}

type DriftKey = (Arc<str>, Arc<str>, String, &'static str, String);

/// Remembers the level of every drift series and reports each rise once; a series that falls
/// back to `ok` is re-armed.
#[derive(Debug, Default)]
pub struct DriftWatch {
    levels: std::collections::HashMap<DriftKey, Level>,
}

impl DriftWatch {
    /// Compare every version's drift now with what was seen last time.
    pub fn check<'a>(
        &mut self,
        versions: impl IntoIterator<Item = &'a VersionStats>,
        slice: u64,
    ) -> Vec<DriftEvent> {
        let mut by_model: std::collections::BTreeMap<&str, Vec<&VersionStats>> =
            std::collections::BTreeMap::new();
        for v in versions {
            by_model.entry(&v.profile.model).or_default().push(v);
        }
        let mut events = Vec::new();
        for model_versions in by_model.values() {
            for (i, d) in drift(model_versions, slice) {
                let profile = &model_versions[i].profile;
                // A value chance alone reaches for windows this size raises nothing.
                let level = match d.value > d.noise {
                    true => Level::of(d.statistic, d.value, &profile.settings),
                    false => Level::Ok,
                };
                let key = (
                    profile.model.clone(),
                    profile.version.clone(),
                    d.signal.clone(),
                    d.statistic,
                    d.against.clone(),
                );
                let before = self.levels.insert(key, level).unwrap_or(Level::Ok);
                if level > before {
                    events.push(DriftEvent {
                        profile: profile.clone(),
                        drift: d,
                        level,
                    });
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Inspect, validate};
    use crate::registry::{Feature, LineageRecord};

    fn stats(min_samples: u64, threshold: f64) -> VersionStats {
        let mut settings: Inspect = validate(
            &toml::from_str("[[routes]]\nmodel = \"m\"\nupstream = \"127.0.0.1:1\"\n")
                .unwrap_or_default(),
            std::path::Path::new("."),
        )
        .map(|c| c.inspect)
        .unwrap_or_else(|e| panic!("{e}"));
        settings.min_samples = min_samples;
        settings.issue_rate_threshold = threshold;
        let record = LineageRecord {
            input_schema: vec![Feature {
                name: "plan".into(),
                kind: "string".into(),
                ..Feature::default()
            }],
            ..LineageRecord::default()
        };
        VersionStats::new(Arc::new(Profile::new(
            "m".into(),
            "1".into(),
            "ln_1".into(),
            Some(&record),
            &settings,
        )))
    }

    #[test]
    fn drift_rises_are_reported_once_per_level() {
        let mut s = stats(10, 0.2);
        let mut watch = DriftWatch::default();
        // No reference and one version: nothing to compare with.
        s.predictions(&row(Some("x")), 0);
        assert!(watch.check([&s], 0).is_empty());
        let settings = s.profile.settings.clone();
        assert_eq!(Level::of("psi", 0.3, &settings), Level::Alert);
        assert_eq!(Level::of("psi", 0.1, &settings), Level::Warn);
        assert_eq!(Level::of("js", 0.1, &settings), Level::Warn);
        assert_eq!(Level::of("js", 0.09, &settings), Level::Ok);

        let mut profile = (*s.profile).clone();
        profile.prediction.signal.reference = Some(vec![0.5, 0.5]);
        profile.prediction.signal.bins = drift::Bins::Numeric(vec![0.5]);
        let mut s = VersionStats::new(Arc::new(profile));
        let mut numbers = Columns::default();
        for x in [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.9, 0.9, 0.9] {
            numbers.push("p", Value::Number(x));
        }
        s.predictions(&numbers, 0);
        // 70/30 against 50/50: PSI 0.169, JS 0.145, past the thresholds; but ten values split
        // 7/3 are what chance gives a fair coin often enough (the noise bound is 0.66).
        assert!(watch.check([&s], 0).is_empty(), "ten values are noise");
        for _ in 0..99 {
            s.predictions(&numbers, 0);
        }
        // A thousand values split 70/30: PSI 0.169 (warn), JS 0.145 (warn).
        let levels = |events: Vec<DriftEvent>| -> Vec<(&'static str, Level)> {
            events
                .iter()
                .map(|e| (e.drift.statistic, e.level))
                .collect()
        };
        let first = levels(watch.check([&s], 0));
        assert_eq!(first, [("psi", Level::Warn), ("js", Level::Warn)]);
        assert!(
            watch.check([&s], 0).is_empty(),
            "no repeat at the same level"
        );
        let mut low = Columns::default();
        for _ in 0..1000 {
            low.push("p", Value::Number(0.0));
        }
        s.predictions(&low, 0);
        // 85/15: PSI 0.41 rises to alert; JS stays at warn.
        assert_eq!(levels(watch.check([&s], 0)), [("psi", Level::Alert)]);
    }

    #[test]
    fn versions_without_traffic_change_no_drift_value() {
        // Two live versions with a reference, among many registered ones that had no traffic
        // (or whose traffic left the window): the values are those of the live pair alone.
        let version = |name: &str, xs: &[f64], at: u64| {
            let mut profile = (*stats(5, 0.2).profile).clone();
            profile.version = name.into();
            profile.prediction.signal.reference = Some(vec![0.5, 0.5]);
            profile.prediction.signal.bins = drift::Bins::Numeric(vec![0.5]);
            let mut s = VersionStats::new(Arc::new(profile));
            let mut c = Columns::default();
            for x in xs {
                c.push("p", Value::Number(*x));
            }
            s.predictions(&c, at);
            s
        };
        let now = drift::SLICES + 3;
        let a = version("a", &[0.1, 0.2, 0.3, 0.9, 0.9, 0.9], now);
        let b = version("b", &[0.1, 0.1, 0.1, 0.1, 0.1, 0.9], now - 1);
        let gone = version("gone", &[0.1; 6], 2);
        let idle: Vec<_> = (0..50)
            .map(|i| version(&format!("i{i}"), &[], now))
            .collect();
        let mut all: Vec<&VersionStats> = idle.iter().collect();
        all.insert(10, &a);
        all.insert(30, &gone);
        all.push(&b);
        let named = |out: Vec<(usize, DriftValue)>, vs: &[&VersionStats]| {
            let mut v: Vec<_> = out
                .into_iter()
                .map(|(i, d)| {
                    (
                        vs[i].profile.version.to_string(),
                        d.signal,
                        d.statistic,
                        d.against,
                        d.value,
                    )
                })
                .collect();
            v.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
            v
        };
        let live = named(drift(&[&a, &b], now), &[&a, &b]);
        // PSI and JS, each version against the reference and against the other.
        assert_eq!(live.len(), 8, "{live:?}");
        assert_eq!(named(drift(&all, now), &all), live);
        assert!(gone.idle(now) && idle[0].idle(now) && !a.idle(now) && !b.idle(now));
    }

    fn row(plan: Option<&str>) -> Columns {
        let mut c = Columns::default();
        c.push("plan", plan.map_or(Value::Null, |p| Value::Text(p.into())));
        c
    }

    #[test]
    fn one_event_per_crossing_after_min_samples_and_rearmed_below_half() {
        let mut s = stats(10, 0.2);
        for _ in 0..9 {
            assert!(s.features(&row(Some("a")), 0).is_empty());
        }
        // 1 null in 10 rows: 10 % < 20 %.
        assert!(s.features(&row(None), 0).is_empty());
        // 2 nulls in 11 rows, 3 in 12: the second crosses 20 % once.
        assert!(s.features(&row(None), 0).is_empty());
        let events = s.features(&row(None), 0);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].issue, Issue::Null);
        assert!((events[0].rate - 3.0 / 12.0).abs() < 1e-12);
        assert!(
            s.features(&row(None), 0).is_empty(),
            "still above: no repeat"
        );
        // The window moves on: the old slice leaves, clean rows bring the rate under 10 %.
        for _ in 0..20 {
            s.features(&row(Some("a")), drift::SLICES);
        }
        for _ in 0..9 {
            s.features(&row(Some("a")), drift::SLICES);
        }
        let again = s.features(&row(None), drift::SLICES + 1);
        assert!(again.is_empty(), "1 in 30 is below the threshold");
        let rearmed: usize = (0..20)
            .map(|_| s.features(&row(None), drift::SLICES + 1).len())
            .sum();
        assert_eq!(
            rearmed, 1,
            "re-armed below half the threshold, fires once more"
        );
        assert_eq!(s.issues[0][Issue::Null as usize], 25);
    }
}
