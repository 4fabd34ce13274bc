//! OpenTelemetry spans: one server span per request (continuing an incoming W3C context or
//! starting a trace, per the sampler) and one client span per upstream call, exported over OTLP
//! (gRPC or HTTP/protobuf) from a bounded queue by a dedicated thread. A full queue or a failed
//! export drops spans and counts them (`modelstamp_spans_dropped_total`); memory stays bounded
//! and requests never wait for the exporter.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    Sampler as SdkSampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanProcessor,
};
use tracing::{info, warn};

use super::metrics::{Metrics, SpanDrop};
use super::otlp::{Encoder, Transport, env_headers};
use super::trace::TraceParent;
use crate::config::{OtlpExport, Sampler, Traces};

/// Builds spans; cheap to share.
#[derive(Debug, Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    lineage_url: String,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the span exporter: {0}")]
pub struct TracingError(String);

impl Tracing {
    /// Start the provider and, when an endpoint is configured, the export thread.
    pub fn start(cfg: &Traces, metrics: &Metrics) -> Result<Self, TracingError> {
        let resource = resource(&cfg.service_name);
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(sampler(cfg.sampler))
            .with_resource(resource.clone());
        if let Some(export) = &cfg.export {
            let processor = QueueProcessor::start(
                export.clone(),
                cfg.queue,
                cfg.batch,
                resource,
                metrics.clone(),
            )?;
            info!(endpoint = %export.endpoint, protocol = ?export.protocol, "Exporting spans over OTLP.");
            builder = builder.with_span_processor(processor);
        }
        let provider = builder.build();
        let tracer = provider.tracer("modelstamp");
        Ok(Self {
            provider,
            tracer,
            lineage_url: cfg.lineage_url.clone(),
        })
    }

    /// The `ml.lineage.url` for a lineage ID.
    pub fn lineage_url(&self, lineage_id: &str) -> String {
        self.lineage_url.replace("{lineage_id}", lineage_id)
    }

    /// Start a server span, continuing `parent` when given (the sampler decides either way).
    /// `attributes` are built only when the span is sampled (the samplers do not read them).
    pub fn server_span(
        &self,
        parent: Option<SpanContext>,
        name: String,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Context {
        let parent_cx = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent_cx);
        with_attributes(span, attributes, &parent_cx)
    }

    /// Start a client span under `parent`; `attributes` as for [`Self::server_span`].
    pub fn client_span(
        &self,
        parent: &Context,
        name: String,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, parent);
        with_attributes(span, attributes, parent)
    }

    /// Record an event found after a request ended (a data-quality crossing) as a short
    /// internal span in that request's trace, carrying the event, so a trace view shows it.
    pub fn event_span(&self, parent: &SpanContext, name: &'static str, attributes: Vec<KeyValue>) {
        use opentelemetry::trace::Span as _;
        let parent_cx = Context::new().with_remote_span_context(parent.clone());
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes.clone())
            .start_with_context(&self.tracer, &parent_cx);
        span.add_event(name, attributes);
        span.end();
    }

    /// Export what is queued (shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            warn!(error = %e, "Span flush failed.");
        }
    }
}

fn with_attributes(
    mut span: Span,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    parent: &Context,
) -> Context {
    use opentelemetry::trace::Span as _;
    if span.is_recording() {
        span.set_attributes(attributes());
    }
    parent.with_span(span)
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

fn sampler(s: Sampler) -> SdkSampler {
    match s {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::Ratio(r) => SdkSampler::TraceIdRatioBased(r),
        Sampler::ParentBasedAlwaysOn => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOff)),
        Sampler::ParentBasedRatio(r) => {
            SdkSampler::ParentBased(Box::new(SdkSampler::TraceIdRatioBased(r)))
        }
    }
}

/// `service.*` plus Kubernetes pod and namespace from the downward-API variables, when set.
fn resource(service_name: &str) -> Resource {
    let env = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    };
    let mut attrs = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(
            "service.instance.id",
            env(&["K8S_POD_UID", "POD_UID"]).unwrap_or_else(instance_id),
        ),
    ];
    if let Some(pod) = env(&["K8S_POD_NAME", "POD_NAME"]) {
        attrs.push(KeyValue::new("k8s.pod.name", pod));
    }
    if let Some(ns) = env(&["K8S_NAMESPACE_NAME", "K8S_NAMESPACE", "POD_NAMESPACE"]) {
        attrs.push(KeyValue::new("k8s.namespace.name", ns));
    }
    Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attributes(attrs)
        .build()
}

fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host}-{}", std::process::id())
}

enum Msg {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

/// Hands finished sampled spans to the export thread without ever blocking.
#[derive(Debug)]
struct QueueProcessor {
    tx: SyncSender<Msg>,
    metrics: Metrics,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Span(_) => "Span",
            Msg::Flush(_) => "Flush",
        })
    }
}

impl QueueProcessor {
    fn start(
        export: OtlpExport,
        queue: usize,
        batch: usize,
        resource: Resource,
        metrics: Metrics,
    ) -> Result<Self, TracingError> {
        let (tx, rx) = sync_channel(queue);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || export_loop(rx, export, batch, resource, m))
            .map_err(|e| TracingError(e.to_string()))?;
        Ok(Self { tx, metrics })
    }

    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let (ack_tx, ack_rx) = sync_channel(1);
        self.tx
            .send(Msg::Flush(ack_tx))
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        ack_rx
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.spans_dropped(SpanDrop::QueueFull, 1),
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.spans_dropped(SpanDrop::ExportFailed, 1)
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(Duration::from_secs(10))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.flush(timeout)
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
    resource: Resource,
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
    let transport = match runtime.block_on(async { Transport::new(&export, headers) }) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "Span exporter cannot be built; spans will be dropped.");
            return;
        }
    };
    let encoder = Encoder::new(&resource);
    let mut spans: Vec<SpanData> = Vec::with_capacity(batch);
    let mut acks = Vec::new();
    let mut failures: u64 = 0;
    let mut last_full = false;
    while let Ok(first) = rx.recv() {
        // Let a batch gather while this thread sleeps: a sender only wakes a thread blocked in
        // `recv`, so under load this costs one wake-up per batch instead of one per span.
        if !last_full && !matches!(first, Msg::Flush(_)) {
            std::thread::sleep(GATHER);
        }
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Span(s) => spans.push(*s),
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
            let mut request = Vec::with_capacity(spans.len() * 640);
            encoder.encode(&spans, &mut request);
            spans.clear();
            let result = runtime.block_on(async {
                tokio::time::timeout(export.timeout, transport.send(request)).await
            });
            match result {
                Ok(Ok(())) => metrics.spans_exported(n),
                outcome => {
                    failures += 1;
                    metrics.spans_dropped(SpanDrop::ExportFailed, n);
                    if failures.is_power_of_two() {
                        let why = match outcome {
                            Ok(Err(e)) => e,
                            _ => "timed out".to_string(),
                        };
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
