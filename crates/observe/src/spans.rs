//! OpenTelemetry spans: one server span per request (continuing an incoming W3C context or
//! starting a trace, per the sampler) and one client span per upstream call, exported over OTLP
//! (gRPC or HTTP/protobuf) from a bounded queue by a dedicated thread. A full queue or a failed
//! export drops spans and counts them (`modelstamp_spans_dropped_total`); memory stays bounded
//! and requests never wait for the exporter.
//!
//! Spans are recorded here rather than through the OpenTelemetry SDK: a request needs two spans
//! with known attributes, and the SDK's builder, context and processor plumbing cost about
//! 15,000 instructions per request on the proxy workers. The samplers follow the SDK's
//! definitions (tested against it), IDs come from a per-thread generator, and [`SpanRecord`] is
//! what the OTLP encoder writes.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use tracing::{debug, info, warn};

use super::metrics::{Metrics, SpanDrop};
pub use super::otlp::Attributes;
use super::otlp::{Accepted, Encoder, Refused, Retry, Transport, env_headers};
use super::trace::TraceParent;
use crate::codec::percent::decode as percent_decode;
use crate::config::{OtlpExport, Sampler, Traces};

/// A finished span, as the exporter writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Trace and span ID, flags and trace state.
    pub context: SpanContext,
    /// The parent's span ID (`SpanId::INVALID` for a root).
    pub parent_span_id: SpanId,
    /// Whether the parent came from another process.
    pub parent_is_remote: bool,
    /// Server, client or internal.
    pub kind: SpanKind,
    /// The span name.
    pub name: Cow<'static, str>,
    /// Start time.
    pub start: SystemTime,
    /// End time.
    pub end: SystemTime,
    /// Attributes shared with other spans, encoded once; exported before `attributes`.
    pub shared: Option<Arc<SharedAttributes>>,
    /// Attributes of this span alone, in the order they were set, encoded as they were set.
    pub attributes: Attributes,
    /// Events.
    pub events: Vec<Event>,
    /// Status (5xx and transport errors are errors).
    pub status: Status,
}

/// Attributes many spans carry alike (a version's `ml.*` attributes, the registry's URI),
/// encoded once when the snapshot is built. A span holds one reference to them instead of a
/// clone of each value (a reference count each, an allocation for owned strings), and the
/// exporter copies their bytes instead of encoding them for every span.
#[derive(Debug, PartialEq)]
pub struct SharedAttributes {
    attributes: Vec<KeyValue>,
    encoded: Vec<u8>,
}

impl SharedAttributes {
    /// Encode `attributes` once.
    pub fn new(attributes: Vec<KeyValue>) -> Self {
        let encoded = super::otlp::span_attributes(&attributes);
        Self {
            attributes,
            encoded,
        }
    }

    /// The attributes.
    pub fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }

    /// A model server's `server.address` and `server.port`, which every client span to it
    /// carries (built once per snapshot, not parsed from the authority per request).
    pub fn upstream(authority: &http::uri::Authority) -> Self {
        Self::new(vec![
            KeyValue::new("server.address", authority.host().to_string()),
            KeyValue::new("server.port", i64::from(authority.port_u16().unwrap_or(80))),
        ])
    }

    /// Their OTLP encoding, as `Span.attributes` entries.
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.encoded
    }
}

/// A span: its context always (it propagates even when not sampled) and, when sampled and
/// exported, the record being filled. Ends at the latest when dropped.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    recording: Option<Recording>,
}

#[derive(Debug)]
struct Recording {
    record: Mutex<Option<Box<SpanRecord>>>,
    sink: Arc<Sink>,
}

impl Span {
    /// Trace and span IDs, flags and trace state.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether attributes set on this span go anywhere.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// End the span: `finish` may add attributes and set the status (it runs only when the span
    /// is recorded). Later calls do nothing.
    pub fn end_with(&self, finish: impl FnOnce(&mut SpanRecord)) {
        let Some(rec) = &self.recording else {
            return;
        };
        let taken = match rec.record.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(mut record) = taken {
            finish(&mut record);
            record.end = SystemTime::now();
            rec.sink.send(record);
        }
    }

    /// End the span as it is.
    pub fn end(&self) {
        self.end_with(|_| {});
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.end();
    }
}

/// Room for a server span's own attributes (method, path, scheme, host, protocol, client,
/// request ID, route, status, reported version: about 330 bytes encoded), so the buffer is
/// allocated once.
const SERVER_ATTRIBUTE_BYTES: usize = 384;
/// Room for a client span's own attributes (method, URL, protocol, status).
const CLIENT_ATTRIBUTE_BYTES: usize = 192;

/// Builds spans; cheap to share.
#[derive(Debug, Clone)]
pub struct Tracing {
    sampler: Sampler,
    sink: Option<Arc<Sink>>,
    lineage_url: String,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the span exporter: {0}")]
pub struct TracingError(String);

impl Tracing {
    /// Start the export thread when an endpoint is configured.
    pub fn start(cfg: &Traces, metrics: &Metrics) -> Result<Self, TracingError> {
        let sink = match &cfg.export {
            Some(export) => {
                let resource = resource(
                    &cfg.service_name,
                    std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().as_deref(),
                );
                let sink = Sink::start(export.clone(), cfg.queue, cfg.batch, resource, metrics)?;
                info!(endpoint = %export.endpoint, protocol = ?export.protocol, "Exporting spans over OTLP.");
                Some(Arc::new(sink))
            }
            None => None,
        };
        Ok(Self {
            sampler: cfg.sampler,
            sink,
            lineage_url: cfg.lineage_url.clone(),
        })
    }

    /// The `ml.lineage.url` for a lineage ID.
    pub fn lineage_url(&self, lineage_id: &str) -> String {
        self.lineage_url.replace("{lineage_id}", lineage_id)
    }

    /// Start a server span, continuing `parent` when given (the sampler decides either way).
    /// It carries `shared` and `attributes`; these are built only when the span is recorded
    /// (the samplers do not read them).
    pub fn server_span(
        &self,
        parent: Option<SpanContext>,
        name: String,
        shared: Option<&Arc<SharedAttributes>>,
        attributes: impl FnOnce(&mut Attributes),
    ) -> Span {
        self.begin(
            parent.as_ref(),
            SpanKind::Server,
            Cow::Owned(name),
            shared,
            SERVER_ATTRIBUTE_BYTES,
            attributes,
        )
    }

    /// Start a client span under `parent`; `shared` and `attributes` as for
    /// [`Self::server_span`].
    pub fn client_span(
        &self,
        parent: &Span,
        name: Cow<'static, str>,
        shared: Option<&Arc<SharedAttributes>>,
        attributes: impl FnOnce(&mut Attributes),
    ) -> Span {
        self.begin(
            Some(&parent.context),
            SpanKind::Client,
            name,
            shared,
            CLIENT_ATTRIBUTE_BYTES,
            attributes,
        )
    }

    /// Record an event found after a request ended (a data-quality crossing) as a short
    /// internal span in that request's trace, carrying the event, so a trace view shows it.
    pub fn event_span(&self, parent: &SpanContext, name: &'static str, attributes: Vec<KeyValue>) {
        let span = self.begin(
            Some(parent),
            SpanKind::Internal,
            Cow::Borrowed(name),
            None,
            0,
            |a| *a = Attributes::from(&attributes[..]),
        );
        span.end_with(|r| {
            r.events
                .push(Event::new(name, SystemTime::now(), attributes, 0));
        });
    }

    fn begin(
        &self,
        parent: Option<&SpanContext>,
        kind: SpanKind,
        name: Cow<'static, str>,
        shared: Option<&Arc<SharedAttributes>>,
        capacity: usize,
        attributes: impl FnOnce(&mut Attributes),
    ) -> Span {
        let parent = parent.filter(|p| p.is_valid());
        let trace_id = parent.map_or_else(ids::trace_id, SpanContext::trace_id);
        let span_id = ids::span_id();
        let sampled = sample(self.sampler, parent, trace_id);
        let flags = match (sampled, parent) {
            (true, Some(p)) => p.trace_flags().with_sampled(true),
            (true, None) => TraceFlags::SAMPLED,
            (false, _) => TraceFlags::default(),
        };
        let state = parent.map(|p| p.trace_state().clone()).unwrap_or_default();
        let context = SpanContext::new(trace_id, span_id, flags, false, state);
        let recording = self.sink.as_ref().filter(|_| sampled).map(|sink| {
            let now = SystemTime::now();
            let mut attrs = Attributes::with_capacity(capacity);
            attributes(&mut attrs);
            Recording {
                record: Mutex::new(Some(Box::new(SpanRecord {
                    context: context.clone(),
                    parent_span_id: parent.map_or(SpanId::INVALID, SpanContext::span_id),
                    parent_is_remote: parent.is_some_and(SpanContext::is_remote),
                    kind,
                    name,
                    start: now,
                    end: now,
                    shared: shared.cloned(),
                    attributes: attrs,
                    events: Vec::new(),
                    status: Status::Unset,
                }))),
                sink: sink.clone(),
            }
        });
        Span { context, recording }
    }

    /// Export what is queued (shutdown).
    pub fn flush(&self) {
        if let Some(sink) = &self.sink
            && let Err(e) = sink.flush(Duration::from_secs(10))
        {
            warn!(error = %e, "Span flush failed.");
        }
    }
}

/// The sampling decision, as the OpenTelemetry SDK's samplers make it: ratios compare the low
/// 63 bits of the trace ID's last 8 bytes with `ratio × 2^63`; parent-based samplers follow a
/// valid parent's sampled flag and ask the root sampler otherwise.
fn sample(sampler: Sampler, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
    let ratio = |r: f64| {
        if r >= 1.0 {
            return true;
        }
        let bound = (r.max(0.0) * (1u64 << 63) as f64) as u64;
        let bytes = trace_id.to_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..]);
        (u64::from_be_bytes(low) >> 1) < bound
    };
    let root = match sampler {
        Sampler::AlwaysOn => return true,
        Sampler::AlwaysOff => return false,
        Sampler::Ratio(r) => return ratio(r),
        Sampler::ParentBasedAlwaysOn => true,
        Sampler::ParentBasedAlwaysOff => false,
        Sampler::ParentBasedRatio(r) => ratio(r),
    };
    parent.map_or(root, SpanContext::is_sampled)
}

/// Trace and span IDs: splitmix64 over a per-thread state seeded from the process's random
/// hasher keys, the thread and the clock (not cryptographic; unique and uniform, which is what
/// IDs and ratio sampling need).
mod ids {
    use super::*;
    use crate::trace::{GOLDEN, mix};

    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }

    fn seed() -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        std::thread::current().id().hash(&mut h);
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .hash(&mut h);
        h.finish()
    }

    fn next() -> u64 {
        STATE.with(|s| {
            let z = s.get().wrapping_add(GOLDEN);
            s.set(z);
            mix(z)
        })
    }

    /// A new non-zero trace ID.
    pub fn trace_id() -> TraceId {
        loop {
            let id = (u128::from(next()) << 64) | u128::from(next());
            if id != 0 {
                return TraceId::from(id);
            }
        }
    }

    /// A new non-zero span ID.
    pub fn span_id() -> SpanId {
        loop {
            let id = next();
            if id != 0 {
                return SpanId::from(id);
            }
        }
    }
}

/// The remote parent described by `traceparent` (and `tracestate`).
pub fn remote_parent(tp: &TraceParent, tracestate: Option<&str>) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(&tp.trace_id).ok()?;
    let span_id = SpanId::from_hex(&tp.span_id).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(tp.flags & 1),
        true,
        state,
    ))
}

/// `traceparent` and `tracestate` values for a span context, to inject upstream.
pub fn propagation_headers(sc: &SpanContext) -> ([u8; 55], String) {
    let traceparent = super::trace::traceparent_bytes(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    );
    (traceparent, sc.trace_state().header())
}

/// `service.*`, `telemetry.sdk.*`, Kubernetes pod and namespace from the downward-API
/// variables when set, and `OTEL_RESOURCE_ATTRIBUTES` (`key=value` pairs, values
/// percent-decoded) beneath what is set explicitly. One entry per key, the last setting wins.
fn resource(service_name: &str, otel_resource_attributes: Option<&str>) -> Vec<KeyValue> {
    let env = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    };
    let mut attrs = vec![
        KeyValue::new("telemetry.sdk.name", "modelstamp"),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    for pair in otel_resource_attributes.unwrap_or_default().split(',') {
        if let Some((k, v)) = pair.split_once('=')
            && !k.trim().is_empty()
        {
            let value = String::from_utf8_lossy(&percent_decode(v.trim())).into_owned();
            attrs.push(KeyValue::new(k.trim().to_string(), value));
        }
    }
    attrs.extend([
        KeyValue::new("service.name", service_name.to_string()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(
            "service.instance.id",
            env(&["K8S_POD_UID", "POD_UID"]).unwrap_or_else(instance_id),
        ),
    ]);
    if let Some(pod) = env(&["K8S_POD_NAME", "POD_NAME"]) {
        attrs.push(KeyValue::new("k8s.pod.name", pod));
    }
    if let Some(ns) = env(&["K8S_NAMESPACE_NAME", "K8S_NAMESPACE", "POD_NAMESPACE"]) {
        attrs.push(KeyValue::new("k8s.namespace.name", ns));
    }
    let mut unique: Vec<KeyValue> = Vec::with_capacity(attrs.len());
    for kv in attrs {
        match unique.iter_mut().find(|u| u.key == kv.key) {
            Some(u) => *u = kv,
            None => unique.push(kv),
        }
    }
    unique
}

fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host}-{}", std::process::id())
}

enum Msg {
    Span(Box<SpanRecord>),
    Flush(SyncSender<()>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Span(_) => "Span",
            Msg::Flush(_) => "Flush",
        })
    }
}

/// Hands finished sampled spans to the export thread without ever blocking.
#[derive(Debug)]
struct Sink {
    tx: SyncSender<Msg>,
    metrics: Metrics,
}

impl Sink {
    fn start(
        export: OtlpExport,
        queue: usize,
        batch: usize,
        resource: Vec<KeyValue>,
        metrics: &Metrics,
    ) -> Result<Self, TracingError> {
        let (tx, rx) = sync_channel(queue);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || export_loop(rx, export, batch, resource, m))
            .map_err(|e| TracingError(e.to_string()))?;
        Ok(Self {
            tx,
            metrics: metrics.clone(),
        })
    }

    fn send(&self, record: Box<SpanRecord>) {
        match self.tx.try_send(Msg::Span(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.spans_dropped(SpanDrop::QueueFull, 1),
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.spans_dropped(SpanDrop::ExportFailed, 1)
            }
        }
    }

    /// Wait, at most `timeout` in all, until what is queued now has been exported (or given
    /// up). The queue may be full behind a collector being retried: the flush request waits
    /// for room within the same deadline, never longer.
    fn flush(&self, timeout: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        let (ack_tx, ack_rx) = sync_channel(1);
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => {
                    return Err("the export thread has stopped".to_string());
                }
                Err(TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(format!("not flushed within {timeout:?}: the queue is full"));
                    }
                    msg = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .map_err(|_| format!("not flushed within {timeout:?}"))
    }
}

/// Send one batch, each attempt within `timeout`, retrying as [`Retry`] says.
async fn export_batch(
    transport: &Transport,
    request: Vec<u8>,
    timeout: Duration,
) -> Result<Accepted, String> {
    let body = transport.prepare(request).map_err(|e| e.to_string())?;
    let start = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let refused = match tokio::time::timeout(timeout, transport.send(body.clone())).await {
            Ok(Ok(accepted)) => return Ok(accepted),
            Ok(Err(refused)) => refused,
            // A slow collector may be overloaded, as DEADLINE_EXCEEDED says.
            Err(_) => Refused {
                why: format!("no answer within {timeout:?}"),
                retryable: true,
                after: None,
            },
        };
        match Retry::wait(attempt, &refused, start.elapsed(), timeout) {
            Some(wait) => {
                debug!(error = %refused.why, attempt, ?wait, "Span export will be retried.");
                tokio::time::sleep(wait).await;
            }
            None if attempt > 1 => {
                return Err(format!("{} (after {attempt} attempts)", refused.why));
            }
            None => return Err(refused.why),
        }
    }
}

/// How long the export thread lets spans gather before a batch.
const GATHER: Duration = Duration::from_millis(50);

/// Batches spans (up to `batch`, or what arrived within [`GATHER`]) and exports each batch with
/// a timeout. Runs on its own thread with a small runtime, so a slow collector costs no proxy
/// worker time.
fn export_loop(
    rx: Receiver<Msg>,
    export: OtlpExport,
    batch: usize,
    resource: Vec<KeyValue>,
    metrics: Metrics,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "Span export thread cannot start; spans will be dropped.");
            return;
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    let headers = env_headers(
        env("OTEL_EXPORTER_OTLP_HEADERS").as_deref(),
        env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").as_deref(),
    );
    let build = |headers: HeaderMap| runtime.block_on(async { Transport::new(&export, headers) });
    let mut transport = match build(headers.clone()) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "Span exporter cannot be built; spans will be dropped.");
            return;
        }
    };
    let encoder = Encoder::new(&resource);
    let mut spans: Vec<Box<SpanRecord>> = Vec::with_capacity(batch);
    let mut acks = Vec::new();
    let mut failures: u64 = 0;
    let mut last_full = false;
    // A rotated CA or client certificate (cert-manager, a Secret update) is picked up within
    // a second of the next batch: the files are stat'ed, and read again only when they moved.
    let mut tls_stamp = export.tls.stamp();
    let mut tls_checked = Instant::now();
    while let Ok(first) = rx.recv() {
        // Let a batch gather while this thread sleeps: a sender only wakes a thread blocked in
        // `recv`, so under load this costs one wake-up per batch instead of one per span.
        if !last_full && !matches!(first, Msg::Flush(_)) {
            std::thread::sleep(GATHER);
        }
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Span(s) => spans.push(s),
                Msg::Flush(ack) => acks.push(ack),
            }
            if spans.len() >= batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        last_full = spans.len() >= batch;
        if !spans.is_empty() {
            let n = spans.len() as u64;
            if tls_checked.elapsed() >= Duration::from_secs(1) {
                tls_checked = Instant::now();
                let stamp = export.tls.stamp();
                if stamp != tls_stamp {
                    tls_stamp = stamp;
                    match build(headers.clone()) {
                        Ok(t) => {
                            transport = t;
                            info!("The collector's TLS files changed; the exporter uses them now.");
                        }
                        Err(e) => {
                            warn!(error = %e, "The collector's TLS files changed but cannot be used; the exporter keeps the previous ones.");
                        }
                    }
                }
            }
            let mut request = transport.body(spans.len() * 900);
            encoder.encode(&spans, &mut request);
            spans.clear();
            match runtime.block_on(export_batch(&transport, request, export.timeout)) {
                Ok(accepted) => {
                    let rejected = accepted.rejected.min(n);
                    metrics.spans_exported(n - rejected);
                    if rejected > 0 {
                        metrics.spans_dropped(SpanDrop::Rejected, rejected);
                        warn!(rejected, message = %accepted.message, "The collector rejected spans.");
                    }
                }
                Err(why) => {
                    failures += 1;
                    metrics.spans_dropped(SpanDrop::ExportFailed, n);
                    if failures.is_power_of_two() {
                        warn!(error = %why, dropped = n, failures, "Span export failed; spans dropped.");
                    }
                }
            }
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// End a span with its HTTP status and error, per the semantic conventions: 5xx and transport
/// errors mark the span as an error. `extra` adds attributes first (only for a recorded span).
pub fn end_http_span(
    span: &Span,
    status: Option<u16>,
    error: Option<&'static str>,
    extra: impl FnOnce(&mut Attributes),
) {
    span.end_with(|record| {
        let attrs = &mut record.attributes;
        extra(attrs);
        if let Some(code) = status {
            attrs.i64("http.response.status_code", i64::from(code));
        }
        match (error, status) {
            (Some(e), _) => {
                attrs.str("error.type", e);
                record.status = Status::error(e);
            }
            (None, Some(code)) if code >= 500 => {
                let code = code.to_string();
                attrs.str("error.type", &code);
                record.status = Status::error(code);
            }
            _ => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer whose finished spans land in a channel the test reads.
    fn tracer(sampler: Sampler) -> (Tracing, Receiver<Msg>) {
        let (tx, rx) = sync_channel(16);
        let sink = Sink {
            tx,
            metrics: Metrics::new().0,
        };
        let tracing = Tracing {
            sampler,
            sink: Some(Arc::new(sink)),
            lineage_url: String::new(),
        };
        (tracing, rx)
    }

    fn finished(rx: &Receiver<Msg>) -> Vec<SpanRecord> {
        rx.try_iter()
            .filter_map(|m| match m {
                Msg::Span(s) => Some(*s),
                Msg::Flush(_) => None,
            })
            .collect()
    }

    fn remote(sampled: bool) -> SpanContext {
        let state = TraceState::from_key_value([("vendor", "v1")]).unwrap_or_default();
        let flags = TraceFlags::new(if sampled { 0x03 } else { 0x02 });
        SpanContext::new(TraceId::from(7u128), SpanId::from(9u64), flags, true, state)
    }

    #[test]
    fn sampling_decisions_match_the_opentelemetry_sdk() {
        use opentelemetry::Context;
        use opentelemetry::trace::TraceContextExt as _;
        use opentelemetry_sdk::trace::{Sampler as Sdk, SamplingDecision, ShouldSample as _};
        let cases = [
            (Sampler::AlwaysOn, Sdk::AlwaysOn),
            (Sampler::AlwaysOff, Sdk::AlwaysOff),
            (Sampler::Ratio(0.25), Sdk::TraceIdRatioBased(0.25)),
            (Sampler::Ratio(-1.0), Sdk::TraceIdRatioBased(-1.0)),
            (Sampler::Ratio(2.0), Sdk::TraceIdRatioBased(2.0)),
            (
                Sampler::ParentBasedAlwaysOn,
                Sdk::ParentBased(Box::new(Sdk::AlwaysOn)),
            ),
            (
                Sampler::ParentBasedAlwaysOff,
                Sdk::ParentBased(Box::new(Sdk::AlwaysOff)),
            ),
            (
                Sampler::ParentBasedRatio(0.5),
                Sdk::ParentBased(Box::new(Sdk::TraceIdRatioBased(0.5))),
            ),
        ];
        let parents = [None, Some(remote(true)), Some(remote(false))];
        let mut sampled_roots = 0;
        for (ours, sdk) in &cases {
            for parent in &parents {
                let cx = parent
                    .clone()
                    .map(|p| Context::new().with_remote_span_context(p));
                for _ in 0..2_000 {
                    let trace_id = ids::trace_id();
                    let expected = sdk
                        .should_sample(cx.as_ref(), trace_id, "s", &SpanKind::Server, &[], &[])
                        .decision
                        == SamplingDecision::RecordAndSample;
                    let got = sample(*ours, parent.as_ref(), trace_id);
                    assert_eq!(got, expected, "{ours:?} parent {parent:?} {trace_id}");
                    if parent.is_none() && *ours == Sampler::Ratio(0.25) && got {
                        sampled_roots += 1;
                    }
                }
            }
        }
        // The generated IDs are uniform enough for ratio sampling: 25 % ± 4 % of 2,000.
        assert!((420..580).contains(&sampled_roots), "{sampled_roots}");
    }

    #[test]
    fn spans_continue_the_parent_and_end_once() {
        let (tracing, rx) = tracer(Sampler::ParentBasedAlwaysOn);
        let parent = remote(true);
        let shared = Arc::new(SharedAttributes::new(vec![KeyValue::new(
            "ml.model.version",
            "2",
        )]));
        let server = tracing.server_span(
            Some(parent.clone()),
            "POST churn".into(),
            Some(&shared),
            |a| a.str("ml.model.name", "churn"),
        );
        let sc = server.context().clone();
        assert_eq!(sc.trace_id(), parent.trace_id());
        assert_ne!(sc.span_id(), parent.span_id());
        assert!(sc.is_sampled() && !sc.is_remote());
        // Other flag bits and the trace state carry over, as in the SDK.
        assert_eq!(sc.trace_flags().to_u8(), 0x03);
        assert_eq!(sc.trace_state().header(), "vendor=v1");
        let upstream = Arc::new(SharedAttributes::upstream(
            &"10.0.0.7:8080".parse().unwrap(),
        ));
        let client = tracing.client_span(&server, "POST".into(), Some(&upstream), |_| {});
        assert_eq!(client.context().trace_id(), sc.trace_id());
        drop(client);
        server.end_with(|r| r.status = Status::error("upstream_5xx"));
        server.end_with(|r| r.status = Status::Ok);
        drop(server);
        let spans = finished(&rx);
        assert_eq!(
            spans.len(),
            2,
            "a dropped span ends; a second end does nothing"
        );
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.parent_span_id, sc.span_id());
        assert!(!client.parent_is_remote);
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.parent_span_id, parent.span_id());
        assert!(server.parent_is_remote);
        assert_eq!(server.status, Status::error("upstream_5xx"));
        assert_eq!(
            server.attributes,
            Attributes::from(&[KeyValue::new("ml.model.name", "churn")][..])
        );
        assert_eq!(server.shared.as_ref(), Some(&shared));
        assert!(client.attributes.is_empty());
        assert_eq!(
            client.shared.as_ref().map(|s| s.attributes().to_vec()),
            Some(vec![
                KeyValue::new("server.address", "10.0.0.7"),
                KeyValue::new("server.port", 8080)
            ])
        );
        assert!(server.end >= server.start);
    }

    #[test]
    fn unsampled_spans_propagate_ids_but_record_nothing() {
        let (tracing, rx) = tracer(Sampler::ParentBasedAlwaysOn);
        let mut built = false;
        let server = tracing.server_span(Some(remote(false)), "GET".into(), None, |_| {
            built = true;
        });
        assert!(!built, "attributes are built only for recorded spans");
        assert!(!server.is_recording());
        assert_eq!(server.context().trace_id(), TraceId::from(7u128));
        assert_eq!(server.context().trace_flags(), TraceFlags::default());
        assert!(server.context().is_valid());
        drop(server);
        // Sampled but with no exporter: the context says sampled, nothing is recorded.
        let quiet = Tracing {
            sink: None,
            ..tracing.clone()
        };
        let root = quiet.server_span(None, "GET".into(), None, |_| {});
        assert!(root.context().is_sampled() && !root.is_recording());
        drop(root);
        assert!(finished(&rx).is_empty());
    }

    #[test]
    fn event_spans_carry_their_event() {
        let (tracing, rx) = tracer(Sampler::ParentBasedAlwaysOn);
        let server = tracing.server_span(None, "POST".into(), None, |_| {});
        let attrs = vec![KeyValue::new("ml.feature.name", "age")];
        tracing.event_span(server.context(), "modelstamp.data_quality", attrs.clone());
        let spans = finished(&rx);
        assert_eq!(spans.len(), 1);
        let e = &spans[0];
        assert_eq!(e.kind, SpanKind::Internal);
        assert_eq!(e.parent_span_id, server.context().span_id());
        assert_eq!(e.attributes, Attributes::from(&attrs[..]));
        assert_eq!(e.events.len(), 1);
        assert_eq!(e.events[0].name, "modelstamp.data_quality");
        assert_eq!(e.events[0].attributes, attrs);
    }

    #[test]
    fn resource_takes_environment_attributes_beneath_its_own() {
        let r = resource(
            "churn-sidecar",
            Some("deployment.environment=prod, team=ml%20platform,service.name=ignored,,bad"),
        );
        let get = |k: &str| {
            r.iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.as_str().into_owned())
        };
        assert_eq!(get("deployment.environment").as_deref(), Some("prod"));
        assert_eq!(get("team").as_deref(), Some("ml platform"));
        assert_eq!(get("service.name").as_deref(), Some("churn-sidecar"));
        assert_eq!(get("telemetry.sdk.language").as_deref(), Some("rust"));
        assert!(get("service.instance.id").is_some_and(|v| !v.is_empty()));
        let keys: std::collections::HashSet<_> = r.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys.len(), r.len(), "one entry per key");
    }

    #[test]
    fn ids_are_unique_and_never_zero() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| ids::span_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&SpanId::INVALID));
        assert_ne!(ids::trace_id(), ids::trace_id());
    }
}
