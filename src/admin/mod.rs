//! The admin API, served on its own (loopback by default) listener: `/metrics`, `/healthz`,
//! `/readyz`, `/versions`, `/lineage/{id}`. A plain tower service, testable without sockets.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::registry::Registry as MetricsRegistry;
use serde_json::{Value, json};

pub mod client;

use crate::observe::recent::RecentRequests;
use crate::routing::Snapshot;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin API reads.
pub struct AdminState {
    /// Current snapshot.
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    /// Metric registry to encode.
    pub metrics: MetricsRegistry,
    /// The trace → lineage index.
    pub recent: Arc<RecentRequests>,
    /// Set on SIGTERM: `/readyz` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
}

/// The admin service.
#[derive(Clone)]
pub struct Admin {
    state: Arc<AdminState>,
}

impl Admin {
    /// A service over this state.
    pub fn new(state: Arc<AdminState>) -> Self {
        Self { state }
    }

    fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are allowed here",
            );
        }
        let path = req.uri().path();
        match path {
            "/metrics" => self.metrics(req),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.state.draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            "/versions" => json_response(StatusCode::OK, &versions(&self.state.snapshots.load())),
            _ => {
                if let Some(id) = path.strip_prefix("/lineage/") {
                    self.lineage(id)
                } else if let Some(id) = path.strip_prefix("/requests/") {
                    self.requests(id)
                } else {
                    error(StatusCode::NOT_FOUND, "no such admin endpoint")
                }
            }
        }
    }

    fn metrics<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let openmetrics = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/openmetrics-text"));
        let mut out = String::with_capacity(16 * 1024);
        let (result, content_type) = if openmetrics {
            (
                prometheus_client::encoding::text::encode(&mut out, &self.state.metrics),
                OPENMETRICS,
            )
        } else {
            (
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.state.metrics),
                PROMETHEUS_TEXT,
            )
        };
        if result.is_err() {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed");
        }
        let mut r = Response::new(Full::new(Bytes::from(out)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    }

    /// `/requests/{trace_id | request_id}`: the requests and the lineage records behind them.
    fn requests(&self, id: &str) -> Response<Full<Bytes>> {
        let found = self.state.recent.lookup(id);
        if found.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no recent request with trace ID or request ID {id:?}"),
            );
        }
        let snap = self.state.snapshots.load();
        let mut lineage = serde_json::Map::new();
        for r in &found {
            if let Some(v) = snap.registry.by_lineage_id(&r.lineage_id) {
                lineage.insert(r.lineage_id.to_string(), json!(&*v.record));
            }
        }
        json_response(
            StatusCode::OK,
            &json!({ "requests": found, "lineage": lineage }),
        )
    }

    fn lineage(&self, id: &str) -> Response<Full<Bytes>> {
        let snap = self.state.snapshots.load();
        match snap.registry.by_lineage_id(id) {
            Some(v) => json_response(
                StatusCode::OK,
                &json!({ "lineage_id": v.lineage_id, "record": &*v.record }),
            ),
            None => error(StatusCode::NOT_FOUND, &format!("unknown lineage ID {id:?}")),
        }
    }
}

/// `/versions`: models, their versions and lineage IDs, and what each route serves.
pub fn versions(snap: &Snapshot) -> Value {
    let models: Vec<Value> = snap
        .registry
        .models
        .iter()
        .map(|(name, m)| {
            let versions: Vec<Value> = m
                .versions
                .iter()
                .map(|(v, rec)| {
                    json!({
                        "version": v,
                        "lineage_id": rec.lineage_id,
                        "git_commit": rec.record.code.commit,
                        "dataset_digest": rec.record.dataset_digest(),
                    })
                })
                .collect();
            json!({ "name": name, "aliases": m.aliases, "versions": versions })
        })
        .collect();
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            let serves = r.route.serves.as_ref().map(|s| match s {
                crate::config::Serves::Version(v) => v.clone(),
                crate::config::Serves::Alias(a) => format!("@{a}"),
            });
            let lineage = r
                .route
                .model
                .as_deref()
                .zip(r.default_version.as_deref())
                .map(|(m, v)| snap.served(m, Some(v)).0.lineage_id.to_string());
            json!({
                "name": r.route.name,
                "model": r.route.model,
                "upstream": r.route.upstream.as_str(),
                "serves": serves,
                "version": r.default_version,
                "lineage_id": lineage,
            })
        })
        .collect();
    json!({ "generation": snap.generation, "models": models, "routes": routes })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

impl<B> tower::Service<Request<B>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.handle(&req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use crate::registry::parse_registry;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn admin() -> (Admin, String) {
        let reg = parse_registry("models:\n  churn:\n    aliases: { champion: 1 }\n    versions:\n      1: { code: { commit: abc } }\n", "r")
            .unwrap_or_default();
        let id = reg.models["churn"].versions["1"].lineage_id.clone();
        let raw = crate::config::parse(
            "[[routes]]\nmodel=\"churn\"\nupstream=\"h:1\"\nserves=\"@champion\"\n",
            "c",
        )
        .unwrap_or_default();
        let cfg = crate::config::validate(&raw, std::path::Path::new("/"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let (metrics, registry) = Metrics::new();
        let snap = Snapshot::build(1, cfg, reg, &metrics).unwrap_or_else(|e| unreachable!("{e}"));
        metrics.set_version_info(&snap.info_labels());
        let state = AdminState {
            snapshots: Arc::new(ArcSwap::from_pointee(snap)),
            metrics: registry,
            recent: Arc::new(RecentRequests::new(10, 1 << 20)),
            draining: AtomicBool::new(false),
        };
        (Admin::new(Arc::new(state)), id)
    }

    async fn get(a: &Admin, path: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::get(path);
        if let Some(acc) = accept {
            req = req.header(header::ACCEPT, acc);
        }
        let resp = a
            .clone()
            .oneshot(req.body(()).unwrap_or_default())
            .await
            .unwrap_or_else(|e| match e {});
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn lineage_lookup_and_unknown_id() {
        let (a, id) = admin();
        let (status, _, body) = get(&a, &format!("/lineage/{id}"), None).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["record"]["code"]["commit"], "abc");
        assert_eq!(v["lineage_id"], id.as_str());
        let (status, ct, body) = get(&a, "/lineage/ln_0000000000000000", None).await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::NOT_FOUND, "application/json")
        );
        assert!(body.contains("unknown lineage ID"), "{body}");
    }

    #[tokio::test]
    async fn versions_and_metrics_negotiation() {
        let (a, id) = admin();
        let (_, _, body) = get(&a, "/versions", None).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["routes"][0]["version"], "1");
        assert_eq!(v["routes"][0]["lineage_id"], id.as_str());
        let (_, ct, text) = get(&a, "/metrics", None).await;
        assert_eq!(ct, PROMETHEUS_TEXT);
        assert!(text.contains(&format!("modelstamp_model_version_info{{model=\"churn\",version=\"1\",lineage_id=\"{id}\",git_commit=\"abc\",dataset_digest=\"\"}} 1")), "{text}");
        assert!(!text.contains("# EOF"));
        let (_, ct, text) = get(
            &a,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .await;
        assert_eq!(ct, OPENMETRICS);
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn readiness_follows_draining_and_methods_are_limited() {
        let (a, _) = admin();
        assert_eq!(get(&a, "/readyz", None).await.0, 200);
        a.state.draining.store(true, Ordering::Relaxed);
        assert_eq!(get(&a, "/readyz", None).await.0, 503);
        let resp = a
            .clone()
            .oneshot(Request::post("/versions").body(()).unwrap_or_default())
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(resp.status(), 405);
    }
}
