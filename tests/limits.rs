//! Limits against hostile or broken clients: request heads over the size or count limit (431),
//! slowloris and idle keep-alive connections (header read deadline), the connection cap, and on
//! HTTP/2 the stream and header-list limits, rapid reset and CONTINUATION floods. Each case
//! checks the refusal, its metric, and that a legitimate client on another connection sees no
//! error at the same time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use support::h2raw::{self, Conn};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INFER: &str = "/v2/models/churn/infer";

async fn harness(limits: &str) -> (Upstream, Harness) {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(
        &churn_route(up.addr, "1", ""),
        &format!("[limits]\n{limits}\n"),
    )
    .await;
    (up, h)
}

/// Write `bytes` and read until the server closes (or 5 s); returns what came back.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s, Duration::from_secs(5)).await.0
}

/// Read until EOF/reset or `wait`; returns the text and whether the peer closed.
async fn read_to_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let mut buf = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

/// A legitimate request on a fresh connection succeeds.
async fn legit_ok(h: &Harness) {
    let (resp, _) = send(post(&h.url(INFER), "{}")).await;
    assert_eq!(resp.status(), 200, "a legitimate client was affected");
}

fn conn_errors(kind: &str) -> String {
    format!("modelstamp_connection_errors_total{{listener=\"proxy\",kind=\"{kind}\"}}")
}

#[tokio::test]
async fn oversized_request_head_gets_431_and_never_reaches_the_model_server() {
    let (up, h) = harness("max_header_bytes = 8192\nmax_headers = 20").await;
    let addr = h.sidecar.proxy_addr;

    let big = format!(
        "POST {INFER} HTTP/1.1\r\nHost: x\r\nx-big: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(9000)
    );
    let answer = exchange(addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let mut many = format!("POST {INFER} HTTP/1.1\r\nHost: x\r\n");
    for i in 0..25 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("content-length: 2\r\n\r\n{}");
    let answer = exchange(addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // Just under both limits passes.
    let mut fine = format!("POST {INFER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..15 {
        fine.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(200)));
    }
    fine.push_str("content-length: 2\r\n\r\n{}");
    let answer = exchange(addr, fine.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    assert!(
        h.metric_reaches(&conn_errors("header_too_large"), 2.0)
            .await
    );
    legit_ok(&h).await;
}

#[tokio::test]
async fn oversized_h2_header_list_is_refused_without_hurting_the_connection_pool() {
    let (up, h) = harness("max_header_bytes = 8192").await;
    let mut c = Conn::open(h.sidecar.proxy_addr).await;
    let advertised = c.handshake(Duration::from_secs(5)).await;
    assert!(
        advertised.contains(&(h2raw::SETTINGS_MAX_HEADER_LIST_SIZE, 8192)),
        "{advertised:?}"
    );
    assert!(
        advertised.contains(&(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS, 256)),
        "{advertised:?}"
    );
    let big = "a".repeat(10_000);
    let block = h2raw::request_block(INFER, &[(b"x-big", big.as_bytes())]);
    c.send(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        1,
        &block,
    ))
    .await;
    let r = c.response(1, Duration::from_secs(5)).await;
    assert!(
        r.status() == Some(431) || r.reset.is_some(),
        "an oversized header list must be refused: {r:?}"
    );
    // The same connection still serves a normal request.
    let block = h2raw::request_block(INFER, &[]);
    c.send(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        3,
        &block,
    ))
    .await;
    let r = c.response(3, Duration::from_secs(5)).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slowloris_and_idle_keep_alive_connections_are_closed_at_the_header_deadline() {
    let (up, h) = harness("header_read_timeout = \"400ms\"").await;
    let addr = h.sidecar.proxy_addr;

    // A client dripping its request head one byte every 100 ms never completes it.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST {INFER} HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\n{{}}");
    let started = Instant::now();
    let mut closed = false;
    for b in head.as_bytes() {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), slow.read(&mut probe)).await
        {
            // The server may answer 408 before closing; either way it must close.
            assert!(n == 0 || probe.starts_with(b"HTTP/1.1 408"), "{n}");
            closed = true;
            break;
        }
    }
    assert!(closed, "the dripping client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off long after the 400 ms deadline"
    );

    // An idle keep-alive connection after one good request is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let (_, closed) = read_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle keep-alive connection stayed open");

    assert!(h.metric_reaches(&conn_errors("header_timeout"), 2.0).await);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    legit_ok(&h).await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept_and_counted() {
    let (_up, h) = harness("max_connections = 3").await;
    let addr = h.sidecar.proxy_addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(
        h.metric_reaches("modelstamp_connections_open{listener=\"proxy\"}", 3.0)
            .await
    );
    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over
        .write_all(format!("GET {INFER} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let (answer, closed) = read_to_close(&mut over, Duration::from_secs(5)).await;
    assert!(closed && answer.is_empty(), "{answer:?}");
    assert!(
        h.metric_reaches(
            "modelstamp_connections_refused_total{listener=\"proxy\"}",
            1.0
        )
        .await
    );

    // Room again once a held connection goes away.
    drop(held.pop());
    assert!(
        h.metric_reaches("modelstamp_connections_open{listener=\"proxy\"}", 2.0)
            .await
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST {INFER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

/// Run `flood` on one raw HTTP/2 connection while a well-behaved h2 client sends 100 requests
/// on another; returns the GOAWAY code the flood got, if any.
async fn flood_beside_legit_traffic(h: &Harness, flood: Vec<u8>) -> Option<u32> {
    let addr = h.sidecar.proxy_addr;
    let url = h.url(INFER);
    let legit = tokio::spawn(async move {
        let client = h2_client();
        let mut statuses = Vec::new();
        for _ in 0..100 {
            let req = Request::post(url.as_str())
                .body(full(Bytes::from_static(b"{}")))
                .unwrap();
            statuses.push(client.request(req).await.map(|r| r.status().as_u16()));
        }
        statuses
    });
    let mut c = Conn::open(addr).await;
    // Write in pieces so the server acts (GOAWAY, close) while the flood is under way.
    for piece in flood.chunks(64 * 1024) {
        if !c.send(piece).await {
            break;
        }
    }
    let goaway = c
        .until(h2raw::GOAWAY, Duration::from_secs(5))
        .await
        .map(|f| f.error_code());
    let statuses = legit.await.unwrap();
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(200))),
        "the legitimate client saw errors: {statuses:?}"
    );
    goaway
}

#[tokio::test]
async fn rapid_reset_flood_is_answered_with_goaway() {
    let (_up, h) = harness("").await;
    let block = h2raw::request_block(INFER, &[]);
    let mut flood = Vec::new();
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        flood.extend(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, id, &block));
        flood.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let code = flood_beside_legit_traffic(&h, flood).await;
    // ENHANCE_YOUR_CALM (0xb).
    assert_eq!(code, Some(0xb), "rapid reset flood not stopped");
    assert!(
        h.metric(&conn_errors("malformed")).await >= 1.0,
        "{}",
        h.metrics().await
    );
}

#[tokio::test]
async fn continuation_flood_is_answered_with_goaway() {
    let (_up, h) = harness("max_header_bytes = 16384").await;
    let block = h2raw::request_block(INFER, &[]);
    let mut flood = h2raw::frame(h2raw::HEADERS, 0, 1, &block);
    // 64 MiB of header fragments that never end, in 16 KiB CONTINUATION frames.
    let fragment = h2raw::hpack(&[(b"x-flood", &[b'a'; 16_000])]);
    for _ in 0..4096 {
        flood.extend(h2raw::frame(h2raw::CONTINUATION, 0, 1, &fragment));
    }
    let code = flood_beside_legit_traffic(&h, flood).await;
    assert!(code.is_some(), "CONTINUATION flood not stopped");
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_idle_timeout_but_a_live_stream_is_not() {
    let events: Handler = std::sync::Arc::new(|req: http::Request<hyper::body::Incoming>| {
        Box::pin(async move {
            if !req.uri().path().ends_with("generate_stream") {
                return http::Response::new(full("{}"));
            }
            // 12 events 100 ms apart: 1.2 s, four times the idle timeout.
            let body = sse_events(12, Duration::from_millis(100));
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        })
    });
    let up = Upstream::start(events).await;
    let h = Harness::start(
        &churn_route(up.addr, "1", ""),
        "[limits]\nidle_timeout = \"300ms\"\nheader_read_timeout = \"10s\"\n",
    )
    .await;
    let addr = h.sidecar.proxy_addr;

    // Connects and never sends a byte: before this deadline nothing covered it.
    let mut mute = TcpStream::connect(addr).await.unwrap();
    let (_, closed) = read_to_close(&mut mute, Duration::from_secs(5)).await;
    assert!(closed, "a mute connection stayed open");

    // An HTTP/2 connection with nothing on it after the preface.
    let mut c = Conn::open(addr).await;
    let mut frames = 0;
    while c.next(Duration::from_secs(5)).await.is_some() {
        frames += 1;
        assert!(frames < 10, "an idle HTTP/2 connection stayed open");
    }

    // A stream that keeps sending outlives the timeout.
    let resp = h1_client()
        .request(post(&h.url("/v2/models/churn/generate_stream"), "{}"))
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.ends_with(b"data: 11\n\n"), "{body:?}");

    // The mute and the HTTP/2 connection, and possibly the SSE client's pooled connection.
    let series = conn_errors("idle_timeout");
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&series).await >= 2.0
        })
        .await,
        "{}",
        h.metrics().await
    );
}

#[tokio::test]
async fn streams_over_the_h2_concurrency_limit_are_refused() {
    let (_up, h) = harness("h2_max_concurrent_streams = 4").await;
    let mut c = Conn::open(h.sidecar.proxy_addr).await;
    let advertised = c.handshake(Duration::from_secs(5)).await;
    assert!(advertised.contains(&(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS, 4)));
    // Five streams whose bodies never end: the fifth is over the limit.
    let block = h2raw::request_block(INFER, &[]);
    for id in [1u32, 3, 5, 7, 9] {
        c.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            id,
            &block,
        ))
        .await;
    }
    let refused = c
        .until_on(h2raw::RST_STREAM, 9, Duration::from_secs(5))
        .await
        .unwrap();
    // REFUSED_STREAM: safe for the client to retry.
    assert_eq!(
        (refused.kind, refused.error_code()),
        (h2raw::RST_STREAM, 0x7)
    );
    // The four admitted streams complete once their bodies end.
    for id in [1u32, 3, 5, 7] {
        c.send(&h2raw::frame(h2raw::DATA, h2raw::END_STREAM, id, b"{}"))
            .await;
    }
    let all = c.responses(&[1, 3, 5, 7], Duration::from_secs(5)).await;
    for r in &all {
        assert_eq!((r.status(), r.ended), (Some(200), true), "{r:?}");
    }
}
