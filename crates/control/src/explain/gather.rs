//! Gathers the evidence for `explain` from the sidecar's own state: the snapshot (versions,
//! aliases, weights, stale flags, lineage records), the rolling request windows, the
//! inspector's data-quality and drift windows, and the journal.

use std::sync::{Arc, PoisonError};

use super::journal::Journal;
use super::rules::{
    Evidence, Explanation, FeatureDrift, MismatchSeen, StaleDetail, VersionHealth, Write, explain,
};
use crate::inspect::stats as istats;
use crate::inspect::worker::Shared;
use crate::routing::{Reloader, route_weights};

/// Explains models from what one sidecar holds.
#[derive(Debug)]
pub struct Explainer {
    reloader: Arc<Reloader>,
    inspector: Arc<Shared>,
    journal: Arc<Journal>,
    history: Option<Arc<dyn crate::history::Store>>,
}

impl Explainer {
    /// An explainer over these parts.
    pub fn new(reloader: Arc<Reloader>, inspector: Arc<Shared>, journal: Arc<Journal>) -> Self {
        Self {
            reloader,
            inspector,
            journal,
            history: None,
        }
    }

    /// Read past events from this store as well as from the journal in memory.
    pub fn with_history(mut self, history: Option<Arc<dyn crate::history::Store>>) -> Self {
        self.history = history;
        self
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The evidence about `model` between two times. Health covers the rolling window, and
    /// only when that window reaches into the one asked about; events, mismatches and onsets come
    /// from the journal, bounded by the window asked about.
    pub fn evidence(&self, model: &str, from_ms: i64, to_ms: i64) -> Option<Evidence> {
        let snap = self.reloader.current().load_full();
        let state = snap.models.get(model)?;
        let record = snap.registry.models.get(model);
        let split = Reloader::find_split(&snap, model);
        let weights = split.map(|i| route_weights(&snap, i)).unwrap_or_default();
        let baseline = split
            .and_then(|i| snap.routes.get(i))
            .and_then(|r| r.backends.get(r.route.canary.baseline))
            .and_then(|b| b.version.clone());
        let now = crate::journal::now_ms();
        let length = snap.config.inspect.window;
        let window_from = now - i64::try_from(length.as_millis()).unwrap_or(i64::MAX / 2);
        let covered = to_ms >= window_from && from_ms <= now;
        let health_source = format!(
            "the sidecar's rolling window (the last {}s, from {}){}",
            length.as_secs(),
            crate::codec::time::rfc3339_ms(window_from),
            if covered {
                ""
            } else {
                ", which does not reach the window asked about: no health from it"
            }
        );
        let slice = self.inspector.slice_now();
        let stats = self
            .inspector
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let model_stats: Vec<&istats::VersionStats> = stats
            .values()
            .filter(|s| &*s.profile.model == model)
            .collect();
        let mut psi = std::collections::HashMap::new();
        let mut psi_baseline = std::collections::HashMap::new();
        let mut features: std::collections::HashMap<String, Vec<FeatureDrift>> =
            std::collections::HashMap::new();
        let mut against_baseline: std::collections::HashMap<String, Vec<FeatureDrift>> =
            std::collections::HashMap::new();
        let baseline_label = baseline.as_ref().map(|b| format!("version:{b}"));
        for (i, d) in istats::drift(&model_stats, slice) {
            let version = model_stats[i].profile.version.to_string();
            let (psi, features) = if d.against == "reference" {
                (&mut psi, &mut features)
            } else if Some(&d.against) == baseline_label.as_ref() {
                (&mut psi_baseline, &mut against_baseline)
            } else {
                continue;
            };
            if d.signal == "prediction" && d.statistic == "psi" {
                // A value chance explains for a window this size is not drift.
                if d.value > d.noise {
                    psi.insert(version, d.value);
                }
            } else if let Some(feature) = d.signal.strip_prefix("feature:") {
                // Only what chance does not explain for a window this size.
                let moved = features.entry(version).or_default();
                match (d.statistic, moved.iter_mut().find(|m| m.feature == feature)) {
                    ("psi", None) if d.value > d.noise => moved.push(FeatureDrift {
                        feature: feature.to_string(),
                        psi: d.value,
                        js: None,
                    }),
                    ("js", Some(m)) => m.js = Some(d.value),
                    _ => {}
                }
            }
        }
        let mut versions: Vec<VersionHealth> = state
            .versions
            .iter()
            .map(|(v, served)| {
                let t = if covered {
                    served.metrics.window.totals()
                } else {
                    crate::observe::window::WindowTotals::default()
                };
                let vs = model_stats
                    .iter()
                    .find(|s| &*s.profile.version == v.as_str());
                VersionHealth {
                    version: v.clone(),
                    lineage_id: served.lineage_id.to_string(),
                    record: served.record.as_deref().cloned(),
                    requests: t.requests,
                    errors: t.errors,
                    p50: t.quantile(0.5),
                    p99: t.quantile(0.99),
                    weight: weights.get(v).copied(),
                    aliases: record
                        .map(|m| {
                            m.aliases
                                .iter()
                                .filter(|(_, to)| *to == v)
                                .map(|(a, _)| a.clone())
                                .collect()
                        })
                        .unwrap_or_default(),
                    stale: served.stale.as_ref().map(|s| s.describe()),
                    stale_detail: served.stale.as_ref().map(|s| StaleDetail {
                        dataset: s.dataset.name.clone(),
                        trained_on: s.trained_on.clone(),
                        latest: s.latest.digest.clone(),
                        written_ms: s.latest.written_ms,
                        job: s.latest.job.as_ref().map(|j| j.qualified()),
                    }),
                    issue_rates: vs
                        .filter(|_| covered)
                        .map(|s| {
                            s.issue_rates(slice)
                                .into_iter()
                                .map(|(f, i, r)| (f, i.as_str().to_string(), r))
                                .collect()
                        })
                        .unwrap_or_default(),
                    prediction_psi: psi.get(v).copied().filter(|_| covered),
                    prediction_psi_baseline: psi_baseline.get(v).copied().filter(|_| covered),
                    feature_drift: features.remove(v).filter(|_| covered).unwrap_or_default(),
                    baseline_drift: (against_baseline.remove(v))
                        .filter(|_| covered)
                        .unwrap_or_default(),
                }
            })
            .collect();
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        let mut sources = Vec::new();
        for served in state.versions.values() {
            if let Some(r) = &served.record {
                for f in &r.input_schema {
                    if let Some(s) = r.feature_source(f)
                        && !sources.iter().any(|(n, _): &(String, String)| *n == f.name)
                    {
                        sources.push((f.name.clone(), s));
                    }
                }
            }
        }
        let writes = sources
            .iter()
            .filter_map(|(_, source)| {
                let w = snap.lineage_events.last_write_of(source)?;
                Some((
                    source.clone(),
                    Write {
                        job: w.job.as_ref().map(|j| j.qualified()),
                        at_ms: w.written_ms,
                        version: w.digest.clone(),
                    },
                ))
            })
            .collect();
        let mismatches = (self
            .journal
            .mismatch_spans(model, from_ms, to_ms)
            .into_iter())
        .map(
            |(expected, reported, responses, first, last)| MismatchSeen {
                expected,
                reported,
                responses,
                first_ms: Some(first),
                last_ms: Some(last),
            },
        )
        .collect();
        Some(Evidence {
            model: model.to_string(),
            from_ms,
            to_ms,
            now_ms: now,
            health_source,
            events_source: "the journal in memory (its last 10,000 events)".into(),
            versions,
            events: self.journal.between(model, from_ms, to_ms),
            mismatches,
            sources,
            writes,
            route: split
                .and_then(|i| snap.routes.get(i))
                .map(|r| r.route.name.clone()),
            baseline,
            // Onsets are dated to a window slice.
            onset_slack_ms: (i64::try_from(length.as_millis()).unwrap_or(0) / 10).max(1_000),
            thresholds: split.map(|i| snap.routes[i].route.canary.thresholds.clone()),
            inspect: Some(snap.config.inspect.clone()),
            serving_alias: snap.routes.iter().find_map(|r| {
                match (&r.route.model, &r.route.serves) {
                    (Some(m), Some(crate::config::Serves::Alias(a))) if m == model => {
                        Some(a.clone())
                    }
                    _ => None,
                }
            }),
        })
    }

    /// Explain `model` between two times; `None` for a model the registry does not know. With a
    /// history store, its events for the window join the journal's (a restart, or a window
    /// older than the journal holds); a store that fails leaves the journal's, and says so.
    pub async fn explain(&self, model: &str, from_ms: i64, to_ms: i64) -> Option<Explanation> {
        let mut ev = self.evidence(model, from_ms, to_ms)?;
        if let Some(store) = &self.history {
            match store
                .events(model, from_ms, to_ms, crate::history::MAX_EVENTS)
                .await
            {
                Ok(stored) => {
                    ev.events = crate::history::merge(std::mem::take(&mut ev.events), stored);
                    ev.events_source = format!("the journal and {}", store.describe());
                }
                Err(e) => {
                    ev.events_source =
                        format!("the journal in memory ({} failed: {e})", store.describe());
                }
            }
        }
        Some(explain(&ev))
    }
}
