//! The data plane end to end, in-process, against fake model servers on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;

const INFER_BODY: &str =
    r#"{"inputs":[{"name":"tenure","datatype":"FP64","shape":[1,1],"data":[0.5]}]}"#;

#[tokio::test]
async fn stamps_headers_up_and_down_with_the_resolved_version() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "@champion", ""), "").await;
    let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), INFER_BODY)).await;
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    let lineage = h.lineage_id("1");
    for headers in [&seen.headers, resp.headers()] {
        assert_eq!(headers["x-model-name"], "churn");
        assert_eq!(headers["x-model-version"], "1");
        assert_eq!(headers["x-lineage-id"], lineage.as_str());
        assert_eq!(headers["x-request-id"].len(), 32);
    }
    assert_eq!(seen.headers["x-request-id"], resp.headers()["x-request-id"]);
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");

    let (resp, _) = send(post(
        &h.url("/v2/models/churn/versions/2/infer"),
        INFER_BODY,
    ))
    .await;
    assert_eq!(
        resp.headers()["x-model-version"],
        "2",
        "an explicit path version wins"
    );
    assert_eq!(resp.headers()["x-lineage-id"], h.lineage_id("2").as_str());
    assert_eq!(
        up.last().path,
        "/v2/models/churn/versions/2/infer",
        "the path is forwarded unchanged"
    );
}

#[tokio::test]
async fn spoofed_stamp_headers_are_removed_in_any_case_and_count() {
    let handler: Handler = Arc::new(|_req: Request<Incoming>| {
        Box::pin(async {
            // A model server that tries to stamp its own version.
            Response::builder()
                .header("X-Model-Version", "bogus")
                .header("x-lineage-id", "ln_bogus")
                .body(full("{}"))
                .unwrap()
        })
    });
    let up = Upstream::start(handler).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let req = Request::post(h.url("/v2/models/churn/infer"))
        .header("X-Model-Version", "666")
        .header("x-model-version", "667")
        .header("X-LINEAGE-ID", "ln_fake")
        .header("x-model-name", "fraud")
        .header("x-request-id", "spoofed-id")
        .body(full(INFER_BODY))
        .unwrap();
    let (resp, _) = send(req).await;
    let seen = up.last();
    assert_eq!(
        seen.headers
            .get_all("x-model-version")
            .iter()
            .collect::<Vec<_>>(),
        vec!["1"]
    );
    assert_eq!(seen.headers.get_all("x-lineage-id").iter().count(), 1);
    assert_eq!(seen.headers["x-model-name"], "churn");
    assert_ne!(seen.headers["x-request-id"], "spoofed-id");
    assert_eq!(
        resp.headers()
            .get_all("x-model-version")
            .iter()
            .collect::<Vec<_>>(),
        vec!["1"]
    );
    assert_eq!(resp.headers()["x-lineage-id"], h.lineage_id("1").as_str());
}

#[tokio::test]
async fn trusted_routes_keep_the_callers_stamps() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "1", "trusted = true"), "").await;
    let req = Request::post(h.url("/v2/models/churn/infer"))
        .header("x-model-version", "1")
        .header("x-request-id", "edge-42")
        .body(full(INFER_BODY))
        .unwrap();
    let (resp, _) = send(req).await;
    assert_eq!(up.last().headers["x-request-id"], "edge-42");
    assert_eq!(resp.headers()["x-request-id"], "edge-42");
}

#[tokio::test]
async fn exact_metric_counts_per_version() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "@champion", ""), "").await;
    for _ in 0..7 {
        send(post(&h.url("/v2/models/churn/infer"), INFER_BODY)).await;
    }
    // The upstream always says 1, so the five version-2 calls are also mismatches.
    for _ in 0..5 {
        send(post(
            &h.url("/v2/models/churn/versions/2/infer"),
            INFER_BODY,
        ))
        .await;
    }
    let v1 = r#"modelstamp_requests_total{model="churn",version="1",status_class="2xx"}"#;
    let v2 = r#"modelstamp_requests_total{model="churn",version="2",status_class="2xx"}"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(v1).await == 7.0 && h.metric(v2).await == 5.0
        })
        .await,
        "{}",
        h.metrics().await
    );
    let text = h.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_request_duration_seconds_count{model="churn",version="1"}"#
        ),
        7.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_upstream_duration_seconds_count{model="churn",version="2"}"#
        ),
        5.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_in_flight_requests{model="churn",version="1"}"#
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_request_bytes_total{model="churn",version="1"}"#
        ),
        (7 * INFER_BODY.len()) as f64
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_version_mismatch_total{model="churn",expected="2",reported="1"}"#
        ),
        5.0
    );
    let info = format!(
        r#"modelstamp_model_version_info{{model="churn",version="1",lineage_id="{}",git_commit="97f447d",dataset_digest="e5d39153"}}"#,
        h.lineage_id("1")
    );
    assert_eq!(metric_value(&text, &info), 1.0, "{text}");
}

#[tokio::test]
async fn version_mismatch_from_body_and_from_header() {
    let up = Upstream::start(oi_handler("2")).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), INFER_BODY)).await;
    assert_eq!(
        resp.headers()["x-model-version"],
        "1",
        "the stamp is what was resolved"
    );
    let series = r#"modelstamp_version_mismatch_total{model="churn",expected="1",reported="2"}"#;
    assert!(h.metric_reaches(series, 1.0).await);
    let line = h.access_log().pop().unwrap();
    assert_eq!(line["reported_version"], "2");

    // A reported version the registry does not know is labelled `other` (bounded labels).
    let up = Upstream::start(oi_handler("999")).await;
    let h = Harness::start(
        &churn_route(up.addr, "1", "version_header = \"x-served-by\""),
        "",
    )
    .await;
    send(post(&h.url("/v2/models/churn/infer"), INFER_BODY)).await;
    let series =
        r#"modelstamp_version_mismatch_total{model="churn",expected="1",reported="other"}"#;
    assert!(h.metric_reaches(series, 1.0).await, "{}", h.metrics().await);
}

#[tokio::test]
async fn unknown_model_and_version_are_proxied_stamped_unknown_and_counted() {
    let up = Upstream::start(oi_handler("1")).await;
    let routes = format!(
        "{}[[routes]]\nname = \"any\"\nupstream = \"{}\"\nmatch = {{ open_inference = true }}\n",
        churn_route(up.addr, "1", ""),
        up.addr
    );
    let h = Harness::start(&routes, "").await;
    let (resp, _) = send(post(
        &h.url("/v2/models/churn/versions/9/infer"),
        INFER_BODY,
    ))
    .await;
    assert_eq!(resp.status(), 200, "proxied, not refused");
    assert_eq!(resp.headers()["x-model-version"], "unknown");
    assert_eq!(resp.headers()["x-lineage-id"], "unknown");
    let (resp, _) = send(post(&h.url("/v2/models/ghost/infer"), INFER_BODY)).await;
    assert_eq!(resp.headers()["x-model-name"], "unknown");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    let (resp, body) = send(post(&h.url("/predict"), INFER_BODY)).await;
    assert_eq!(resp.status(), 404, "no route matches: {body:?}");
    let text = h.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_unresolved_requests_total{route="churn",reason="unknown_version"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_unresolved_requests_total{route="any",reason="unknown_model"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_unresolved_requests_total{route="none",reason="no_route"}"#
        ),
        1.0
    );
    assert!(
        !text.contains("ghost"),
        "raw request input never becomes a label"
    );
}

#[tokio::test]
async fn refused_upstream_is_502_and_slow_upstream_is_504_each_counted() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let slow: Handler = Arc::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(full("late"))
        })
    });
    let slow_up = Upstream::start(slow).await;
    let routes = format!(
        "{}[[routes]]\nname = \"slow\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"2\"\nresponse_timeout = \"200ms\"\nmatch = {{ path_prefix = \"/slow\" }}\n",
        churn_route(closed, "1", ""),
        slow_up.addr
    );
    let h = Harness::start(&routes, "").await;
    let (resp, body) = send(post(&h.url("/v2/models/churn/infer"), INFER_BODY)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-model-version"],
        "1",
        "errors are stamped too"
    );
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["kind"], "upstream_connect");
    let (resp, _) = send(post(&h.url("/slow"), INFER_BODY)).await;
    assert_eq!(resp.status(), 504);
    let text = h.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_upstream_errors_total{model="churn",version="1",kind="connect"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_upstream_errors_total{model="churn",version="2",kind="timeout"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"modelstamp_requests_total{model="churn",version="1",status_class="5xx"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_5xx_is_passed_through_and_counted() {
    let failing: Handler = Arc::new(|_req| {
        Box::pin(async {
            Response::builder()
                .status(503)
                .body(full("overloaded"))
                .unwrap()
        })
    });
    let up = Upstream::start(failing).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let (resp, body) = send(post(&h.url("/v2/models/churn/infer"), INFER_BODY)).await;
    assert_eq!(
        (resp.status().as_u16(), &body[..]),
        (503, &b"overloaded"[..])
    );
    let series = r#"modelstamp_upstream_errors_total{model="churn",version="1",kind="5xx"}"#;
    assert!(h.metric_reaches(series, 1.0).await);
}

#[tokio::test]
async fn sse_events_arrive_before_the_stream_ends() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let handler: Handler = Arc::new(move |_req| {
        let mut release = release_rx.clone();
        Box::pin(async move {
            let (tx, body) = channel_body(4);
            tokio::spawn(async move {
                tx.send(Frame::data(Bytes::from("data: first\n\n")))
                    .await
                    .unwrap();
                // The second event waits until the client has seen the first.
                let _ = release.wait_for(|r| *r).await;
                tx.send(Frame::data(Bytes::from("data: second\n\n")))
                    .await
                    .unwrap();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        })
    });
    let up = Upstream::start(handler).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let resp = h1_client()
        .request(post(&h.url("/v2/models/churn/generate_stream"), "{}"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-model-version"], "1");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    release_tx.send(true).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: second\n\n");
}

#[tokio::test]
async fn a_20_mb_chunked_body_arrives_byte_identical_both_ways() {
    let echo: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(full(body))
        })
    });
    let up = Upstream::start(echo).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let payload: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let payload = Bytes::from(payload);
    let (tx, body) = channel_body(8);
    let chunks = payload.clone();
    tokio::spawn(async move {
        for chunk in chunks.chunks(256 * 1024) {
            tx.send(Frame::data(Bytes::copy_from_slice(chunk)))
                .await
                .unwrap();
        }
    });
    let req = Request::post(h.url("/v2/models/churn/infer"))
        .body(body)
        .unwrap();
    let (resp, echoed) = send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "body changed in transit");
    let line = h.access_log().pop().unwrap();
    assert_eq!(line["bytes_in"], 20 * 1024 * 1024);
    assert_eq!(line["bytes_out"], 20 * 1024 * 1024);
}

#[tokio::test]
async fn request_body_over_the_limit_is_413() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(
        &churn_route(up.addr, "1", ""),
        "[limits]\nmax_request_body_bytes = 1000\n",
    )
    .await;
    let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), &"x".repeat(1001))).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(
        up.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "declared length over the limit never reaches the upstream"
    );
    let (tx, body) = channel_body(4);
    tokio::spawn(async move {
        for _ in 0..4 {
            tx.send(Frame::data(Bytes::from(vec![b'x'; 400])))
                .await
                .unwrap();
        }
    });
    let (resp, _) = send(
        Request::post(h.url("/v2/models/churn/infer"))
            .body(body)
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 413, "a chunked body is cut at the limit");
    let series =
        r#"modelstamp_request_errors_total{model="churn",version="1",kind="body_too_large"}"#;
    assert!(h.metric_reaches(series, 2.0).await);
}

#[tokio::test]
async fn grpc_over_h2c_keeps_trailers() {
    let grpc: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            assert_eq!(req.version(), http::Version::HTTP_2);
            let msg = req.into_body().collect().await.unwrap().to_bytes();
            let (tx, body) = channel_body(4);
            tokio::spawn(async move {
                tx.send(Frame::data(msg)).await.unwrap();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers.insert("grpc-message", "ok".parse().unwrap());
                tx.send(Frame::trailers(trailers)).await.unwrap();
            });
            Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        })
    });
    let up = Upstream::start(grpc).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    // A length-prefixed gRPC message (uncompressed, 3 bytes).
    let frame = Bytes::from_static(&[0, 0, 0, 0, 3, 1, 2, 3]);
    let req = Request::post(h.url("/inference.GRPCInferenceService/ModelInfer"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-model-version", "spoof")
        .body(full(frame.clone()))
        .unwrap();
    let routes_all = format!(
        "[[routes]]\nname = \"grpc\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"1\"\n",
        up.addr
    );
    let h2 = Harness::start(&routes_all, "").await;
    let req_url = req.uri().path().to_string();
    let (mut parts, body) = req.into_parts();
    parts.uri = h2.url(&req_url).parse().unwrap();
    let resp = h2_client()
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-model-version"], "1");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers survive the proxy");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(collected.to_bytes(), frame);
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2, "h2c end to end");
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(
        seen.headers
            .get_all("x-model-version")
            .iter()
            .collect::<Vec<_>>(),
        vec!["1"]
    );
    drop(h);

    // Upstream down: a gRPC client gets grpc-status 14, not an HTTP error page.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start(
        &format!("[[routes]]\nmodel = \"churn\"\nupstream = \"{closed}\"\nserves = \"1\"\n"),
        "",
    )
    .await;
    let req = Request::post(h.url("/inference.GRPCInferenceService/ModelInfer"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(full(frame))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14");
}

#[tokio::test]
async fn h2c_client_to_http1_upstream() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(
        &churn_route(up.addr, "1", "upstream_protocol = \"http1\""),
        "",
    )
    .await;
    let req = Request::post(h.url("/v2/models/churn/infer"))
        .version(http::Version::HTTP_2)
        .body(full(INFER_BODY))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-model-version"], "1");
    assert_eq!(up.last().version, http::Version::HTTP_11);
}

#[tokio::test]
async fn one_access_log_line_per_request_with_trace_ids() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::post(h.url("/v2/models/churn/infer?x=1"))
        .header("traceparent", tp)
        .body(full(INFER_BODY))
        .unwrap();
    let (resp, _) = send(req).await;
    let upstream_tp = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        upstream_tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace: {upstream_tp}"
    );
    assert!(
        !upstream_tp.contains("00f067aa0ba902b7"),
        "the upstream's parent is our client span"
    );
    send(post(
        &h.url("/v2/models/churn/versions/2/infer"),
        INFER_BODY,
    ))
    .await;
    let lines = h.access_log();
    assert_eq!(lines.len(), 2);
    let l = &lines[0];
    assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let span_id = l["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, "00f067aa0ba902b7",
        "our server span, child of the caller's"
    );
    assert_eq!(
        l["request_id"],
        resp.headers()["x-request-id"].to_str().unwrap()
    );
    assert_eq!(l["model"], "churn");
    assert_eq!(l["version"], "1");
    assert_eq!(l["lineage_id"], h.lineage_id("1"));
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/v2/models/churn/infer?x=1");
    assert_eq!(
        (l["status"].as_u64(), l["upstream_status"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(l["bytes_in"].as_u64(), Some(INFER_BODY.len() as u64));
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    assert!(l["error"].is_null());
    assert_eq!(
        lines[1]["trace_id"].as_str().unwrap().len(),
        32,
        "a new trace when none came in"
    );
    assert_eq!(lines[1]["version"], "2");
}

/// Sequential requests share one upstream connection; concurrent ones open more; idle ones
/// close at `upstream.pool_idle_timeout`.
#[tokio::test]
async fn upstream_connections_are_reused_and_closed_once_idle() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(
        &churn_route(up.addr, "1", ""),
        "[upstream]\npool_idle_timeout = \"400ms\"\n",
    )
    .await;
    let url = h.url("/v2/models/churn/infer");
    for _ in 0..20 {
        let (resp, _) = send(post(&url, INFER_BODY)).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        up.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "twenty sequential requests, one upstream connection"
    );
    let mut batch = tokio::task::JoinSet::new();
    for _ in 0..8 {
        batch.spawn(send(post(&url, INFER_BODY)));
    }
    while let Some(done) = batch.join_next().await {
        assert_eq!(done.unwrap().0.status(), 200);
    }
    let accepted = up.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        accepted <= 9,
        "{accepted} connections for 8 concurrent requests"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            up.open.load(std::sync::atomic::Ordering::SeqCst) == 0
        })
        .await,
        "idle upstream connections stayed open past the pool idle timeout"
    );
    let (resp, _) = send(post(&url, INFER_BODY)).await;
    assert_eq!(
        resp.status(),
        200,
        "a new connection after the idle ones closed"
    );
}

/// An upstream that closes every connection after one response (without saying so) costs
/// nothing: the closed connection is never used again.
#[tokio::test]
async fn connections_the_upstream_closed_are_not_reused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                // Read the head and the declared body, answer, close.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = r#"{"model_name":"churn","model_version":"1","outputs":[]}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let h = Harness::start(&churn_route(addr, "1", ""), "").await;
    let url = h.url("/v2/models/churn/infer");
    for i in 0..20 {
        let (resp, body) = send(post(&url, INFER_BODY)).await;
        assert_eq!(resp.status(), 200, "request {i}: {body:?}");
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
}

/// An upstream may answer before it has read the request body: the answer goes out at once,
/// and the connection (which hyper closes) is not lent to the next request.
#[tokio::test]
async fn an_early_answer_while_the_request_body_streams_does_not_hang_the_connection() {
    let handler: Handler = Arc::new(|_req| {
        Box::pin(async {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(r#"{"model_version":"1","outputs":[]}"#))
                .unwrap()
        })
    });
    let up = Upstream::start(handler).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let url = h.url("/v2/models/churn/infer");
    let (tx, body) = channel_body(1);
    tx.send(Frame::data(Bytes::from("{\"inputs\":")))
        .await
        .unwrap();
    let req = Request::post(&url)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let client = h1_client();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("the answer came before the body ended")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    tx.send(Frame::data(Bytes::from("[]}"))).await.ok();
    drop(tx);
    for _ in 0..3 {
        let (resp, _) = tokio::time::timeout(Duration::from_secs(5), send(post(&url, INFER_BODY)))
            .await
            .expect("later requests are not stuck behind the early answer");
        assert_eq!(resp.status(), 200);
    }
}

/// A client that goes away mid-body leaves the upstream connection in an unknown state: it is
/// closed, never lent again.
#[tokio::test]
async fn a_connection_whose_response_was_abandoned_is_closed() {
    let handler: Handler = Arc::new(|_req| {
        Box::pin(async {
            let (tx, body) = channel_body(1);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from("{\"outputs\":["))).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(tx);
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(body)
                .unwrap()
        })
    });
    let up = Upstream::start(handler).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let resp = h1_client()
        .request(post(&h.url("/v2/models/churn/infer"), INFER_BODY))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "{\"outputs\":[");
    drop(body);
    assert!(
        eventually(Duration::from_secs(5), || async {
            up.open.load(std::sync::atomic::Ordering::SeqCst) == 0
        })
        .await,
        "the abandoned exchange's upstream connection stayed open"
    );
}

/// The admin server has a thread and runtime of its own: it answers while every thread of the
/// proxy's runtime is busy (here the test's single-threaded runtime, blocked on purpose).
#[tokio::test]
async fn the_admin_server_answers_while_the_proxy_runtime_is_blocked() {
    use std::io::{Read, Write};
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    // Blocking I/O on the runtime's only thread: nothing else on this runtime runs meanwhile.
    let mut s = std::net::TcpStream::connect(h.sidecar.admin_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let read = s.read_to_string(&mut reply);
    assert!(
        read.is_ok(),
        "no answer while the proxy runtime was blocked: {read:?}"
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok\n"), "{reply}");
}
