//! One finished exchange, and the one place that decides what is observed of it.
//!
//! The proxy's `tee` builds an [`Exchange`] once per request, when the response body ends or
//! is dropped (success or failure), and hands it to [`Observer::finish`], which fans it out to
//! every [`Sink`]: per-version metrics, the version-mismatch check, spans, the access log (and
//! through it the recent-requests index), inspection, and whatever the layer above adds (the
//! proxy's shadow calls). A sink only reads the exchange; none can fail the request.
//!
//! `C` is the layer above's own view of the request (the proxy's request context): sinks of
//! that layer may read it, the sinks here never do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use tracing::warn;

use crate::access_log::{AccessLine, AccessLog};
use crate::exemplar::TraceExemplar;
use crate::inspect::worker::Copied;
use crate::inspect::{Codec, Framing, Inspector, Job, Profile};
use crate::journal::Journal;
use crate::metrics::{Metrics, Recorded, RequestErrorKind, UpstreamErrorKind, VersionMetrics};
use crate::spans::{Span, end_http_span};

/// The version that served an exchange, with its per-version handles.
#[derive(Debug, Clone, Copy)]
pub struct ServedBy<'a> {
    /// Model name (or `unknown`).
    pub model: &'a Arc<str>,
    /// Version (or `unknown`).
    pub version: &'a Arc<str>,
    /// Lineage ID (or `unknown`).
    pub lineage_id: &'a Arc<str>,
    /// Its metric handles.
    pub metrics: &'a VersionMetrics,
    /// What inspection checks and counts for it.
    pub profile: &'a Arc<Profile>,
}

/// What an OpenAI-compatible exchange asked for and got.
#[derive(Debug, Clone, Copy)]
pub struct GenAi<'a> {
    /// `gen_ai.operation.name` (`chat`, `embeddings`, ...).
    pub operation: &'static str,
    /// The `model` the request named.
    pub request_model: Option<&'a str>,
    /// The `model` the response named.
    pub response_model: Option<&'a str>,
}

/// One finished exchange: immutable, built once, read by every sink.
#[derive(Debug)]
pub struct Exchange<'a, C: ?Sized> {
    /// The layer above's view of the request, for its own sinks.
    pub ctx: &'a C,
    /// Who served it.
    pub served: ServedBy<'a>,
    /// The matched route.
    pub route: Option<&'a Arc<str>>,
    /// The request ID stamped up and down.
    pub request_id: &'a HeaderValue,
    /// Wall-clock start.
    pub time: SystemTime,
    /// Client address.
    pub client: SocketAddr,
    /// Method.
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a PathAndQuery,
    /// The client's HTTP version (`HTTP/1.1`, `HTTP/2`).
    pub protocol: &'static str,
    /// Status sent to the client (499 when it left first).
    pub status: u16,
    /// Status the model server sent.
    pub upstream_status: Option<u16>,
    /// The `grpc-status` the client got (a gRPC call): the model server's, passed through, or
    /// the sidecar's own when it answered instead.
    pub grpc_status: Option<u16>,
    /// The status the exchange counts as in metrics, windows and verdicts: `status`, except for
    /// a gRPC call the model server answered, which counts as the HTTP status of its
    /// `grpc-status` (`NOT_FOUND` a 404, `UNAVAILABLE` a 503), and for one the sidecar answered,
    /// the status an HTTP client would have got.
    pub outcome: u16,
    /// Total time, start to the last byte (or the drop).
    pub total: Duration,
    /// Upstream time to response headers.
    pub upstream_latency: Option<Duration>,
    /// The upstream's failure, if any.
    pub upstream_error: Option<UpstreamErrorKind>,
    /// The client side's failure, if any.
    pub request_error: Option<RequestErrorKind>,
    /// The access log's `error` value.
    pub error: Option<&'static str>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// The server span.
    pub server_span: &'a Span,
    /// The upstream call's span, when a call was made.
    pub client_span: Option<&'a Span>,
    /// The version the model server reported, when it did.
    pub reported: Option<&'a str>,
    /// The bounded label of a reported version that is not the served one (`other` when the
    /// registry does not know it); `None` when they agree or the served version is unknown.
    pub mismatch: Option<&'a str>,
    /// OpenAI-compatible details.
    pub gen_ai: Option<GenAi<'a>>,
    /// How the exchange is inspected, when it is.
    pub inspect: Option<Codec>,
    /// The request body's copy.
    pub request_copy: Option<&'a Copied>,
    /// The response body's copy (complete, or a stream's prefix).
    pub response_copy: Option<&'a Copied>,
    /// How the request body is laid out.
    pub request_framing: Framing,
    /// How the response body is laid out.
    pub response_framing: Framing,
}

impl<C: ?Sized> Exchange<'_, C> {
    /// Whether the client got a successful answer with no error on the way.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.outcome) && self.error.is_none()
    }
}

/// Something that observes finished exchanges.
pub trait Sink<C: ?Sized>: Send + Sync {
    /// Observe one exchange. Must not block: queue work for a thread of its own.
    fn finish(&self, exchange: &Exchange<'_, C>);
}

/// Fans each finished exchange out to its sinks, in order.
pub struct Observer<C: ?Sized> {
    sinks: Vec<Box<dyn Sink<C>>>,
}

impl<C: ?Sized> std::fmt::Debug for Observer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl<C: ?Sized + 'static> Observer<C> {
    /// An observer with these sinks.
    pub fn new(sinks: Vec<Box<dyn Sink<C>>>) -> Self {
        Self { sinks }
    }

    /// The sinks every sidecar has: per-version metrics, the mismatch check, spans, the access
    /// log and inspection; `extra` ones (the layer above's) come last.
    pub fn standard(telemetry: &crate::Telemetry, extra: Vec<Box<dyn Sink<C>>>) -> Self {
        let mut sinks: Vec<Box<dyn Sink<C>>> = vec![
            Box::new(Inspection(telemetry.inspector.clone())),
            Box::new(Mismatch {
                metrics: telemetry.metrics.clone(),
                journal: telemetry.journal.clone(),
            }),
            Box::new(Spans),
            Box::new(VersionMetricsSink),
            Box::new(AccessLogSink(telemetry.access_log.clone())),
        ];
        sinks.extend(extra);
        Self { sinks }
    }

    /// Observe one finished exchange with every sink.
    pub fn finish(&self, exchange: &Exchange<'_, C>) {
        for sink in &self.sinks {
            sink.finish(exchange);
        }
    }
}

/// Per-version request counts, latency histograms (with exemplars), errors and bytes.
pub struct VersionMetricsSink;

impl<C: ?Sized> Sink<C> for VersionMetricsSink {
    fn finish(&self, ex: &Exchange<'_, C>) {
        ex.served.metrics.record(&Recorded {
            status: ex.outcome,
            total_seconds: ex.total.as_secs_f64(),
            upstream_seconds: ex.upstream_latency.map(|d| d.as_secs_f64()),
            upstream_error: ex.upstream_error,
            request_error: ex.request_error,
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out,
            exemplar: TraceExemplar::of(ex.server_span.context()),
            upstream_exemplar: ex.client_span.and_then(|s| TraceExemplar::of(s.context())),
        });
    }
}

/// A model server that reports another version than the one resolved: counted (with bounded
/// labels), journaled for `explain`, and logged.
pub struct Mismatch {
    /// Where `modelstamp_version_mismatch_total` lives.
    pub metrics: Metrics,
    /// Where `explain` reads mismatches from.
    pub journal: Arc<Journal>,
}

impl<C: ?Sized> Sink<C> for Mismatch {
    fn finish(&self, ex: &Exchange<'_, C>) {
        let Some(label) = ex.mismatch else { return };
        let (model, version) = (&**ex.served.model, &**ex.served.version);
        self.metrics.version_mismatch(model, version, label);
        // The journal keeps what the server said (bounded in length; its keys are bounded in
        // number), so `explain` names version 9, not the metric's `other`.
        let reported = ex.reported.map_or(label, |r| {
            r.char_indices().nth(64).map_or(r, |(end, _)| &r[..end])
        });
        self.journal.mismatch(model, version, reported);
        warn!(model, expected = version, reported = ex.reported, request_id = ?ex.request_id, "Model server reported another version than resolved.");
    }
}

/// Ends the upstream call's span and the server span with the exchange's outcome.
pub struct Spans;

impl<C: ?Sized> Sink<C> for Spans {
    fn finish(&self, ex: &Exchange<'_, C>) {
        if let Some(client) = ex.client_span {
            let error = ex
                .upstream_error
                .map(|_| ex.error.unwrap_or("upstream_error"));
            // The model server's own gRPC status (the sidecar's is not the upstream call's).
            let grpc = ex.grpc_status.filter(|_| ex.upstream_status.is_some());
            end_http_span(client, ex.upstream_status, error, |attrs| {
                if let Some(code) = grpc {
                    attrs.i64("rpc.grpc.status_code", i64::from(code));
                }
            });
        }
        end_http_span(ex.server_span, Some(ex.status), ex.error, |attrs| {
            if let Some(code) = ex.grpc_status {
                attrs.i64("rpc.grpc.status_code", i64::from(code));
            }
            if let Some(reported) = ex.reported {
                attrs.str("ml.model.reported_version", reported);
            }
            if let Some(g) = ex.gen_ai {
                attrs.str("gen_ai.operation.name", g.operation);
                if let Some(m) = g.request_model {
                    attrs.str("gen_ai.request.model", m);
                }
                if let Some(m) = g.response_model {
                    attrs.str("gen_ai.response.model", m);
                }
            }
        });
    }
}

/// One JSON line per exchange (and, on the log thread, the recent-requests index).
pub struct AccessLogSink(pub AccessLog);

impl<C: ?Sized> Sink<C> for AccessLogSink {
    fn finish(&self, ex: &Exchange<'_, C>) {
        let server = ex.server_span.context();
        self.0.send(AccessLine {
            time: ex.time,
            request_id: ex.request_id.clone(),
            trace_id: Some(server.trace_id()),
            span_id: Some(server.span_id()),
            route: ex.route.cloned(),
            model: ex.served.model.clone(),
            version: ex.served.version.clone(),
            lineage_id: ex.served.lineage_id.clone(),
            reported_version: ex.reported.map(str::to_string),
            client: ex.client,
            method: ex.method.clone(),
            path: ex.path.clone(),
            protocol: ex.protocol,
            status: ex.status,
            upstream_status: ex.upstream_status,
            grpc_status: ex.grpc_status,
            duration_ms: ex.total.as_secs_f64() * 1e3,
            upstream_ms: ex.upstream_latency.map(|d| d.as_secs_f64() * 1e3),
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out,
            error: ex.error,
        });
    }
}

/// Queues the copied bodies for the inspection worker (data quality, predictions, drift).
pub struct Inspection(pub Inspector);

impl<C: ?Sized> Sink<C> for Inspection {
    fn finish(&self, ex: &Exchange<'_, C>) {
        let Some(codec) = ex.inspect else { return };
        let request = ex.request_copy.filter(|_| codec.tabular()).cloned();
        let response = ex.response_copy.cloned();
        if request.is_none() && response.is_none() {
            return;
        }
        let sc = ex.server_span.context();
        self.0.submit(Job {
            profile: ex.served.profile.clone(),
            codec,
            request,
            response,
            request_framing: ex.request_framing,
            response_framing: ex.response_framing,
            trace: sc.is_valid().then(|| sc.clone()),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::config::{Inspect, Sampler, Traces};
    use crate::spans::Tracing;

    /// What an exchange borrows, owned by the test.
    struct Fixture {
        metrics: Metrics,
        registry: Registry,
        version: VersionMetrics,
        profile: Arc<Profile>,
        span: Span,
        names: [Arc<str>; 3],
        request_id: HeaderValue,
        method: Method,
        path: PathAndQuery,
    }

    fn fixture() -> Fixture {
        let (metrics, registry) = Metrics::new();
        let names: [Arc<str>; 3] = ["churn".into(), "2".into(), "ln_0123456789abcdef".into()];
        let traces = Traces {
            service_name: "test".into(),
            sampler: Sampler::AlwaysOn,
            export: None,
            queue: 1,
            batch: 1,
            lineage_url: String::new(),
            recent_requests: 0,
        };
        let tracing = Tracing::start(&traces, &metrics).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            version: metrics.version("churn", "2"),
            profile: Arc::new(Profile::new(
                names[0].clone(),
                names[1].clone(),
                names[2].clone(),
                None,
                &Inspect::default(),
            )),
            span: tracing.server_span(None, "POST churn".into(), None, |_| {}),
            metrics,
            registry,
            names,
            request_id: HeaderValue::from_static("req-1"),
            method: Method::POST,
            path: PathAndQuery::from_static("/v2/models/churn/infer"),
        }
    }

    fn exchange<'a, C>(f: &'a Fixture, ctx: &'a C, status: u16) -> Exchange<'a, C> {
        Exchange {
            ctx,
            served: ServedBy {
                model: &f.names[0],
                version: &f.names[1],
                lineage_id: &f.names[2],
                metrics: &f.version,
                profile: &f.profile,
            },
            route: None,
            request_id: &f.request_id,
            time: SystemTime::UNIX_EPOCH,
            client: SocketAddr::from(([127, 0, 0, 1], 4000)),
            method: &f.method,
            path: &f.path,
            protocol: "HTTP/1.1",
            status,
            upstream_status: Some(status),
            grpc_status: None,
            outcome: status,
            total: Duration::from_millis(3),
            upstream_latency: Some(Duration::from_millis(2)),
            upstream_error: (status >= 500).then_some(UpstreamErrorKind::Status5xx),
            request_error: None,
            error: (status >= 500).then_some("upstream_5xx"),
            bytes_in: 10,
            bytes_out: 20,
            server_span: &f.span,
            client_span: None,
            reported: None,
            mismatch: None,
            gen_ai: None,
            inspect: None,
            request_copy: None,
            response_copy: None,
            request_framing: Framing::Whole,
            response_framing: Framing::Whole,
        }
    }

    fn scrape(f: &Fixture) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &f.registry);
        out
    }

    /// (sink name, the context it saw, the status), in the order sinks saw them.
    type Seen = Arc<Mutex<Vec<(&'static str, u32, u16)>>>;

    /// Records what it sees into a shared list.
    struct Fake(&'static str, Seen);

    impl Sink<u32> for Fake {
        fn finish(&self, ex: &Exchange<'_, u32>) {
            if let Ok(mut seen) = self.1.lock() {
                seen.push((self.0, *ex.ctx, ex.status));
            }
        }
    }

    #[test]
    fn every_sink_sees_each_exchange_once_in_order_with_the_callers_context() {
        let f = fixture();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let observer = Observer::new(vec![
            Box::new(Fake("metrics", seen.clone())),
            Box::new(Fake("log", seen.clone())),
            Box::new(Fake("shadow", seen.clone())),
        ]);
        observer.finish(&exchange(&f, &7u32, 200));
        observer.finish(&exchange(&f, &8u32, 503));
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            [
                ("metrics", 7, 200),
                ("log", 7, 200),
                ("shadow", 7, 200),
                ("metrics", 8, 503),
                ("log", 8, 503),
                ("shadow", 8, 503),
            ]
        );
    }

    #[test]
    fn version_metrics_count_by_status_class_with_bytes_and_upstream_errors() {
        let f = fixture();
        let observer: Observer<()> = Observer::new(vec![Box::new(VersionMetricsSink)]);
        observer.finish(&exchange(&f, &(), 200));
        observer.finish(&exchange(&f, &(), 200));
        observer.finish(&exchange(&f, &(), 503));
        let text = scrape(&f);
        let has = |s: &str| assert!(text.contains(s), "{s} in\n{text}");
        has(r#"modelstamp_requests_total{model="churn",version="2",status_class="2xx"} 2"#);
        has(r#"modelstamp_requests_total{model="churn",version="2",status_class="5xx"} 1"#);
        has(r#"modelstamp_upstream_errors_total{model="churn",version="2",kind="5xx"} 1"#);
        has(r#"modelstamp_request_duration_seconds_count{model="churn",version="2"} 3"#);
        // A gRPC call counts by its outcome, not by the HTTP 200 it rode in.
        let unavailable = Exchange {
            grpc_status: Some(14),
            outcome: 503,
            ..exchange(&f, &(), 200)
        };
        observer.finish(&unavailable);
        assert_eq!(f.version.window.totals().errors, 2);
        let text = scrape(&f);
        for class in ["2xx", "5xx"] {
            let series = format!(
                r#"modelstamp_requests_total{{model="churn",version="2",status_class="{class}"}} 2"#
            );
            assert!(text.contains(&series), "{series} in\n{text}");
        }
    }

    #[test]
    fn a_mismatch_is_counted_and_journaled_only_when_labelled() {
        let f = fixture();
        let journal = Arc::new(Journal::default());
        let observer: Observer<()> = Observer::new(vec![Box::new(Mismatch {
            metrics: f.metrics.clone(),
            journal: journal.clone(),
        })]);
        let agreeing = Exchange {
            reported: Some("2"),
            ..exchange(&f, &(), 200)
        };
        observer.finish(&agreeing);
        assert!(!scrape(&f).contains("modelstamp_version_mismatch_total{"));
        let other = Exchange {
            reported: Some("9"),
            mismatch: Some("other"),
            ..exchange(&f, &(), 200)
        };
        observer.finish(&other);
        assert!(scrape(&f).contains(
            r#"modelstamp_version_mismatch_total{model="churn",expected="2",reported="other"} 1"#
        ));
        assert_eq!(
            journal.mismatches("churn", 0),
            [("2".to_string(), "9".to_string(), 1)],
            "the journal names what the server reported"
        );
    }

    #[test]
    fn success_means_2xx_and_no_error() {
        let f = fixture();
        assert!(exchange(&f, &(), 200).succeeded());
        assert!(!exchange(&f, &(), 503).succeeded());
        let aborted = Exchange {
            error: Some("client_abort"),
            ..exchange(&f, &(), 200)
        };
        assert!(!aborted.succeeded());
    }
}
