//! `logging` phase: times the exchange, turns errors into responses, copies a bounded prefix of
//! the response (to read the version the model server reports), and, exactly once, when the
//! response body ends or is dropped (success or failure), builds the [`Exchange`] and hands it
//! to the [`Observer`], which decides what is observed of it. Nothing here writes a metric, a
//! span or a log line itself.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::codec;
use crate::inspect::worker::BodyCopy;
use crate::inspect::{Framing, Inspector, Skip, grpc_infer, open_inference, openai};
use bytes::Bytes;
use http::{Response, header};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::debug;

use super::body::{BoxError, ProxyBody};
use super::ctx::{ProxyRequest, RequestCtx};
use super::error::{ProxyError, error_response};
use super::forward::Forwarded;
use super::held::Held;
use super::pool::UpstreamBody;
use super::resolve::BoxFuture;
use crate::observe::exchange::{Exchange, GenAi, Observer, ServedBy};
use crate::observe::metrics::{RequestErrorKind, UpstreamErrorKind};

/// Status logged when the client left before a response was sent (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// Adds [`Tee`].
#[derive(Clone)]
pub struct TeeLayer {
    observer: Arc<Observer<RequestCtx>>,
    inspector: Inspector,
    held: Held,
}

impl TeeLayer {
    /// Hand finished exchanges to `observer`; copy bodies within `inspector`'s budget; count
    /// what clients have not read yet in `held`.
    pub fn new(observer: Arc<Observer<RequestCtx>>, inspector: Inspector, held: Held) -> Self {
        Self {
            observer,
            inspector,
            held,
        }
    }
}

impl<S> Layer<S> for TeeLayer {
    type Service = Tee<S>;
    fn layer(&self, inner: S) -> Tee<S> {
        Tee {
            observer: self.observer.clone(),
            inspector: self.inspector.clone(),
            held: self.held.clone(),
            inner,
        }
    }
}

/// Observes each exchange.
#[derive(Clone)]
pub struct Tee<S> {
    observer: Arc<Observer<RequestCtx>>,
    inspector: Inspector,
    held: Held,
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
            self.observer.clone(),
            self.inspector.clone(),
        ));
        let fut = self.inner.call(pr);
        let held = self.held.clone();
        Box::pin(async move {
            let resp = match fut.await {
                Ok(fwd) => {
                    let response = pending.upstream(fwd);
                    response.map(ProxyBody::Upstream)
                }
                Err(err) => {
                    pending.failed(&err);
                    let mut resp = error_response(&err, pending.ctx.grpc, &pending.ctx.request_id);
                    // After an ambiguous request or a body read only in part, where the next
                    // request on the connection would start is unknown: close it (HTTP/1).
                    if err.ends_connection() && pending.ctx.version < http::Version::HTTP_2 {
                        resp.headers_mut()
                            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    resp
                }
            };
            pending.status = resp.status().as_u16();
            Ok(resp.map(|inner| ObservedBody {
                inner,
                pending: Some(pending),
                held,
            }))
        })
    }
}

/// Everything known about an exchange until it is observed; observing on drop guarantees one
/// outcome per request even when the client goes away mid-flight.
struct Pending {
    ctx: Arc<RequestCtx>,
    client_span: Option<crate::observe::spans::Span>,
    observer: Arc<Observer<RequestCtx>>,
    inspector: Inspector,
    status: u16,
    upstream_status: Option<u16>,
    upstream_latency: Option<Duration>,
    upstream_error: Option<UpstreamErrorKind>,
    request_error: Option<RequestErrorKind>,
    error: Option<&'static str>,
    /// The model server answered a gRPC call (HTTP 200, `application/grpc`): its outcome is
    /// the `grpc-status` of the trailers (or of a trailers-only head).
    grpc_answer: bool,
    /// The `grpc-status` the client got.
    grpc_status: Option<u16>,
    /// What the exchange counts as when the sidecar answered a gRPC call itself.
    outcome: Option<u16>,
    reported: Option<String>,
    bytes_out: u64,
    tee: Option<BodyCopy>,
    /// The tee holds an SSE stream, of which a prefix is enough to read the model.
    tee_sse: bool,
    /// The tee holds a gRPC `ModelInferResponse`, whose first fields name the version.
    tee_grpc: bool,
    /// How the response body is laid out.
    framing: Framing,
    /// The SSE copy stopped at the cap (the prefix is read, the usage is not).
    tee_truncated: bool,
    gen_ai_response_model: Option<String>,
    finished: bool,
}

impl Pending {
    fn new(
        ctx: Arc<RequestCtx>,
        observer: Arc<Observer<RequestCtx>>,
        inspector: Inspector,
    ) -> Self {
        ctx.resolved.served.metrics.in_flight.inc();
        Self {
            ctx,
            client_span: None,
            observer,
            inspector,
            status: 0,
            upstream_status: None,
            upstream_latency: None,
            upstream_error: None,
            request_error: None,
            error: None,
            grpc_answer: false,
            grpc_status: None,
            outcome: None,
            reported: None,
            bytes_out: 0,
            tee: None,
            tee_sse: false,
            tee_grpc: false,
            framing: Framing::Whole,
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
        if self.ctx.grpc
            && status == http::StatusCode::OK
            && headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| codec::grpc::is_grpc(v.as_bytes()))
        {
            self.grpc_answer = true;
            self.grpc_status = grpc_status(headers);
        }
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
        let cap = self.ctx.snapshot.config.limits.max_inspect_bytes;
        self.framing = match self.grpc_answer {
            true => Framing::Grpc(cap),
            false => Framing::of(headers),
        };
        let binary = matches!(self.framing, Framing::JsonHead(_));
        let json = binary
            || headers.get(header::CONTENT_TYPE).is_none_or(|v| {
                v.as_bytes()
                    .windows(4)
                    .any(|w| w.eq_ignore_ascii_case(b"json"))
            });
        let sse = self.framing == Framing::Sse;
        // Open Inference responses carry `model_version` in the body (in the JSON head of a
        // binary one), OpenAI-compatible ones `model` (JSON, or in each SSE event): keep a
        // bounded copy.
        let oi = self.reported.is_none() && self.ctx.resolved.open_inference_infer && json;
        let openai = self.ctx.resolved.openai.is_some() && (json || sse);
        // A gRPC `ModelInferResponse` names its version in its first fields.
        let grpc = self.grpc_answer && self.ctx.path.path() == grpc_infer::MODEL_INFER;
        let inspect = self.ctx.inspect.is_some() && (json || sse || grpc);
        let shadow = super::shadow::Shadower::wanted(&self.ctx) && (json || grpc);
        let grpc_version = grpc && self.reported.is_none();
        if status.is_success() && (oi || openai || inspect || shadow || grpc_version) {
            self.tee = Some(self.inspector.copy(cap));
            self.tee_sse = sse;
            self.tee_grpc = grpc;
        }
        response
    }

    fn failed(&mut self, err: &ProxyError) {
        self.upstream_error = err.upstream_kind();
        self.request_error = err.request_kind();
        self.error = Some(err.kind_str());
        if self.ctx.grpc {
            // The answer is HTTP 200 with this code; it counts as what an HTTP client got.
            let (status, code) = err.status_and_grpc();
            self.grpc_status = Some(code);
            self.outcome = Some(status.as_u16());
        }
    }

    /// A gRPC call's outcome, once its body ended: the status the server caused is the
    /// version's error, counted as `upstream_errors{kind="grpc"}`; one ended without a status
    /// counts as `UNKNOWN`, as gRPC clients take it.
    fn grpc_outcome(&mut self) -> Option<u16> {
        if !self.grpc_answer || !self.finished || self.error.is_some() {
            return None;
        }
        let code = self.grpc_status.unwrap_or(2);
        if codec::grpc::server_fault(code) {
            self.upstream_error = Some(UpstreamErrorKind::Grpc);
            self.error = Some("upstream_grpc");
        }
        Some(codec::grpc::http_status(code))
    }

    fn data(&mut self, data: &Bytes) {
        self.bytes_out += data.len() as u64;
        let Some(copy) = &mut self.tee else { return };
        if self.tee_truncated {
            return;
        }
        if let Err(why) = copy.push(data) {
            let head_first =
                self.tee_sse || self.tee_grpc || matches!(self.framing, Framing::JsonHead(_));
            if head_first {
                // The first events (a gRPC answer's first fields, a binary answer's JSON head)
                // name the model or version: keep the prefix, stop copying.
                copy.push_prefix(data);
                self.tee_truncated = true;
            } else {
                self.tee = None;
            }
            if self.ctx.inspect.is_some() {
                self.inspector.skip(why);
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
        let outcome = (self.grpc_outcome())
            .or(self.outcome)
            .unwrap_or(self.status);
        let copy = self.tee.take().filter(|_| self.finished || self.tee_sse);
        if let Some(copy) = &copy {
            self.inspect(copy.bytes());
        }
        // A gRPC answer holds a response message only when its status is OK.
        let grpc_ok = !self.grpc_answer || self.grpc_status == Some(0);
        let response = copy
            .filter(|_| self.finished && !self.tee_truncated && grpc_ok)
            .map(BodyCopy::freeze);
        served.metrics.in_flight.dec();
        let client_span = self.client_span.take();
        let reported = self.reported.as_deref();
        let exchange = Exchange {
            ctx: &*ctx,
            served: ServedBy {
                model: &served.model,
                version: &served.version,
                lineage_id: &served.lineage_id,
                metrics: &served.metrics,
                profile: &served.profile,
            },
            route: ctx.route().map(|r| &r.name),
            request_id: &ctx.request_id,
            time: ctx.time,
            client: ctx.client,
            method: &ctx.method,
            path: &ctx.path,
            protocol: protocol(ctx.version),
            status: self.status,
            upstream_status: self.upstream_status,
            grpc_status: self.grpc_status,
            outcome,
            total: ctx.start.elapsed(),
            upstream_latency: self.upstream_latency,
            upstream_error: self.upstream_error,
            request_error: self.request_error,
            error: self.error,
            bytes_in: ctx.bytes_in(),
            bytes_out: self.bytes_out,
            server_span: &ctx.span,
            client_span: client_span.as_ref(),
            reported,
            mismatch: reported.and_then(|r| mismatch_label(&ctx, r)),
            gen_ai: ctx.resolved.openai.map(|operation| GenAi {
                operation,
                request_model: ctx.gen_ai_request_model.get().map(String::as_str),
                response_model: self.gen_ai_response_model.as_deref(),
            }),
            inspect: ctx.inspect,
            request_copy: ctx.request_copy.get(),
            response_copy: response.as_ref(),
            request_framing: ctx.framing,
            response_framing: self.framing,
        };
        self.observer.finish(&exchange);
    }

    /// Read what the copied response body says (after the exchange, never on the byte path).
    fn inspect(&mut self, body: &[u8]) {
        if self.tee_grpc {
            // A version named by the route's version header stands.
            if self.reported.is_none() {
                match grpc_infer::reported_version(body) {
                    Ok(v) => self.reported = v,
                    Err(e) => debug!(error = %e, "gRPC response not read for its version."),
                }
            }
        } else if self.ctx.resolved.openai.is_some() {
            self.gen_ai_response_model = if self.tee_sse {
                openai::sse_model(body)
            } else {
                openai::json_model(body)
            };
        } else if self.reported.is_none() {
            // A binary (Triton) answer names its version in its JSON head.
            let json = self.framing.json(body);
            match json.and_then(|j| open_inference::reported_version(j).map_err(Into::into)) {
                Ok(v) => self.reported = v,
                Err(e) => {
                    debug!(error = %e, "Response body is not Open Inference JSON.");
                    // Counted here only when the inspector will not read (and count) it.
                    if self.ctx.inspect.is_none() {
                        self.inspector.skip(Skip::Unparseable);
                    }
                }
            }
        }
    }
}

/// The code of a `grpc-status` header or trailer.
fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    (headers.get("grpc-status")).and_then(|v| codec::grpc::parse(v.as_bytes()))
}

/// The bounded label of a reported version that is not the one served: the reported version
/// when the registry knows it, else `other` (label values must stay bounded); `None` when they
/// agree or the served version itself is unknown.
fn mismatch_label<'a>(ctx: &RequestCtx, reported: &'a str) -> Option<&'a str> {
    let served = &ctx.resolved.served;
    if !served.is_known() || reported == &*served.version {
        return None;
    }
    let known = (ctx.snapshot.models.get(&*served.model))
        .is_some_and(|m| m.versions.contains_key(reported));
    Some(if known { reported } else { "other" })
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
    held: Held,
}

impl ObservedBody {
    fn finish(&mut self, error: Option<(&'static str, UpstreamErrorKind)>) {
        if let Some(mut p) = self.pending.take() {
            p.finished = error.is_none();
            if let Some((kind, upstream)) = error {
                // The upstream stream broke because the client's body failed (it hung up,
                // sent a bad chunk, or stalled): the client's error, not the version's.
                if let Some(fault) = p.ctx.client_fault.get() {
                    p.request_error = Some(fault.request_kind());
                    p.error = Some(fault.request_kind().as_str());
                } else {
                    p.error = Some(kind);
                    p.upstream_error = Some(upstream);
                }
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
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(p)) = (frame.data_ref(), this.pending.as_mut()) {
                    p.data(data);
                }
                if let Some(data) = frame.data_mut() {
                    *data = this.held.account(std::mem::take(data));
                }
                // No stamp rides in trailers: the model server's would contradict the head's.
                if let (Some(trailers), Some(p)) = (frame.trailers_mut(), this.pending.as_mut()) {
                    super::stamp::strip_stamps(trailers, &p.ctx.snapshot.config.headers);
                    if p.grpc_answer {
                        p.grpc_status = grpc_status(trailers).or(p.grpc_status);
                    }
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
