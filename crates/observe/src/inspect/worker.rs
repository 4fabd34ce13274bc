//! The inspection worker: body copies arrive as jobs on a bounded queue once a response has
//! been sent; one thread decodes them and feeds the per-version stats that `/metrics` reads.
//! Copies are charged to a global memory budget while they are held. Whatever is not inspected
//! (sampled out, over the per-message cap, over the budget, queue full, unparseable) is counted
//! by reason in `modelstamp_inspect_skipped_total`; the proxied request never notices.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanContext;
use tracing::{debug, warn};

use super::codec::{Codec, Framing, Predicted};
use super::drift::SLICES;
use super::profile::Profile;
use super::stats::{DriftWatch, QualityEvent, VersionStats};
use crate::config::Inspect;
use crate::journal::{Journal, Kind};
use crate::pace::Gather;
use crate::spans::Tracing;

/// Why a message was not inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The route samples fewer than all requests.
    SampledOut,
    /// The body was larger than `limits.max_inspect_bytes`.
    OverCap,
    /// Copies in flight already hold `inspect.memory_budget_bytes`.
    MemoryBudget,
    /// The worker's queue was full.
    QueueFull,
    /// The codec could not read the body.
    Unparseable,
}

impl Skip {
    /// Every reason, in label order.
    pub const ALL: [Self; 5] = [
        Self::SampledOut,
        Self::OverCap,
        Self::MemoryBudget,
        Self::QueueFull,
        Self::Unparseable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SampledOut => "sampled_out",
            Self::OverCap => "over_cap",
            Self::MemoryBudget => "memory_budget",
            Self::QueueFull => "queue_full",
            Self::Unparseable => "unparseable",
        }
    }
}

/// Bytes held by copies, against the budget.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    max: usize,
}

/// Bytes charged to the budget, given back on drop.
#[derive(Debug)]
struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    fn grow(&mut self, n: usize) -> bool {
        let prev = self.budget.used.fetch_add(n, Ordering::Relaxed);
        if prev.saturating_add(n) > self.budget.max {
            self.budget.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A bounded copy of a body, growing as frames pass.
#[derive(Debug)]
pub struct BodyCopy {
    buf: BytesMut,
    reservation: Reservation,
    cap: usize,
}

/// A complete copy, still charged to the budget.
#[derive(Debug, Clone)]
pub struct Copied {
    /// The bytes.
    pub bytes: Bytes,
    _held: Arc<Reservation>,
}

impl BodyCopy {
    /// Append a frame. `Err` says why the copy is abandoned (the caller drops it).
    pub fn push(&mut self, data: &[u8]) -> Result<(), Skip> {
        if self.buf.len() + data.len() > self.cap {
            return Err(Skip::OverCap);
        }
        if !self.reservation.grow(data.len()) {
            return Err(Skip::MemoryBudget);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Append what fits under the cap (a prefix of a stream is enough for some reads).
    pub fn push_prefix(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len()).min(data.len());
        if room > 0 && self.reservation.grow(room) {
            self.buf.extend_from_slice(&data[..room]);
        }
    }

    /// The bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Freeze into a shareable copy.
    pub fn freeze(self) -> Copied {
        Copied {
            bytes: self.buf.freeze(),
            _held: Arc::new(self.reservation),
        }
    }
}

/// One exchange to inspect.
#[derive(Debug)]
pub struct Job {
    /// The version that served it.
    pub profile: Arc<Profile>,
    /// How to read it.
    pub codec: Codec,
    /// The request body, when copied whole.
    pub request: Option<Copied>,
    /// The response body, when copied whole (or a stream's prefix).
    pub response: Option<Copied>,
    /// How the request body is laid out.
    pub request_framing: Framing,
    /// How the response body is laid out.
    pub response_framing: Framing,
    /// The request's server span, for event spans.
    pub trace: Option<SpanContext>,
}

/// Stats keyed by (model, version).
pub type StatsByVersion = BTreeMap<(Arc<str>, Arc<str>), VersionStats>;

/// State shared by the proxy (producers), the worker and `/metrics`.
#[derive(Debug)]
pub struct Shared {
    budget: Arc<Budget>,
    skipped: [AtomicU64; 5],
    queued: AtomicUsize,
    sampler: AtomicU64,
    start: Instant,
    slice: Duration,
    /// Stats by (model, version).
    pub stats: Mutex<StatsByVersion>,
}

impl Shared {
    /// Skips so far, by reason.
    pub fn skipped(&self) -> impl Iterator<Item = (Skip, u64)> + '_ {
        Skip::ALL
            .into_iter()
            .map(|s| (s, self.skipped[s as usize].load(Ordering::Relaxed)))
    }

    /// Jobs waiting.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Bytes held by copies.
    pub fn held_bytes(&self) -> usize {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// The current window slice.
    pub fn slice_now(&self) -> u64 {
        let slice = self.slice.as_nanos().max(1);
        u64::try_from(self.start.elapsed().as_nanos() / slice).unwrap_or(u64::MAX)
    }
}

/// The producer side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Inspector {
    shared: Arc<Shared>,
    tx: SyncSender<Job>,
}

impl Inspector {
    /// Start the worker thread. Queue size, memory budget and window are read here.
    pub fn start(
        settings: &Inspect,
        tracing: Tracing,
        journal: Arc<Journal>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(settings.queue);
        let shared = Arc::new(Shared {
            budget: Arc::new(Budget {
                used: AtomicUsize::new(0),
                max: settings.memory_budget_bytes,
            }),
            skipped: Default::default(),
            queued: AtomicUsize::new(0),
            sampler: AtomicU64::new(0x5eed),
            start: Instant::now(),
            slice: settings.window / u32::try_from(SLICES).unwrap_or(10),
            stats: Mutex::new(BTreeMap::new()),
        });
        let worker = shared.clone();
        let queue = settings.queue;
        std::thread::Builder::new()
            .name("modelstamp-inspect".into())
            .spawn(move || run(&rx, queue, &worker, &tracing, &journal))?;
        Ok(Self { shared, tx })
    }

    /// What `/metrics` reads.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Count a skip.
    pub fn skip(&self, why: Skip) {
        self.shared.skipped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether to inspect this request, at `ratio` (a skip is counted when not).
    pub fn sample(&self, ratio: f64) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        // A Weyl sequence through splitmix64: uniform, lock-free, no RNG dependency.
        let z = crate::trace::mix(
            self.shared
                .sampler
                .fetch_add(crate::trace::GOLDEN, Ordering::Relaxed),
        );
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        let keep = u < ratio;
        if !keep {
            self.skip(Skip::SampledOut);
        }
        keep
    }

    /// Start a copy of at most `cap` bytes.
    pub fn copy(&self, cap: usize) -> BodyCopy {
        BodyCopy {
            buf: BytesMut::new(),
            reservation: Reservation {
                budget: self.shared.budget.clone(),
                bytes: 0,
            },
            cap,
        }
    }

    /// Queue a job; when the queue is full it is dropped and counted.
    pub fn submit(&self, job: Job) {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(job) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.skip(Skip::QueueFull);
        }
    }

    /// Make the stats of these versions exist before their first request, so their counters
    /// are exported from 0 (Prometheus's `increase()` misses what a series starts with); the
    /// stats of versions not among them (they left the registry) are dropped.
    pub fn register(&self, profiles: impl IntoIterator<Item = Arc<Profile>>) {
        let mut all = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut current = std::collections::HashSet::new();
        for p in profiles {
            let key = (p.model.clone(), p.version.clone());
            current.insert(key.clone());
            match all.get_mut(&key) {
                Some(s) if s.profile.lineage_id == p.lineage_id => s.profile = p,
                Some(s) => *s = VersionStats::new(p),
                None => {
                    all.insert(key, VersionStats::new(p));
                }
            }
        }
        // Versions that left the registry take their series with them; `unknown` ones are
        // created as traffic for them comes.
        all.retain(|k, _| current.contains(k) || &*k.1 == "unknown");
    }

    /// Wait until the queue is empty (tests, shutdown), at most `timeout`.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.queued() > 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

/// How often drift levels are compared with the thresholds.
const DRIFT_CHECK: Duration = Duration::from_secs(1);

fn run(rx: &Receiver<Job>, queue: usize, shared: &Shared, tracing: &Tracing, journal: &Journal) {
    let mut watch = DriftWatch::default();
    let mut checked = Instant::now();
    let mut gather = Gather::new(queue);
    loop {
        match rx.recv_timeout(DRIFT_CHECK) {
            Ok(first) => {
                // Let jobs gather before draining (see `pace`): one wake-up per interval.
                gather.wait();
                let mut next = Some(first);
                let mut drained = 0usize;
                while let Some(job) = next {
                    let events = process(shared, &job);
                    // Counted as done only after the stats are updated: `drain` means "visible".
                    shared.queued.fetch_sub(1, Ordering::Relaxed);
                    for e in events {
                        report(&job, &e, tracing, journal);
                    }
                    drained += 1;
                    next = rx.try_recv().ok();
                }
                gather.drained(drained);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if checked.elapsed() >= DRIFT_CHECK {
            checked = Instant::now();
            let events = {
                let all = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
                watch.check(all.values(), shared.slice_now())
            };
            for e in events {
                let p = &e.profile;
                warn!(
                    model = %p.model, version = %p.version, lineage_id = %p.lineage_id,
                    signal = %e.drift.signal, statistic = e.drift.statistic,
                    against = %e.drift.against, value = e.drift.value, level = e.level.as_str(),
                    "Drift crossed a threshold."
                );
                // The timeline keeps PSI crossings; JS ones are in the log and metrics.
                if e.drift.statistic == "psi" {
                    journal.record(
                        Kind::Drift,
                        &p.model,
                        Some(&p.version),
                        format!(
                            "{} {} against {} reached {:.3} ({})",
                            e.drift.signal,
                            e.drift.statistic,
                            e.drift.against,
                            e.drift.value,
                            e.level.as_str()
                        ),
                        &[
                            ("signal", e.drift.signal.clone()),
                            ("statistic", e.drift.statistic.to_string()),
                            ("value", e.drift.value.to_string()),
                        ],
                    );
                }
            }
        }
    }
}

fn process(shared: &Shared, job: &Job) -> Vec<QualityEvent> {
    let p = &job.profile;
    let features =
        job.request
            .as_ref()
            .filter(|_| job.codec.tabular())
            .map(|c| {
                job.codec.features(&c.bytes, job.request_framing, &p.names).map_err(|e| {
                debug!(error = %e, codec = job.codec.as_str(), "Request body not readable.");
            })
            });
    let predicted = job.response.as_ref().map(|c| {
        job.codec
            .predicted(&c.bytes, job.response_framing)
            .map_err(|e| {
                debug!(error = %e, codec = job.codec.as_str(), "Response body not readable.");
            })
    });
    let slice = shared.slice_now();
    let mut all = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
    let key = (p.model.clone(), p.version.clone());
    // Registry versions are registered before their first request; one that is missing has
    // left the registry since this job was queued, and must not come back with its series.
    if !all.contains_key(&key) && &*key.1 != "unknown" {
        return Vec::new();
    }
    let stats = all
        .entry(key)
        .or_insert_with(|| VersionStats::new(p.clone()));
    if stats.profile.lineage_id != p.lineage_id {
        // Another record behind the same version: its schema and bins may differ.
        *stats = VersionStats::new(p.clone());
    } else if !Arc::ptr_eq(&stats.profile, p) {
        stats.profile = p.clone();
    }
    let mut events = Vec::new();
    match features {
        Some(Ok(columns)) => events = stats.features(&columns, slice),
        Some(Err(())) => {
            shared.skipped[Skip::Unparseable as usize].fetch_add(1, Ordering::Relaxed);
        }
        None => {}
    }
    match predicted {
        Some(Ok(Predicted::Table(columns))) => stats.predictions(&columns, slice),
        Some(Ok(Predicted::Llm(usage))) => stats.usage(&usage),
        Some(Err(())) => {
            shared.skipped[Skip::Unparseable as usize].fetch_add(1, Ordering::Relaxed);
        }
        None => {}
    }
    events
}

/// One data-quality event: a WARN line and, when the request was traced, a span event.
fn report(job: &Job, e: &QualityEvent, tracing: &Tracing, journal: &Journal) {
    let p = &job.profile;
    let feature = p.names[e.feature].as_str();
    let source = p.sources[e.feature].as_deref().unwrap_or("unknown");
    warn!(
        model = %p.model, version = %p.version, lineage_id = %p.lineage_id, feature,
        issue = e.issue.as_str(), rate = e.rate, window_rows = e.rows, upstream_source = source,
        "Data-quality issue rate crossed the threshold."
    );
    journal.record(
        Kind::DataQuality,
        &p.model,
        Some(&p.version),
        format!(
            "feature {feature} {} on {:.1}% of rows (upstream {source})",
            e.issue.as_str(),
            100.0 * e.rate
        ),
        &[
            ("feature", feature.to_string()),
            ("issue", e.issue.as_str().to_string()),
            ("rate", e.rate.to_string()),
            ("source", source.to_string()),
        ],
    );
    if let Some(parent) = job.trace.as_ref().filter(|sc| sc.is_sampled()) {
        tracing.event_span(
            parent,
            "modelstamp.data_quality",
            vec![
                KeyValue::new("ml.model.name", p.model.to_string()),
                KeyValue::new("ml.model.version", p.version.to_string()),
                KeyValue::new("ml.lineage.id", p.lineage_id.to_string()),
                KeyValue::new("ml.feature.name", feature.to_string()),
                KeyValue::new("ml.feature.issue", e.issue.as_str()),
                KeyValue::new("ml.feature.issue_rate", e.rate),
                KeyValue::new("ml.feature.upstream_source", source.to_string()),
            ],
        );
    }
}
