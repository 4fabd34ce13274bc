//! Payload inspection end to end, in-process: prediction metrics, data quality against the
//! training schema, drift, enforce mode, and what is skipped, against fake model servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use modelstamp::inspect::drift;
use support::*;

const REGISTRY: &str = r#"
models:
  churn:
    aliases: { champion: "1" }
    versions:
      "1":
        training_data: { name: churn-train, digest: e5d39153, upstream_tables: [crm.accounts] }
        input_schema:
          - { name: tenure, type: double, min: 0, max: 1, reference: { edges: [0.5], fractions: [0.5, 0.5] } }
          - { name: plan, type: string, categories: [basic, pro], source: crm.accounts.plan_type }
        prediction: { buckets: [0.5], reference: { edges: [0.5], fractions: [0.5, 0.5] } }
      "2":
        training_data: { name: churn-train, digest: 9a41c07e }
        input_schema:
          - { name: tenure, type: double, min: 0, max: 1, reference: { edges: [0.5], fractions: [0.5, 0.5] } }
          - { name: plan, type: string, categories: [basic, pro] }
        prediction: { buckets: [0.5], reference: { edges: [0.5], fractions: [0.5, 0.5] } }
"#;

/// An Open Inference server that predicts each row's `tenure` (so tests choose predictions).
fn echo_tenure() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let tenure = v["inputs"]
                .as_array()
                .and_then(|i| i.iter().find(|t| t["name"] == "tenure"))
                .map(|t| t["data"].clone())
                .unwrap_or_default();
            let out = serde_json::json!({"model_name": "churn", "outputs": [
                {"name": "p", "datatype": "FP64", "shape": [1, 1], "data": tenure}]});
            Response::builder()
                .header("content-type", "application/json")
                .body(full(out.to_string()))
                .unwrap()
        })
    })
}

/// An upstream that answers with exactly the request body.
fn echo_body(content_type: &'static str) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::builder()
                .header("content-type", content_type)
                .body(full(body))
                .unwrap()
        })
    })
}

fn oi_row(tenure: f64, plan: Option<&str>) -> String {
    let plan = plan.map_or(serde_json::Value::Null, |p| p.into());
    serde_json::json!({"inputs": [
        {"name": "tenure", "datatype": "FP64", "shape": [1, 1], "data": [tenure]},
        {"name": "plan", "datatype": "BYTES", "shape": [1, 1], "data": [plan]}]})
    .to_string()
}

async fn settle(h: &Harness) {
    assert!(h.sidecar.telemetry.inspector.drain(Duration::from_secs(10)));
}

#[tokio::test]
async fn predictions_data_quality_and_drift_per_version() {
    let up = Upstream::start(echo_tenure()).await;
    let h = Harness::start_with_registry(
        &churn_route(up.addr, "@champion", ""),
        "[inspect]\nmin_samples = 100\n",
        REGISTRY,
    )
    .await;
    for i in 0..120 {
        // Version 1: clean rows, all tenure 0.25. Version 2: `plan` turned NULL.
        let (r, _) = send(post(
            &h.url("/v2/models/churn/infer"),
            &oi_row(0.25, Some(if i % 2 == 0 { "basic" } else { "pro" })),
        ))
        .await;
        assert_eq!(r.status(), 200);
        let (r, _) = send(post(
            &h.url("/v2/models/churn/versions/2/infer"),
            &oi_row(0.75, None),
        ))
        .await;
        assert_eq!(r.status(), 200);
    }
    settle(&h).await;
    let m = h.metrics().await;
    let v = |s: &str| metric_value(&m, s);
    let issue = |version: &str, feature: &str, issue: &str| {
        v(&format!(
            "modelstamp_feature_issues_total{{model=\"churn\",version=\"{version}\",feature=\"{feature}\",issue=\"{issue}\"}}"
        ))
    };
    assert_eq!(issue("2", "plan", "null"), 120.0, "{m}");
    assert_eq!(issue("1", "plan", "null"), 0.0);
    assert_eq!(issue("1", "plan", "unseen_category"), 0.0);
    assert_eq!(
        v("modelstamp_inspected_rows_total{model=\"churn\",version=\"1\"}"),
        120.0
    );
    assert_eq!(
        v(
            "modelstamp_inspected_messages_total{model=\"churn\",version=\"2\",message=\"response\"}"
        ),
        120.0
    );
    assert_eq!(
        v("modelstamp_prediction_bucket{le=\"0.5\",model=\"churn\",version=\"1\"}")
            + v("modelstamp_prediction_bucket{model=\"churn\",version=\"1\",le=\"0.5\"}"),
        120.0,
        "{m}"
    );
    assert_eq!(
        v("modelstamp_prediction_count{model=\"churn\",version=\"2\"}"),
        120.0
    );
    assert_eq!(
        v("modelstamp_prediction_sum{model=\"churn\",version=\"2\"}"),
        90.0
    );

    // Every prediction of version 1 is in bin 0, of version 2 in bin 1; the reference is 50/50.
    let expected = [0.5, 0.5];
    let want_psi = (1.0 - 0.5) * (1.0f64 / 0.5).ln()
        + (drift::PSI_EPSILON - 0.5) * (drift::PSI_EPSILON / 0.5).ln();
    let drift_of = |version: &str, signal: &str, stat: &str, against: &str| {
        v(&format!(
            "modelstamp_drift{{model=\"churn\",version=\"{version}\",signal=\"{signal}\",statistic=\"{stat}\",against=\"{against}\"}}"
        ))
    };
    assert!(
        (drift_of("1", "prediction", "psi", "reference") - want_psi).abs() < 1e-12,
        "{m}"
    );
    assert!((drift::psi(&expected, &[1.0, 0.0]) - want_psi).abs() < 1e-15);
    let js = drift_of("2", "feature:tenure", "js", "reference");
    // Reference [0.5, 0.5] against [0, 1]: the mixture is [0.25, 0.75].
    let m_half: f64 =
        0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln() + (1.0f64 / 0.75).ln();
    assert!(
        (js - (m_half / 2.0).sqrt()).abs() < 1e-12,
        "js {js} vs {}",
        (m_half / 2.0).sqrt()
    );
    assert!(
        drift_of("1", "prediction", "psi", "version:2") > 5.0,
        "disjoint versions drift apart: {m}"
    );
    assert_eq!(
        v(
            "modelstamp_drift_window_samples{model=\"churn\",version=\"1\",signal=\"feature:tenure\"}"
        ),
        120.0
    );
    assert_eq!(
        v("modelstamp_drift_window_samples{model=\"churn\",version=\"1\",signal=\"feature:plan\"}"),
        120.0
    );
}

/// A Triton-like server speaking the binary tensor extension: it predicts each row's `tenure`
/// (a binary FP64 input) as a binary FP64 output, and reports version `reports`.
fn triton_binary(reports: &'static str) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            let len: usize = req.headers()["inference-header-content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let head: serde_json::Value = serde_json::from_slice(&body[..len]).unwrap();
            let mut at = len;
            let mut tenure = Vec::new();
            for t in head["inputs"].as_array().unwrap() {
                let size = t["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
                if t["name"] == "tenure" {
                    tenure = body[at..at + size].to_vec();
                }
                at += size;
            }
            let rows = tenure.len() / 8;
            let head = serde_json::json!({"model_name": "churn", "model_version": reports,
                "outputs": [{"name": "p", "datatype": "FP64", "shape": [rows, 1],
                             "parameters": {"binary_data_size": tenure.len()}}]})
            .to_string();
            let mut answer = head.clone().into_bytes();
            answer.extend_from_slice(&tenure);
            Response::builder()
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", head.len())
                .body(full(answer))
                .unwrap()
        })
    })
}

/// A binary-extension request as tritonclient.http sends it: `tenure` FP64 and `plan` BYTES,
/// both binary.
fn binary_rows(tenure: &[f64], plan: &[&str]) -> Request<TestBody> {
    let mut plan_bytes = Vec::new();
    for p in plan {
        plan_bytes.extend_from_slice(&(p.len() as u32).to_le_bytes());
        plan_bytes.extend_from_slice(p.as_bytes());
    }
    let head = serde_json::json!({"inputs": [
        {"name": "tenure", "datatype": "FP64", "shape": [tenure.len(), 1],
         "parameters": {"binary_data_size": tenure.len() * 8}},
        {"name": "plan", "datatype": "BYTES", "shape": [plan.len(), 1],
         "parameters": {"binary_data_size": plan_bytes.len()}}],
        "outputs": [{"name": "p", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend(tenure.iter().flat_map(|v| v.to_le_bytes()));
    body.extend_from_slice(&plan_bytes);
    Request::post("/v2/models/churn/infer")
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", head.len())
        .body(full(body))
        .unwrap()
}

#[tokio::test]
async fn triton_binary_tensors_are_inspected_as_json_ones_are() {
    let up = Upstream::start(triton_binary("2")).await;
    let h = Harness::start_with_registry(&churn_route(up.addr, "1", ""), "", REGISTRY).await;
    for _ in 0..10 {
        let mut req = binary_rows(&[0.25, 0.75], &["basic", "gold"]);
        *req.uri_mut() = h.url("/v2/models/churn/infer").parse().unwrap();
        let (r, body) = send(req).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-model-version"], "1");
        assert!(
            body.ends_with(&0.75f64.to_le_bytes()),
            "the answer passes unchanged"
        );
    }
    settle(&h).await;
    let m = h.metrics().await;
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(
        v(r#"modelstamp_inspected_rows_total{model="churn",version="1"}"#),
        20.0,
        "{m}"
    );
    let unseen = r#"modelstamp_feature_issues_total{model="churn",version="1",feature="plan",issue="unseen_category"}"#;
    assert_eq!(v(unseen), 10.0, "{m}");
    assert_eq!(
        v(r#"modelstamp_prediction_count{model="churn",version="1"}"#),
        20.0
    );
    assert_eq!(
        v(r#"modelstamp_prediction_sum{model="churn",version="1"}"#),
        10.0
    );
    // The version the answer's JSON head reports (2) is not the one served (1).
    assert_eq!(
        v(r#"modelstamp_version_mismatch_total{model="churn",expected="1",reported="2"}"#),
        10.0,
        "{m}"
    );
    assert_eq!(h.access_log()[0]["reported_version"], "2");
    // An answer past limits.max_inspect_bytes (64 KiB): its version is still read from the
    // JSON head at its start.
    let rows = vec![0.5; 10_000];
    let plans = vec!["basic"; 10_000];
    let mut req = binary_rows(&rows, &plans);
    *req.uri_mut() = h.url("/v2/models/churn/infer").parse().unwrap();
    let (r, body) = send(req).await;
    assert_eq!(r.status(), 200);
    assert!(body.len() > 64 * 1024);
    let mismatch = r#"modelstamp_version_mismatch_total{model="churn",expected="1",reported="2"}"#;
    assert!(
        h.metric_reaches(mismatch, 11.0).await,
        "{}",
        h.metrics().await
    );
}

#[tokio::test]
async fn enforce_rejects_violations_with_422_and_forwards_clean_requests_unchanged() {
    let up = Upstream::start(echo_body("application/json")).await;
    let h = Harness::start_with_registry(
        &churn_route(up.addr, "1", "inspect = { enforce = true }"),
        "",
        REGISTRY,
    )
    .await;
    let bad = oi_row(7.0, Some("gold"));
    let (resp, body) = send(post(&h.url("/v2/models/churn/infer"), &bad)).await;
    assert_eq!(resp.status(), 422);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "schema_violation");
    assert_eq!(v["violations_total"], 2);
    assert_eq!(
        v["violations"],
        serde_json::json!([
            {"row": 0, "feature": "tenure", "issue": "out_of_range"},
            {"row": 0, "feature": "plan", "issue": "unseen_category"}])
    );
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let good = oi_row(0.5, Some("pro"));
    let (resp, body) = send(post(&h.url("/v2/models/churn/infer"), &good)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, good.as_bytes(), "forwarded byte for byte");
    assert!(
        h.metric_reaches(
            "modelstamp_request_errors_total{model=\"churn\",version=\"1\",kind=\"schema_violation\"}",
            1.0
        )
        .await,
        "{}",
        h.metrics().await
    );

    // The same violation on an observe-only route is forwarded and counted.
    let up2 = Upstream::start(echo_tenure()).await;
    let h2 = Harness::start_with_registry(&churn_route(up2.addr, "1", ""), "", REGISTRY).await;
    let (resp, _) = send(post(&h2.url("/v2/models/churn/infer"), &bad)).await;
    assert_eq!(resp.status(), 200);
    settle(&h2).await;
    assert_eq!(
        h2.metric("modelstamp_feature_issues_total{model=\"churn\",version=\"1\",feature=\"plan\",issue=\"unseen_category\"}")
            .await,
        1.0
    );
}

/// The path that is resolved, enforced and inspected is the path the model server acts on:
/// percent-escapes and dot segments neither bypass enforce nor reach the server unresolved,
/// and an escape a server could read as another path is refused.
#[tokio::test]
async fn escapes_and_dot_segments_neither_bypass_enforce_nor_change_the_version() {
    let up = Upstream::start(oi_handler("2")).await;
    let h = Harness::start_with_registry(
        &churn_route(up.addr, "1", "inspect = { enforce = true }"),
        "",
        REGISTRY,
    )
    .await;
    let hits = || up.hits.load(std::sync::atomic::Ordering::SeqCst);
    let bad = oi_row(7.0, Some("gold"));
    for path in [
        "/v2/models/churn/versions/%32/infer",
        "/v2/models/churn/%69nfer",
        "/v2/models/%63hurn/versions/2/./infer",
        "/v2/models/other/%2E%2E/churn/versions/2/infer",
    ] {
        let (resp, _) = send(post(&h.url(path), &bad)).await;
        assert_eq!(resp.status(), 422, "{path}");
    }
    assert_eq!(hits(), 0, "no violation reached the model server");

    let good = oi_row(0.5, Some("pro"));
    let (resp, _) = send(post(
        &h.url("/v2/models/other/../churn/versions/%32/infer?x=%2F"),
        &good,
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-model-version"], "2");
    let seen = up
        .seen
        .lock()
        .unwrap()
        .last()
        .map(|s| (s.path.clone(), s.query.clone()));
    assert_eq!(
        seen,
        Some((
            "/v2/models/churn/versions/2/infer".into(),
            Some("x=%2F".into())
        )),
        "the resolved path is forwarded; the query as it came"
    );

    for path in [
        "/v2/models/churn/versions/2%2Finfer",
        "/v2/models/churn%3F/infer",
        "/v2/models/churn/infer%",
    ] {
        let (resp, body) = send(post(&h.url(path), &good)).await;
        assert_eq!(resp.status(), 400, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("path"), "{path}");
    }
    assert_eq!(hits(), 1);
    // Counted as the client's malformed requests, never as a version's upstream errors.
    let m = h.metrics().await;
    let count = |kind: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("modelstamp_request_errors_total{") && l.contains(kind))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("kind=\"bad_request\""), 3.0, "{m}");
    assert_eq!(count("kind=\"upstream"), 0.0, "{m}");
}

#[tokio::test]
async fn a_50_mb_request_and_a_malformed_response_pass_through_unchanged() {
    let up = Upstream::start(echo_body("application/json")).await;
    let h = Harness::start_with_registry(&churn_route(up.addr, "1", ""), "", REGISTRY).await;
    let big: Vec<u8> = (0..50 * 1024 * 1024).map(|i| b"{[\"x1, "[i % 7]).collect();
    let req = Request::post(h.url("/v2/models/churn/infer"))
        .header("content-type", "application/json")
        .body(full(big.clone()))
        .unwrap();
    let (resp, body) = send(req).await;
    assert_eq!(resp.status(), 200);
    assert!(body == big, "50 MB echoed unchanged");
    let malformed = r#"{"outputs": [{"name": "p", "data": [1, 2"#;
    let (resp, body) = send(post(&h.url("/v2/models/churn/infer"), malformed)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, malformed.as_bytes());
    settle(&h).await;
    let m = h.metrics().await;
    assert_eq!(
        metric_value(&m, "modelstamp_inspect_skipped_total{reason=\"over_cap\"}"),
        2.0,
        "request and response copies abandoned at the cap: {m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "modelstamp_inspect_skipped_total{reason=\"unparseable\"}"
        ),
        2.0,
        "the malformed request and its echo"
    );
    assert_eq!(metric_value(&m, "modelstamp_inspect_held_bytes"), 0.0);
}

#[tokio::test]
async fn random_bytes_and_truncated_json_pass_through_unchanged() {
    let up = Upstream::start(echo_body("application/json")).await;
    let h = Harness::start_with_registry(
        &churn_route(up.addr, "1", "inspect = { enforce = true }"),
        "",
        REGISTRY,
    )
    .await;
    let mut seed: u64 = 42;
    let golden = oi_row(0.5, Some("pro"));
    for i in 0..60 {
        let body: Vec<u8> = if i % 2 == 0 {
            let len = (i * 977) % 5000;
            (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (seed >> 56) as u8
                })
                .collect()
        } else {
            golden.as_bytes()[..(i * 13) % golden.len()].to_vec()
        };
        let req = Request::post(h.url("/v2/models/churn/infer"))
            .header("content-type", "application/json")
            .body(full(body.clone()))
            .unwrap();
        let (resp, echoed) = send(req).await;
        assert_eq!(
            resp.status(),
            200,
            "case {i}: unreadable bodies are forwarded, not rejected"
        );
        assert_eq!(echoed, body, "case {i}");
    }
    settle(&h).await;
    assert!(
        h.metric("modelstamp_inspect_skipped_total{reason=\"unparseable\"}")
            .await
            >= 100.0
    );
}

#[tokio::test]
async fn sampling_and_the_memory_budget_skip_and_count() {
    let up = Upstream::start(echo_tenure()).await;
    let h = Harness::start_with_registry(
        &churn_route(up.addr, "1", "inspect = { sample = 0.0 }"),
        "",
        REGISTRY,
    )
    .await;
    for _ in 0..5 {
        send(post(
            &h.url("/v2/models/churn/infer"),
            &oi_row(0.5, Some("pro")),
        ))
        .await;
    }
    settle(&h).await;
    let m = h.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "modelstamp_inspect_skipped_total{reason=\"sampled_out\"}"
        ),
        5.0
    );
    assert!(
        m.contains("modelstamp_inspected_rows_total{model=\"churn\",version=\"1\"} 0"),
        "exported from 0 before any inspection: {m}"
    );

    let up = Upstream::start(echo_tenure()).await;
    let h = Harness::start_with_registry(
        &churn_route(up.addr, "1", ""),
        "[inspect]\nmemory_budget_bytes = 16\n",
        REGISTRY,
    )
    .await;
    let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), &oi_row(0.5, None))).await;
    assert_eq!(resp.status(), 200);
    settle(&h).await;
    assert_eq!(
        h.metric("modelstamp_inspect_skipped_total{reason=\"memory_budget\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn llm_tokens_and_finish_reasons_from_sse_and_json() {
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let stream = req.uri().path().contains("chat");
            let _ = req.into_body().collect().await;
            let (ct, body) = if stream {
                ("text/event-stream", "data: {\"model\":\"llama\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
                  data: {\"model\":\"llama\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
                  data: {\"model\":\"llama\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":16}}\n\n\
                  data: [DONE]\n\n".to_string())
            } else {
                ("application/json", r#"{"model":"llama","choices":[{"index":0,"text":"x","finish_reason":"weird"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#.to_string())
            };
            Response::builder()
                .header("content-type", ct)
                .body(full(body))
                .unwrap()
        })
    });
    let up = Upstream::start(handler).await;
    let route = format!(
        "[[routes]]\nname = \"llm\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"1\"\n",
        up.addr
    );
    let h = Harness::start_with_registry(&route, "", REGISTRY).await;
    send(post(
        &h.url("/v1/chat/completions"),
        r#"{"model":"llama","stream":true}"#,
    ))
    .await;
    send(post(&h.url("/v1/completions"), r#"{"model":"llama"}"#)).await;
    settle(&h).await;
    let m = h.metrics().await;
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(
        v("modelstamp_llm_tokens_total{model=\"churn\",version=\"1\",type=\"input\"}"),
        8.0,
        "{m}"
    );
    assert_eq!(
        v("modelstamp_llm_tokens_total{model=\"churn\",version=\"1\",type=\"output\"}"),
        20.0
    );
    assert_eq!(
        v("modelstamp_llm_finish_reasons_total{model=\"churn\",version=\"1\",reason=\"length\"}"),
        1.0
    );
    assert_eq!(
        v("modelstamp_llm_finish_reasons_total{model=\"churn\",version=\"1\",reason=\"other\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_data_quality_crossing_lands_as_a_span_in_the_request_trace() {
    let (collector, received) = otlp::start().await;
    let up = Upstream::start(echo_tenure()).await;
    let extra = format!(
        "[traces]\nsampler = \"always_on\"\notlp_endpoint = \"http://{}\"\notlp_protocol = \"http/protobuf\"\n[inspect]\nmin_samples = 20\n",
        collector.addr
    );
    let h = Harness::start_with_registry(&churn_route(up.addr, "1", ""), &extra, REGISTRY).await;
    for i in 0..30 {
        let plan = if i < 25 { Some("pro") } else { None };
        let (r, _) = send(post(&h.url("/v2/models/churn/infer"), &oi_row(0.5, plan))).await;
        assert_eq!(r.status(), 200);
    }
    settle(&h).await;
    let found = eventually(Duration::from_secs(10), || async {
        received
            .spans()
            .iter()
            .any(|(_, s)| s.name == "modelstamp.data_quality")
    })
    .await;
    assert!(
        found,
        "{:?}",
        received
            .spans()
            .iter()
            .map(|(_, s)| s.name.clone())
            .collect::<Vec<_>>()
    );
    let spans = received.spans();
    let dq: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.name == "modelstamp.data_quality")
        .collect();
    assert_eq!(dq.len(), 1, "one event per crossing");
    let span = &dq[0].1;
    assert_eq!(otlp::attr(span, "ml.feature.name").as_deref(), Some("plan"));
    assert_eq!(
        otlp::attr(span, "ml.feature.issue").as_deref(),
        Some("null")
    );
    assert_eq!(
        otlp::attr(span, "ml.feature.upstream_source").as_deref(),
        Some("crm.accounts.plan_type")
    );
    assert_eq!(span.events.len(), 1);
    // 2 NULLs in 27 rows crossed 5 %: the event sits in the trace of the 27th request.
    let parent = spans
        .iter()
        .find(|(_, s)| s.span_id == span.parent_span_id)
        .expect("the request's server span");
    assert_eq!(parent.1.trace_id, span.trace_id);
    assert_eq!(
        otlp::attr(&parent.1, "ml.model.version").as_deref(),
        Some("1")
    );
}
