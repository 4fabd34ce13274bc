//! What an untrusted client can make the sidecar hold or reveal: 100k distinct bogus model and
//! version names leave the number of metric series unchanged; the admin API refuses every
//! mutating call without the token, and no page or endpoint ever returns a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::*;

const TOKEN: &str = "tok-3f9a1c07e2b84d6b";
const WEBHOOK_SECRET: &str = "whs-8c1d2e3f4a5b6c7d";

/// Every series of an exposition (name and labels, without the value).
fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').unwrap().0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_bogus_names_add_no_metric_series() {
    let up = Upstream::start_quiet(oi_handler("1")).await;
    let routes = format!(
        "{}[[routes]]\nname = \"by-header\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"1\"\nmatch = {{ path_prefix = \"/h/\" }}\n",
        churn_route(up.addr, "1", ""),
        up.addr
    );
    let h = Harness::start(&routes, "").await;
    // Warm up every kind of request once so lazily created series exist before counting.
    let warm = [
        "/v2/models/churn/infer",
        "/v2/models/churn/versions/1/infer",
        "/v2/models/nosuch/infer",
        "/v2/models/churn/versions/999/infer",
        "/nowhere",
        "/h/x",
    ];
    for path in warm {
        let req = Request::post(h.url(path))
            .header("x-model-version", "bogus")
            .header("x-model-name", "bogus")
            .body(full(Bytes::from_static(b"{}")))
            .unwrap();
        let _ = send(req).await;
    }
    // The inspector creates its series off the request path, a few milliseconds later:
    // count only once its queue is empty and the number of series has stopped changing.
    let mut before = h.metrics().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = h.metrics().await;
        let settled = metric_value(&now, "modelstamp_inspect_queue_depth") == 0.0
            && series(&now).len() == series(&before).len();
        before = now;
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "the inspector never settled");
    }

    // 10k under `cargo test`, the full 100k with MODELSTAMP_FULL_SCALE (.ci/run).
    let total = scale(10_000, 100_000) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (next, base) = (next.clone(), h.url(""));
        tasks.push(tokio::spawn(async move {
            let client = h2_client();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let bogus = format!("b{i:x}");
                let path = match i % 4 {
                    0 => format!("/v2/models/{bogus}/infer"),
                    1 => format!("/v2/models/churn/versions/{bogus}/infer"),
                    2 => format!("/v2/models/{bogus}/versions/{bogus}/infer"),
                    _ => format!("/h/{bogus}"),
                };
                let req = Request::post(format!("{base}{path}"))
                    .header("x-model-name", bogus.as_str())
                    .header("x-model-version", bogus.as_str())
                    .header("x-lineage-id", bogus.as_str())
                    .header("traceparent", format!("00-{i:032x}-{i:016x}-01"))
                    .body(full(Bytes::from_static(b"{}")))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                let _ = resp.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = h.metrics().await;
    let (b, a) = (series(&before), series(&after));
    let new: Vec<&&str> = a.iter().filter(|s| !b.contains(s)).take(10).collect();
    assert_eq!(a.len(), b.len(), "new series: {new:?}");
    assert!(!after.contains("b1f"), "a bogus name reached /metrics");
    // The requests did go through the proxy.
    let sent: f64 = after
        .lines()
        .filter(|l| l.starts_with("modelstamp_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum::<f64>()
        + metric_value(
            &after,
            "modelstamp_unresolved_requests_total{route=\"\",reason=\"no_route\"}",
        );
    assert!(sent >= total as f64 * 0.5, "{sent}");
}

const WEIGHTS: &str = r#"{"actor":"mallory","reason":"test","weights":{"1":0,"2":100}}"#;

async fn admin_call(h: &Harness, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    admin_send(h, method, path, token, WEIGHTS).await
}

async fn admin_send(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &'static str,
) -> (u16, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", h.sidecar.admin_addr))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (resp, body) = send(req.body(full(body)).unwrap()).await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn the_admin_api_refuses_mutations_without_the_token_and_never_returns_secrets() {
    let up = Upstream::start(oi_handler("1")).await;
    let routes = format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{}\"\nmatch = {{ open_inference = true }}\n\
         [[routes.backends]]\nversion = \"1\"\nweight = 90\n[[routes.backends]]\nversion = \"2\"\nweight = 10\n",
        up.addr
    );
    let extra = format!("[registry]\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n");
    let h = Harness::start_edited(&routes, &extra, REGISTRY, "100ms", |t| {
        t.replace("[admin]\n", &format!("[admin]\ntoken = \"{TOKEN}\"\n"))
    })
    .await;
    let _ = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
    let generation = h.metric("modelstamp_snapshot_generation").await;

    let mutating = [
        "/routes/churn/weights",
        "/canary/churn/promote",
        "/canary/churn/rollback",
        "/events/dataset-changed",
    ];
    for path in mutating {
        // Also with a body that would be valid for the endpoint.
        let body = if path.starts_with("/events/") {
            r#"{"name":"churn-train","digest":"ffff"}"#
        } else if path.ends_with("/promote") {
            r#"{"actor":"mallory","reason":"test","version":"2"}"#
        } else {
            WEIGHTS
        };
        for token in [None, Some("wrong-token-0000000"), Some("")] {
            let (status, body) = admin_send(&h, "POST", path, token, body).await;
            assert_eq!(status, 401, "POST {path} with {token:?}: {body}");
            assert!(!body.contains(TOKEN));
        }
    }
    // A file registry takes no webhooks (404); the signed MLflow case is unit-tested in admin.
    let (status, _) = admin_call(&h, "POST", "/webhooks/mlflow", None).await;
    assert_eq!(status, 404, "unsigned webhook");
    for method in ["PUT", "DELETE", "PATCH"] {
        let (status, _) = admin_call(&h, method, "/routes/churn/weights", Some(TOKEN)).await;
        assert_eq!(status, 405, "{method}");
    }
    // Nothing changed.
    assert_eq!(h.metric("modelstamp_snapshot_generation").await, generation);
    assert_eq!(
        h.metric(r#"modelstamp_canary_weight{route="churn",version="2"}"#)
            .await,
        10.0
    );
    // The token works (so the refusals above were about the token, not the calls).
    let (status, body) = admin_call(&h, "POST", "/routes/churn/weights", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");

    // Every read endpoint and page, none of which may carry a secret.
    let lineage = h.lineage_id("1");
    let reads = [
        "/metrics".to_string(),
        "/versions".into(),
        "/audit".into(),
        "/canary/churn".into(),
        "/explain/churn".into(),
        format!("/lineage/{lineage}"),
        "/ui/".into(),
        "/ui/audit".into(),
        "/ui/canary/churn".into(),
        format!("/ui/lineage/{lineage}"),
        "/healthz".into(),
        "/readyz".into(),
    ];
    for path in &reads {
        let (status, body) = admin_call(&h, "GET", path, Some(TOKEN)).await;
        assert!(status < 500, "GET {path}: {status}");
        for secret in [TOKEN, WEBHOOK_SECRET] {
            assert!(!body.contains(secret), "GET {path} returned a secret");
        }
    }
}
