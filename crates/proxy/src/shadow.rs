//! Shadow traffic: once a sampled exchange has been answered, its request is sent again to the
//! route's shadow version, off the client's path (a spawned task, bounded in number), and the
//! shadow's predictions are compared with the primary's. The client never waits for it and
//! never sees it; failures and timeouts are counted, nothing else.
//!
//! A REST call names the shadow version in its path (`/versions/{v}`); a gRPC `ModelInfer` call
//! in its message's `model_version` (a compressed message is sent inflated), over h2, and its
//! outcome is its `grpc-status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::debug;

use super::ctx::RequestCtx;
use super::tls_clients::{Alpn, TlsClients};
use crate::canary::shadow::{Outcome, ShadowSkip, ShadowStats, compare_predictions};
use crate::config::UpstreamSettings;
use crate::inspect::codec::Predicted;
use crate::inspect::worker::Copied;
use crate::inspect::{Codec, Framing, grpc_infer};
use crate::observe::exchange::{Exchange, Sink};
use crate::routing::split;

/// Header marking a mirrored call, so model servers and logs can tell it apart.
pub const SHADOW_HEADER: &str = "x-modelstamp-shadow";

/// Sends shadow calls; cheap to clone (one reference count: every request's response state
/// holds one).
#[derive(Clone, Debug)]
pub struct Shadower(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    client: Client<HttpConnector, Full<Bytes>>,
    /// For routes whose model servers are reached over HTTPS.
    https: TlsClients<Full<Bytes>>,
    /// gRPC calls: h2 with prior knowledge.
    h2: Client<HttpConnector, Full<Bytes>>,
    /// gRPC calls to model servers reached over HTTPS.
    https2: TlsClients<Full<Bytes>>,
    stats: Arc<ShadowStats>,
    in_flight: Arc<AtomicUsize>,
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shadower {
    /// A shadower with its own connection pool.
    pub fn new(settings: &UpstreamSettings, stats: Arc<ShadowStats>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_timer(TokioTimer::new());
        let mut h2 = builder.clone();
        h2.timer(TokioTimer::new()).http2_only(true);
        Self(Arc::new(Shared {
            client: builder.build(connector.clone()),
            https: TlsClients::new(builder, Alpn::Http1, settings),
            h2: h2.build(connector),
            https2: TlsClients::new(h2, Alpn::Http2, settings),
            stats,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// Whether this exchange wants its bodies copied for a shadow call. Of gRPC calls, only
    /// `ModelInfer` is mirrored (its message names the version).
    pub fn wanted(ctx: &RequestCtx) -> bool {
        ctx.route().is_some_and(|r| r.shadow_version.is_some())
            && (!ctx.grpc || ctx.path.path() == grpc_infer::MODEL_INFER)
    }

    /// Mirror an answered exchange, if the route has a shadow and the sample picks it.
    pub fn mirror(
        &self,
        ctx: &RequestCtx,
        primary_ok: bool,
        request: Option<Copied>,
        primary: Option<Copied>,
        primary_framing: Framing,
    ) {
        let Some(route) = ctx.route() else { return };
        let (Some(shadow), Some(version)) = (&route.route.shadow, &route.shadow_version) else {
            return;
        };
        let pick = (split::random_key() >> 11) as f64 / (1u64 << 53) as f64;
        if pick >= shadow.sample {
            return;
        }
        if !primary_ok {
            return self.0.stats.skip(ShadowSkip::PrimaryFailed);
        }
        let (Some(request), Some(primary)) = (request, primary) else {
            return self.0.stats.skip(ShadowSkip::NoCopy);
        };
        if self.0.in_flight.fetch_add(1, Ordering::Relaxed) >= shadow.max_in_flight {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
            return self.0.stats.skip(ShadowSkip::InFlight);
        }
        let guard = InFlight(self.0.in_flight.clone());
        let served = &ctx.resolved.served;
        let upstream = shadow.upstream.as_ref().unwrap_or(&route.route.upstream);
        let grpc = ctx.grpc;
        let (path, body, content_type) = if grpc {
            // The message names the version: it is set in the spawned task (a compressed
            // message is inflated there, off the client's path).
            let content_type = HeaderValue::from_static("application/grpc");
            (ctx.path.as_str().to_string(), Bytes::new(), content_type)
        } else {
            let path = split::with_version(ctx.path.as_str(), &served.model, version)
                .unwrap_or_else(|| ctx.path.as_str().to_string());
            let content_type = HeaderValue::from_static("application/json");
            (path, request.bytes.clone(), content_type)
        };
        let mut req = Request::builder()
            .method(ctx.method.clone())
            .uri(format!(
                "{}://{upstream}{path}",
                route.route.upstream_scheme()
            ))
            .header(header::CONTENT_TYPE, content_type)
            .header(
                &ctx.snapshot.config.headers.request_id,
                ctx.request_id.clone(),
            )
            .header(SHADOW_HEADER, HeaderValue::from_static("true"));
        if grpc {
            req = req.header(header::TE, HeaderValue::from_static("trailers"));
        } else if let Framing::JsonHead(len) = ctx.framing {
            req = req.header(crate::inspect::codec::INFERENCE_HEADER_CONTENT_LENGTH, len);
        }
        let req = req.body(Full::new(body));
        let Ok(mut req) = req else { return };
        let codec = ctx
            .inspect
            .or_else(|| Codec::choose(route.route.inspect.codec, ctx.path.path()));
        let key = (
            served.model.to_string(),
            served.version.to_string(),
            version.clone(),
        );
        let (timeout, abs, rel) = (shadow.timeout, shadow.abs_tolerance, shadow.rel_tolerance);
        let cap = ctx.snapshot.config.limits.max_inspect_bytes;
        let shared = self.0.clone();
        let tls = route.route.upstream_tls.clone();
        let shadow_version = version.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if grpc {
                // The message goes as it came but for its version (inflated, if compressed).
                match grpc_infer::set_version(&request.bytes, &shadow_version, cap) {
                    Some(body) => *req.body_mut() = Full::new(Bytes::from(body)),
                    None => return shared.stats.skip(ShadowSkip::NoCopy),
                }
            }
            let start = Instant::now();
            let answer = tokio::time::timeout(timeout, async {
                let resp = match (&tls, grpc) {
                    (None, false) => shared.client.request(req).await,
                    (Some(tls), false) => shared.https.get(tls).request(req).await,
                    (None, true) => shared.h2.request(req).await,
                    (Some(tls), true) => shared.https2.get(tls).request(req).await,
                }
                .map_err(|e| e.to_string())?;
                let (head, body) = resp.into_parts();
                let framing = match grpc {
                    true => Framing::Grpc(cap),
                    false => Framing::of(&head.headers),
                };
                let collected = Limited::new(body, cap.max(1))
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                // A gRPC answer succeeded when its status (in the trailers, or a trailers-only
                // head) is OK.
                let ok = head.status.is_success()
                    && (!grpc
                        || collected
                            .trailers()
                            .and_then(|t| t.get("grpc-status"))
                            .or_else(|| head.headers.get("grpc-status"))
                            .and_then(|v| crate::codec::grpc::parse(v.as_bytes()))
                            == Some(0));
                Ok::<_, String>((ok, collected.to_bytes(), framing))
            })
            .await;
            let k = (key.0.as_str(), key.1.as_str(), key.2.as_str());
            let (outcome, agreed) = match answer {
                Err(_) => (Outcome::Timeout, None),
                Ok(Err(e)) => {
                    debug!(error = %e, "Shadow call failed.");
                    (Outcome::Error, None)
                }
                Ok(Ok((false, ..))) => (Outcome::Error, None),
                Ok(Ok((true, body, framing))) => (
                    Outcome::Ok,
                    agreement(
                        codec,
                        (&primary.bytes, primary_framing),
                        (&body, framing),
                        abs,
                        rel,
                    ),
                ),
            };
            shared.stats.record(k, outcome, start.elapsed(), agreed);
        });
    }
}

/// Shadow calls are one of the observer's sinks: a finished exchange is mirrored from there.
impl Sink<RequestCtx> for Shadower {
    fn finish(&self, ex: &Exchange<'_, RequestCtx>) {
        if Self::wanted(ex.ctx) {
            self.mirror(
                ex.ctx,
                ex.succeeded(),
                ex.request_copy.cloned(),
                ex.response_copy.cloned(),
                ex.response_framing,
            );
        }
    }
}

fn agreement(
    codec: Option<Codec>,
    primary: (&[u8], Framing),
    shadow: (&[u8], Framing),
    abs: f64,
    rel: f64,
) -> Option<bool> {
    let codec = codec.filter(|c| c.tabular())?;
    match (
        codec.predicted(primary.0, primary.1),
        codec.predicted(shadow.0, shadow.1),
    ) {
        (Ok(Predicted::Table(p)), Ok(Predicted::Table(s))) => compare_predictions(&p, &s, abs, rel),
        _ => None,
    }
}
