//! Spans over OTLP (gRPC and HTTP/protobuf) to an in-process receiver, W3C propagation,
//! sampling, exemplars, and the trace → lineage lookup through the admin API and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use http::Request;
use support::otlp::{self, attr, hex};
use support::*;

const BODY: &str = r#"{"inputs":[]}"#;
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traces_section(endpoint: &str, protocol: &str, extra: &str) -> String {
    format!(
        "[traces]\nservice_name = \"churn-sidecar\"\notlp_endpoint = \"{endpoint}\"\notlp_protocol = \"{protocol}\"\n{extra}\n"
    )
}

fn traced(url: &str) -> Request<TestBody> {
    Request::post(url)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .body(full(BODY))
        .unwrap()
}

async fn wait_spans(r: &otlp::Received, n: usize) -> Vec<(String, otlp::Span)> {
    assert!(
        eventually(Duration::from_secs(10), || async { r.spans().len() >= n }).await,
        "got {} spans",
        r.spans().len()
    );
    r.spans()
}

#[tokio::test]
async fn server_and_client_spans_reach_a_grpc_collector_with_lineage_attributes() {
    let (collector, received) = otlp::start().await;
    let up = Upstream::start(oi_handler("1")).await;
    let extra = traces_section(
        &format!("http://{}", collector.addr),
        "grpc",
        "lineage_url = \"https://lineage.example/ui/lineage/{lineage_id}\"",
    );
    let h = Harness::start(&churn_route(up.addr, "@champion", ""), &extra).await;
    let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
    assert_eq!(resp.status(), 200);
    let spans = wait_spans(&received, 2).await;
    let server = spans
        .iter()
        .find(|(_, s)| s.kind == 2)
        .map(|(svc, s)| (svc.clone(), s.clone()))
        .expect("a server span");
    let client = spans
        .iter()
        .find(|(_, s)| s.kind == 3)
        .map(|(_, s)| s.clone())
        .expect("a client span");
    let (service, server) = server;
    assert_eq!(service, "churn-sidecar");
    assert_eq!(server.name, "POST churn");
    assert_eq!(
        hex(&server.trace_id),
        CALLER_TRACE,
        "continues the caller's trace"
    );
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "child of the caller's span"
    );
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(
        hex(&client.parent_span_id),
        hex(&server.span_id),
        "client span under the server span"
    );
    let lineage = h.lineage_id("1");
    for (key, want) in [
        ("ml.model.name", "churn".to_string()),
        ("ml.model.version", "1".to_string()),
        ("ml.lineage.id", lineage.clone()),
        (
            "ml.lineage.url",
            format!("https://lineage.example/ui/lineage/{lineage}"),
        ),
        ("ml.route", "churn".to_string()),
        ("http.request.method", "POST".to_string()),
        ("http.response.status_code", "200".to_string()),
        ("url.path", "/v2/models/churn/infer".to_string()),
        ("server.address", "127.0.0.1".to_string()),
        ("ml.model.reported_version", "1".to_string()),
    ] {
        assert_eq!(attr(&server, key).as_deref(), Some(want.as_str()), "{key}");
    }
    assert!(
        attr(&server, "ml.registry.uri")
            .unwrap()
            .starts_with("file://")
    );
    assert_eq!(
        attr(&client, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&client, "server.port").as_deref(),
        Some(up.addr.port().to_string().as_str())
    );
    assert_eq!(
        attr(&client, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        attr(&client, "url.full"),
        Some(format!("http://{}/v2/models/churn/infer", up.addr))
    );
    assert_eq!(client.name, "POST");
    let seen = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        seen,
        format!("00-{CALLER_TRACE}-{}-01", hex(&client.span_id)),
        "the upstream saw the client span's context"
    );
    assert_eq!(up.last().headers["tracestate"], "vendor=abc");
    let line = h.access_log().pop().unwrap();
    assert_eq!(line["trace_id"], CALLER_TRACE);
    assert_eq!(line["span_id"], hex(&server.span_id));
}

#[tokio::test]
async fn http_protobuf_export_and_error_status() {
    let (collector, received) = otlp::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = traces_section(&format!("http://{}", collector.addr), "http/protobuf", "");
    let h = Harness::start(&churn_route(closed, "1", ""), &extra).await;
    let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
    assert_eq!(resp.status(), 502);
    let spans = wait_spans(&received, 2).await;
    let server = spans.iter().map(|(_, s)| s).find(|s| s.kind == 2).unwrap();
    let client = spans.iter().map(|(_, s)| s).find(|s| s.kind == 3).unwrap();
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(2),
        "ERROR status"
    );
    assert_eq!(
        attr(server, "error.type").as_deref(),
        Some("upstream_connect")
    );
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("502")
    );
    assert_eq!(client.status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(h.metric("modelstamp_spans_exported_total").await, 2.0);
}

#[tokio::test]
async fn parent_based_sampling_and_ids_for_unsampled_requests() {
    let (collector, received) = otlp::start().await;
    let up = Upstream::start(oi_handler("1")).await;
    let extra = traces_section(
        &format!("http://{}", collector.addr),
        "grpc",
        "sampler_ratio = 0.0",
    );
    let h = Harness::start(&churn_route(up.addr, "1", ""), &extra).await;
    for _ in 0..5 {
        send(post(&h.url("/v2/models/churn/infer"), BODY)).await;
    }
    let unsampled = Request::post(h.url("/v2/models/churn/infer"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00"))
        .body(full(BODY))
        .unwrap();
    send(unsampled).await;
    send(traced(&h.url("/v2/models/churn/infer"))).await;
    let spans = wait_spans(&received, 2).await;
    // Everything the sidecar queued is sent once the exporter is flushed: no waiting.
    let tracing = h.sidecar.telemetry.tracing.clone();
    tokio::task::spawn_blocking(move || tracing.flush())
        .await
        .unwrap();
    assert_eq!(
        received.spans().len(),
        2,
        "only the sampled parent's trace is exported: {spans:?}"
    );
    let upstream_tp = up.seen.lock().unwrap()[5].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        upstream_tp.starts_with(&format!("00-{CALLER_TRACE}-")) && upstream_tp.ends_with("-00"),
        "unsampled flag propagates: {upstream_tp}"
    );
    let lines = h.access_log();
    assert_eq!(lines.len(), 7);
    assert!(
        lines
            .iter()
            .all(|l| l["trace_id"].as_str().is_some_and(|t| t.len() == 32)
                && l["span_id"].as_str().is_some_and(|s| s.len() == 16))
    );
    // Exemplars point only at the sampled trace.
    let om = get_openmetrics(&h).await;
    assert!(
        om.contains(&format!("# {{trace_id=\"{CALLER_TRACE}\",span_id=\"")),
        "{om}"
    );
    assert_eq!(
        om.matches("trace_id=").count(),
        om.matches(CALLER_TRACE).count()
    );
}

async fn get_openmetrics(h: &Harness) -> String {
    let req = Request::get(format!("http://{}/metrics", h.sidecar.admin_addr))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .body(full(""))
        .unwrap();
    let (_, body) = send(req).await;
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn exemplars_in_openmetrics_only() {
    let up = Upstream::start(oi_handler("1")).await;
    // No exporter: spans are still sampled (always_on), so exemplars still point at trace IDs.
    let h = Harness::start(
        &churn_route(up.addr, "1", ""),
        "[traces]\nsampler = \"always_on\"\n",
    )
    .await;
    let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
    assert_eq!(resp.status(), 200);
    let line = h.access_log().pop().unwrap();
    let span = line["span_id"].as_str().unwrap().to_string();
    let om = get_openmetrics(&h).await;
    let bucket = om
        .lines()
        .find(|l| {
            l.starts_with("modelstamp_request_duration_seconds_bucket{")
                && l.contains("model=\"churn\",version=\"1\"}")
                && l.contains(" # {")
        })
        .unwrap_or_else(|| panic!("no bucket with an exemplar:\n{om}"));
    assert!(
        bucket.contains(&format!(
            "# {{trace_id=\"{CALLER_TRACE}\",span_id=\"{span}\"}}"
        )),
        "{bucket}"
    );
    let counter = om
        .lines()
        .find(|l| {
            l.starts_with(
                "modelstamp_requests_total{model=\"churn\",version=\"1\",status_class=\"2xx\"}",
            )
        })
        .unwrap();
    assert!(counter.contains(CALLER_TRACE), "{counter}");
    assert!(om.ends_with("# EOF\n"));
    let classic = h.metrics().await;
    assert!(
        !classic.contains("trace_id"),
        "classic text carries no exemplars"
    );
}

#[tokio::test]
async fn trace_and_request_ids_lead_to_the_lineage_record() {
    let up = Upstream::start(oi_handler("2")).await;
    let h = Harness::start(&churn_route(up.addr, "2", ""), "").await;
    let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    h.access_log();
    let admin = format!("http://{}", h.sidecar.admin_addr);
    let by_trace: serde_json::Value =
        serde_json::from_str(&get_text(&format!("{admin}/requests/{CALLER_TRACE}")).await).unwrap();
    assert_eq!(by_trace["requests"][0]["request_id"], request_id.as_str());
    assert_eq!(by_trace["requests"][0]["version"], "2");
    let lineage = h.lineage_id("2");
    assert_eq!(by_trace["lineage"][&lineage]["code"]["commit"], "1c2b8e0");
    let by_request: serde_json::Value =
        serde_json::from_str(&get_text(&format!("{admin}/requests/{request_id}")).await).unwrap();
    assert_eq!(by_request["requests"][0]["trace_id"], CALLER_TRACE);

    // The CLI, as a responder would use it.
    let bin = env!("CARGO_BIN_EXE_modelstamp");
    let out = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || {
            Command::new(bin)
                .args(["lineage", CALLER_TRACE, "--admin", &admin])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("served by churn version 2  lineage {lineage}")),
        "{text}"
    );
    assert!(text.contains("@ 1c2b8e0"), "{text}");
    assert!(text.contains("churn-train digest 9a41c07e"), "{text}");
    let out = tokio::task::spawn_blocking({
        let (admin, lineage) = (admin.clone(), lineage.clone());
        move || {
            Command::new(bin)
                .args(["lineage", &lineage, "--json"])
                .env("MODELSTAMP_ADMIN", &admin)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["lineage"][&lineage]["training_data"]["digest"],
        "9a41c07e"
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args([
                "lineage",
                "ffffffffffffffffffffffffffffffff",
                "--admin",
                &admin,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404: no recent request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn openai_routes_carry_gen_ai_models_for_json_and_sse() {
    use bytes::Bytes;
    use http::Response;
    use http_body::Frame;
    use std::sync::Arc;

    let (collector, received) = otlp::start().await;
    let handler: Handler = Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            let stream = String::from_utf8_lossy(&body).contains("\"stream\":true");
            if !stream {
                let reply = r#"{"id":"c1","object":"chat.completion","model":"gpt-x-2025-01-01","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(full(reply))
                    .unwrap();
            }
            let (tx, body) = channel_body(4);
            tokio::spawn(async move {
                for chunk in [
                    "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x-stream\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"h\"}}]}\n\n",
                    "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x-stream\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
                    "data: [DONE]\n\n",
                ] {
                    tx.send(Frame::data(Bytes::from(chunk))).await.unwrap();
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        })
    });
    let up = Upstream::start(handler).await;
    let route = format!(
        "[[routes]]\nname = \"llm\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"1\"\nmatch = {{ path_prefix = \"/v1/\" }}\n",
        up.addr
    );
    let h = Harness::start(
        &route,
        &traces_section(
            &format!("http://{}", collector.addr),
            "grpc",
            "sampler = \"always_on\"",
        ),
    )
    .await;
    let (resp, body) = send(post(
        &h.url("/v1/chat/completions"),
        r#"{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}"#,
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert!(body.starts_with(b"{\"id\":\"c1\""), "bytes unchanged");
    let (resp, body) = send(post(
        &h.url("/v1/chat/completions"),
        r#"{"model":"gpt-x","stream":true,"messages":[]}"#,
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let spans = wait_spans(&received, 4).await;
    let servers: Vec<_> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == 2)
        .collect();
    assert_eq!(servers.len(), 2);
    let models: Vec<(Option<String>, Option<String>, Option<String>)> = servers
        .iter()
        .map(|s| {
            (
                attr(s, "gen_ai.operation.name"),
                attr(s, "gen_ai.request.model"),
                attr(s, "gen_ai.response.model"),
            )
        })
        .collect();
    assert!(
        models.contains(&(
            Some("chat".into()),
            Some("gpt-x".into()),
            Some("gpt-x-2025-01-01".into())
        )),
        "{models:?}"
    );
    assert!(
        models.contains(&(
            Some("chat".into()),
            Some("gpt-x".into()),
            Some("gpt-x-stream".into())
        )),
        "{models:?}"
    );
}

/// An https:// collector (the test CA's certificate for localhost), over gRPC and over
/// HTTP/protobuf: its certificate checked against `traces.otlp_certificate`, a client
/// certificate presented where it asks for one (mutual TLS), and without the CA the batches are
/// refused and counted as export failures, the proxied request unharmed.
#[tokio::test]
async fn spans_reach_an_https_collector_with_a_private_ca_and_a_client_certificate() {
    let tls = std::fs::canonicalize("tests/fixtures/tls").unwrap();
    let file = |name: &str| tls.join(name).display().to_string();
    let up = Upstream::start(oi_handler("1")).await;
    let ca = format!("otlp_certificate = \"{}\"", file("ca.pem"));
    let mutual = format!(
        "{ca}\notlp_client_certificate = \"{}\"\notlp_client_key = \"{}\"",
        file("client.pem"),
        file("client.key")
    );
    for (protocol, client_auth, settings) in [
        ("grpc", false, ca.as_str()),
        ("http/protobuf", false, ca.as_str()),
        ("grpc", true, mutual.as_str()),
        ("http/protobuf", true, mutual.as_str()),
    ] {
        let (collector, received) = otlp::start().await;
        let front = tls::front(collector.addr, client_auth).await;
        let endpoint = format!("https://localhost:{}", front.port());
        let extra = traces_section(&endpoint, protocol, settings);
        let h = Harness::start(&churn_route(up.addr, "@champion", ""), &extra).await;
        let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
        assert_eq!(resp.status(), 200);
        let spans = wait_spans(&received, 2).await;
        assert!(
            spans.iter().all(|(_, s)| hex(&s.trace_id) == CALLER_TRACE),
            "{protocol}, client certificate {client_auth}"
        );
    }

    // The collector's certificate is not trusted (no CA given; the platform's do not sign it).
    let (collector, received) = otlp::start().await;
    let front = tls::front(collector.addr, false).await;
    let extra = traces_section(&format!("https://localhost:{}", front.port()), "grpc", "");
    let h = Harness::start(&churn_route(up.addr, "@champion", ""), &extra).await;
    let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
    assert_eq!(resp.status(), 200, "observation never breaks the request");
    assert!(
        h.metric_reaches(
            r#"modelstamp_spans_dropped_total{reason="export_failed"}"#,
            2.0
        )
        .await,
        "{}",
        h.metrics().await
    );
    assert!(received.spans().is_empty());
}

/// Retryable answers (gRPC UNAVAILABLE, RESOURCE_EXHAUSTED with a RetryInfo, HTTP 503 with
/// Retry-After, HTTP 429) are retried until the collector takes the batch, after the delay it
/// asked for; the others (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without a RetryInfo, HTTP 400) are
/// not. Each case's spans are counted once: exported, or dropped as export_failed.
#[tokio::test]
async fn exports_are_retried_on_the_answers_the_specification_calls_retryable() {
    use otlp::Reply;
    let up = Upstream::start(oi_handler("1")).await;
    let exported = "modelstamp_spans_exported_total";
    let failed = r#"modelstamp_spans_dropped_total{reason="export_failed"}"#;
    for (protocol, script, attempts, delivered) in [
        ("grpc", vec![Reply::Grpc("14"), Reply::Grpc("14")], 3, true),
        ("http/protobuf", vec![Reply::Http(503, Some("1"))], 2, true),
        ("http/protobuf", vec![Reply::Http(429, None)], 2, true),
        ("grpc", vec![Reply::Grpc("3")], 1, false),
        ("grpc", vec![Reply::GrpcRetryInfo("8", 1000)], 2, true),
        ("grpc", vec![Reply::Grpc("8")], 1, false),
        ("http/protobuf", vec![Reply::Http(400, None)], 1, false),
    ] {
        let case = format!("{protocol} {script:?}");
        let (collector, received) = otlp::start().await;
        received.answer(script.clone());
        let extra = traces_section(&format!("http://{}", collector.addr), protocol, "");
        let h = Harness::start(&churn_route(up.addr, "@champion", ""), &extra).await;
        let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
        assert_eq!(resp.status(), 200, "{case}");
        let counted = if delivered { exported } else { failed };
        assert!(
            eventually(Duration::from_secs(10), || async {
                h.metric(counted).await == 2.0
            })
            .await,
            "{case}: {}",
            h.metrics().await
        );
        let seen = received.attempts();
        assert_eq!(seen.len(), attempts, "{case}");
        assert_eq!(
            received.spans().len(),
            if delivered { 2 } else { 0 },
            "{case}"
        );
        assert_eq!(
            h.metric(if delivered { failed } else { exported }).await,
            0.0,
            "{case}"
        );
        if matches!(
            script[0],
            Reply::Http(503, Some("1")) | Reply::GrpcRetryInfo(_, 1000)
        ) {
            assert!(
                seen[1].0 - seen[0].0 >= Duration::from_secs(1),
                "{case}: the delay the collector asked for is waited for"
            );
        }
    }
}

/// `otlp_compression = "gzip"` compresses every batch, flagged as each protocol flags it; a
/// partial success counts the rejected spans apart from the exported ones.
#[tokio::test]
async fn gzip_bodies_and_partial_success() {
    use otlp::Reply;
    let up = Upstream::start(oi_handler("1")).await;
    for protocol in ["grpc", "http/protobuf"] {
        let (collector, received) = otlp::start().await;
        received.answer([Reply::Partial(1, "one span too many")]);
        let extra = traces_section(
            &format!("http://{}", collector.addr),
            protocol,
            "otlp_compression = \"gzip\"",
        );
        let h = Harness::start(&churn_route(up.addr, "@champion", ""), &extra).await;
        let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(wait_spans(&received, 2).await.len(), 2, "{protocol}");
        assert!(
            h.metric_reaches(r#"modelstamp_spans_dropped_total{reason="rejected"}"#, 1.0)
                .await,
            "{protocol}: {}",
            h.metrics().await
        );
        assert_eq!(h.metric("modelstamp_spans_exported_total").await, 1.0);
        assert!(
            received
                .attempts()
                .iter()
                .all(|(_, encoding)| encoding.as_deref() == Some("gzip")),
            "{protocol}"
        );
    }
}

/// A rotated collector CA (a Secret or cert-manager update, written in place) is used by the
/// running exporter: batches refused while the file names the wrong CA arrive once it names
/// the right one, with no restart.
#[tokio::test]
async fn a_rotated_collector_certificate_is_used_without_a_restart() {
    let fixtures = std::fs::canonicalize("tests/fixtures/tls").unwrap();
    let dir = temp_dir("otlp-rotate");
    let ca = dir.join("collector-ca.pem");
    // A certificate, but not the CA that signed the collector's.
    std::fs::copy(fixtures.join("client.pem"), &ca).unwrap();
    let up = Upstream::start(oi_handler("1")).await;
    let (collector, received) = otlp::start().await;
    let front = tls::front(collector.addr, false).await;
    let extra = traces_section(
        &format!("https://localhost:{}", front.port()),
        "grpc",
        &format!("otlp_certificate = \"{}\"", ca.display()),
    );
    let h = Harness::start(&churn_route(up.addr, "@champion", ""), &extra).await;
    let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
    assert_eq!(resp.status(), 200);
    assert!(
        h.metric_reaches(
            r#"modelstamp_spans_dropped_total{reason="export_failed"}"#,
            2.0
        )
        .await,
        "{}",
        h.metrics().await
    );
    std::fs::copy(fixtures.join("ca.pem"), &ca).unwrap();
    // The exporter looks at the files at most once a second, before a batch.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (resp, _) = send(traced(&h.url("/v2/models/churn/infer"))).await;
            resp.status() == 200 && !received.spans().is_empty()
        })
        .await,
        "{}",
        h.metrics().await
    );
}
