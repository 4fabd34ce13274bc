//! `upstream_peer` phase: send the request to the route's model server over pooled
//! connections (HTTP/1.1 from [`super::pool`], h2c with prior knowledge from hyper-util's
//! client; both over TLS for a route with `upstream_tls`), with connect and response timeouts,
//! and classify failures.

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use super::body::{BoxError, LimitedBody};
use super::ctx::ProxyRequest;
use super::error::{ClientFault, ProxyError};
use super::headers::{add_forwarded, refusal, remove_hop_by_hop};
use super::pool::{Pool, UpstreamBody};
use super::resolve::{BoxFuture, method_name, protocol_version};
use super::tls_clients::{Alpn, TlsClients};
use crate::inspect::Inspector;
use crate::observe::spans::{
    Attributes, SharedAttributes, Span, Tracing, end_http_span, propagation_headers,
};
use http::{HeaderName, HeaderValue};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
use crate::config::{UpstreamProtocol, UpstreamSettings};
use crate::observe::metrics::UpstreamErrorKind;

type HttpClient = Client<HttpConnector, LimitedBody>;

/// The upstream's response, how long its headers took, and the client span (ended with the body).
#[derive(Debug)]
pub struct Forwarded {
    /// The response, body still streaming (and holding its connection until it ends).
    pub response: Response<UpstreamBody>,
    /// Time until response headers.
    pub upstream_latency: Duration,
    /// The client span of the upstream call.
    pub span: Span,
}

/// Forwards requests over pooled connections. Cloned into every request's future, so it is
/// one reference count.
#[derive(Clone, Debug)]
pub struct Forward {
    inner: Arc<Clients>,
}

#[derive(Debug)]
struct Clients {
    http1: Pool,
    http2: HttpClient,
    /// h2 over TLS, per route TLS setting.
    https2: TlsClients<LimitedBody>,
    tracing: Tracing,
    inspector: Inspector,
}

impl Forward {
    /// Build the HTTP/1 pool and the h2 clients.
    pub fn new(settings: &UpstreamSettings, tracing: Tracing, inspector: Inspector) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let mut h2 = Client::builder(TokioExecutor::new());
        h2.pool_idle_timeout(settings.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            // As the HTTP/1.1 read buffer: per stream, at most this much of an answer is
            // received ahead of the client; the connection window lets 128 stalled streams
            // share one model-server connection before they hold up the others.
            .http2_initial_stream_window_size(crate::server::UPSTREAM_READ_BUF as u32)
            .http2_initial_connection_window_size(128 * crate::server::UPSTREAM_READ_BUF as u32);
        Self {
            inner: Arc::new(Clients {
                http1: Pool::new(settings.connect_timeout, settings.pool_idle_timeout),
                http2: h2.build(connector),
                https2: TlsClients::new(h2, Alpn::Http2, settings),
                tracing,
                inspector,
            }),
        }
    }
}

impl Service<ProxyRequest> for Forward {
    type Response = Forwarded;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Forwarded, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, pr: ProxyRequest) -> Self::Future {
        let this = self.inner.clone();
        Box::pin(async move { this.forward(pr).await })
    }
}

impl Clients {
    async fn forward(&self, pr: ProxyRequest) -> Result<Forwarded, ProxyError> {
        let ProxyRequest { req, ctx } = pr;
        if let Some(why) = refusal(&req) {
            return Err(ProxyError::BadRequest(why));
        }
        if req
            .extensions()
            .get::<super::resolve::Overloaded>()
            .is_some()
        {
            return Err(ProxyError::Overloaded);
        }
        let Some(state) = ctx.route() else {
            return Err(ProxyError::NoRoute);
        };
        let route = &state.route;
        let limit = ctx.snapshot.config.limits.max_request_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        let h2 = match route.upstream_protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            // gRPC needs HTTP/2; model servers' REST ports (MLServer's, KServe's, Triton's)
            // often speak HTTP/1.1 only, whatever the client spoke.
            UpstreamProtocol::Auto => ctx.grpc,
        };
        let (mut parts, body) = req.into_parts();
        // One Host upstream, the one the client addressed: an absolute-form target or HTTP/2
        // `:authority` (host and port, never userinfo) wins over a Host header (RFC 9112
        // §3.2.2). An h2c upstream gets no Host: its `:authority` is the model server's own
        // address, which the client pool connects to.
        let addressed = parts.uri.authority().map(|a| match a.port() {
            Some(port) => format!("{}:{port}", a.host()),
            None => a.host().to_string(),
        });
        if let Some(v) = addressed.and_then(|a| HeaderValue::from_str(&a).ok()) {
            parts.headers.insert(header::HOST, v);
        }
        if h2 {
            parts.headers.remove(header::HOST);
        }
        let (authority, pq) = target(route, &ctx, parts.uri.path_and_query());
        let pq = pq.unwrap_or_else(|| PathAndQuery::from_static("/"));
        let tls = route.upstream_tls.as_ref();
        // An HTTPS model server is addressed as its certificate names it: Host agrees with the
        // SNI (as `:authority` does on the h2 path), not with the sidecar the client addressed.
        // Without a `server_name`, the pool writes the upstream's own Host (its one rule for the
        // scheme's default port).
        if let Some(tls) = tls.filter(|_| !h2) {
            let named = (tls.server_name.as_ref())
                .and_then(|name| HeaderValue::from_str(&name.to_str()).ok());
            match named {
                Some(v) => parts.headers.insert(header::HOST, v),
                None => parts.headers.remove(header::HOST),
            };
        }
        // HTTP/1 requests carry the origin form (the pool knows the authority); h2 ones the
        // absolute URI, from which hyper takes `:authority`.
        parts.uri = if h2 {
            upstream_uri(tls.is_some(), authority, pq.clone())?
        } else {
            Uri::from(pq.clone())
        };
        parts.version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let stamped = |n: &HeaderName| ctx.snapshot.config.headers.contains(n);
        remove_hop_by_hop(&mut parts.headers, stamped);
        add_forwarded(&mut parts.headers, &ctx.client_ip, route.trusted, ctx.tls);
        let upstream_attrs = state.upstream_attrs(authority);
        let span = self.client_span(&ctx.span, &parts, route, authority, &pq, &upstream_attrs);
        inject(&mut parts.headers, &span);
        let body = LimitedBody::new(body, ctx.clone(), limit, self.inspector.clone());
        let req = Request::from_parts(parts, body);
        let start = Instant::now();
        let sent = async {
            if h2 {
                let sent = match tls {
                    None => self.http2.request(req).await,
                    Some(tls) => self.https2.get(tls).request(req).await,
                };
                match sent {
                    Ok(response) => Ok((response, None)),
                    Err(e) => Err(failure(e.is_connect(), e)),
                }
            } else {
                match self.http1.send(authority, tls, req).await {
                    Ok((response, lease)) => Ok((response, Some(lease))),
                    Err(e) => Err(failure(e.is_connect(), e)),
                }
            }
        };
        let result = tokio::time::timeout(route.response_timeout, sent).await;
        let upstream_latency = start.elapsed();
        let err = match result {
            Ok(Ok((response, lease))) => {
                ctx.responded.store(true, Ordering::Relaxed);
                let mut response = response.map(|b| UpstreamBody::new(b, lease));
                remove_hop_by_hop(response.headers_mut(), stamped);
                return Ok(Forwarded {
                    response,
                    upstream_latency,
                    span,
                });
            }
            Ok(Err((_, e))) if ctx.body_too_large.load(Ordering::Relaxed) => {
                tracing::debug!(error = %e, "Request body over the limit.");
                ProxyError::BodyTooLarge(limit)
            }
            // Who caused it is decided before anything counts it: a call that failed because
            // the client's body failed, or timed out while the body waited on the client, is
            // the client's error, never the version's.
            Ok(Err((_, source))) if ctx.client_fault.get().is_some() => ProxyError::ClientBody {
                fault: ctx
                    .client_fault
                    .get()
                    .copied()
                    .unwrap_or(ClientFault::Aborted),
                source,
            },
            // Only where HTTP/2 was forced on a call that did not need it: gRPC has no other way.
            Ok(Err((kind, source)))
                if kind == UpstreamErrorKind::Reset
                    && route.upstream_protocol == UpstreamProtocol::Http2
                    && !ctx.grpc =>
            {
                ProxyError::Upstream {
                    kind,
                    source: Box::new(NoH2c(source)),
                }
            }
            Ok(Err((kind, source))) => ProxyError::Upstream { kind, source },
            Err(elapsed) if ctx.awaiting_client.load(Ordering::Relaxed) => ProxyError::ClientBody {
                fault: ClientFault::Timeout,
                source: Box::new(elapsed),
            },
            Err(elapsed) => ProxyError::Upstream {
                kind: UpstreamErrorKind::Timeout,
                source: Box::new(elapsed),
            },
        };
        end_http_span(&span, None, Some(err.kind_str()), |_| {});
        Err(err)
    }

    fn client_span(
        &self,
        server: &Span,
        parts: &http::request::Parts,
        route: &crate::config::Route,
        authority: &Authority,
        pq: &PathAndQuery,
        upstream: &Arc<SharedAttributes>,
    ) -> Span {
        let attrs = |a: &mut Attributes| {
            a.str("http.request.method", parts.method.as_str());
            a.str_parts(
                "url.full",
                &[
                    route.upstream_scheme(),
                    "://",
                    authority.as_str(),
                    pq.as_str(),
                ],
            );
            a.str("network.protocol.version", protocol_version(parts.version));
        };
        self.tracing
            .client_span(server, method_name(&parts.method), Some(upstream), attrs)
    }
}

/// Replace the caller's trace context with the client span's, so the model server's own spans
/// nest under the upstream call.
fn inject(headers: &mut http::HeaderMap, span: &Span) {
    let (traceparent, tracestate) = propagation_headers(span.context());
    if let Ok(v) = HeaderValue::from_bytes(&traceparent) {
        headers.insert(TRACEPARENT, v);
    }
    headers.remove(TRACESTATE);
    if !tracestate.is_empty()
        && let Ok(v) = HeaderValue::from_str(&tracestate)
    {
        headers.insert(TRACESTATE, v);
    }
}

/// Where a request goes: a split backend's own model server, else the route's; a backend that
/// shares the route's model server gets the chosen version in its Open Inference path.
fn target<'a>(
    route: &'a crate::config::Route,
    ctx: &'a super::ctx::RequestCtx,
    pq: Option<&PathAndQuery>,
) -> (&'a Authority, Option<PathAndQuery>) {
    let Some(choice) = &ctx.resolved.split else {
        return (&route.upstream, pq.cloned());
    };
    let authority = choice.upstream.as_ref().unwrap_or(&route.upstream);
    let served = &ctx.resolved.served;
    let rewritten = pq
        .filter(|_| choice.version_path && served.is_known())
        .and_then(|pq| {
            crate::routing::split::versioned_path(pq.as_str(), &served.model, &served.version)
        })
        .and_then(|p| PathAndQuery::try_from(p).ok());
    (authority, rewritten.or_else(|| pq.cloned()))
}

fn upstream_uri(tls: bool, authority: &Authority, pq: PathAndQuery) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP })
        .authority(authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::Upstream {
            kind: UpstreamErrorKind::Connect,
            source: Box::new(e),
        })
}

/// An HTTP/2 exchange the model server cut before answering: what an HTTP/1.1-only server does
/// with the h2c preface.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} (the model server closed the HTTP/2 connection without answering; if it speaks HTTP/1.1 only, set upstream_protocol = \"http1\" on the route)"
)]
struct NoH2c(#[source] BoxError);

/// An upstream error with its kind.
fn failure(
    is_connect: bool,
    e: impl StdError + Send + Sync + 'static,
) -> (UpstreamErrorKind, BoxError) {
    (classify(&e, is_connect), Box::new(e))
}

/// Connect failures are `connect` unless they timed out; everything after connecting that
/// fails before response headers is a `reset`.
fn classify(e: &(dyn StdError + 'static), is_connect: bool) -> UpstreamErrorKind {
    let timed_out = chain(e).any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || s.to_string().contains("timed out")
    });
    match (is_connect, timed_out) {
        (_, true) => UpstreamErrorKind::Timeout,
        (true, false) => UpstreamErrorKind::Connect,
        (false, false) => UpstreamErrorKind::Reset,
    }
}

fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn StdError + 'static)| (*e).source())
}
