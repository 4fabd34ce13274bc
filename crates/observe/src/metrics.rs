//! Metric families and the per-version handles resolved when a snapshot is built, so the hot
//! path only touches atomics. Label values come from config and registry, never from requests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::exemplar::TraceExemplar;
use super::window::RollingWindow;

/// Metric name prefix.
pub const PREFIX: &str = "modelstamp";

/// Latency buckets in seconds: sub-millisecond proxy overhead up to slow batch inference.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// `{model, version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    model: String,
    version: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    model: String,
    version: String,
    kind: &'static str,
}

/// `model_version_info` labels: joins any series to its lineage record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Lineage ID.
    pub lineage_id: String,
    /// Git commit (empty when unknown).
    pub git_commit: String,
    /// Training dataset digest (empty when unknown).
    pub dataset_digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MismatchLabels {
    model: String,
    expected: String,
    reported: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnresolvedLabels {
    route: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LineageEventLabels {
    source: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerKindLabels {
    listener: &'static str,
    kind: &'static str,
}

/// Why a client connection ended in error (before or between requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnErrorKind {
    /// No complete request head within `limits.header_read_timeout` (slow or idle client).
    HeaderTimeout,
    /// Request head over `limits.max_header_bytes` or `limits.max_headers` (answered 431).
    HeaderTooLarge,
    /// Not valid HTTP (answered 400 on HTTP/1, GOAWAY on HTTP/2).
    Malformed,
    /// No bytes either way for `limits.idle_timeout`.
    IdleTimeout,
    /// A TLS listener's handshake failed or did not finish within
    /// `limits.header_read_timeout` (no common version, no or an untrusted client certificate,
    /// plaintext sent to a TLS port).
    TlsHandshake,
}

impl ConnErrorKind {
    /// Every kind, in label order.
    pub const ALL: [Self; 5] = [
        Self::HeaderTimeout,
        Self::HeaderTooLarge,
        Self::Malformed,
        Self::IdleTimeout,
        Self::TlsHandshake,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::HeaderTooLarge => "header_too_large",
            Self::Malformed => "malformed",
            Self::IdleTimeout => "idle_timeout",
            Self::TlsHandshake => "tls_handshake",
        }
    }
}

/// Connection accounting of one listener, resolved once at start.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at accept because `limits.max_connections` were open.
    pub refused: Counter,
    errors: [Counter; ConnErrorKind::ALL.len()],
}

impl ListenerMetrics {
    /// Count a connection that ended in error.
    pub fn error(&self, kind: ConnErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// The counter of one kind, for code that counts where the error happens.
    pub fn counter(&self, kind: ConnErrorKind) -> Counter {
        self.errors[kind as usize].clone()
    }
}

/// Why an upstream exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// Connection refused or unreachable.
    Connect,
    /// Connect or response timeout.
    Timeout,
    /// Connection reset or body cut mid-stream.
    Reset,
    /// The upstream answered 5xx.
    Status5xx,
    /// The upstream ended a gRPC call with a status the server caused (`UNAVAILABLE`,
    /// `INTERNAL`, `DEADLINE_EXCEEDED`, ...), or with none.
    Grpc,
}

impl UpstreamErrorKind {
    const ALL: [Self; 5] = [
        Self::Connect,
        Self::Timeout,
        Self::Reset,
        Self::Status5xx,
        Self::Grpc,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Status5xx => "5xx",
            Self::Grpc => "grpc",
        }
    }
}

/// Why spans were not exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanDrop {
    /// The export queue was full.
    QueueFull,
    /// The collector did not accept the batch (down, refused, timed out), after the retries.
    ExportFailed,
    /// The collector took the batch but rejected these spans (an OTLP partial success).
    Rejected,
}

impl SpanDrop {
    fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ExportFailed => "export_failed",
            Self::Rejected => "rejected",
        }
    }
}

/// Why observation skipped or lost something (never affects the proxied request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObserveDrop {
    /// The access-log queue was full.
    AccessLogQueueFull,
    /// Writing the access log failed.
    AccessLogWrite,
}

impl ObserveDrop {
    fn as_str(self) -> &'static str {
        match self {
            Self::AccessLogQueueFull => "access_log_queue_full",
            Self::AccessLogWrite => "access_log_write_failed",
        }
    }
}

/// Rolling windows keyed by (model, version).
type WindowsByVersion = HashMap<(String, String), Arc<RollingWindow>>;

/// The `status_class` label values.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: String,
}

/// `route`, `version`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteVersionLabels {
    /// Route name.
    pub route: String,
    /// Version.
    pub version: String,
}

/// All metric families, cheaply clonable (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<StatusLabels, CounterWithExemplar<TraceExemplar>>,
    duration: Family<VersionLabels, HistogramWithExemplars<TraceExemplar>>,
    upstream_duration: Family<VersionLabels, HistogramWithExemplars<TraceExemplar>>,
    upstream_errors: Family<KindLabels, Counter>,
    request_errors: Family<KindLabels, Counter>,
    in_flight: Family<VersionLabels, Gauge>,
    request_bytes: Family<VersionLabels, Counter>,
    response_bytes: Family<VersionLabels, Counter>,
    info: Family<InfoLabels, Gauge>,
    mismatch: Family<MismatchLabels, Counter>,
    /// The mismatch series created, so those of versions that left can be retired.
    mismatch_set: Arc<Mutex<HashSet<MismatchLabels>>>,
    unresolved: Family<UnresolvedLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    observe_dropped: Family<ReasonLabels, Counter>,
    spans_dropped: Family<ReasonLabels, Counter>,
    spans_exported: Counter,
    registry_up: Gauge,
    registry_staleness: Gauge<f64, std::sync::atomic::AtomicU64>,
    registry_refreshes: Family<ResultLabels, Counter>,
    lineage_events: Family<LineageEventLabels, Counter>,
    history_depth: Gauge,
    history_writes: Family<ResultLabels, Counter>,
    history_dropped: Family<ReasonLabels, Counter>,
    stale: Family<VersionLabels, Gauge>,
    stale_set: Arc<Mutex<Vec<VersionLabels>>>,
    generation: Gauge,
    /// The info series set last, so a swap can retire the ones that are gone.
    info_set: Arc<Mutex<Vec<InfoLabels>>>,
    /// Automatic canary rollbacks by route.
    auto_rollbacks: Family<RouteLabels, Counter>,
    /// Current split weights by route and version.
    weights: Family<RouteVersionLabels, Gauge>,
    /// Rolling windows per (model, version), kept across snapshots.
    windows: Arc<Mutex<WindowsByVersion>>,
    /// Length of new rolling windows, in milliseconds.
    window_ms: Arc<AtomicU64>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    connection_errors: Family<ListenerKindLabels, Counter>,
    /// Bytes of answers handed to client connections and not yet written to their sockets.
    pub response_bytes_held: Gauge,
}

fn latency_histogram() -> HistogramWithExemplars<TraceExemplar> {
    HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter())
}

impl Metrics {
    /// Create every family and register it.
    pub fn new() -> (Self, Registry) {
        let mut reg = Registry::with_prefix(PREFIX);
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            request_errors: Family::default(),
            in_flight: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            info: Family::default(),
            mismatch: Family::default(),
            mismatch_set: Arc::default(),
            unresolved: Family::default(),
            reloads: Family::default(),
            observe_dropped: Family::default(),
            spans_dropped: Family::default(),
            spans_exported: Counter::default(),
            registry_up: Gauge::default(),
            registry_staleness: Gauge::default(),
            registry_refreshes: Family::default(),
            lineage_events: Family::default(),
            history_depth: Gauge::default(),
            history_writes: Family::default(),
            history_dropped: Family::default(),
            stale: Family::default(),
            stale_set: Arc::default(),
            generation: Gauge::default(),
            info_set: Arc::default(),
            auto_rollbacks: Family::default(),
            weights: Family::default(),
            windows: Arc::default(),
            window_ms: Arc::new(AtomicU64::new(300_000)),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            connection_errors: Family::default(),
            response_bytes_held: Gauge::default(),
        };
        reg.register(
            "requests",
            "Requests proxied, by model version and status class",
            m.requests.clone(),
        );
        reg.register(
            "request_duration_seconds",
            "Total request latency seen by the client",
            m.duration.clone(),
        );
        reg.register(
            "upstream_duration_seconds",
            "Time until the model server's response headers",
            m.upstream_duration.clone(),
        );
        reg.register(
            "upstream_errors",
            "Upstream failures by kind: connect, timeout, reset, 5xx, grpc (a gRPC status the server caused)",
            m.upstream_errors.clone(),
        );
        reg.register(
            "request_errors",
            "Client-side failures by kind: body_too_large, client_abort, schema_violation, body_malformed, body_timeout, bad_request, overloaded",
            m.request_errors.clone(),
        );
        reg.register(
            "in_flight_requests",
            "Requests being proxied now",
            m.in_flight.clone(),
        );
        reg.register(
            "request_bytes",
            "Request body bytes forwarded to the model server",
            m.request_bytes.clone(),
        );
        reg.register(
            "response_bytes",
            "Response body bytes sent to clients",
            m.response_bytes.clone(),
        );
        reg.register(
            "model_version_info",
            "Lineage of each registry version (value 1); join on model, version",
            m.info.clone(),
        );
        reg.register(
            "version_mismatch",
            "Responses whose model server reported another version than resolved",
            m.mismatch.clone(),
        );
        reg.register(
            "unresolved_requests",
            "Requests for a model or version the registry does not know",
            m.unresolved.clone(),
        );
        reg.register(
            "config_reloads",
            "Config and registry reloads by result",
            m.reloads.clone(),
        );
        reg.register(
            "observe_dropped",
            "Telemetry skipped or lost (the request itself was unaffected)",
            m.observe_dropped.clone(),
        );
        reg.register(
            "registry_up",
            "1 when the last registry read succeeded",
            m.registry_up.clone(),
        );
        reg.register(
            "registry_staleness_seconds",
            "Age of the registry records being served (since the last successful read)",
            m.registry_staleness.clone(),
        );
        reg.register(
            "registry_refreshes",
            "Remote registry reads by result",
            m.registry_refreshes.clone(),
        );
        reg.register(
            "history_queue_depth",
            "Journal events waiting to be written to the history store (queued and spooled)",
            m.history_depth.clone(),
        );
        reg.register(
            "history_writes",
            "History store write batches by result",
            m.history_writes.clone(),
        );
        reg.register(
            "history_dropped",
            "Journal events not written to the history store, by reason (queue_full, spool_full)",
            m.history_dropped.clone(),
        );
        reg.register(
            "lineage_events",
            "Dataset versions announced by lineage events, by source (openlineage, dataset_changed) and outcome (matched, unmatched, ignored, rejected)",
            m.lineage_events.clone(),
        );
        reg.register(
            "model_version_stale",
            "1 when the dataset a version was trained on has a newer digest",
            m.stale.clone(),
        );
        reg.register(
            "spans_dropped",
            "Sampled spans not exported: queue_full or export_failed",
            m.spans_dropped.clone(),
        );
        reg.register(
            "spans_exported",
            "Spans accepted by the OTLP collector",
            m.spans_exported.clone(),
        );
        reg.register(
            "response_bytes_held",
            "Bytes of answers handed to client connections and not yet written to their sockets",
            m.response_bytes_held.clone(),
        );
        reg.register(
            "snapshot_generation",
            "Generation of the config snapshot serving requests",
            m.generation.clone(),
        );
        reg.register(
            "canary_auto_rollbacks",
            "Candidates rolled back automatically, by route",
            m.auto_rollbacks.clone(),
        );
        reg.register(
            "canary_weight",
            "Current traffic weight of each version backend of a split route",
            m.weights.clone(),
        );
        reg.register(
            "connections_open",
            "Client connections open now, by listener",
            m.connections_open.clone(),
        );
        reg.register(
            "connections_refused",
            "Client connections closed at accept because limits.max_connections were open",
            m.connections_refused.clone(),
        );
        reg.register(
            "connection_errors",
            "Client connections ended by header_timeout, header_too_large, malformed input or idle_timeout",
            m.connection_errors.clone(),
        );
        (m, reg)
    }

    /// Resolve the connection metrics of one listener.
    pub fn listener(&self, listener: &'static str) -> ListenerMetrics {
        let l = ListenerLabels { listener };
        ListenerMetrics {
            open: self.connections_open.get_or_create_owned(&l),
            refused: self.connections_refused.get_or_create_owned(&l),
            errors: ConnErrorKind::ALL.map(|k| {
                self.connection_errors
                    .get_or_create_owned(&ListenerKindLabels {
                        listener,
                        kind: k.as_str(),
                    })
            }),
        }
    }

    /// Count an automatic rollback.
    pub fn auto_rollback(&self, route: &str) {
        self.auto_rollbacks
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .inc();
    }

    /// Set the weight gauge of one backend.
    pub fn set_weight(&self, route: &str, version: &str, weight: u32) {
        self.weights
            .get_or_create(&RouteVersionLabels {
                route: route.to_string(),
                version: version.to_string(),
            })
            .set(i64::from(weight));
    }

    /// Resolve every handle for one model version (done when a snapshot is built).
    pub fn version(&self, model: &str, version: &str) -> VersionMetrics {
        let vl = VersionLabels {
            model: model.into(),
            version: version.into(),
        };
        let status = |c: &'static str| {
            self.requests.get_or_create_owned(&StatusLabels {
                model: model.into(),
                version: version.into(),
                status_class: c,
            })
        };
        let kind = |f: &Family<KindLabels, Counter>, k: &'static str| {
            f.get_or_create_owned(&KindLabels {
                model: model.into(),
                version: version.into(),
                kind: k,
            })
        };
        VersionMetrics {
            requests: STATUS_CLASSES.map(status),
            duration: self.duration.get_or_create_owned(&vl),
            upstream_duration: self.upstream_duration.get_or_create_owned(&vl),
            upstream_errors: UpstreamErrorKind::ALL
                .map(|k| kind(&self.upstream_errors, k.as_str())),
            request_errors: RequestErrorKind::ALL.map(|k| kind(&self.request_errors, k.as_str())),
            in_flight: self.in_flight.get_or_create_owned(&vl),
            request_bytes: self.request_bytes.get_or_create_owned(&vl),
            response_bytes: self.response_bytes.get_or_create_owned(&vl),
            window: self.window(model, version),
        }
    }

    /// Set the length of rolling windows (before the first snapshot is built).
    pub fn set_window(&self, length: std::time::Duration) {
        let ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        self.window_ms.store(ms, Ordering::Relaxed);
    }

    /// The rolling window of one version (shared by every snapshot).
    pub fn window(&self, model: &str, version: &str) -> Arc<RollingWindow> {
        let mut all = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        all.entry((model.to_string(), version.to_string()))
            .or_insert_with(|| {
                let ms = self.window_ms.load(Ordering::Relaxed);
                Arc::new(RollingWindow::new(std::time::Duration::from_millis(ms)))
            })
            .clone()
    }

    /// Make `model_version_info` hold exactly these series, retiring those no longer current.
    pub fn set_version_info(&self, current: &[InfoLabels]) {
        for labels in current {
            self.info.get_or_create(labels).set(1);
        }
        let mut previous = self
            .info_set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keep: HashSet<&InfoLabels> = current.iter().collect();
        for old in previous.iter().filter(|old| !keep.contains(old)) {
            self.info.remove(old);
        }
        *previous = current.to_vec();
    }

    /// Count a version reported by the model server that differs from the resolved one.
    pub fn version_mismatch(&self, model: &str, expected: &str, reported: &str) {
        let labels = MismatchLabels {
            model: model.into(),
            expected: expected.into(),
            reported: reported.into(),
        };
        self.mismatch.get_or_create(&labels).inc();
        let mut seen = self
            .mismatch_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !seen.contains(&labels) {
            seen.insert(labels);
        }
    }

    /// Remove every per-version series (requests, latencies, errors, bytes, in-flight,
    /// mismatches, the rolling window) of versions that are not in `current`: series follow
    /// the registry, so versions that left it stop costing memory and exposition. A request
    /// still holding a retired version's handles records into them unseen.
    pub fn retire_versions(&self, current: &HashSet<(String, String)>) {
        let gone: Vec<(String, String)> = {
            let mut all = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let gone = all
                .keys()
                .filter(|k| !current.contains(*k))
                .cloned()
                .collect();
            all.retain(|k, _| current.contains(k));
            gone
        };
        for (model, version) in gone {
            for status_class in STATUS_CLASSES {
                self.requests.remove(&StatusLabels {
                    model: model.clone(),
                    version: version.clone(),
                    status_class,
                });
            }
            let kinds = |f: &Family<KindLabels, Counter>, kinds: &[&'static str]| {
                for kind in kinds {
                    f.remove(&KindLabels {
                        model: model.clone(),
                        version: version.clone(),
                        kind,
                    });
                }
            };
            kinds(
                &self.upstream_errors,
                &UpstreamErrorKind::ALL.map(|k| k.as_str()),
            );
            kinds(
                &self.request_errors,
                &RequestErrorKind::ALL.map(|k| k.as_str()),
            );
            let vl = VersionLabels { model, version };
            self.duration.remove(&vl);
            self.upstream_duration.remove(&vl);
            self.in_flight.remove(&vl);
            self.request_bytes.remove(&vl);
            self.response_bytes.remove(&vl);
        }
        let mut seen = self
            .mismatch_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.retain(|l| {
            let known = |v: &str| current.contains(&(l.model.clone(), v.to_string()));
            let keep = known(&l.expected) && (l.reported == "other" || known(&l.reported));
            if !keep {
                self.mismatch.remove(l);
            }
            keep
        });
    }

    /// Count a request whose model or version the registry does not know.
    pub fn unresolved(&self, route: &str, reason: &'static str) -> Counter {
        self.unresolved.get_or_create_owned(&UnresolvedLabels {
            route: route.into(),
            reason,
        })
    }

    /// Count a reload attempt.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Count lost telemetry.
    pub fn observe_dropped(&self, why: ObserveDrop) {
        self.observe_dropped_n(why, 1);
    }

    /// Count `n` lost items of telemetry.
    pub fn observe_dropped_n(&self, why: ObserveDrop, n: u64) {
        self.observe_dropped
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc_by(n);
    }

    /// A local registry loaded: up, and as fresh as the process.
    pub fn registry_loaded(&self) {
        self.registry_up.set(1);
        self.registry_staleness.set(0.0);
    }

    /// Events waiting for the history store.
    pub fn history_depth(&self, n: i64) {
        self.history_depth.set(n);
    }

    /// Count a history write batch.
    pub fn history_write(&self, ok: bool) {
        self.history_writes
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Count events the history store will not get.
    pub fn history_dropped(&self, reason: &'static str, n: u64) {
        self.history_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    /// Count a dataset announced by a lineage event (`source`: `openlineage`, `dataset_changed`;
    /// `outcome`: `matched`, `unmatched` (nothing in the registry reads it), `ignored` (not a
    /// completed write), `rejected` (unreadable)).
    pub fn lineage_event(&self, source: &'static str, outcome: &'static str) {
        self.lineage_events
            .get_or_create(&LineageEventLabels { source, outcome })
            .inc();
    }

    /// Record a registry read: up or down, and the age of what is served (`None`: never read).
    pub fn registry_result(&self, ok: bool, age_seconds: Option<f64>) {
        self.registry_up.set(i64::from(ok));
        self.registry_refreshes
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        if let Some(age) = age_seconds {
            self.registry_staleness.set(age);
        }
    }

    /// Make `model_version_stale` hold exactly these versions (1 = stale).
    pub fn set_stale(&self, versions: &[(VersionLabels, bool)]) {
        for (labels, stale) in versions {
            self.stale.get_or_create(labels).set(i64::from(*stale));
        }
        let mut previous = self
            .stale_set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keep: HashSet<&VersionLabels> = versions.iter().map(|(l, _)| l).collect();
        for old in previous.iter().filter(|old| !keep.contains(old)) {
            self.stale.remove(old);
        }
        *previous = versions.iter().map(|(l, _)| l.clone()).collect();
    }

    /// Count spans that were not exported.
    pub fn spans_dropped(&self, why: SpanDrop, n: u64) {
        self.spans_dropped
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc_by(n);
    }

    /// Count spans the collector accepted.
    pub fn spans_exported(&self, n: u64) {
        self.spans_exported.inc_by(n);
    }

    /// Record the generation now serving.
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }
}

/// Downstream-side failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestErrorKind {
    /// The request body exceeded the limit.
    BodyTooLarge,
    /// The client went away before the response ended (or in the middle of its body).
    ClientAbort,
    /// An `enforce` route rejected inputs that break the training schema.
    SchemaViolation,
    /// The client's body was malformed (a bad chunk size or delimiter).
    BodyMalformed,
    /// The client stalled its body past `limits.body_read_timeout`.
    BodyTimeout,
    /// The request could not be proxied without ambiguity (a disguised framing header, two
    /// Hosts, a `CONNECT` or `*` target).
    BadRequest,
    /// Refused with 503 while the answers held for clients that do not read were over
    /// `limits.max_held_response_bytes`: the sidecar's doing, never the version's.
    Overloaded,
}

impl RequestErrorKind {
    const ALL: [Self; 7] = [
        Self::BodyTooLarge,
        Self::ClientAbort,
        Self::SchemaViolation,
        Self::BodyMalformed,
        Self::BodyTimeout,
        Self::BadRequest,
        Self::Overloaded,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BodyTooLarge => "body_too_large",
            Self::ClientAbort => "client_abort",
            Self::SchemaViolation => "schema_violation",
            Self::BodyMalformed => "body_malformed",
            Self::BodyTimeout => "body_timeout",
            Self::BadRequest => "bad_request",
            Self::Overloaded => "overloaded",
        }
    }
}

/// Handles for one model version; recording touches only atomics.
#[derive(Clone, Debug)]
pub struct VersionMetrics {
    requests: [CounterWithExemplar<TraceExemplar>; 5],
    duration: HistogramWithExemplars<TraceExemplar>,
    upstream_duration: HistogramWithExemplars<TraceExemplar>,
    upstream_errors: [Counter; 5],
    request_errors: [Counter; 7],
    /// Requests being proxied now.
    pub in_flight: Gauge,
    request_bytes: Counter,
    response_bytes: Counter,
    /// Requests, errors and latency over the rolling window (the canary comparison reads it).
    pub window: Arc<RollingWindow>,
}

impl VersionMetrics {
    /// Record one finished request.
    pub fn record(&self, r: &Recorded) {
        let class = usize::from(r.status / 100).clamp(1, 5) - 1;
        self.requests[class].inc_by(1, r.exemplar, None);
        self.duration.observe(r.total_seconds, r.exemplar, None);
        if let Some(s) = r.upstream_seconds {
            self.upstream_duration.observe(s, r.upstream_exemplar, None);
        }
        if let Some(k) = r.upstream_error {
            self.upstream_errors[k as usize].inc();
        }
        if let Some(k) = r.request_error {
            self.request_errors[k as usize].inc();
        }
        self.request_bytes.inc_by(r.bytes_in);
        self.response_bytes.inc_by(r.bytes_out);
        // What the client caused (it left, sent a bad or stalled body, was refused) is not the
        // version's doing and stays out of the window the canary and `explain` judge from; a
        // 5xx (its own or ours) is the version's.
        if r.request_error.is_none() {
            self.window.record(
                std::time::Duration::from_secs_f64(r.total_seconds.max(0.0)),
                r.status >= 500,
            );
        }
    }
}

/// What a finished request contributes to metrics.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    /// The status the exchange counts as: the one sent, or for a gRPC call the HTTP status of
    /// its `grpc-status`.
    pub status: u16,
    /// Total latency.
    pub total_seconds: f64,
    /// Upstream latency to headers, when the upstream answered.
    pub upstream_seconds: Option<f64>,
    /// Upstream failure.
    pub upstream_error: Option<UpstreamErrorKind>,
    /// Downstream failure.
    pub request_error: Option<RequestErrorKind>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// The server span, when sampled.
    pub exemplar: Option<TraceExemplar>,
    /// The upstream client span, when sampled.
    pub upstream_exemplar: Option<TraceExemplar>,
}
