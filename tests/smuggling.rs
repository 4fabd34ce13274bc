//! Request smuggling and spoofing corpus (HTTP/1.1), generated here: conflicting and malformed
//! framing (CL+TE, duplicate or differing Content-Length, `+`/hex/empty lengths, Transfer-Encoding
//! spellings, TE on HTTP/1.0, bad chunk sizes), obs-fold, NUL/CR/LF in names and values, and
//! spoofed stamp headers. Every vector carries a second request inside its body. For each: the
//! proxy either rejects it (4xx/5xx from the proxy, connection closed) or forwards one
//! normalized request; the model server never sees the smuggled request, and it sees exactly as
//! many requests as the client got answers from it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request hidden in each vector's body.
const SMUGGLED: &str =
    "GET /v2/models/churn/smuggled HTTP/1.1\r\nHost: x\r\nX-Vector: smuggled\r\n\r\n";

struct Vector {
    name: String,
    head: String,
    body: String,
    /// Must be refused (malformed beyond normalization).
    must_reject: bool,
}

fn request(version: &str, headers: &[String]) -> String {
    let mut head = format!("POST /v2/models/churn/infer {version}\r\nHost: sidecar\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

fn corpus() -> Vec<Vector> {
    let payload = format!("{{\"inputs\":[]}}{SMUGGLED}");
    let mut out = Vec::new();
    let mut add =
        |name: String, version: &str, headers: Vec<String>, body: String, must_reject: bool| {
            out.push(Vector {
                head: request(version, &headers),
                name,
                body,
                must_reject,
            });
        };
    let lengths = [
        "+14",
        "-14",
        "0x0e",
        "14 ",
        " 14",
        "14,14",
        "14, 20",
        "014",
        "",
        "abc",
        "99999999999999999999",
        "14.0",
        "1e1",
        "14\t",
        "0",
        "4",
        "14;",
        "0014",
        "1_4",
    ];
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        for l in lengths {
            add(
                format!("{version} content-length {l:?}"),
                version,
                vec![format!("Content-Length: {l}")],
                payload.clone(),
                false,
            );
        }
        for (a, b) in [("14", "14"), ("14", "20"), ("0", "14"), ("14", "0")] {
            add(
                format!("{version} duplicate content-length {a}/{b}"),
                version,
                vec![
                    format!("Content-Length: {a}"),
                    format!("Content-Length: {b}"),
                ],
                payload.clone(),
                a != b,
            );
        }
        let encodings = [
            "chunked",
            "Chunked",
            "CHUNKED",
            " chunked",
            "chunked ",
            "chunked, identity",
            "identity, chunked",
            "gzip, chunked",
            "chunked, gzip",
            "xchunked",
            "chunk",
            "\tchunked",
            "chunked\t",
            "chunked,chunked",
            "identity",
            "",
        ];
        for te in encodings {
            for with_cl in [false, true] {
                let mut headers = vec![format!("Transfer-Encoding: {te}")];
                if with_cl {
                    headers.push(format!("Content-Length: {}", payload.len()));
                }
                for (kind, body) in [("chunked", chunked(&payload)), ("raw", payload.clone())] {
                    add(
                        format!("{version} te {te:?} cl={with_cl} body={kind}"),
                        version,
                        headers.clone(),
                        body,
                        false,
                    );
                }
            }
        }
    }
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        for size in [
            "zz",
            "-1",
            "0x5",
            "5;ext=1",
            "5 ",
            "ffffffffffffffffffff",
            "",
            " 5",
            "+5",
            "5\t",
        ] {
            let body = format!("{size}\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
            add(
                format!("{version} chunk size {size:?}"),
                version,
                vec!["Transfer-Encoding: chunked".into()],
                body,
                false,
            );
        }
    }
    let bad_headers = [
        ("nul in name", "X-A\0b: c", true),
        ("nul in value", "X-A: b\0c", true),
        ("cr in value", "X-A: b\rc", true),
        ("cr in name", "X-A\rb: c", true),
        ("lf in name", "X-A\nb: c", true),
        ("space before colon", "Content-Length : 14", true),
        ("tab before colon", "Transfer-Encoding\t: chunked", true),
        ("underscore te", "Transfer_Encoding: chunked", false),
        ("obs-fold te", "Transfer-Encoding:\r\n chunked", true),
        ("obs-fold value", "X-A: a\r\n b", true),
        ("empty name", ": x", true),
        ("no colon", "X-A b", true),
    ];
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        for (name, h, must) in bad_headers {
            for (kind, body) in [("chunked", chunked(&payload)), ("raw", payload.clone())] {
                add(
                    format!("{version} {name} ({kind})"),
                    version,
                    vec![h.to_string(), format!("Content-Length: {}", body.len())],
                    body,
                    must,
                );
            }
        }
    }
    for (case, names) in [
        ("lower", ["x-model-version", "x-lineage-id", "x-model-name"]),
        ("upper", ["X-MODEL-VERSION", "X-LINEAGE-ID", "X-MODEL-NAME"]),
        ("mixed", ["X-Model-Version", "X-Lineage-Id", "X-Model-Name"]),
    ] {
        for count in 1..=3 {
            let mut headers: Vec<String> = Vec::new();
            for _ in 0..count {
                headers.extend(names.iter().map(|n| format!("{n}: spoofed")));
            }
            headers.push(format!("Content-Length: {}", payload.len()));
            add(
                format!("spoofed stamps {case} x{count}"),
                "HTTP/1.1",
                headers,
                payload.clone(),
                false,
            );
        }
    }
    for (name, h) in [
        (
            "upgrade h2c with body",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
        ),
        (
            "upgrade websocket with body",
            "Connection: Upgrade\r\nUpgrade: websocket",
        ),
        ("expect continue", "Expect: 100-continue"),
        ("te trailers", "TE: trailers"),
    ] {
        add(
            name.to_string(),
            "HTTP/1.1",
            vec![h.to_string(), format!("Content-Length: {}", payload.len())],
            payload.clone(),
            false,
        );
    }
    out
}

/// A model server that counts the requests it received whole.
fn recording_upstream(complete: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        let complete = complete.clone();
        Box::pin(async move {
            if req.into_body().collect().await.is_ok() {
                complete.fetch_add(1, Ordering::SeqCst);
            }
            Response::builder()
                .header("content-type", "application/json")
                .body(full(r#"{"model_version":"1","outputs":[]}"#))
                .unwrap()
        })
    })
}

fn smuggled(up: &Upstream) -> usize {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path.contains("smuggled"))
        .count()
}

/// Send raw bytes, then read until the proxy closes or stays quiet; the statuses answered and
/// whether the connection was closed.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u16>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        // Wait long for the first answer (a slow machine), briefly for anything after it.
        let wait = if got.is_empty() { 2000 } else { 300 };
        match tokio::time::timeout(Duration::from_millis(wait), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got);
    let statuses = text
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_spoofing_vectors_are_rejected_or_normalized() {
    let complete = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(recording_upstream(complete.clone())).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let addr = h.sidecar.proxy_addr;
    let vectors = corpus();
    assert!(vectors.len() >= 250, "{} vectors", vectors.len());
    let (mut rejected, mut forwarded, mut pipelined) = (0, 0, 0);
    for v in &vectors {
        let before = complete.load(Ordering::SeqCst);
        let smuggled_before = smuggled(&up);
        let mut bytes = v.head.clone().into_bytes();
        bytes.extend_from_slice(v.body.as_bytes());
        let (statuses, closed) = exchange(addr, &bytes).await;
        // Let a forwarded request's body finish at the model server before counting.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let hits = complete.load(Ordering::SeqCst) - before;
        // The hidden request may reach the model server only as a pipelined request the proxy
        // parsed and answered itself (a second response to the client): never behind its back.
        if smuggled(&up) > smuggled_before {
            pipelined += 1;
            assert!(
                statuses.len() >= 2 && statuses[1] == 200,
                "{}: the hidden request reached the model server unanswered: {statuses:?}",
                v.name
            );
        }
        let answered_by_upstream = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(
            hits, answered_by_upstream,
            "{}: the model server saw {hits} requests, the client got {statuses:?}",
            v.name
        );
        let first = statuses.first().copied();
        if v.must_reject {
            assert!(
                matches!(first, Some(400..=499)) || statuses.is_empty(),
                "{}: must be refused, got {statuses:?}",
                v.name
            );
        }
        if let Some(s) = first.filter(|s| *s >= 400) {
            assert!(
                closed,
                "{}: refused with {s} but the connection stayed open",
                v.name
            );
            rejected += 1;
        } else if first == Some(200) {
            forwarded += 1;
        }
    }
    let seen = up.seen.lock().unwrap().clone();
    for s in &seen {
        assert_eq!(
            s.headers.get_all("x-model-version").iter().count(),
            1,
            "{:?}",
            s.headers
        );
        assert_eq!(
            s.headers["x-model-version"], "1",
            "stamps are the proxy's, never the client's"
        );
        assert_eq!(s.headers["x-model-name"], "churn");
        assert!(
            s.headers
                .get("transfer-encoding")
                .is_none_or(|te| te == "chunked")
        );
    }
    println!(
        "{} vectors: {rejected} refused, {forwarded} forwarded normalized, {pipelined} with the hidden request answered as a pipelined one",
        vectors.len()
    );
    assert!(rejected > 50 && forwarded > 50, "{rejected} / {forwarded}");
}

/// HTTP/2 header and framing tricks, written frame by frame. Each stream must be refused (a
/// RST_STREAM, a GOAWAY or a 4xx) with no complete request at the model server, or forwarded
/// normalized; the stamp headers the model server sees are always the proxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_header_and_framing_tricks_are_refused_or_normalized() {
    use support::h2raw::{self, Conn};
    let complete = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(recording_upstream(complete.clone())).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let addr = h.sidecar.proxy_addr;
    const PATH: &str = "/v2/models/churn/infer";
    let std_block = |extra: &[(&[u8], &[u8])]| h2raw::request_block(PATH, extra);
    // (name, header block, DATA payload or None, must be refused)
    type Vector = (&'static str, Vec<u8>, Option<&'static [u8]>, bool);
    let mut vectors: Vec<Vector> = vec![
        (
            "CRLF in a value",
            std_block(&[(b"x-a", b"b\r\nx-injected: 1")]),
            None,
            true,
        ),
        (
            "LF in a value",
            std_block(&[(b"x-a", b"b\nx-injected: 1")]),
            None,
            true,
        ),
        (
            "NUL in a value",
            std_block(&[(b"x-a", b"b\0c")]),
            None,
            true,
        ),
        ("CR in a name", std_block(&[(b"x-a\r", b"b")]), None, true),
        ("colon in a name", std_block(&[(b"x:a", b"b")]), None, true),
        (
            "uppercase name",
            std_block(&[(b"X-Upper", b"b")]),
            None,
            true,
        ),
        ("space in a name", std_block(&[(b"x a", b"b")]), None, true),
        ("empty name", std_block(&[(b"", b"b")]), None, true),
        (
            "transfer-encoding",
            std_block(&[(b"transfer-encoding", b"chunked")]),
            Some(b"0\r\n\r\n"),
            true,
        ),
        (
            "connection header",
            std_block(&[(b"connection", b"keep-alive")]),
            None,
            true,
        ),
        (
            "keep-alive header",
            std_block(&[(b"keep-alive", b"timeout=5")]),
            None,
            true,
        ),
        (
            "upgrade header",
            std_block(&[(b"upgrade", b"websocket")]),
            None,
            true,
        ),
        (
            "proxy-connection",
            std_block(&[(b"proxy-connection", b"keep-alive")]),
            None,
            true,
        ),
        (
            "te other than trailers",
            std_block(&[(b"te", b"gzip")]),
            None,
            true,
        ),
        (
            "content-length above data",
            std_block(&[(b"content-length", b"10")]),
            Some(b"{}"),
            true,
        ),
        (
            "content-length below data",
            std_block(&[(b"content-length", b"1")]),
            Some(b"{}{}{}{}"),
            true,
        ),
        (
            "content-length not a number",
            std_block(&[(b"content-length", b"1x")]),
            Some(b"{}"),
            true,
        ),
        (
            "two content-lengths",
            std_block(&[(b"content-length", b"2"), (b"content-length", b"3")]),
            Some(b"{}"),
            true,
        ),
        (
            "pseudo-header after a regular one",
            h2raw::hpack(&[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b"x-a", b"b"),
                (b":path", PATH.as_bytes()),
                (b":authority", b"s"),
            ]),
            None,
            true,
        ),
        (
            "duplicate :path",
            h2raw::hpack(&[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", PATH.as_bytes()),
                (b":path", b"/v2/models/churn/smuggled"),
                (b":authority", b"s"),
            ]),
            None,
            true,
        ),
        (
            "missing :method",
            h2raw::hpack(&[
                (b":scheme", b"http"),
                (b":path", PATH.as_bytes()),
                (b":authority", b"s"),
            ]),
            None,
            true,
        ),
        (
            "unknown pseudo-header",
            h2raw::hpack(&[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", PATH.as_bytes()),
                (b":authority", b"s"),
                (b":smuggle", b"1"),
            ]),
            None,
            true,
        ),
        (
            "CRLF in :path",
            h2raw::hpack(&[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/v2/models/churn/infer\r\nx: y"),
                (b":authority", b"s"),
            ]),
            None,
            true,
        ),
        (
            "CRLF in :authority",
            h2raw::hpack(&[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", PATH.as_bytes()),
                (b":authority", b"s\r\nx-injected: 1"),
            ]),
            None,
            true,
        ),
        (
            "space in :method",
            h2raw::hpack(&[
                (b":method", b"POST /smuggled"),
                (b":scheme", b"http"),
                (b":path", PATH.as_bytes()),
                (b":authority", b"s"),
            ]),
            None,
            true,
        ),
    ];
    // Spoofed stamps: any count, beside a host header that disagrees with :authority.
    for n in 1..=3 {
        let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
        for _ in 0..n {
            fields.push((b"x-model-version", b"999"));
            fields.push((b"x-lineage-id", b"ln_spoofed"));
            fields.push((b"x-model-name", b"evil"));
        }
        fields.push((b"host", b"other-host"));
        vectors.push(("spoofed stamps", std_block(&fields), Some(b"{}"), false));
    }
    vectors.push((
        "content-length matching data",
        std_block(&[(b"content-length", b"2")]),
        Some(b"{}"),
        false,
    ));

    let (mut refused, mut forwarded) = (0, 0);
    for (name, block, data, must_refuse) in &vectors {
        let before = complete.load(Ordering::SeqCst);
        let mut c = Conn::open(addr).await;
        let mut frames = match data {
            None => h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS | h2raw::END_STREAM,
                1,
                block,
            ),
            Some(_) => h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, block),
        };
        if let Some(d) = data {
            frames.extend(h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, d));
        }
        c.send(&frames).await;
        let r = c.response(1, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let hits = complete.load(Ordering::SeqCst) - before;
        let status = r.status();
        let was_refused =
            r.reset.is_some() || r.goaway.is_some() || matches!(status, Some(400..=499));
        if *must_refuse {
            assert!(was_refused, "{name}: must be refused, got {r:?}");
            assert_eq!(hits, 0, "{name}: the model server got a complete request");
        } else {
            assert_eq!(status, Some(200), "{name}: {r:?}");
            assert_eq!(hits, 1, "{name}");
        }
        if was_refused {
            refused += 1;
        } else {
            forwarded += 1;
        }
    }
    for s in up.seen.lock().unwrap().iter() {
        assert_eq!(s.headers.get_all("x-model-version").iter().count(), 1);
        assert_eq!(s.headers["x-model-version"], "1");
        assert_eq!(s.headers.get_all("x-lineage-id").iter().count(), 1);
        assert_ne!(s.headers["x-lineage-id"], "ln_spoofed");
        assert_eq!(s.headers["x-model-name"], "churn");
        assert!(s.headers.get("x-injected").is_none());
        assert!(!s.path.contains("smuggled"));
    }
    println!(
        "{} HTTP/2 vectors: {refused} refused, {forwarded} forwarded normalized",
        vectors.len()
    );
}
