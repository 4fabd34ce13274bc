//! `logging` phase: times the exchange, turns errors into responses, copies a bounded prefix of
//! the response (to read the version the model server reports), and emits the request's
//! telemetry exactly once, when the response body ends or is dropped, success or failure.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::shadow::Shadower;
use crate::inspect::worker::{BodyCopy, Copied};
use crate::inspect::{Job, Skip, open_inference, openai};
use bytes::Bytes;
use http::{Response, header};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::{debug, warn};

use super::body::{BoxError, ProxyBody};
use super::ctx::{ProxyRequest, RequestCtx};
use super::error::{ProxyError, error_response};
use super::forward::{Forwarded, end_span};
use super::pool::UpstreamBody;
use super::resolve::BoxFuture;
use crate::observe::access_log::AccessLine;
use crate::observe::exemplar::TraceExemplar;
use crate::observe::metrics::{Recorded, RequestErrorKind, UpstreamErrorKind};
use crate::observe::{RequestOutcome, Telemetry};

/// Status logged when the client left before a response was sent (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// Adds [`Tee`].
#[derive(Clone)]
pub struct TeeLayer {
    telemetry: Arc<Telemetry>,
    shadow: Shadower,
}

impl TeeLayer {
    /// Emit into these sinks; mirror to shadows with `shadow`.
    pub fn new(telemetry: Arc<Telemetry>, shadow: Shadower) -> Self {
        Self { telemetry, shadow }
    }
}

impl<S> Layer<S> for TeeLayer {
    type Service = Tee<S>;
    fn layer(&self, inner: S) -> Tee<S> {
        Tee {
            telemetry: self.telemetry.clone(),
            shadow: self.shadow.clone(),
            inner,
        }
    }
}

/// Observes each exchange.
#[derive(Clone)]
pub struct Tee<S> {
    telemetry: Arc<Telemetry>,
    shadow: Shadower,
    inner: S,
}

impl<S> Service<ProxyRequest> for Tee<S>
where
    S: Service<ProxyRequest, Response = Forwarded, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ObservedBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The forward service is always ready (a pooled client); map its error type away.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, pr: ProxyRequest) -> Self::Future {
        // Boxed: the response body is moved several times on its way out, and Pending is most of it.
        let mut pending = Box::new(Pending::new(
            pr.ctx.clone(),
            self.telemetry.clone(),
            self.shadow.clone(),
        ));
        let fut = self.inner.call(pr);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(fwd) => {
                    let response = pending.upstream(fwd);
                    response.map(ProxyBody::Upstream)
                }
                Err(err) => {
                    pending.failed(&err);
                    error_response(&err, pending.ctx.grpc, &pending.ctx.request_id)
                }
            };
            pending.status = resp.status().as_u16();
            Ok(resp.map(|inner| ObservedBody {
                inner,
                pending: Some(pending),
            }))
        })
    }
}

/// Everything known about an exchange until it is emitted; emitting on drop guarantees one
/// outcome per request even when the client goes away mid-flight.
struct Pending {
    ctx: Arc<RequestCtx>,
    client_span: Option<crate::observe::spans::Span>,
    telemetry: Arc<Telemetry>,
    shadow: Shadower,
    status: u16,
    upstream_status: Option<u16>,
    upstream_latency: Option<Duration>,
    upstream_error: Option<UpstreamErrorKind>,
    request_error: Option<RequestErrorKind>,
    error: Option<&'static str>,
    reported: Option<String>,
    bytes_out: u64,
    tee: Option<BodyCopy>,
    /// The tee holds an SSE stream, of which a prefix is enough to read the model.
    tee_sse: bool,
    /// The SSE copy stopped at the cap (the prefix is read, the usage is not).
    tee_truncated: bool,
    gen_ai_response_model: Option<String>,
    finished: bool,
}

impl Pending {
    fn new(ctx: Arc<RequestCtx>, telemetry: Arc<Telemetry>, shadow: Shadower) -> Self {
        ctx.resolved.served.metrics.in_flight.inc();
        Self {
            ctx,
            client_span: None,
            telemetry,
            shadow,
            status: 0,
            upstream_status: None,
            upstream_latency: None,
            upstream_error: None,
            request_error: None,
            error: None,
            reported: None,
            bytes_out: 0,
            tee: None,
            tee_sse: false,
            tee_truncated: false,
            gen_ai_response_model: None,
            finished: false,
        }
    }

    /// Take over the client span and note what the upstream answered; returns the response.
    fn upstream(&mut self, fwd: Forwarded) -> Response<UpstreamBody> {
        let Forwarded {
            response,
            upstream_latency,
            span,
        } = fwd;
        self.client_span = Some(span);
        let status = response.status();
        self.upstream_status = Some(status.as_u16());
        self.upstream_latency = Some(upstream_latency);
        if status.is_server_error() {
            self.upstream_error = Some(UpstreamErrorKind::Status5xx);
            self.error = Some("upstream_5xx");
        }
        let headers = response.headers();
        if let Some(name) = self
            .ctx
            .route()
            .and_then(|r| r.route.version_header.as_ref())
        {
            self.reported = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        let json = headers.get(header::CONTENT_TYPE).is_none_or(|v| {
            v.as_bytes()
                .windows(4)
                .any(|w| w.eq_ignore_ascii_case(b"json"))
        });
        let sse = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        // Open Inference responses carry `model_version` in the body, OpenAI-compatible ones
        // `model` (JSON, or in each SSE event): keep a bounded copy.
        let oi = self.reported.is_none() && self.ctx.resolved.open_inference_infer && json;
        let openai = self.ctx.resolved.openai.is_some() && (json || sse);
        let inspect = self.ctx.inspect.is_some() && (json || sse);
        let shadow = Shadower::wanted(&self.ctx) && json;
        if status.is_success() && (oi || openai || inspect || shadow) {
            let cap = self.ctx.snapshot.config.limits.max_inspect_bytes;
            self.tee = Some(self.telemetry.inspector.copy(cap));
            self.tee_sse = sse;
        }
        response
    }

    fn failed(&mut self, err: &ProxyError) {
        self.upstream_error = err.upstream_kind();
        self.request_error = err.request_kind();
        self.error = Some(err.kind_str());
    }

    fn data(&mut self, data: &Bytes) {
        self.bytes_out += data.len() as u64;
        let Some(copy) = &mut self.tee else { return };
        if self.tee_truncated {
            return;
        }
        if let Err(why) = copy.push(data) {
            if self.tee_sse {
                // The first events name the model: keep the prefix, stop copying.
                copy.push_prefix(data);
                self.tee_truncated = true;
            } else {
                self.tee = None;
            }
            if self.ctx.inspect.is_some() {
                self.telemetry.inspector.skip(why);
            }
        }
    }

    fn emit(&mut self) {
        let ctx = self.ctx.clone();
        let served = &ctx.resolved.served;
        if self.status == 0 {
            self.status = CLIENT_CLOSED;
        }
        if !self.finished && self.error.is_none() {
            self.request_error = Some(RequestErrorKind::ClientAbort);
            self.error = Some("client_abort");
        }
        let copy = self.tee.take().filter(|_| self.finished || self.tee_sse);
        if let Some(copy) = &copy {
            self.inspect(copy.bytes());
        }
        let response = copy
            .filter(|_| self.finished && !self.tee_truncated)
            .map(BodyCopy::freeze);
        let request = self.ctx.request_copy.get().cloned();
        if Shadower::wanted(&self.ctx) {
            let ok = (200..300).contains(&self.status) && self.error.is_none();
            self.shadow
                .mirror(&self.ctx, ok, request.clone(), response.clone());
        }
        self.submit(request, response);
        if let Some(reported) = &self.reported {
            self.check_mismatch(reported);
        }
        served.metrics.in_flight.dec();
        let total = ctx.start.elapsed();
        let server = ctx.span.context();
        let upstream_exemplar = self
            .client_span
            .as_ref()
            .and_then(|span| TraceExemplar::of(span.context()));
        if let Some(client) = self.client_span.take() {
            let error = self
                .upstream_error
                .map(|_| self.error.unwrap_or("upstream_error"));
            end_span(&client, self.upstream_status, error, |_| {});
        }
        let gen_ai_response_model = self.gen_ai_response_model.take();
        end_span(&ctx.span, Some(self.status), self.error, |attrs| {
            if let Some(reported) = &self.reported {
                attrs.str("ml.model.reported_version", reported);
            }
            if let Some(op) = ctx.resolved.openai {
                attrs.str("gen_ai.operation.name", op);
                if let Some(m) = ctx.gen_ai_request_model.get() {
                    attrs.str("gen_ai.request.model", m);
                }
                if let Some(m) = &gen_ai_response_model {
                    attrs.str("gen_ai.response.model", m);
                }
            }
        });
        let line = AccessLine {
            time: ctx.time,
            request_id: ctx.request_id.clone(),
            trace_id: Some(server.trace_id()),
            span_id: Some(server.span_id()),
            route: ctx.route().map(|r| r.name.clone()),
            model: served.model.clone(),
            version: served.version.clone(),
            lineage_id: served.lineage_id.clone(),
            reported_version: self.reported.take(),
            client: ctx.client,
            method: ctx.method.clone(),
            path: ctx.path.clone(),
            protocol: protocol(ctx.version),
            status: self.status,
            upstream_status: self.upstream_status,
            duration_ms: total.as_secs_f64() * 1e3,
            upstream_ms: self.upstream_latency.map(|d| d.as_secs_f64() * 1e3),
            bytes_in: ctx.bytes_in(),
            bytes_out: self.bytes_out,
            error: self.error,
        };
        let recorded = Recorded {
            status: self.status,
            total_seconds: total.as_secs_f64(),
            upstream_seconds: self.upstream_latency.map(|d| d.as_secs_f64()),
            upstream_error: self.upstream_error,
            request_error: self.request_error,
            bytes_in: line.bytes_in,
            bytes_out: self.bytes_out,
            exemplar: TraceExemplar::of(server),
            upstream_exemplar,
        };
        RequestOutcome { line, recorded }.emit(&served.metrics, &self.telemetry);
    }

    /// Read what the copied response body says (after the exchange, never on the byte path).
    fn inspect(&mut self, body: &[u8]) {
        if self.ctx.resolved.openai.is_some() {
            self.gen_ai_response_model = if self.tee_sse {
                openai::sse_model(body)
            } else {
                openai::json_model(body)
            };
        } else {
            match open_inference::reported_version(body) {
                Ok(v) => self.reported = v,
                Err(e) => {
                    debug!(error = %e, "Response body is not Open Inference JSON.");
                    // Counted here only when the inspector will not read (and count) it.
                    if self.ctx.inspect.is_none() {
                        self.telemetry.inspector.skip(Skip::Unparseable);
                    }
                }
            }
        }
    }

    /// Queue what was copied for the inspector (after the response went out).
    fn submit(&self, request: Option<Copied>, response: Option<Copied>) {
        let Some(codec) = self.ctx.inspect else {
            return;
        };
        let request = request.filter(|_| codec.tabular());
        if request.is_none() && response.is_none() {
            return;
        }
        let sc = self.ctx.span.context().clone();
        self.telemetry.inspector.submit(Job {
            profile: self.ctx.resolved.served.profile.clone(),
            codec,
            request,
            response,
            sse: self.tee_sse,
            trace: sc.is_valid().then_some(sc),
        });
    }

    fn check_mismatch(&self, reported: &str) {
        let served = &self.ctx.resolved.served;
        if !served.is_known() || reported == &*served.version {
            return;
        }
        // Label values must be bounded: a version the registry does not know becomes `other`.
        let known = self
            .ctx
            .snapshot
            .models
            .get(&*served.model)
            .is_some_and(|m| m.versions.contains_key(reported));
        let label = if known { reported } else { "other" };
        self.telemetry
            .metrics
            .version_mismatch(&served.model, &served.version, label);
        self.telemetry
            .journal
            .mismatch(&served.model, &served.version, label);
        warn!(model = %served.model, expected = %served.version, reported, request_id = ?self.ctx.request_id, "Model server reported another version than resolved.");
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.emit();
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The response body as sent to the client: forwarded frame by frame, unchanged.
pub struct ObservedBody {
    inner: ProxyBody,
    pending: Option<Box<Pending>>,
}

impl ObservedBody {
    fn finish(&mut self, error: Option<(&'static str, UpstreamErrorKind)>) {
        if let Some(mut p) = self.pending.take() {
            p.finished = error.is_none();
            if let Some((kind, upstream)) = error {
                p.error = Some(kind);
                p.upstream_error = Some(upstream);
            }
            drop(p);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(p)) = (frame.data_ref(), this.pending.as_mut()) {
                    p.data(data);
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                debug!(error = %e, "Upstream body failed mid-stream; aborting the response.");
                this.finish(Some(("upstream_reset", UpstreamErrorKind::Reset)));
            }
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Bodies hyper never polls (HEAD, 204, empty errors) end here, complete.
        if self.inner.is_end_stream() {
            self.finish(None);
        }
    }
}
