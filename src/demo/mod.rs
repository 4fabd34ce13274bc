//! `modelstamp demo`: the embedded model server, the sidecar in front of it with the shipped
//! `config/demo.toml` and `config/registry.yaml`, a few hundred requests, and a per-version
//! table built from what the client saw (the stamps on each response).

pub mod model_server;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config;
use crate::routing::Source;
use crate::sidecar::{Sidecar, StartError};

/// The shipped demo config.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
/// The shipped demo registry.
pub const DEMO_REGISTRY: &str = include_str!("../../config/registry.yaml");

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How many requests to send.
    pub requests: usize,
    /// Where the access log goes.
    pub access_log: PathBuf,
}

/// A running demo: model server and sidecar.
pub struct Demo {
    /// The sidecar.
    pub sidecar: Sidecar,
    /// The embedded model server.
    pub model_server: SocketAddr,
    stop_model: watch::Sender<bool>,
}

/// What one request saw.
#[derive(Debug, Clone)]
struct Observation {
    version: String,
    lineage_id: String,
    ok: bool,
    latency: Duration,
    prediction: Option<f64>,
}

/// Start the model server and the sidecar on ephemeral loopback ports.
pub async fn start(opts: &DemoOptions) -> Result<Demo, StartError> {
    let (stop_model, stop_rx) = watch::channel(false);
    let model_server = model_server::start(SocketAddr::from(([127, 0, 0, 1], 0)), "1", stop_rx)
        .await
        .map_err(|source| StartError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let mut raw = config::parse(DEMO_CONFIG, "config/demo.toml")?;
    raw.server.listen = Some("127.0.0.1:0".into());
    raw.admin.listen = Some("127.0.0.1:0".into());
    raw.access_log.target = Some(opts.access_log.display().to_string());
    for route in &mut raw.routes {
        route.upstream = Some(model_server.to_string());
    }
    let sidecar = Sidecar::start(Source::Embedded {
        config: Box::new(raw),
        registry_yaml: DEMO_REGISTRY.to_string(),
    })
    .await?;
    Ok(Demo {
        sidecar,
        model_server,
        stop_model,
    })
}

impl Demo {
    /// Stop the sidecar (draining) and then the model server.
    pub async fn stop(self) {
        self.sidecar.shutdown();
        self.sidecar.wait().await;
        let _ = self.stop_model.send(true);
    }
}

/// A small deterministic generator, so every demo run sends the same inputs.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(crate::observe::trace::GOLDEN);
        (crate::observe::trace::mix(self.0) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly standard normal (Irwin–Hall with 12 uniforms).
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.next_f64()).sum::<f64>() - 6.0
    }
}

/// The request body for request `i` of `n`: one row of standardised features. In the second
/// half of the run, an upstream change turns `usage_gb` NULL for the candidate (version 2)
/// traffic: the incident the demo's data-quality counters show.
pub fn demo_request(i: usize, n: usize) -> Value {
    let mut rng = Rng(i as u64 ^ 0x5eed);
    let null_usage = demo_path(i).contains("/versions/2/") && i >= n / 2;
    let inputs: Vec<Value> = model_server::FEATURES
        .iter()
        .map(|f| {
            let x = (rng.normal() * 1000.0).round() / 1000.0;
            let data = if null_usage && *f == "usage_gb" {
                Value::Null
            } else {
                x.into()
            };
            json!({ "name": f, "datatype": "FP64", "shape": [1, 1], "data": [data] })
        })
        .collect();
    json!({ "id": format!("demo-{i}"), "inputs": inputs })
}

/// The path for request `i`: mostly the route's default (champion), some pinned to version 2,
/// a few to a version the registry does not know.
pub fn demo_path(i: usize) -> &'static str {
    match i % 50 {
        0 => "/v2/models/churn/versions/9/infer",
        n if n % 3 == 0 => "/v2/models/churn/versions/2/infer",
        _ => "/v2/models/churn/infer",
    }
}

/// Send `n` requests through the proxy, 8 at a time.
async fn drive(proxy: SocketAddr, n: usize) -> Vec<Observation> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut seen = Vec::new();
            for i in (worker..n).step_by(8) {
                seen.push(one(&client, proxy, i, n).await);
            }
            seen
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap_or_default());
    }
    all
}

async fn one(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    i: usize,
    n: usize,
) -> Observation {
    let body = demo_request(i, n).to_string();
    let traceparent = format!(
        "00-{:016x}{:016x}-{:016x}-01",
        0xdec0_de00_u64,
        i as u64 + 1,
        i as u64 + 1
    );
    let req = Request::post(format!("http://{proxy}{}", demo_path(i)))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .body(Full::new(Bytes::from(body)));
    let start = Instant::now();
    let mut obs = Observation {
        version: "none".into(),
        lineage_id: "none".into(),
        ok: false,
        latency: Duration::ZERO,
        prediction: None,
    };
    let Ok(req) = req else { return obs };
    if let Ok(resp) = client.request(req).await {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string()
        };
        obs.version = header("x-model-version");
        obs.lineage_id = header("x-lineage-id");
        obs.ok = resp.status() == StatusCode::OK;
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        obs.prediction = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["outputs"][0]["data"][0].as_f64());
    }
    obs.latency = start.elapsed();
    obs
}

/// Per-version summary of what the client saw.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    /// Version stamped on the responses.
    pub version: String,
    /// Lineage ID stamped on the responses.
    pub lineage_id: String,
    /// Responses.
    pub requests: usize,
    /// Non-200 responses.
    pub errors: usize,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Mean prediction over successful responses.
    pub mean_prediction: Option<f64>,
}

fn summarise(observations: &[Observation]) -> Vec<VersionRow> {
    let mut groups: BTreeMap<(String, String), Vec<&Observation>> = BTreeMap::new();
    for o in observations {
        groups
            .entry((o.version.clone(), o.lineage_id.clone()))
            .or_default()
            .push(o);
    }
    groups
        .into_iter()
        .map(|((version, lineage_id), obs)| {
            let mut lat: Vec<Duration> = obs.iter().map(|o| o.latency).collect();
            lat.sort();
            let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
            let preds: Vec<f64> = obs.iter().filter_map(|o| o.prediction).collect();
            VersionRow {
                version,
                lineage_id,
                requests: obs.len(),
                errors: obs.iter().filter(|o| !o.ok).count(),
                p50: q(0.5),
                p99: q(0.99),
                mean_prediction: (!preds.is_empty())
                    .then(|| preds.iter().sum::<f64>() / preds.len() as f64),
            }
        })
        .collect()
}

/// Render the table.
pub fn render_table(rows: &[VersionRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<20} {:>8} {:>10} {:>8} {:>8} {:>10}",
        "version", "lineage_id", "requests", "error_rate", "p50_ms", "p99_ms", "mean_pred"
    );
    for r in rows {
        let rate = 100.0 * r.errors as f64 / r.requests.max(1) as f64;
        let mean = r
            .mean_prediction
            .map_or_else(|| "-".to_string(), |m| format!("{m:.3}"));
        let _ = writeln!(
            out,
            "{:<8} {:<20} {:>8} {:>9.1}% {:>8.2} {:>8.2} {:>10}",
            r.version,
            r.lineage_id,
            r.requests,
            rate,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            mean
        );
    }
    out
}

/// Run the demo traffic against a started demo and return the table rows.
pub async fn run_traffic(demo: &Demo, requests: usize) -> Vec<VersionRow> {
    summarise(&drive(demo.sidecar.proxy_addr, requests).await)
}

/// What the inspector saw, per version: data-quality issues (with the feature's upstream
/// source) and drift against the registry's reference, as `/metrics` exposes them.
pub fn render_inspection(demo: &Demo) -> String {
    let inspector = &demo.sidecar.telemetry.inspector;
    inspector.drain(Duration::from_secs(5));
    let shared = inspector.shared();
    let slice = shared.slice_now();
    let all = shared
        .stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let versions: Vec<_> = all
        .values()
        .filter(|v| v.rows > 0 && !v.profile.schema.is_empty())
        .collect();
    let mut out = String::from("inspection (modelstamp_feature_issues_total, modelstamp_drift):\n");
    for v in &versions {
        let p = &v.profile;
        let _ = writeln!(out, "  version {:<4} {} rows checked", p.version, v.rows);
        for (f, counts) in v.issues.iter().enumerate() {
            for issue in crate::inspect::quality::Issue::ALL {
                let n = counts[issue as usize];
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "    {:<16} {:<16} {:>5} rows ({:.0}%)  upstream: {}",
                        p.names[f],
                        issue.as_str(),
                        n,
                        100.0 * n as f64 / v.rows as f64,
                        p.sources[f].as_deref().unwrap_or("unknown")
                    );
                }
            }
        }
    }
    let mut drift = crate::inspect::stats::drift(&versions, slice);
    drift.retain(|(_, d)| d.statistic == "psi" && d.against == "reference");
    for (i, d) in drift {
        let level = if d.value >= versions[i].profile.settings.psi_alert {
            "ALERT"
        } else if d.value >= versions[i].profile.settings.psi_warn {
            "warn"
        } else {
            "ok"
        };
        let _ = writeln!(
            out,
            "  drift version {:<4} {:<26} PSI {:.3} vs reference  {level}",
            versions[i].profile.version, d.signal, d.value
        );
    }
    out
}

/// The canary comparison of the demo's split route (challenger against champion).
pub fn render_canary(demo: &Demo) -> String {
    match demo.sidecar.canary.compare("churn", None, None) {
        Ok(c) => crate::canary::render::render(&c),
        Err(e) => format!("canary: {e}\n"),
    }
}

/// The text printed after the table: where everything is.
pub fn render_urls(demo: &Demo, rows: &[VersionRow], access_log: &std::path::Path) -> String {
    let proxy = demo.sidecar.proxy_addr;
    let admin = demo.sidecar.admin_addr;
    let lineage = rows
        .iter()
        .find(|r| r.lineage_id.starts_with("ln_"))
        .map_or("ln_…", |r| r.lineage_id.as_str());
    let body = demo_request(1, 2).to_string();
    format!(
        "proxy:      http://{proxy}\n\
         admin:      http://{admin}/metrics\n\
         \x20           http://{admin}/versions\n\
         \x20           http://{admin}/lineage/{lineage}\n\
         model:      http://{model} (embedded Open Inference v2 server)\n\
         access log: {log}\n\n\
         try:  curl -si http://{proxy}/v2/models/churn/infer -H 'content-type: application/json' -d '{body}'\n",
        model = demo.model_server,
        log = access_log.display(),
    )
}
