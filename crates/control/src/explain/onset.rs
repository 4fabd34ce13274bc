//! Onset: when each version's symptoms started and ended. Every second the watcher reads every
//! version's rolling window; a version whose error rate (or p99) crosses its route's canary
//! thresholds is journaled once as an `onset` (the error onset dated to the first window slice
//! of the run of elevated slices), and as a `recovery` when it falls back. The events outlive
//! the window, so `explain` can order causes by what came first, hours later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::canary::stats::error_rate_p_value;
use crate::config::Thresholds;
use crate::explain::rules::MIN_LATENCY_REGRESSION;
use crate::journal::{Journal, Kind, now_ms};
use crate::observe::window::SLICES;
use crate::routing::Reloader;

/// How often the windows are read.
const TICK: Duration = Duration::from_secs(1);

/// One version's window as the watcher reads it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The version.
    pub version: String,
    /// `(requests, errors)` per slice, the current one first.
    pub slices: Vec<(u64, u64)>,
    /// p99 latency over the window (s).
    pub p99: Option<f64>,
    /// How long ago its current slice started, and how long a slice lasts (ms).
    pub slice_ms: (i64, i64),
}

impl Seen {
    fn totals(&self) -> (u64, u64) {
        self.slices
            .iter()
            .fold((0, 0), |(r, e), (sr, se)| (r + sr, e + se))
    }

    fn rate(&self) -> f64 {
        let (r, e) = self.totals();
        if r == 0 { 0.0 } else { e as f64 / r as f64 }
    }
}

/// A symptom of one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Symptom {
    /// Index into the versions given.
    pub index: usize,
    /// `errors` or `latency`.
    pub signal: &'static str,
    /// Slices back the symptom started (0: in the current slice).
    pub slices_back: usize,
    /// One line of numbers.
    pub detail: String,
}

/// The versions whose error rate or p99 is past the thresholds now: errors against the best
/// other version with traffic (or against none, with at least three errors), at the canary's
/// significance; p99 against the fastest other version.
pub fn symptoms(seen: &[Seen], t: &Thresholds) -> Vec<Symptom> {
    let min = (t.min_requests / 4).max(1);
    let live: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].totals().0 >= min)
        .collect();
    let mut out = Vec::new();
    for &i in &live {
        let v = &seen[i];
        let (requests, errors) = v.totals();
        let others = live.iter().filter(|&&j| j != i).map(|&j| &seen[j]);
        let best = others.clone().min_by(|a, b| a.rate().total_cmp(&b.rate()));
        let (base, significant) = match best {
            Some(b) => {
                let (br, be) = b.totals();
                (
                    b.rate(),
                    error_rate_p_value(be, br, errors, requests) < t.alpha,
                )
            }
            None => (0.0, errors >= 3),
        };
        if v.rate() - base > t.max_error_rate_increase && significant {
            // Back through the slices while they stay elevated (or hold no traffic).
            let elevated = |(r, e): &(u64, u64)| {
                *r == 0 || (*e as f64 / *r as f64) - base > t.max_error_rate_increase
            };
            let run = v.slices.iter().take_while(|s| elevated(s)).count();
            let slices_back = v.slices[..run.max(1)]
                .iter()
                .rposition(|(r, _)| *r > 0)
                .unwrap_or(0);
            out.push(Symptom {
                index: i,
                signal: "errors",
                slices_back,
                detail: format!(
                    "error rate {:.2}% vs {:.2}% ({errors} of {requests})",
                    100.0 * v.rate(),
                    100.0 * base
                ),
            });
        }
        let fastest = others.filter_map(|o| o.p99).min_by(|a, b| a.total_cmp(b));
        if let (Some(base), Some(p99)) = (fastest, v.p99)
            && base > 0.0
            && p99 / base > t.max_latency_ratio
            && p99 - base >= MIN_LATENCY_REGRESSION
        {
            out.push(Symptom {
                index: i,
                signal: "latency",
                slices_back: 0,
                detail: format!(
                    "p99 {:.1} ms vs {:.1} ms ({:.1}x)",
                    p99 * 1e3,
                    base * 1e3,
                    p99 / base
                ),
            });
        }
    }
    out
}

/// Journals symptom onsets and recoveries.
pub struct Watcher {
    reloader: Arc<Reloader>,
    journal: Arc<Journal>,
    /// (model, version, signal) → when it started.
    open: HashMap<(String, String, &'static str), i64>,
}

impl Watcher {
    /// A watcher over the reloader's snapshots, writing to `journal`.
    pub fn new(reloader: Arc<Reloader>, journal: Arc<Journal>) -> Self {
        Self {
            reloader,
            journal,
            open: HashMap::new(),
        }
    }

    /// Look every [`TICK`] until `shutdown` fires.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.look(),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One look at every model's windows.
    pub fn look(&mut self) {
        let snap = self.reloader.current().load_full();
        let now = now_ms();
        let mut still = HashMap::new();
        for (model, state) in &snap.models {
            let thresholds = Reloader::find_split(&snap, model)
                .and_then(|i| snap.routes.get(i))
                .map_or_else(
                    || crate::config::Canary::defaults().thresholds,
                    |r| r.route.canary.thresholds.clone(),
                );
            let seen: Vec<Seen> = state
                .versions
                .iter()
                .filter_map(|(v, served)| {
                    let (slices, into) = served.metrics.window.by_slice();
                    if slices.iter().all(|(r, _)| *r == 0) {
                        return None;
                    }
                    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(0);
                    Some(Seen {
                        version: v.clone(),
                        slices,
                        p99: served.metrics.window.totals().quantile(0.99),
                        slice_ms: (ms(into), ms(served.metrics.window.slice_length())),
                    })
                })
                .collect();
            for s in symptoms(&seen, &thresholds) {
                let version = seen[s.index].version.clone();
                let key = (model.clone(), version.clone(), s.signal);
                if let Some(at) = self.open.remove(&key) {
                    still.insert(key, at);
                    continue;
                }
                let back = i64::try_from(s.slices_back.min(SLICES)).unwrap_or(0);
                let (into_ms, slice_ms) = seen[s.index].slice_ms;
                // Known to a slice: not before the version took traffic, when that happened in it.
                let took_traffic = (self
                    .journal
                    .between(model, now - (back + 1) * slice_ms, now))
                .iter()
                .filter(|e| {
                    e.version.as_deref() == Some(version.as_str())
                        && matches!(
                            e.kind,
                            Kind::WeightsChanged | Kind::VersionAdded | Kind::AliasMoved
                        )
                })
                .map(|e| e.at_ms)
                .max();
                let at = (now - into_ms - back * slice_ms).max(took_traffic.unwrap_or(i64::MIN));
                self.journal.push(crate::journal::Event {
                    at_ms: at,
                    kind: Kind::Onset,
                    model: model.clone(),
                    version: Some(version.clone()),
                    summary: format!("{} rose on version {version}: {}", s.signal, s.detail),
                    fields: [
                        ("signal".to_string(), s.signal.to_string()),
                        ("detail".to_string(), s.detail.clone()),
                    ]
                    .into(),
                });
                still.insert(key, at);
            }
        }
        for ((model, version, signal), since) in self.open.drain() {
            self.journal.record(
                Kind::Recovery,
                &model,
                Some(&version),
                format!(
                    "{signal} on version {version} back under the thresholds (since {})",
                    crate::codec::time::rfc3339_ms(since)
                ),
                &[("signal", signal.to_string())],
            );
        }
        self.open = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        crate::config::Canary::defaults().thresholds
    }

    fn seen(version: &str, slices: &[(u64, u64)], p99: f64) -> Seen {
        let mut s = slices.to_vec();
        s.resize(SLICES, (0, 0));
        Seen {
            version: version.into(),
            slices: s,
            p99: Some(p99),
            slice_ms: (0, 1_000),
        }
    }

    #[test]
    fn errors_start_at_the_first_slice_of_the_elevated_run() {
        // Version 2 failed 20% of its calls for the last three slices, fine before.
        let two = seen(
            "2",
            &[(100, 20), (100, 22), (100, 19), (100, 0), (100, 1)],
            0.01,
        );
        let one = seen("1", &[(100, 0); 5], 0.01);
        let got = symptoms(&[one.clone(), two], &thresholds());
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].index, got[0].signal, got[0].slices_back),
            (1, "errors", 2)
        );
        let quiet = seen("2", &[(100, 1); 5], 0.01);
        assert!(
            symptoms(&[one, quiet], &thresholds()).is_empty(),
            "healthy control"
        );
    }

    #[test]
    fn latency_and_a_lone_version_are_judged_too() {
        let slow = seen("2", &[(100, 0); 5], 0.2);
        let fast = seen("1", &[(100, 0); 5], 0.01);
        let got = symptoms(&[fast, slow], &thresholds());
        assert_eq!((got[0].index, got[0].signal), (1, "latency"));
        let lone = seen("1", &[(50, 10), (50, 0)], 0.01);
        assert_eq!(symptoms(&[lone], &thresholds())[0].slices_back, 0);
        let two_errors = seen("1", &[(50, 2)], 0.01);
        assert!(
            symptoms(&[two_errors], &thresholds()).is_empty(),
            "too few to say"
        );
    }
}
