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
            // The latest run of elevated slices (slices without traffic do not break it; clean
            // ones at the head, a recovery under way, are stepped over): its oldest slice with
            // traffic is when the errors began.
            let elevated = |(r, e): &(u64, u64)| {
                *r > 0 && (*e as f64 / *r as f64) - base > t.max_error_rate_increase
            };
            let head = v.slices.iter().position(elevated).unwrap_or(0);
            let run = v.slices[head..]
                .iter()
                .take_while(|s| s.0 == 0 || elevated(s))
                .count();
            let slices_back = head
                + v.slices[head..head + run.max(1)]
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

/// Consecutive looks a symptom must be seen (or missed) before it is journaled as begun (or
/// ended): a rate hovering at its threshold does not fill the journal.
const TO_OPEN: u32 = 2;
const TO_CLOSE: u32 = 5;

type Key = (String, String, &'static str);

/// Journals symptom onsets and recoveries.
pub struct Watcher {
    reloader: Arc<Reloader>,
    journal: Arc<Journal>,
    /// Open symptoms → (when it started, consecutive looks it was missed).
    open: HashMap<Key, (i64, u32)>,
    /// Symptoms seen but not yet open → consecutive looks seen.
    pending: HashMap<Key, u32>,
}

impl Watcher {
    /// A watcher over the reloader's snapshots, writing to `journal`.
    pub fn new(reloader: Arc<Reloader>, journal: Arc<Journal>) -> Self {
        Self {
            reloader,
            journal,
            open: HashMap::new(),
            pending: HashMap::new(),
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
        let mut seen_now: HashMap<Key, i64> = HashMap::new();
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
                let v = &seen[s.index];
                let key = (model.clone(), v.version.clone(), s.signal);
                if self.open.contains_key(&key) {
                    seen_now.insert(key, 0);
                    continue;
                }
                let looks = self.pending.entry(key.clone()).or_insert(0);
                *looks += 1;
                if *looks < TO_OPEN {
                    seen_now.insert(key, 0);
                    continue;
                }
                let at = self.dated(model, v, &s, now);
                self.journal.push(crate::journal::Event {
                    at_ms: at,
                    kind: Kind::Onset,
                    model: model.clone(),
                    version: Some(v.version.clone()),
                    summary: format!("{} rose on version {}: {}", s.signal, v.version, s.detail),
                    fields: [
                        ("signal".to_string(), s.signal.to_string()),
                        ("detail".to_string(), s.detail.clone()),
                    ]
                    .into(),
                });
                self.open.insert(key.clone(), (at, 0));
                seen_now.insert(key, at);
            }
        }
        self.pending.retain(|k, _| seen_now.contains_key(k));
        let mut closed = Vec::new();
        for (key, (since, missed)) in &mut self.open {
            if seen_now.contains_key(key) {
                *missed = 0;
                continue;
            }
            *missed += 1;
            if *missed >= TO_CLOSE {
                closed.push((key.clone(), *since));
            }
        }
        for ((model, version, signal), since) in closed {
            self.open.remove(&(model.clone(), version.clone(), signal));
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
    }

    /// When a symptom began: the start of its window slice, or, when the version first took
    /// traffic inside that slice (a weight from 0, an alias moved to it, its arrival), that
    /// moment.
    fn dated(&self, model: &str, v: &Seen, s: &Symptom, now: i64) -> i64 {
        let back = i64::try_from(s.slices_back.min(SLICES)).unwrap_or(0);
        let (into_ms, slice_ms) = v.slice_ms;
        let start = now - into_ms - back * slice_ms;
        let took_traffic = self
            .journal
            .between(model, start, start + slice_ms)
            .into_iter()
            .filter(|e| e.version.as_deref() == Some(v.version.as_str()))
            .filter(|e| match e.kind {
                Kind::WeightsChanged => e.fields.get("before").map(String::as_str) == Some("0"),
                Kind::VersionAdded | Kind::AliasMoved => true,
                _ => false,
            })
            .map(|e| e.at_ms)
            .max();
        took_traffic.map_or(start, |t| t.max(start))
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
            symptoms(&[one.clone(), quiet], &thresholds()).is_empty(),
            "healthy control"
        );
        // Two clean slices at the head (a recovery under way) do not move the onset forward.
        let recovering = seen(
            "2",
            &[(100, 0), (100, 0), (100, 30), (0, 0), (100, 28), (100, 0)],
            0.01,
        );
        let got = symptoms(&[one, recovering], &thresholds());
        assert_eq!(got[0].slices_back, 4, "{got:?}");
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
