//! The canary controller: assembles the comparison of a candidate with its baseline from what
//! the sidecar holds (rolling request windows, the inspector's drift and data-quality windows,
//! shadow agreement, lineage records), applies weight changes, promotions and rollbacks through
//! the reloader with an audit entry each, and rolls back automatically when configured.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::clock::Instant;

use tokio::sync::watch;
use tracing::{info, warn};

use super::audit::{AuditError, AuditLog, Draft, Entry};
use super::diff::lineage_diff;
use super::shadow::ShadowStats;
use super::verdict::{self, Comparison, Inputs, Side, Signals, Verdict};
use crate::inspect::stats::{self as istats, VersionStats};
use crate::inspect::worker::Shared;
use crate::observe::metrics::Metrics;
use crate::routing::{Reloader, Served, Snapshot, WeightsError, route_weights};

/// Why a canary call failed.
#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    /// No split route, and no versions given.
    #[error(
        "model \"{0}\" has no route splitting traffic between versions; pass --baseline and --candidate"
    )]
    NoSplit(String),
    /// A version the registry does not know.
    #[error("model \"{model}\" has no version \"{version}\" in the registry")]
    UnknownVersion {
        /// Model.
        model: String,
        /// Version.
        version: String,
    },
    /// The route has one backend only.
    #[error("route {0} has no candidate (one backend)")]
    NoCandidate(String),
    /// The weights could not be set.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The audit entry could not be written (the change was applied).
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Who asks for a change, and why.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// Name of the person or system.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// Change ticket.
    pub ticket: Option<String>,
}

/// Drives canaries for one sidecar.
#[derive(Debug)]
pub struct Controller {
    reloader: Arc<Reloader>,
    audit: Arc<AuditLog>,
    /// Where automatic rollbacks are recorded for `explain`.
    journal: Arc<crate::journal::Journal>,
    inspector: Arc<Shared>,
    shadow: Arc<ShadowStats>,
    metrics: Metrics,
}

fn served<'a>(
    snap: &'a Snapshot,
    model: &str,
    version: &str,
) -> Result<&'a Arc<Served>, CanaryError> {
    snap.models
        .get(model)
        .and_then(|m| m.versions.get(version))
        .ok_or_else(|| CanaryError::UnknownVersion {
            model: model.to_string(),
            version: version.to_string(),
        })
}

fn side(s: &Served, weight: Option<u32>) -> Side {
    let t = s.metrics.window.totals();
    Side {
        version: s.version.to_string(),
        lineage_id: s.lineage_id.to_string(),
        requests: t.requests,
        errors: t.errors,
        p50: t.quantile(0.5),
        p95: t.quantile(0.95),
        p99: t.quantile(0.99),
        weight,
    }
}

impl Controller {
    /// A controller over these parts.
    pub fn new(
        reloader: Arc<Reloader>,
        audit: Arc<AuditLog>,
        journal: Arc<crate::journal::Journal>,
        inspector: Arc<Shared>,
        shadow: Arc<ShadowStats>,
        metrics: Metrics,
    ) -> Self {
        Self {
            reloader,
            audit,
            journal,
            inspector,
            shadow,
            metrics,
        }
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Compare the candidate with the baseline of `model` (a model or split route name); the
    /// versions default to the route's `canary.baseline` and `canary.candidate`.
    pub fn compare(
        &self,
        model: &str,
        baseline: Option<&str>,
        candidate: Option<&str>,
    ) -> Result<Comparison, CanaryError> {
        let snap = self.reloader.current().load_full();
        let route = Reloader::find_split(&snap, model);
        let state = route.and_then(|i| snap.routes.get(i));
        let model = state
            .and_then(|r| r.route.model.clone())
            .unwrap_or_else(|| model.to_string());
        let pick = |want: Option<&str>, index: Option<usize>| {
            want.map(str::to_string)
                .or_else(|| index.and_then(|i| state?.backends.get(i)?.version.clone()))
        };
        let (b, c) = match state {
            Some(r) => (
                pick(baseline, Some(r.route.canary.baseline)),
                pick(candidate, r.route.canary.candidate),
            ),
            None => (baseline.map(str::to_string), candidate.map(str::to_string)),
        };
        let (Some(b), Some(c)) = (b, c) else {
            return Err(match state {
                Some(r) => CanaryError::NoCandidate(r.route.name.clone()),
                None => CanaryError::NoSplit(model),
            });
        };
        let weights = route.map(|i| route_weights(&snap, i)).unwrap_or_default();
        let (bs, cs) = (served(&snap, &model, &b)?, served(&snap, &model, &c)?);
        let thresholds = state.map_or_else(
            || crate::config::Canary::defaults().thresholds,
            |r| r.route.canary.thresholds.clone(),
        );
        let inputs = Inputs {
            model: model.clone(),
            source: "sidecar".into(),
            window_seconds: snap.config.inspect.window.as_secs_f64(),
            baseline: side(bs, weights.get(&b).copied()),
            candidate: side(cs, weights.get(&c).copied()),
            signals: self.signals(&model, &b, &c),
            lineage_diff: match (&bs.record, &cs.record) {
                (Some(x), Some(y)) => lineage_diff(x, y),
                _ => Vec::new(),
            },
        };
        Ok(verdict::compare(inputs, &thresholds))
    }

    /// Prediction divergence, data-quality issue rates and shadow agreement of the two versions.
    fn signals(&self, model: &str, baseline: &str, candidate: &str) -> Signals {
        let mut signals = Signals {
            shadow: self.shadow.agreement(model, baseline, candidate),
            ..Signals::default()
        };
        let slice = self.inspector.slice_now();
        let all = self
            .inspector
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let find = |v: &str| {
            all.values()
                .find(|s| &*s.profile.model == model && &*s.profile.version == v)
        };
        let (b, c): (Option<&VersionStats>, Option<&VersionStats>) =
            (find(baseline), find(candidate));
        if let (Some(b), Some(c)) = (b, c) {
            let against = format!("version:{baseline}");
            for (i, d) in istats::drift(&[b, c], slice) {
                if i == 1 && d.signal == "prediction" && d.against == against {
                    match d.statistic {
                        "psi" => signals.prediction_psi = Some(d.value),
                        _ => signals.prediction_js = Some(d.value),
                    }
                }
            }
        }
        let rates = |s: Option<&VersionStats>| -> Vec<(String, String, f64)> {
            s.map(|s| s.issue_rates(slice))
                .unwrap_or_default()
                .into_iter()
                .map(|(f, i, r)| (f, i.as_str().to_string(), r))
                .collect()
        };
        signals.issue_rates = verdict::pair_issue_rates(rates(b), rates(c));
        signals
    }

    /// Set weights by version on a split route (by route or model name), with an audit entry
    /// carrying the comparison at that moment.
    pub async fn set_weights(
        &self,
        name: &str,
        weights: &BTreeMap<String, u32>,
        who: Who,
        action: &str,
    ) -> Result<Entry, CanaryError> {
        let comparison = self.compare(name, None, None).ok();
        let change = self.reloader.set_weights(name, weights).await?;
        let entry = self.audit.append(Draft {
            actor: who.actor,
            action: action.to_string(),
            route: change.route,
            model: change.model,
            reason: who.reason,
            ticket: who.ticket,
            before: change.before,
            after: change.after,
            comparison: comparison.and_then(|c| serde_json::to_value(c).ok()),
        })?;
        info!(seq = entry.seq, action, route = %entry.route, actor = %entry.actor, "Audited traffic change.");
        Ok(entry)
    }

    /// Send all traffic to `version` (default: the candidate).
    pub async fn promote(
        &self,
        name: &str,
        version: Option<&str>,
        who: Who,
    ) -> Result<Entry, CanaryError> {
        let target = match version {
            Some(v) => v.to_string(),
            None => self.role(name, false)?,
        };
        self.all_to(name, &target, who, "promote").await
    }

    /// Send all traffic back to the baseline.
    pub async fn rollback(&self, name: &str, who: Who, action: &str) -> Result<Entry, CanaryError> {
        let baseline = self.role(name, true)?;
        self.all_to(name, &baseline, who, action).await
    }

    /// The baseline's (or candidate's) version of a split route.
    fn role(&self, name: &str, baseline: bool) -> Result<String, CanaryError> {
        let snap = self.reloader.current().load_full();
        let r = Reloader::find_split(&snap, name)
            .and_then(|i| snap.routes.get(i))
            .ok_or_else(|| CanaryError::NoSplit(name.to_string()))?;
        let index = if baseline {
            Some(r.route.canary.baseline)
        } else {
            r.route.canary.candidate
        };
        index
            .and_then(|i| r.backends.get(i))
            .and_then(|b| b.version.clone())
            .ok_or_else(|| CanaryError::NoCandidate(r.route.name.clone()))
    }

    async fn all_to(
        &self,
        name: &str,
        version: &str,
        who: Who,
        action: &str,
    ) -> Result<Entry, CanaryError> {
        let snap = self.reloader.current().load_full();
        let index = Reloader::find_split(&snap, name)
            .ok_or_else(|| CanaryError::NoSplit(name.to_string()))?;
        let mut weights: BTreeMap<String, u32> = route_weights(&snap, index)
            .into_keys()
            .map(|v| (v, 0))
            .collect();
        if !weights.contains_key(version) {
            return Err(WeightsError::UnknownVersion {
                version: version.to_string(),
                route: snap.routes[index].route.name.clone(),
                have: weights.keys().cloned().collect::<Vec<_>>().join(", "),
            }
            .into());
        }
        weights.insert(version.to_string(), 100);
        self.set_weights(name, &weights, who, action).await
    }

    /// Judge every split route with `auto_rollback_after` set, on its `check_interval`, and
    /// roll a candidate back after that many consecutive `rollback` verdicts.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut streaks: HashMap<String, (u32, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let snap = self.reloader.current().load_full();
            for r in snap
                .routes
                .iter()
                .filter(|r| r.route.canary.auto_rollback_after > 0)
            {
                let name = &r.route.name;
                let (streak, last) = streaks.entry(name.clone()).or_insert((0, Instant::now()));
                if last.elapsed() < r.route.canary.check_interval {
                    continue;
                }
                *last = Instant::now();
                let candidate_weight = r
                    .route
                    .canary
                    .candidate
                    .and_then(|i| r.weights.get(i))
                    .copied()
                    .unwrap_or(0);
                let Ok(c) = self.compare(name, None, None) else {
                    continue;
                };
                if c.verdict != Verdict::Rollback || candidate_weight == 0 {
                    *streak = 0;
                    continue;
                }
                *streak += 1;
                if *streak < r.route.canary.auto_rollback_after {
                    continue;
                }
                *streak = 0;
                let who = Who {
                    actor: "auto-rollback".into(),
                    reason: Some(c.reasons.join("; ")),
                    ticket: None,
                };
                match self.rollback(name, who, "auto_rollback").await {
                    Ok(e) => {
                        self.metrics.auto_rollback(name);
                        {
                            self.journal.record(
                                crate::journal::Kind::AutoRollback,
                                &c.model,
                                Some(&c.candidate.version),
                                format!(
                                    "candidate {} rolled back: {}",
                                    c.candidate.version,
                                    c.reasons.join("; ")
                                ),
                                &[],
                            );
                        }
                        warn!(route = %name, candidate = %c.candidate.version, baseline = %c.baseline.version,
                              reasons = %c.reasons.join("; "), seq = e.seq,
                              "Candidate rolled back automatically.");
                    }
                    Err(e) => warn!(route = %name, error = %e, "Automatic rollback failed."),
                }
            }
        }
    }
}
