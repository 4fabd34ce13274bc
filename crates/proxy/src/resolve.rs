//! `request_filter` phase: load the snapshot once, resolve route, model and version, assign the
//! request ID, and hand a [`ProxyRequest`] down the stack.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tower::{Layer, Service};

use super::body::ClientBody;
use super::ctx::{ProxyRequest, RequestCtx};
use super::held::Held;

use super::grpc_lead;
use crate::inspect::grpc_infer;
use crate::inspect::{Codec, Framing};
use crate::observe::Telemetry;
use crate::observe::access_log::owned_path;
use crate::observe::spans::{Attributes, remote_parent};
use crate::observe::trace::parse_traceparent;
use crate::routing::{OpenInferencePath, Resolved, Snapshot, resolve, resolve_as};

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Answers held for clients that do not read are over `limits.max_held_response_bytes`: the
/// request is refused with 503 before it is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Overloaded;

/// Why a request's path has no canonical form; the request is refused with 400 before it is
/// forwarded (see [`super::headers::refusal`]).
#[derive(Debug, Clone, Copy)]
pub struct PathRefused(pub &'static str);

/// Put the request's path in its canonical form ([`crate::codec::path`]), the form that is
/// resolved, enforced, inspected, logged and forwarded; or mark it refused.
fn canonicalize<B>(req: &mut Request<B>) {
    let canonical = match crate::codec::path::canonical(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => return,
        Ok(Cow::Owned(path)) => path,
        Err(e) => {
            req.extensions_mut().insert(PathRefused(e.as_str()));
            return;
        }
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    // The canonical form only decodes characters a path may hold as they are, so it parses;
    // if it ever did not, the request is refused rather than sent somewhere else.
    let mut parts = req.uri().clone().into_parts();
    let uri = pq.parse::<http::uri::PathAndQuery>().ok().and_then(|pq| {
        parts.path_and_query = Some(pq);
        http::Uri::from_parts(parts).ok()
    });
    match uri {
        Some(uri) => *req.uri_mut() = uri,
        None => {
            let why = crate::codec::path::PathError::AmbiguousEscape.as_str();
            req.extensions_mut().insert(PathRefused(why));
        }
    }
}

/// Builds [`Resolve`] for each connection.
#[derive(Clone)]
pub struct ResolveLayer {
    snapshots: Arc<ArcSwap<Snapshot>>,
    telemetry: Arc<Telemetry>,
    held: Held,
    client: SocketAddr,
    /// The client's IP, formatted once per connection: `x-forwarded-for` and `client.address`.
    peer: HeaderValue,
    /// The connection is TLS: `x-forwarded-proto` and `url.scheme` say `https`.
    tls: bool,
}

impl ResolveLayer {
    /// A layer for one client connection.
    pub fn new(
        snapshots: Arc<ArcSwap<Snapshot>>,
        telemetry: Arc<Telemetry>,
        held: Held,
        client: SocketAddr,
        tls: bool,
    ) -> Self {
        Self {
            snapshots,
            telemetry,
            held,
            client,
            peer: super::headers::ip_value(client),
            tls,
        }
    }
}

impl<S> Layer<S> for ResolveLayer {
    type Service = Resolve<S>;
    fn layer(&self, inner: S) -> Resolve<S> {
        Resolve {
            snapshots: self.snapshots.clone(),
            held: self.held.clone(),
            conn: Conn {
                telemetry: self.telemetry.clone(),
                client: self.client,
                peer: self.peer.clone(),
                tls: self.tls,
            },
            inner,
        }
    }
}

/// Resolves each request against the current snapshot.
#[derive(Clone)]
pub struct Resolve<S> {
    snapshots: Arc<ArcSwap<Snapshot>>,
    held: Held,
    conn: Conn,
    inner: S,
}

/// What a request's context takes from its connection.
#[derive(Clone)]
struct Conn {
    telemetry: Arc<Telemetry>,
    client: SocketAddr,
    peer: HeaderValue,
    tls: bool,
}

impl<S, B> Service<Request<Incoming>> for Resolve<S>
where
    S: Service<ProxyRequest, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Call<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        canonicalize(&mut req);
        let snapshot = self.snapshots.load_full();
        if self.held.bytes() > snapshot.config.limits.max_held_response_bytes {
            req.extensions_mut().insert(Overloaded);
        }
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| crate::codec::grpc::is_grpc(v.as_bytes()));
        let (parts, body) = req.into_parts();
        if grpc && parts.uri.path() == grpc_infer::MODEL_INFER {
            // The model and version are in the message: read its first bytes, then resolve.
            // The service that was polled ready goes with the call; a clone stays (tower's
            // recipe; every inner service here is always ready).
            let ready = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, ready);
            let conn = self.conn.clone();
            // The exchange is timed from its arrival, read-ahead included.
            let arrived = (Instant::now(), SystemTime::now());
            return Call::Later {
                inner: Box::pin(async move {
                    let stall = snapshot.config.limits.body_read_timeout;
                    let (body, lead) = grpc_lead::read_leading(body, stall).await;
                    let oi = lead.as_ref().and_then(|l| {
                        Some(OpenInferencePath {
                            name: l.model_name.as_deref()?,
                            version: l.model_version.as_deref(),
                            infer: true,
                        })
                    });
                    let resolved = resolve_as(
                        &snapshot,
                        parts.uri.path(),
                        oi,
                        &parts.headers,
                        conn.client.ip(),
                    );
                    let mut parts = parts;
                    let limits = &snapshot.config.limits;
                    let body = grpc_lead::steer(
                        body,
                        lead.as_ref(),
                        &resolved,
                        &mut parts.headers,
                        limits,
                    )
                    .await;
                    let ctx = conn.context(&parts, snapshot, resolved, true, arrived);
                    let req = Request::from_parts(parts, body);
                    inner.call(ProxyRequest { req, ctx }).await
                }),
            };
        }
        let resolved = resolve(
            &snapshot,
            parts.uri.path(),
            &parts.headers,
            self.conn.client.ip(),
        );
        let arrived = (Instant::now(), SystemTime::now());
        let ctx = self.conn.context(&parts, snapshot, resolved, grpc, arrived);
        Call::Now {
            inner: self.inner.call(ProxyRequest {
                req: Request::from_parts(parts, ClientBody::Streaming(body)),
                ctx,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future; for a gRPC `ModelInfer`, read ahead first (boxed: the
    /// common path allocates nothing more).
    #[project = CallProj]
    pub enum Call<F: Future> {
        /// Resolved from the head alone.
        Now { #[pin] inner: F },
        /// Resolved once the message's leading fields are read.
        Later { inner: BoxFuture<F::Output> },
    }
}

impl<F: Future> Future for Call<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            CallProj::Now { inner } => inner.poll(cx),
            CallProj::Later { inner } => inner.as_mut().poll(cx),
        }
    }
}

impl Conn {
    /// The request's context: its ID, span and inspection choice, with what resolution found.
    fn context(
        &self,
        parts: &http::request::Parts,
        snapshot: Arc<Snapshot>,
        resolved: Resolved,
        grpc: bool,
        (start, time): (Instant, SystemTime),
    ) -> Arc<RequestCtx> {
        let trusted = resolved
            .route
            .and_then(|i| snapshot.routes.get(i))
            .is_some_and(|r| r.route.trusted);
        let request_id = if trusted {
            parts
                .headers
                .get(&snapshot.config.headers.request_id)
                .filter(|v| valid_request_id(v))
                .map(owned_header)
                .unwrap_or_else(new_request_id)
        } else {
            new_request_id()
        };
        let span = self.server_span(parts, &snapshot, &resolved, &request_id);
        // A gRPC call is read by the gRPC codec alone, and only the gRPC codec reads one.
        let inspect = (resolved.route)
            .and_then(|i| snapshot.routes.get(i))
            .and_then(|r| {
                let codec = Codec::choose(r.route.inspect.codec, parts.uri.path())
                    .filter(|c| grpc == (*c == Codec::OpenInferenceGrpc))?;
                let sampled = self.telemetry.inspector.sample(r.route.inspect.sample);
                sampled.then_some(codec)
            });
        Arc::new(RequestCtx {
            span,
            request_id,
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| http::uri::PathAndQuery::from_static("/"), owned_path),
            version: parts.version,
            client: self.client,
            client_ip: self.peer.clone(),
            tls: self.tls,
            start,
            time,
            grpc,
            framing: match grpc {
                true => Framing::Grpc(snapshot.config.limits.max_inspect_bytes),
                false => Framing::of(&parts.headers),
            },
            bytes_in: AtomicU64::new(0),
            body_too_large: AtomicBool::new(false),
            client_fault: std::sync::OnceLock::new(),
            awaiting_client: AtomicBool::new(false),
            responded: AtomicBool::new(false),
            gen_ai_request_model: std::sync::OnceLock::new(),
            inspect,
            request_copy: std::sync::OnceLock::new(),
            snapshot,
            resolved,
        })
    }

    /// The server span, with what resolution found as `ml.*` attributes.
    fn server_span(
        &self,
        parts: &http::request::Parts,
        snap: &Snapshot,
        resolved: &Resolved,
        request_id: &HeaderValue,
    ) -> crate::observe::spans::Span {
        let h = &parts.headers;
        let parent = h
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
            .and_then(|tp| {
                let state = h.get(TRACESTATE).and_then(|v| v.to_str().ok());
                remote_parent(&tp, state)
            });
        let route = resolved.route.and_then(|i| snap.routes.get(i));
        let served = &resolved.served;
        let host = h
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let route_name = route.map_or("unmatched", |r| r.route.name.as_str());
        let method = parts.method.as_str();
        let mut name = String::with_capacity(method.len() + 1 + route_name.len());
        name.push_str(method);
        name.push(' ');
        name.push_str(route_name);
        let attrs = |a: &mut Attributes| {
            a.str("http.request.method", parts.method.as_str());
            a.str("url.path", parts.uri.path());
            a.str("url.scheme", if self.tls { "https" } else { "http" });
            a.str("server.address", host.split(':').next().unwrap_or_default());
            a.str("network.protocol.version", protocol_version(parts.version));
            a.str("client.address", self.peer.to_str().unwrap_or_default());
            a.str(
                "modelstamp.request_id",
                request_id.to_str().unwrap_or_default(),
            );
            if let Some(r) = route {
                a.push(&r.span_route);
            }
        };
        self.telemetry
            .tracing
            .server_span(parent, name, Some(&served.span_attrs), attrs)
    }
}

/// A method's name, borrowed for the standard ones.
pub fn method_name(m: &http::Method) -> Cow<'static, str> {
    Cow::Borrowed(match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => return Cow::Owned(m.to_string()),
    })
}

/// `network.protocol.version` values.
pub fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

// hyper parses the request head without copying: the URI and header values are slices of the
// connection's read buffer (8 KiB or more). What outlives the exchange (the access-log line,
// queued for the log thread) takes a copy (`owned_path`, `owned_header`), or every queued line
// would keep a whole read buffer allocated until the log thread has written it.

/// A header value in storage of its own.
fn owned_header(v: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone())
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
}

/// An unpredictable 32-hex-char request ID: std's keyed hasher (`RandomState`: SipHash-1-3, a
/// keyed pseudo-random function, under a 128-bit key from the OS's random source) over a
/// counter and a half number: a keyed PRF in counter mode. Each input is used once, so IDs repeat
/// only if both 64-bit halves collide; the key makes one ID say nothing about the next (the
/// previous generator, splitmix64 over a counter, could be inverted from a single response).
/// Two short hashes, no lock, no system call after the first.
pub fn new_request_id() -> HeaderValue {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let key = KEY.get_or_init(Default::default);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |which: u8| {
        let mut h = key.build_hasher();
        h.write_u64(n);
        h.write_u8(which);
        h.finish()
    };
    let mut id = [0u8; 32];
    crate::observe::trace::hex_into(&mut id[..16], &half(0).to_be_bytes());
    crate::observe::trace::hex_into(&mut id[16..], &half(1).to_be_bytes());
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// The future type the outer layers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_outlives_the_request_does_not_share_the_read_buffer() {
        // As hyper builds them: slices of the connection's read buffer.
        let buf = bytes::Bytes::from(
            b"POST /v2/models/churn/infer?x=1 HTTP/1.1\r\nx-request-id: abc-123\r\n".repeat(100),
        );
        let inside = |p: *const u8| buf.as_ptr_range().contains(&p);
        let uri = http::Uri::from_maybe_shared(buf.slice(5..31)).unwrap();
        let pq = uri.path_and_query().unwrap();
        let id = HeaderValue::from_maybe_shared(buf.slice(56..63)).unwrap();
        assert!(inside(pq.as_str().as_ptr()) && inside(id.as_bytes().as_ptr()));
        let (pq2, id2) = (owned_path(pq), owned_header(&id));
        assert_eq!(
            (pq2.as_str(), id2.as_bytes()),
            ("/v2/models/churn/infer?x=1", &b"abc-123"[..])
        );
        assert!(!inside(pq2.as_str().as_ptr()), "the path is a copy");
        assert!(!inside(id2.as_bytes().as_ptr()), "the request ID is a copy");
    }

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|v| v.len() == 32 && valid_request_id(v)));
    }

    /// Nothing of one ID carries into the next: consecutive IDs share no half, and their bits
    /// differ in about half the places (a counter or an invertible mix would not).
    #[test]
    fn request_ids_are_unpredictable_from_the_previous_one() {
        let ids: Vec<u128> = (0..2_000)
            .map(|_| {
                let id = new_request_id();
                u128::from_str_radix(id.to_str().unwrap_or("0"), 16).unwrap_or(0)
            })
            .collect();
        let mut flipped = 0u64;
        for w in ids.windows(2) {
            assert_ne!(w[0] >> 64, w[1] >> 64, "the first half repeats");
            assert_ne!(w[0] as u64, w[1] as u64, "the second half repeats");
            flipped += u64::from((w[0] ^ w[1]).count_ones());
        }
        let mean = flipped as f64 / (ids.len() - 1) as f64;
        assert!((60.0..68.0).contains(&mean), "{mean} of 128 bits differ");
    }
}
