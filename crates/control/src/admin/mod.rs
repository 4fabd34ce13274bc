//! The admin API, served on its own (loopback by default) listener: `/metrics`, `/healthz`,
//! `/readyz`, `/versions`, `/lineage/{id}`, `/requests/{id}`, `/canary/{model}`, `/audit`, and
//! the mutating calls `POST /api/v1/lineage` (OpenLineage), `POST /events/dataset-changed`,
//! `POST /webhooks/mlflow` and the traffic
//! changes (`/routes/{r}/weights`, `/canary/{m}/promote`, `/canary/{m}/rollback`). A plain tower
//! service, testable without sockets.

mod canary;
pub mod client;
pub mod explain;
pub mod openlineage;
mod ui;
mod ui_graph;
// The canary endpoints: comparison, audit trail, token-guarded traffic changes.
mod webhook;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::registry::Registry as MetricsRegistry;
use serde::Deserialize;
use serde_json::{Value, json};

pub use webhook::{WebhookError, bearer_ok, constant_time_eq, verify_mlflow};

use crate::codec::time::parse_ms;
use crate::config::RegistrySource;
use crate::observe::recent::RecentRequests;
use crate::registry::DatasetVersion;
use crate::routing::Written;
use crate::routing::{Reloader, Snapshot};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Where OpenLineage clients send events (`OPENLINEAGE_URL` is the admin address).
const OPENLINEAGE: &str = "/api/v1/lineage";
/// Largest body a mutating call may send.
const MAX_BODY: usize = 64 * 1024;

/// What the admin API reads and drives.
pub struct AdminState {
    /// Owns the snapshots; mutating calls go through it.
    pub reloader: Arc<Reloader>,
    /// Metric registry to encode.
    pub metrics: MetricsRegistry,
    /// The trace → lineage index.
    pub recent: Arc<RecentRequests>,
    /// Set on SIGTERM: `/readyz` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Canary comparisons, weight changes and the audit log.
    pub canary: Arc<crate::canary::control::Controller>,
    /// Root-cause explanations.
    pub explainer: Arc<crate::explain::gather::Explainer>,
}

/// The admin service.
#[derive(Clone)]
pub struct Admin {
    state: Arc<AdminState>,
}

/// `POST /events/dataset-changed`: a thin form of an OpenLineage dataset version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetChanged {
    name: String,
    #[serde(default)]
    source: Option<String>,
    digest: String,
    /// When it was written (RFC 3339); when it was announced if unset.
    #[serde(default)]
    at: Option<String>,
}

impl Admin {
    /// A service over this state.
    pub fn new(state: Arc<AdminState>) -> Self {
        Self { state }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.state.reloader.current().load_full()
    }

    async fn handle<B>(self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        if let Err(why) = self.guard(&parts, &path) {
            return error(StatusCode::FORBIDDEN, why);
        }
        match parts.method {
            // The one GET that may read a store.
            Method::GET | Method::HEAD if path.starts_with("/explain/") => {
                let model = path.trim_start_matches("/explain/");
                self.explain(model, parts.uri.query()).await
            }
            Method::GET | Method::HEAD => self.get(&parts, &path),
            Method::POST
                if path == "/events/dataset-changed"
                    || path == OPENLINEAGE
                    || path == "/webhooks/mlflow"
                    || canary::is_traffic_change(&path) =>
            {
                // Lineage events are refused before their (up to 4 MiB) body is read.
                if (path == OPENLINEAGE || path == "/events/dataset-changed")
                    && !self.authorized(&parts.headers)
                {
                    return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
                }
                let limit = if path == OPENLINEAGE {
                    openlineage::MAX_INFLATED
                } else {
                    MAX_BODY
                };
                let body = match Limited::new(body, limit).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            &format!("cannot read the body: {e}"),
                        );
                    }
                };
                if path == "/webhooks/mlflow" {
                    self.mlflow_webhook(&parts.headers, &body)
                } else if path == OPENLINEAGE {
                    self.openlineage(&parts.headers, &body).await
                } else if canary::is_traffic_change(&path) {
                    self.traffic_change(&path, &parts.headers, &body).await
                } else {
                    self.dataset_changed(&parts.headers, &body).await
                }
            }
            Method::POST => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET, HEAD and the documented POSTs are allowed here",
            ),
        }
    }

    fn get(&self, parts: &http::request::Parts, path: &str) -> Response<Full<Bytes>> {
        match path {
            "/metrics" => self.metrics(parts),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.state.draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => self.readyz(),
            "/versions" => json_response(StatusCode::OK, &versions(&self.snapshot())),
            "/audit" => self.audit(),
            _ => {
                if path == "/ui" || path.starts_with("/ui/") {
                    self.ui(path, parts.uri.query())
                } else if let Some(model) = path.strip_prefix("/canary/") {
                    self.canary(model, parts.uri.query())
                } else if let Some(id) = path.strip_prefix("/lineage/") {
                    self.lineage(id)
                } else if let Some(id) = path.strip_prefix("/requests/") {
                    self.requests(id)
                } else {
                    error(StatusCode::NOT_FOUND, "no such admin endpoint")
                }
            }
        }
    }

    /// What a browser could do without asking: answer a page that rebinds its own name to this
    /// address (DNS rebinding), or let another site post to us. Probes and scrapers
    /// (`/healthz`, `/readyz`, `/metrics`) answer any Host, since they address pods by name;
    /// every other call needs an IP-literal Host, `localhost`, or a name in
    /// `admin.allowed_hosts`. A POST must be JSON (a cross-site form cannot send that without
    /// a preflight) and must not come from another site.
    fn guard(&self, parts: &http::request::Parts, path: &str) -> Result<(), &'static str> {
        let probe =
            matches!(path, "/healthz" | "/readyz" | "/metrics") && parts.method != Method::POST;
        // MLflow's webhook is signed (or needs the token) and comes from a server, not a page.
        if probe || path == "/webhooks/mlflow" {
            return Ok(());
        }
        let snap = self.snapshot();
        let allowed = &snap.config.admin_allowed_hosts;
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let (first, second) = (hosts.next(), hosts.next());
        let host = match (parts.uri.authority(), first, second) {
            (_, Some(_), Some(_)) => return Err("more than one Host header"),
            (Some(a), _, _) => Some(a.host().to_string()),
            (None, Some(h), None) => {
                let parsed = h
                    .to_str()
                    .ok()
                    .and_then(|h| h.parse::<http::uri::Authority>().ok());
                match parsed {
                    Some(a) => Some(a.host().to_string()),
                    None => return Err("the Host header is not a host"),
                }
            }
            (None, None, _) => None,
        };
        if let Some(host) = host
            && !host_allowed(&host, allowed)
        {
            return Err("this Host is not allowed here (add it to admin.allowed_hosts)");
        }
        if parts.method != Method::POST {
            return Ok(());
        }
        let json = (parts.headers.get(header::CONTENT_TYPE))
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v.split(';').next().unwrap_or_default().trim();
                mime.eq_ignore_ascii_case("application/json")
            });
        if !json {
            return Err("a POST must send content-type: application/json");
        }
        let fetch_site = parts
            .headers
            .get("sec-fetch-site")
            .map(HeaderValue::as_bytes);
        if fetch_site.is_some_and(|s| s != b"same-origin" && s != b"none") {
            return Err("cross-site requests may not change anything here");
        }
        let origin = (parts.headers.get(header::ORIGIN))
            .and_then(|v| v.to_str().ok())
            .and_then(|o| o.parse::<http::Uri>().ok());
        if let Some(origin) = origin
            && !origin.host().is_some_and(|h| host_allowed(h, allowed))
        {
            return Err("cross-site requests may not change anything here");
        }
        Ok(())
    }

    /// Mutating calls need the bearer token when one is configured.
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        self.snapshot()
            .config
            .admin_token
            .as_ref()
            .is_none_or(|t| bearer_ok(headers, &t.0))
    }

    async fn dataset_changed(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        if !self.authorized(headers) {
            return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        }
        let metrics = self.state.reloader.metrics();
        let event: DatasetChanged = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => {
                metrics.lineage_event("dataset_changed", "rejected");
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("expected {{\"name\", \"source\", \"digest\", \"at\"}}: {e}"),
                );
            }
        };
        if event.name.is_empty() || event.digest.is_empty() {
            metrics.lineage_event("dataset_changed", "rejected");
            return error(StatusCode::BAD_REQUEST, "name and digest must not be empty");
        }
        let written_ms = match event.at.as_deref().map(parse_ms) {
            None => crate::journal::now_ms(),
            Some(Some(ms)) => ms,
            Some(None) => {
                metrics.lineage_event("dataset_changed", "rejected");
                return error(
                    StatusCode::BAD_REQUEST,
                    "at must be an RFC 3339 time with an offset",
                );
            }
        };
        // A source URI names one dataset; a bare name may be several sources' (or a table).
        let names = BTreeSet::from([event.source.clone().unwrap_or(event.name.clone())]);
        let written = Written {
            names,
            version: DatasetVersion {
                written_ms,
                digest: event.digest,
                seen_in: "dataset-changed event".into(),
                job: None,
            },
        };
        let outcome = self.state.reloader.datasets_written(vec![written]).await;
        let matched = outcome.matched.first().cloned().unwrap_or_default();
        metrics.lineage_event(
            "dataset_changed",
            if matched.is_empty() {
                "unmatched"
            } else {
                "matched"
            },
        );
        let mut answer = json!({
            "outcome": if matched.is_empty() { "unmatched" } else { "matched" },
            "matched": matched.iter().map(|k| json!({ "name": k.name, "source": k.source })).collect::<Vec<_>>(),
            "stale": stale_json(&outcome.stale),
        });
        if matched.is_empty() {
            answer["why"] = "no lineage record reads this dataset".into();
        }
        json_response(StatusCode::OK, &answer)
    }

    /// `POST /api/v1/lineage`: an OpenLineage event. 201 when it is read, whatever it matched
    /// (the answer says, per dataset); 400 when it is not an event.
    async fn openlineage(&self, headers: &http::HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        if !self.authorized(headers) {
            return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        }
        let metrics = self.state.reloader.metrics();
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let announced =
            match openlineage::decode_body(encoding, body).and_then(|b| openlineage::parse(&b)) {
                Ok(a) => a,
                Err(e) => {
                    metrics.lineage_event("openlineage", "rejected");
                    return error(StatusCode::BAD_REQUEST, &e);
                }
            };
        let writes: Vec<Written> = announced
            .iter()
            .filter_map(|a| a.write.as_ref().ok().cloned())
            .collect();
        let outcome = self.state.reloader.datasets_written(writes).await;
        let mut matched = outcome.matched.iter();
        let datasets: Vec<Value> = announced
            .iter()
            .map(|a| {
                let keys = a.write.is_ok().then(|| matched.next()).flatten();
                let answer = openlineage::answer(a, keys.map(Vec::as_slice));
                metrics.lineage_event(
                    "openlineage",
                    match answer["outcome"].as_str() {
                        Some("matched") => "matched",
                        Some("unmatched") => "unmatched",
                        _ => "ignored",
                    },
                );
                answer
            })
            .collect();
        json_response(
            StatusCode::CREATED,
            &json!({ "datasets": datasets, "stale": stale_json(&outcome.stale) }),
        )
    }

    /// An MLflow webhook (alias moved, version created): refresh now rather than at the next poll.
    fn mlflow_webhook(&self, headers: &http::HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        let snap = self.snapshot();
        let RegistrySource::Mlflow(settings) = &snap.config.registry else {
            return error(StatusCode::NOT_FOUND, "the registry backend is not mlflow");
        };
        match &settings.webhook_secret {
            Some(secret) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if let Err(e) = verify_mlflow(headers, body, &secret.0, now) {
                    return error(StatusCode::UNAUTHORIZED, &format!("webhook refused: {e}"));
                }
            }
            None if !self.authorized(headers) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "set registry.webhook_secret to accept MLflow webhooks",
                );
            }
            None => {}
        }
        self.state.reloader.refresh_soon();
        json_response(StatusCode::ACCEPTED, &json!({ "refresh": "scheduled" }))
    }

    fn metrics(&self, req: &http::request::Parts) -> Response<Full<Bytes>> {
        let openmetrics = req
            .headers
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
        let snap = self.snapshot();
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

    /// Ready, unless no lineage record has been read yet and the config asks for one
    /// (`registry.ready_needs_lineage`); the body says why lineage is missing either way.
    fn readyz(&self) -> Response<Full<Bytes>> {
        let Some(why) = self.state.reloader.lineage_unavailable() else {
            return text(StatusCode::OK, "ready\n");
        };
        let needs = matches!(&self.snapshot().config.registry,
            RegistrySource::Mlflow(m) if m.ready_needs_lineage);
        let status = if needs {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let state = if needs { "not ready" } else { "ready" };
        text(status, format!("{state}: lineage unavailable ({why})\n"))
    }

    fn lineage(&self, id: &str) -> Response<Full<Bytes>> {
        let snap = self.snapshot();
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
                    let stale = (snap.models.get(name))
                        .and_then(|m| m.versions.get(v))
                        .and_then(|s| s.stale.as_ref())
                        .map(|st| {
                            json!({
                                "dataset": st.dataset.name,
                                "source": st.dataset.source,
                                "trained_on": st.trained_on,
                                "latest": st.latest.digest,
                                "written_at": crate::codec::time::rfc3339_ms(st.latest.written_ms),
                                "seen_in": st.latest.seen_in,
                                "job": st.latest.job,
                                "why": st.describe(),
                            })
                        });
                    json!({
                        "version": v,
                        "lineage_id": rec.lineage_id,
                        "git_commit": rec.record.code.commit,
                        "dataset_digest": rec.record.dataset_digest(),
                        "stale": stale,
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

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An IP literal (no name to rebind), `localhost`, or a configured name.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(host))
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

fn stale_json(stale: &[(String, String)]) -> Vec<Value> {
    stale
        .iter()
        .map(|(m, v)| json!({ "model": m, "version": v }))
        .collect()
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

impl<B> tower::Service<Request<B>> for Admin
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use crate::routing::Source;
    use tower::ServiceExt;

    const REGISTRY: &str = "models:\n  churn:\n    aliases: { champion: 1 }\n    versions:\n      1:\n        code: { commit: abc }\n        training_data: { name: churn-train, source: s3://d/train.parquet, digest: e5d3, upstream_tables: [crm.contacts] }\n        created_at: \"2026-10-02T09:14:00Z\"\n";

    async fn admin_with(extra: &str) -> (Admin, String, Metrics) {
        let text = format!(
            "{extra}\n[[routes]]\nmodel=\"churn\"\nupstream=\"h:1\"\nserves=\"@champion\"\n"
        );
        let raw = crate::config::parse(&text, "c").unwrap_or_default();
        let (metrics, registry) = Metrics::new();
        let source = Source::Embedded {
            config: Box::new(raw),
            registry_yaml: REGISTRY.to_string(),
        };
        let reloader = Reloader::start(source, metrics.clone())
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let id = reloader.current().load().registry.models["churn"].versions["1"]
            .lineage_id
            .clone();
        let config = reloader.current().load().config.clone();
        let tracing = crate::observe::spans::Tracing::start(&config.traces, &metrics)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let journal = Arc::new(crate::journal::Journal::default());
        reloader.subscribe(Arc::new(crate::routing::JournalFollower(journal.clone())));
        let inspector = crate::inspect::Inspector::start(&config.inspect, tracing, journal.clone())
            .unwrap_or_else(|e| unreachable!("{e}"));
        let canary = Arc::new(crate::canary::control::Controller::new(
            reloader.clone(),
            Arc::new(
                crate::canary::audit::AuditLog::open(None).unwrap_or_else(|e| unreachable!("{e}")),
            ),
            journal.clone(),
            inspector.shared().clone(),
            Arc::new(crate::canary::shadow::ShadowStats::new(
                std::time::Duration::from_secs(60),
            )),
            metrics.clone(),
        ));
        let explainer = Arc::new(crate::explain::gather::Explainer::new(
            reloader.clone(),
            inspector.shared().clone(),
            journal,
        ));
        let state = AdminState {
            reloader,
            metrics: registry,
            recent: Arc::new(RecentRequests::new(10, 1 << 20)),
            draining: AtomicBool::new(false),
            canary,
            explainer,
        };
        (Admin::new(Arc::new(state)), id, metrics)
    }

    async fn admin() -> (Admin, String) {
        let (a, id, _) = admin_with("").await;
        (a, id)
    }

    async fn call(a: &Admin, req: Request<Full<Bytes>>) -> (StatusCode, String, String) {
        let resp = a.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
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

    async fn get(a: &Admin, path: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::get(path);
        if let Some(acc) = accept {
            req = req.header(header::ACCEPT, acc);
        }
        call(a, req.body(Full::default()).unwrap_or_default()).await
    }

    fn post(path: &str, body: &str, token: Option<&str>) -> Request<Full<Bytes>> {
        let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req.body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn lineage_lookup_and_unknown_id() {
        let (a, id) = admin().await;
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
        let (a, id) = admin().await;
        let (_, _, body) = get(&a, "/versions", None).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["routes"][0]["version"], "1");
        assert_eq!(v["routes"][0]["lineage_id"], id.as_str());
        let (_, ct, text) = get(&a, "/metrics", None).await;
        assert_eq!(ct, PROMETHEUS_TEXT);
        let info = format!(
            "modelstamp_model_version_info{{model=\"churn\",version=\"1\",lineage_id=\"{id}\",git_commit=\"abc\",dataset_digest=\"e5d3\"}} 1"
        );
        assert!(text.contains(&info), "{text}");
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
        let (a, _) = admin().await;
        assert_eq!(get(&a, "/readyz", None).await.0, 200);
        a.state.draining.store(true, Ordering::Relaxed);
        assert_eq!(get(&a, "/readyz", None).await.0, 503);
        assert_eq!(call(&a, post("/versions", "", None)).await.0, 404);
        let put = Request::put("/versions")
            .body(Full::default())
            .unwrap_or_default();
        assert_eq!(call(&a, put).await.0, 405);
    }

    #[tokio::test]
    async fn a_dataset_event_flags_dependent_versions_stale() {
        let (a, _, _) = admin_with("").await;
        let other = r#"{"name":"churn-train","source":"s3://elsewhere","digest":"ffff"}"#;
        let (status, _, body) = call(&a, post("/events/dataset-changed", other, None)).await;
        assert_eq!(
            (status.as_u16(), body.contains(r#""stale": []"#)),
            (200, true),
            "{body}"
        );
        let same = r#"{"name":"churn-train","source":"s3://d/train.parquet","digest":"9a41"}"#;
        let (status, _, body) = call(&a, post("/events/dataset-changed", same, None)).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["stale"][0], json!({"model": "churn", "version": "1"}));
        let snap = a.snapshot();
        let stale = snap
            .served("churn", Some("1"))
            .0
            .stale
            .clone()
            .unwrap_or_else(|| unreachable!());
        assert_eq!(
            (stale.trained_on.as_str(), stale.latest.digest.as_str()),
            ("e5d3", "9a41")
        );
        let (_, _, text) = get(&a, "/metrics", None).await;
        assert!(
            text.contains("modelstamp_model_version_stale{model=\"churn\",version=\"1\"} 1"),
            "{text}"
        );
        let (status, _, _) = call(
            &a,
            post("/events/dataset-changed", "{\"name\":\"x\"}", None),
        )
        .await;
        assert_eq!(status, 400, "digest is required");
    }

    /// A dbt-style completed run (no `version` facet: the run ID is the version).
    fn dbt_run(run_id: &str, at: &str, table: &str) -> String {
        format!(
            r#"{{"eventType": "COMPLETE", "eventTime": "{at}",
               "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.40.0/integration/dbt",
               "run": {{"runId": "{run_id}"}},
               "job": {{"namespace": "dbt", "name": "jaffle.model.{table}"}},
               "outputs": [{{"namespace": "duckdb:///w.duckdb", "name": "{table}",
                             "facets": {{"dataSource": {{"name": "duckdb"}}}}}}]}}"#
        )
    }

    #[tokio::test]
    async fn openlineage_runs_flag_versions_trained_before_an_upstream_rewrite() {
        let config = "[admin]\ntoken = \"0123456789abcdef\"\n[openlineage]\naliases = { \"warehouse.main.contacts\" = \"crm.contacts\" }";
        let (a, _, _) = admin_with(config).await;
        let token = Some("0123456789abcdef");
        let before = dbt_run("r1", "2026-10-01T00:00:00+02:00", "warehouse.main.contacts");
        assert_eq!(call(&a, post(OPENLINEAGE, &before, None)).await.0, 401);
        let (status, _, body) = call(&a, post(OPENLINEAGE, &before, token)).await;
        assert_eq!(status, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["datasets"][0]["outcome"], "matched", "{body}");
        assert_eq!(v["datasets"][0]["matched"][0]["name"], "crm.contacts");
        assert_eq!(v["stale"], json!([]), "rewritten before version 1 was made");
        assert!(a.snapshot().served("churn", Some("1")).0.stale.is_none());

        let after = dbt_run("r2", "2026-12-01T06:00:00Z", "warehouse.main.contacts");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, after.as_bytes()).unwrap_or_default();
        let req = Request::post(OPENLINEAGE)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::AUTHORIZATION, "Bearer 0123456789abcdef")
            .body(Full::new(Bytes::from(gz.finish().unwrap_or_default())))
            .unwrap_or_default();
        let (status, _, body) = call(&a, req).await;
        assert_eq!(status, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            v["stale"][0],
            json!({"model": "churn", "version": "1"}),
            "{body}"
        );
        let (_, _, versions) = get(&a, "/versions", None).await;
        let versions: Value = serde_json::from_str(&versions).unwrap_or_default();
        let flag = &versions["models"][0]["versions"][0]["stale"];
        assert_eq!(
            flag["job"]["name"], "jaffle.model.warehouse.main.contacts",
            "{versions}"
        );
        assert_eq!(flag["job"]["run_id"], "r2");
        let stale = (a.snapshot().served("churn", Some("1")).0.stale.clone())
            .unwrap_or_else(|| unreachable!());
        assert_eq!(
            stale.latest.job.as_ref().map(|j| j.qualified()).as_deref(),
            Some("dbt/jaffle.model.warehouse.main.contacts")
        );
        assert!(
            stale
                .describe()
                .contains("crm.contacts was rewritten at 2026-12-01T06:00:00.000Z"),
            "{}",
            stale.describe()
        );
        let timeline = a.state.explainer.journal().between("churn", 0, i64::MAX);
        assert!(
            timeline
                .iter()
                .any(|e| e.kind == crate::journal::Kind::DatasetWritten
                    && e.fields.get("run_id").map(String::as_str) == Some("r2")),
            "{timeline:?}"
        );

        let unknown = dbt_run("r3", "2026-12-01T07:00:00Z", "warehouse.main.orders");
        let (status, _, body) = call(&a, post(OPENLINEAGE, &unknown, token)).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            (status.as_u16(), &v["datasets"][0]["outcome"]),
            (201, &json!("unmatched"))
        );
        let (status, _, body) = call(&a, post(OPENLINEAGE, "{\"eventTime\": 1}", token)).await;
        assert_eq!(status, 400, "{body}");
        let (_, _, text) = get(&a, "/metrics", None).await;
        for line in [
            "modelstamp_lineage_events_total{source=\"openlineage\",outcome=\"matched\"} 2",
            "modelstamp_lineage_events_total{source=\"openlineage\",outcome=\"unmatched\"} 1",
            "modelstamp_lineage_events_total{source=\"openlineage\",outcome=\"rejected\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[tokio::test]
    async fn an_older_snapshot_announced_late_is_not_newer() {
        let (a, _, _) = admin_with("").await;
        let old = r#"{"name":"churn-train","source":"s3://d/train.parquet","digest":"0000","at":"2026-09-01T00:00:00Z"}"#;
        let (status, _, body) = call(&a, post("/events/dataset-changed", old, None)).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            (status.as_u16(), &v["outcome"], &v["stale"]),
            (200, &json!("matched"), &json!([])),
            "{body}"
        );
        let elsewhere = r#"{"name":"other","digest":"1"}"#;
        let (_, _, body) = call(&a, post("/events/dataset-changed", elsewhere, None)).await;
        assert!(body.contains(r#""outcome": "unmatched""#), "{body}");
        let bad = r#"{"name":"churn-train","digest":"1","at":"yesterday"}"#;
        assert_eq!(
            call(&a, post("/events/dataset-changed", bad, None)).await.0,
            400
        );
    }

    #[tokio::test]
    async fn mutating_calls_need_the_token_when_one_is_set() {
        let (a, _, _) = admin_with("[admin]\ntoken = \"0123456789abcdef\"").await;
        let event = r#"{"name":"churn-train","source":"s3://d/train.parquet","digest":"9a41"}"#;
        assert_eq!(
            call(&a, post("/events/dataset-changed", event, None))
                .await
                .0,
            401
        );
        assert_eq!(
            call(
                &a,
                post("/events/dataset-changed", event, Some("wrong-token-xxxxx"))
            )
            .await
            .0,
            401
        );
        assert!(
            a.snapshot().served("churn", Some("1")).0.stale.is_none(),
            "refused calls change nothing"
        );
        assert_eq!(
            call(
                &a,
                post("/events/dataset-changed", event, Some("0123456789abcdef"))
            )
            .await
            .0,
            200
        );
        let (_, _, versions) = get(&a, "/versions", None).await;
        assert!(
            !versions.contains("0123456789abcdef"),
            "secrets are never returned"
        );
        assert_eq!(
            call(&a, post("/webhooks/mlflow", "{}", None)).await.0,
            404,
            "file backend: no webhook"
        );
    }
}
