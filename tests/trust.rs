//! What a client can do to the sidecar's answers and to the model server, over real sockets:
//! a failed, malformed or stalled upload is the client's error (never the version's), stamps
//! and trust headers cannot be smuggled or stripped, ambiguous requests are refused, and the
//! admin API answers neither rebound names nor cross-site posts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const INFER: &str = "/v2/models/churn/infer";

/// Write `bytes` (optionally keeping the connection open without more bytes for `then_wait`),
/// then read what comes back until the server closes or goes quiet. Returns the first status.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], close_after: bool) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_after {
        // Hang up mid-upload.
        drop(s);
        return None;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.get(9..12).and_then(|s| s.parse().ok())
}

fn head(extra: &str) -> String {
    format!(
        "POST {INFER} HTTP/1.1\r\nHost: sidecar\r\ncontent-type: application/json\r\n{extra}\r\n"
    )
}

/// Every request error kind and upstream error kind, by name, from the exposition.
async fn errors(h: &Harness) -> (Vec<(String, f64)>, f64, f64) {
    let text = h.metrics().await;
    let nonzero = |prefix: &str| {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| {
                let (series, v) = l.rsplit_once(' ')?;
                let v: f64 = v.parse().ok()?;
                (v > 0.0).then(|| (series.to_string(), v))
            })
            .collect::<Vec<_>>()
    };
    let upstream: f64 = nonzero("modelstamp_upstream_errors_total{")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let server_errors: f64 = nonzero("modelstamp_requests_total{")
        .iter()
        .filter(|(s, _)| s.contains("status_class=\"5xx\""))
        .map(|(_, v)| v)
        .sum();
    (
        nonzero("modelstamp_request_errors_total{"),
        upstream,
        server_errors,
    )
}

#[tokio::test]
async fn a_failed_malformed_or_stalled_upload_is_the_clients_error_not_the_versions() {
    let up = Upstream::start(oi_handler("1")).await;
    let extra = "[limits]\nbody_read_timeout = \"300ms\"\n";
    let h = Harness::start(&churn_route(up.addr, "1", ""), extra).await;
    let addr = h.sidecar.proxy_addr;

    // Hangs up after 10 of 1,000 declared bytes.
    let mut bytes = head("content-length: 1000\r\n").into_bytes();
    bytes.extend_from_slice(b"{\"inputs\":");
    raw(addr, &bytes, true).await;
    // A chunk size that is not hex.
    let mut bytes = head("transfer-encoding: chunked\r\n").into_bytes();
    bytes.extend_from_slice(b"5\r\n{\"a\":\r\nzz\r\n1\r\n}\r\n0\r\n\r\n");
    let malformed = raw(addr, &bytes, false).await;
    // Sends 10 of 1,000 bytes, then nothing for longer than body_read_timeout.
    let mut bytes = head("content-length: 1000\r\n").into_bytes();
    bytes.extend_from_slice(b"{\"inputs\":");
    let stalled = raw(addr, &bytes, false).await;
    assert_eq!(stalled, Some(408), "a stalled body gets 408");
    assert!(
        malformed.is_none_or(|s| s == 400),
        "a malformed body gets 400 (or the connection is closed): {malformed:?}"
    );

    let settled = eventually(Duration::from_secs(5), || async {
        let (kinds, _, _) = errors(&h).await;
        kinds.len() >= 3
    })
    .await;
    let (kinds, upstream, server_errors) = errors(&h).await;
    assert!(settled, "{kinds:?}");
    let has = |k: &str| {
        kinds
            .iter()
            .any(|(s, _)| s.contains(&format!("kind=\"{k}\"")))
    };
    assert!(has("client_abort"), "{kinds:?}");
    assert!(has("body_malformed"), "{kinds:?}");
    assert!(has("body_timeout"), "{kinds:?}");
    assert_eq!(upstream, 0.0, "no upstream error charged to the version");
    assert_eq!(server_errors, 0.0, "no 5xx charged to the version");
    // And the access log says whose error it was.
    let log = h.access_log();
    let kinds: Vec<&str> = log.iter().filter_map(|l| l["error"].as_str()).collect();
    assert!(kinds.contains(&"body_timeout"), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k.starts_with("upstream")),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn clients_cannot_strip_stamps_smuggle_trust_headers_or_send_ambiguous_requests() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let addr = h.sidecar.proxy_addr;
    let body = "{\"inputs\":[]}";

    // Connection names the stamps and Host; the client sends its own stale flag and
    // forwarding claims.
    let request = format!(
        "POST {INFER} HTTP/1.1\r\nHost: sidecar\r\ncontent-type: application/json\r\n\
         Connection: keep-alive, x-model-name, x-model-version, x-lineage-id, x-request-id, host\r\n\
         x-lineage-stale: true\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\n\
         X-Forwarded-Host: evil.example\r\nX-Original-URL: /admin\r\nTrue-Client-IP: 1.2.3.4\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(addr, request.as_bytes(), false).await, Some(200));
    let seen = up.last();
    for stamp in [
        "x-model-name",
        "x-model-version",
        "x-lineage-id",
        "x-request-id",
    ] {
        assert!(seen.headers.contains_key(stamp), "{stamp} was stripped");
    }
    assert_eq!(seen.headers["x-model-version"], "1");
    assert_eq!(seen.headers["host"], "sidecar", "Host survives Connection");
    for dropped in [
        "x-lineage-stale",
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
        "x-original-url",
        "true-client-ip",
    ] {
        assert!(
            !seen.headers.contains_key(dropped),
            "{dropped} reached the model server"
        );
    }

    // An absolute-form target names the host; the Host header does not get a second say.
    let request = format!(
        "POST http://model.internal{INFER} HTTP/1.1\r\nHost: other.example\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(addr, request.as_bytes(), false).await, Some(200));
    let seen = up.last();
    let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["model.internal"]);

    // Refused: disguised framing headers, two Hosts, CONNECT and asterisk-form targets.
    let hits = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    for request in [
        format!(
            "POST {INFER} HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\ncontent-length: 2\r\n\r\n{{}}"
        ),
        format!(
            "POST {INFER} HTTP/1.1\r\nHost: a\r\nContent_Length: 0\r\ncontent-length: 2\r\n\r\n{{}}"
        ),
        format!("POST {INFER} HTTP/1.1\r\nHost: a\r\nHost: b\r\ncontent-length: 2\r\n\r\n{{}}"),
        "CONNECT model.internal:443 HTTP/1.1\r\nHost: model.internal:443\r\n\r\n".to_string(),
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
    ] {
        let status = raw(addr, request.as_bytes(), false).await;
        assert!(
            status.is_none_or(|s| s == 400),
            "{request:?} got {status:?}"
        );
    }
    assert_eq!(
        up.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "an ambiguous request reached the model server"
    );
}

#[tokio::test]
async fn no_stamp_rides_in_trailers_from_the_model_server() {
    let up = Upstream::start(std::sync::Arc::new(|_req| {
        Box::pin(async move {
            let (tx, body) = channel_body(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(hyper::body::Frame::data(Bytes::from_static(b"{}")))
                    .await;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-model-version", "9".parse().unwrap());
                trailers.insert("x-lineage-stale", "true".parse().unwrap());
                trailers.insert("grpc-status", "0".parse().unwrap());
                let _ = tx.send(hyper::body::Frame::trailers(trailers)).await;
            });
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        })
    }))
    .await;
    let route = churn_route(up.addr, "1", "upstream_protocol = \"http2\"");
    let h = Harness::start(&route, "").await;
    let req = Request::post(h.url(INFER))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full("{}"))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.headers()["x-model-version"], "1");
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert!(!trailers.contains_key("x-model-version"), "{trailers:?}");
    assert!(!trailers.contains_key("x-lineage-stale"), "{trailers:?}");
}

async fn admin(h: &Harness, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", h.sidecar.admin_addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = r#"{"name":"churn-train","digest":"ffff"}"#;
    send(req.body(full(body)).unwrap())
        .await
        .0
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_admin_api_answers_neither_rebound_names_nor_cross_site_posts() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start_edited(&churn_route(up.addr, "1", ""), "", REGISTRY, "100ms", |t| {
        t.replacen(
            "[admin]\n",
            "[admin]\nallowed_hosts = [\"admin.internal\"]\n",
            1,
        )
    })
    .await;
    // A page whose name was rebound to the sidecar's address.
    assert_eq!(
        admin(&h, "GET", "/versions", &[("host", "evil.example")]).await,
        403
    );
    assert_eq!(
        admin(&h, "GET", "/ui/", &[("host", "evil.example:9901")]).await,
        403
    );
    // Probes and scrapers address pods by any name.
    assert_eq!(
        admin(&h, "GET", "/metrics", &[("host", "evil.example")]).await,
        200
    );
    assert_eq!(admin(&h, "GET", "/readyz", &[("host", "pod-a")]).await, 200);
    // IP literals, localhost and the configured name.
    for host in [
        "127.0.0.1:9901",
        "[::1]:9901",
        "localhost",
        "ADMIN.internal",
    ] {
        assert_eq!(
            admin(&h, "GET", "/versions", &[("host", host)]).await,
            200,
            "{host}"
        );
    }
    // Mutations: JSON only, and never from another site.
    let post = "/events/dataset-changed";
    let json = ("content-type", "application/json");
    assert_eq!(
        admin(&h, "POST", post, &[("content-type", "text/plain")]).await,
        403
    );
    assert_eq!(admin(&h, "POST", post, &[]).await, 403);
    assert_eq!(
        admin(&h, "POST", post, &[json, ("origin", "http://evil.example")]).await,
        403
    );
    assert_eq!(
        admin(&h, "POST", post, &[json, ("sec-fetch-site", "cross-site")]).await,
        403
    );
    assert_eq!(
        admin(
            &h,
            "POST",
            post,
            &[json, ("origin", "http://localhost:9901")]
        )
        .await,
        200
    );
    assert_eq!(admin(&h, "POST", post, &[json]).await, 200);
}

/// Backpressure, end to end, in bytes HTTP/2 flow control counts exactly (no kernel buffer in
/// the figure): an h2c model server sends an 8 MiB answer as fast as the sidecar's window lets
/// it, to a client whose stream window stays at 64 KiB because it never reads. The sidecar
/// takes from the model server only what it can pass on plus its small per-exchange bound
/// (before: hyper's 2 MiB stream window and 400 KiB send buffer). Once the client reads,
/// every byte arrives.
#[tokio::test]
async fn a_client_that_does_not_read_holds_only_a_bounded_part_of_the_answer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const ANSWER: usize = 8 << 20;
    let sent = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let counter = sent.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(tcp).await.unwrap();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut stream = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                let mut left = ANSWER;
                while left > 0 {
                    stream.reserve_capacity(left.min(1 << 20));
                    let Some(Ok(cap)) = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await
                    else {
                        return;
                    };
                    let n = cap.min(left);
                    stream
                        .send_data(Bytes::from(vec![b'x'; n]), n == left)
                        .unwrap();
                    counter.fetch_add(n, Ordering::SeqCst);
                    left -= n;
                }
            });
        }
    });
    let h = Harness::start(
        &churn_route(upstream, "1", "upstream_protocol = \"http2\""),
        "",
    )
    .await;

    let tcp = TcpStream::connect(h.sidecar.proxy_addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let req = Request::post(format!("http://{}{INFER}", h.sidecar.proxy_addr))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    // Let the flow settle: until the model server has sent nothing new for 300 ms.
    let mut last = usize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let taken = sent.load(Ordering::SeqCst);
    assert!(
        taken <= 256 << 10,
        "{taken} bytes taken from the model server for a client that read none"
    );

    let mut body = resp.into_body();
    let mut received = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(received, ANSWER, "nothing lost to backpressure");
}

/// A stream both ways (the model server answers while the upload still runs): when the
/// client's body turns malformed mid-stream, the upstream stream breaks because of the client,
/// and the exchange is logged and counted as the client's error, never as `upstream_reset`.
#[tokio::test]
async fn a_client_body_failing_after_the_answer_started_is_still_the_clients_error() {
    use std::sync::Arc;
    let answers_at_once: Handler = Arc::new(|_req| {
        Box::pin(async move {
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(sse_events(100, Duration::from_millis(50)))
                .unwrap()
        })
    });
    let up = Upstream::start(answers_at_once).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let mut s = TcpStream::connect(h.sidecar.proxy_addr).await.unwrap();
    let mut bytes = head("transfer-encoding: chunked\r\n").into_bytes();
    bytes.extend_from_slice(b"5\r\n{\"a\":\r\n");
    s.write_all(&bytes).await.unwrap();
    // The answer has started streaming back.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: 1") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the answer streamed");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    // Now the upload turns malformed.
    s.write_all(b"zz\r\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;

    let settled = eventually(Duration::from_secs(5), || async {
        h.access_log().iter().any(|l| !l["error"].is_null())
    })
    .await;
    let log = h.access_log();
    assert!(settled, "{log:?}");
    let logged: Vec<&str> = log.iter().filter_map(|l| l["error"].as_str()).collect();
    assert_eq!(logged, ["body_malformed"], "{log:?}");
    let (kinds, upstream, server_errors) = errors(&h).await;
    assert_eq!(
        upstream, 0.0,
        "no upstream error charged to the version: {kinds:?}"
    );
    assert_eq!(server_errors, 0.0);
}

/// The global bound: answers held for clients that do not read (here one client and a 32 MiB
/// answer, more than the kernel's socket buffers take) are counted
/// (`modelstamp_response_bytes_held`); over `limits.max_held_response_bytes` new requests get
/// 503 (`overloaded`, never the version's error), and once the slow client leaves the count
/// returns to 0 and requests are served again.
#[tokio::test]
async fn over_the_held_bytes_limit_new_requests_get_503_and_nothing_is_the_versions() {
    use std::sync::Arc;
    let big: Handler = Arc::new(|_req| {
        Box::pin(async move {
            http::Response::builder()
                .header("content-type", "application/octet-stream")
                .body(full(vec![b'x'; 32 << 20]))
                .unwrap()
        })
    });
    let up = Upstream::start(big).await;
    let h = Harness::start(
        &churn_route(up.addr, "1", ""),
        "[limits]\nmax_held_response_bytes = 8192\n",
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(h.sidecar.proxy_addr).await.unwrap();
    let mut bytes = head("content-length: 2\r\n").into_bytes();
    bytes.extend_from_slice(b"{}");
    slow.write_all(&bytes).await.unwrap();
    let held = || async { h.metric("modelstamp_response_bytes_held").await };
    assert!(
        eventually(Duration::from_secs(10), || async { held().await > 8192.0 }).await,
        "{}",
        h.metrics().await
    );
    // The count moves while the kernel's socket buffers still fill: a request may come in
    // just below the limit. Once they are full, what hyper holds stays over it.
    let mut refused = None;
    for _ in 0..50 {
        let (resp, body) = send(post(&h.url(INFER), "{}")).await;
        if resp.status() == 503 {
            refused = Some(String::from_utf8_lossy(&body).into_owned());
            break;
        }
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("no request refused while over the limit");
    assert!(refused.contains("overloaded"), "{refused}");

    drop(slow);
    assert!(
        eventually(Duration::from_secs(10), || async { held().await == 0.0 }).await,
        "{}",
        h.metrics().await
    );
    let (resp, _) = send(post(&h.url(INFER), "{}")).await;
    assert_eq!(resp.status(), 200);
    let (kinds, upstream, _) = errors(&h).await;
    assert!(
        kinds
            .iter()
            .any(|(k, v)| k.contains("kind=\"overloaded\"") && *v == 1.0),
        "{kinds:?}"
    );
    assert_eq!(upstream, 0.0);
    // A 503 to the client, but the window the canary judges from never sees it.
    let totals = h.sidecar.telemetry.metrics.window("churn", "1").totals();
    assert_eq!(
        totals.errors, 0,
        "{} requests in the window",
        totals.requests
    );
}
