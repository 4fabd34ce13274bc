//! The writer: the journal's events into the store, in batches, on the control plane. The
//! journal hands each event over through a bounded queue without waiting ([`channel`]); a full
//! queue drops the copy (`modelstamp_history_dropped_total{reason="queue_full"}`). While the store
//! fails, events wait in a bounded spool and are retried with back-off (1 s doubling to 30 s); a
//! spool past its bound drops its oldest (`reason="spool_full"`). Events older than the retention
//! are pruned hourly.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{Store, StoredEvent};
use crate::canary::audit::AuditItem;
use crate::journal::{Event, Journal, now_ms};
use crate::observe::metrics::Metrics;
use crate::routing::Reloader;

/// Events written per transaction at most.
const BATCH: usize = 512;
/// Events kept while the store is down, at most.
const SPOOL: usize = 100_000;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The queue from the journal to the writer.
pub fn channel(capacity: usize) -> (mpsc::Sender<Event>, mpsc::Receiver<Event>) {
    mpsc::channel(capacity.max(1))
}

/// Moves events from the queue to the store.
pub struct Writer {
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Event>,
    /// Audit entries to chain into the store, and those waiting while it fails.
    audit_rx: Option<mpsc::Receiver<AuditItem>>,
    audit_spool: VecDeque<AuditItem>,
    instance: String,
    reloader: Arc<Reloader>,
    journal: Arc<Journal>,
    metrics: Metrics,
    retention: Duration,
    spool: VecDeque<StoredEvent>,
    /// The journal's queue-full drops already counted.
    counted_drops: u64,
}

impl Writer {
    /// A writer of the events `journal` queues on `rx`, as `instance`.
    pub fn new(
        store: Arc<dyn Store>,
        rx: mpsc::Receiver<Event>,
        instance: String,
        reloader: Arc<Reloader>,
        journal: Arc<Journal>,
        retention: Duration,
    ) -> Self {
        let metrics = reloader.metrics().clone();
        Self {
            store,
            rx,
            instance,
            reloader,
            journal,
            metrics,
            retention,
            spool: VecDeque::new(),
            counted_drops: 0,
            audit_rx: None,
            audit_spool: VecDeque::new(),
        }
    }

    /// Chain the audit entries queued on `rx` into the store as well.
    pub fn with_audit(mut self, rx: mpsc::Receiver<AuditItem>) -> Self {
        self.audit_rx = Some(rx);
        self
    }

    /// Write until `shutdown` fires (then flush once more).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(store = %self.store.describe(), "History store open.");
        let mut buf = Vec::with_capacity(BATCH);
        let mut retry = FIRST_RETRY;
        let mut next_try = Instant::now();
        let mut failing = false;
        let mut next_prune = Instant::now();
        loop {
            let wait = if self.spool.is_empty() && self.audit_spool.is_empty() {
                PRUNE_EVERY
            } else {
                next_try.saturating_duration_since(Instant::now())
            };
            tokio::select! {
                n = self.rx.recv_many(&mut buf, BATCH) => {
                    if n == 0 {
                        self.flush(&mut failing).await;
                        return;
                    }
                    self.take(buf.drain(..));
                }
                Some(item) = async {
                    match self.audit_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if self.audit_spool.len() >= SPOOL {
                        self.audit_spool.pop_front();
                        self.metrics.history_dropped("audit_spool_full", 1);
                    }
                    self.audit_spool.push_back(item);
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {
                    while let Ok(e) = self.rx.try_recv() {
                        self.take([e]);
                    }
                    while let Some(Ok(item)) = self.audit_rx.as_mut().map(|rx| rx.try_recv()) {
                        self.audit_spool.push_back(item);
                    }
                    self.flush(&mut failing).await;
                    return;
                }
            }
            if Instant::now() >= next_try {
                if self.flush(&mut failing).await {
                    retry = FIRST_RETRY;
                } else {
                    next_try = Instant::now() + retry;
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE_EVERY;
                let before =
                    now_ms() - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
                match self.store.prune(before).await {
                    Ok(0) => {}
                    Ok(n) => info!(events = n, "History pruned past its retention."),
                    Err(e) => warn!(error = %e, "History could not be pruned."),
                }
            }
            self.publish();
        }
    }

    /// Add events to the spool, with the lineage ID their version has now.
    fn take(&mut self, events: impl IntoIterator<Item = Event>) {
        let snap = self.reloader.current().load();
        for event in events {
            let lineage_id = event.version.as_deref().and_then(|v| {
                let served = snap.models.get(&event.model)?.versions.get(v)?;
                Some(served.lineage_id.to_string())
            });
            if self.spool.len() >= SPOOL {
                self.spool.pop_front();
                self.metrics.history_dropped("spool_full", 1);
            }
            self.spool.push_back(StoredEvent {
                event,
                instance: self.instance.clone(),
                lineage_id,
            });
        }
    }

    /// Write the spools, audit entries first (each its own transaction), events in batches;
    /// `false` when the store failed (what is left stays).
    async fn flush(&mut self, failing: &mut bool) -> bool {
        while let Some(item) = self.audit_spool.front().cloned() {
            match self.store.append_audit(item, self.instance.clone()).await {
                Ok(_) => {
                    self.audit_spool.pop_front();
                    self.metrics.history_write(true);
                }
                Err(e) => {
                    self.metrics.history_write(false);
                    if !*failing {
                        *failing = true;
                        warn!(store = %self.store.describe(), error = %e, spooled = self.audit_spool.len(), "History store failed; audit entries are spooled and retried.");
                    }
                    self.publish();
                    return false;
                }
            }
        }
        while !self.spool.is_empty() {
            let n = self.spool.len().min(BATCH);
            let batch: Vec<StoredEvent> = self.spool.iter().take(n).cloned().collect();
            match self.store.append(batch).await {
                Ok(()) => {
                    self.spool.drain(..n);
                    self.metrics.history_write(true);
                    if *failing {
                        *failing = false;
                        info!(store = %self.store.describe(), "History store writes again.");
                    }
                }
                Err(e) => {
                    self.metrics.history_write(false);
                    if !*failing {
                        *failing = true;
                        warn!(store = %self.store.describe(), error = %e, spooled = self.spool.len(), "History store failed; events are spooled and retried.");
                    }
                    self.publish();
                    return false;
                }
            }
        }
        self.publish();
        true
    }

    fn publish(&mut self) {
        let dropped = self.journal.sink_dropped();
        if dropped > self.counted_drops {
            self.metrics
                .history_dropped("queue_full", dropped - self.counted_drops);
            self.counted_drops = dropped;
        }
        let depth = self.spool.len() + self.rx.len() + self.audit_spool.len();
        self.metrics
            .history_depth(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{BoxFuture, HistoryError};
    use crate::journal::Kind;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A store that fails while `down` is set.
    #[derive(Debug, Default)]
    struct Flaky {
        down: AtomicBool,
        kept: Mutex<Vec<StoredEvent>>,
    }

    impl Store for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<(), HistoryError>> {
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err(HistoryError::Store("down".into()));
                }
                self.kept
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(events);
                Ok(())
            })
        }
        fn events(
            &self,
            _: &str,
            _: i64,
            _: i64,
            _: usize,
        ) -> BoxFuture<'_, Result<Vec<StoredEvent>, HistoryError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn prune(&self, _: i64) -> BoxFuture<'_, Result<u64, HistoryError>> {
            Box::pin(async { Ok(0) })
        }
        fn append_audit(
            &self,
            _: AuditItem,
            _: String,
        ) -> BoxFuture<'_, Result<crate::canary::audit::Entry, HistoryError>> {
            Box::pin(async { Err(HistoryError::Store("no audit here".into())) })
        }
        fn audit(
            &self,
            _: Option<String>,
        ) -> BoxFuture<'_, Result<Vec<crate::history::AuditRow>, HistoryError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    const REGISTRY: &str =
        "models:\n  churn:\n    versions:\n      \"2\":\n        code: { commit: abc }\n";

    async fn reloader() -> (Arc<Reloader>, prometheus_client::registry::Registry) {
        let raw = crate::config::parse(
            "[[routes]]\nmodel = \"churn\"\nupstream = \"h:1\"\nserves = \"2\"\n",
            "c",
        )
        .unwrap_or_default();
        let (metrics, registry) = Metrics::new();
        let source = crate::routing::Source::Embedded {
            config: Box::new(raw),
            registry_yaml: REGISTRY.to_string(),
        };
        let r = Reloader::start(source, metrics)
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        (r, registry)
    }

    fn scrape(registry: &prometheus_client::registry::Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap_or_default();
        s
    }

    #[tokio::test]
    async fn an_outage_spools_and_flushes_and_a_full_queue_is_counted() {
        let (reloader, registry) = reloader().await;
        let journal = Arc::new(Journal::default());
        let (tx, rx) = channel(3);
        journal.set_sink(tx);
        let store = Arc::new(Flaky::default());
        store.down.store(true, Ordering::SeqCst);
        // Five events into a queue of three before the writer runs: two dropped.
        for i in 0..5 {
            journal.record(Kind::Onset, "churn", Some("2"), format!("e{i}"), &[]);
        }
        assert_eq!(journal.sink_dropped(), 2);
        let writer = Writer::new(
            store.clone(),
            rx,
            "pod-a".into(),
            reloader,
            journal.clone(),
            Duration::from_secs(3600),
        );
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(writer.run(shutdown));
        let failed =
            |text: &str| text.contains("modelstamp_history_writes_total{result=\"failure\"}");
        let mut waited = 0;
        while !failed(&scrape(&registry)) && waited < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        assert!(failed(&scrape(&registry)), "{}", scrape(&registry));
        assert!(scrape(&registry).contains("modelstamp_history_queue_depth 3"));
        store.down.store(false, Ordering::SeqCst);
        journal.record(Kind::Recovery, "churn", Some("2"), "e5".into(), &[]);
        let mut waited = 0;
        while store.kept.lock().map(|k| k.len()).unwrap_or(0) < 4 && waited < 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        let _ = stop.send(true);
        let _ = task.await;
        let kept = store.kept.lock().map(|k| k.clone()).unwrap_or_default();
        let summaries: Vec<&str> = kept.iter().map(|s| s.event.summary.as_str()).collect();
        assert_eq!(
            summaries,
            ["e0", "e1", "e2", "e5"],
            "in order, after the outage"
        );
        assert_eq!(kept[0].instance, "pod-a");
        assert!(
            kept[0]
                .lineage_id
                .as_deref()
                .is_some_and(|l| l.starts_with("ln_"))
        );
        let text = scrape(&registry);
        assert!(
            text.contains("modelstamp_history_dropped_total{reason=\"queue_full\"} 2"),
            "{text}"
        );
        assert!(text.contains("modelstamp_history_queue_depth 0"), "{text}");
    }
}
