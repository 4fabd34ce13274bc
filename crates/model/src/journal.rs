//! The journal: what changed and when, kept in memory (bounded) for `explain`. Reloads, alias
//! moves, new and retired versions, weight changes, registry outages, stale flags, the first
//! data-quality crossing of each feature, drift crossings, version mismatches and automatic
//! rollbacks are recorded as they happen.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Events kept; older ones are dropped first.
const KEPT: usize = 10_000;
/// Distinct version mismatches remembered for de-duplication.
const MISMATCH_KEYS: usize = 1_000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A version appeared in the registry.
    VersionAdded,
    /// A version left the registry.
    VersionRemoved,
    /// An alias now points to another version.
    AliasMoved,
    /// A split route's weights changed.
    WeightsChanged,
    /// The config was reloaded.
    Reload,
    /// A reload was rejected.
    ReloadRejected,
    /// The registry became unreachable.
    RegistryDown,
    /// The registry answered again.
    RegistryUp,
    /// A version's dataset got a newer digest.
    Stale,
    /// A dataset the records read got a new version upstream (a lineage event).
    DatasetWritten,
    /// A feature's issue rate crossed the threshold.
    DataQuality,
    /// A drift statistic crossed a threshold.
    Drift,
    /// The model server reported another version than resolved (first occurrence).
    VersionMismatch,
    /// A candidate was rolled back automatically.
    AutoRollback,
    /// A version's symptom (error rate, latency) started: crossed the canary thresholds.
    Onset,
    /// A version's symptom ended.
    Recovery,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What happened.
    pub kind: Kind,
    /// The model it concerns (empty: the whole sidecar).
    pub model: String,
    /// The version it concerns.
    pub version: Option<String>,
    /// One line for people.
    pub summary: String,
    /// Details (feature, issue, rate, from, to, ...).
    pub fields: BTreeMap<String, String>,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The bounded event journal.
#[derive(Debug, Default)]
pub struct Journal {
    events: Mutex<VecDeque<Event>>,
    mismatches: Mutex<HashMap<MismatchKey, (i64, i64, u64)>>,
    /// Where every event is also sent to be kept for good (the history store's writer), when
    /// one is set; a full queue drops the copy, counted, and never blocks the caller.
    sink: std::sync::OnceLock<Sink>,
}

/// A bounded queue to the history writer.
#[derive(Debug)]
struct Sink {
    tx: tokio::sync::mpsc::Sender<Event>,
    dropped: std::sync::atomic::AtomicU64,
}

/// (model, expected, reported).
type MismatchKey = (String, String, String);

impl Journal {
    /// Record an event now.
    pub fn record(
        &self,
        kind: Kind,
        model: &str,
        version: Option<&str>,
        summary: String,
        fields: &[(&str, String)],
    ) {
        self.push(Event {
            at_ms: now_ms(),
            kind,
            model: model.to_string(),
            version: version.map(str::to_string),
            summary,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        });
    }

    /// Send every event from now on to `tx` as well (once; a second call is ignored).
    pub fn set_sink(&self, tx: tokio::sync::mpsc::Sender<Event>) {
        let _ = self.sink.set(Sink {
            tx,
            dropped: std::sync::atomic::AtomicU64::new(0),
        });
    }

    /// Events the sink's queue had no room for.
    pub fn sink_dropped(&self) -> u64 {
        self.sink
            .get()
            .map_or(0, |s| s.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Record an event with its own time.
    pub fn push(&self, e: Event) {
        if let Some(sink) = self.sink.get()
            && sink.tx.try_send(e.clone()).is_err()
        {
            sink.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.push_back(e);
        while events.len() > KEPT {
            events.pop_front();
        }
    }

    /// Count a version mismatch; the first of each (model, expected, reported) is an event.
    pub fn mismatch(&self, model: &str, expected: &str, reported: &str) {
        let key = (
            model.to_string(),
            expected.to_string(),
            reported.to_string(),
        );
        let now = now_ms();
        {
            let mut seen = self
                .mismatches
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((_, last, n)) = seen.get_mut(&key) {
                *last = now;
                *n += 1;
                return;
            }
            if seen.len() >= MISMATCH_KEYS {
                return;
            }
            seen.insert(key, (now, now, 1));
        }
        self.record(
            Kind::VersionMismatch,
            model,
            Some(expected),
            format!("the model server reported version {reported} where {expected} was resolved"),
            &[
                ("expected", expected.to_string()),
                ("reported", reported.to_string()),
            ],
        );
    }

    /// Mismatches of `model` seen since `from_ms`: `(expected, reported, responses)`.
    pub fn mismatches(&self, model: &str, from_ms: i64) -> Vec<(String, String, u64)> {
        let seen = self
            .mismatches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = seen
            .iter()
            .filter(|((m, _, _), (_, last, _))| m == model && *last >= from_ms)
            .map(|((_, e, r), (_, _, n))| (e.clone(), r.clone(), *n))
            .collect();
        out.sort();
        out
    }

    /// Mismatches of `model` seen between two times: `(expected, reported, responses, first
    /// seen, last seen)`, times in ms since the epoch.
    pub fn mismatch_spans(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Vec<(String, String, u64, i64, i64)> {
        let seen = self
            .mismatches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = seen
            .iter()
            .filter(|((m, _, _), (first, last, _))| {
                m == model && *last >= from_ms && *first <= to_ms
            })
            .map(|((_, e, r), (first, last, n))| (e.clone(), r.clone(), *n, *first, *last))
            .collect();
        out.sort();
        out
    }

    /// Events of `model` (and sidecar-wide ones) between two times, oldest first (an event
    /// pushed with its own, earlier time sorts where it happened).
    pub fn between(&self, model: &str, from_ms: i64, to_ms: i64) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Event> = events
            .iter()
            .filter(|e| e.at_ms >= from_ms && e.at_ms <= to_ms)
            .filter(|e| e.model.is_empty() || e.model == model)
            .cloned()
            .collect();
        drop(events);
        out.sort_by_key(|e| e.at_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_filtered_by_model_and_time_and_mismatches_deduplicated() {
        let j = Journal::default();
        j.record(Kind::Reload, "", None, "reloaded".into(), &[]);
        j.record(
            Kind::AliasMoved,
            "churn",
            Some("2"),
            "champion 1 -> 2".into(),
            &[],
        );
        j.record(Kind::AliasMoved, "fraud", Some("7"), "x".into(), &[]);
        j.mismatch("churn", "2", "1");
        j.mismatch("churn", "2", "1");
        let all = j.between("churn", 0, i64::MAX);
        let kinds: Vec<Kind> = all.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Reload, Kind::AliasMoved, Kind::VersionMismatch]
        );
        assert!(j.between("churn", now_ms() + 10_000, i64::MAX).is_empty());
        let mut late = all[0].clone();
        late.at_ms = 5;
        late.kind = Kind::DatasetWritten;
        j.push(late);
        assert_eq!(
            j.between("churn", 0, i64::MAX)[0].kind,
            Kind::DatasetWritten,
            "by time"
        );
        assert_eq!(
            j.mismatches("churn", 0),
            [("2".to_string(), "1".to_string(), 2)]
        );
        assert!(j.mismatches("fraud", 0).is_empty());
        let spans = j.mismatch_spans("churn", 0, i64::MAX);
        assert_eq!((spans.len(), spans[0].2), (1, 2));
        assert!(spans[0].3 <= spans[0].4);
        assert!(
            j.mismatch_spans("churn", 0, spans[0].3 - 1).is_empty(),
            "began after `to`"
        );
    }
}
