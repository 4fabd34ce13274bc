//! Fault matrix: a model server that misbehaves on purpose (refuses, black-holes the connect,
//! stalls before its headers, resets, truncates, drips, answers garbage or 5xx), reached over
//! HTTP/1.1, h2c, gRPC and SSE. For every case the client gets the documented answer (502/504,
//! gRPC status 14/4, or a visible abort rather than a body that looks complete), the error
//! metric rises by exactly the number of injected faults under the faulty version, and a healthy
//! route served in between never fails. Also: the access log's disk failing (`/dev/full`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A raw HTTP/1.1 server whose behaviour is the last path segment of each request.
async fn fault_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(misbehave(s));
        }
    });
    addr
}

/// Read one request head and body (Content-Length or chunked).
async fn read_request(s: &mut TcpStream) -> Option<(String, bool)> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let sse = head.contains("accept: text/event-stream");
    if head.starts_with("pri * http/2.0") {
        return Some(("h2-preface".into(), false));
    }
    let mut body = buf[head_end..].to_vec();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if head.contains("transfer-encoding: chunked") {
        while !body.ends_with(b"0\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some((path, sse))
}

fn reset(s: TcpStream) {
    // SO_LINGER 0: close() sends RST instead of FIN.
    let _ = s.set_zero_linger();
    drop(s);
}

async fn misbehave(mut s: TcpStream) {
    let Some((path, sse)) = read_request(&mut s).await else {
        return;
    };
    let fault = path.rsplit('/').next().unwrap_or("").to_string();
    let (ctype, framing) = if sse {
        ("text/event-stream", "transfer-encoding: chunked")
    } else {
        ("application/json", "content-length: 1000")
    };
    let cut_head = format!("HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n{framing}\r\n\r\n");
    let first_part: &[u8] = if sse {
        b"e\r\ndata: first\n\n\r\n"
    } else {
        &[b'{'; 100]
    };
    match fault.as_str() {
        "h2-preface" | "garbage" => {
            let _ = s.write_all(b"\x00\x01SSH-2.0-not-http\r\n\r\n").await;
        }
        "503" => {
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy")
                .await;
        }
        "stall" => tokio::time::sleep(Duration::from_secs(5)).await,
        "reset_early" => return reset(s),
        "truncate" | "reset_body" => {
            let _ = s.write_all(cut_head.as_bytes()).await;
            let _ = s.write_all(first_part).await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if fault == "reset_body" {
                return reset(s);
            }
        }
        "drip" => {
            let head = if sse {
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\nconnection: close\r\n\r\n"
            };
            let _ = s.write_all(head.as_bytes()).await;
            for i in 0..20u8 {
                let byte = b'a' + i;
                let piece = if sse {
                    format!("1\r\n{}\r\n", byte as char).into_bytes()
                } else {
                    vec![byte]
                };
                let _ = s.write_all(&piece).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            if sse {
                let _ = s.write_all(b"0\r\n\r\n").await;
            }
        }
        other => panic!("unknown fault {other}"),
    }
    let _ = s.shutdown().await;
}

/// An HTTP/2 model server for gRPC: `503`, `stall`, or `reset_body` (a DATA frame, then the
/// stream is reset), by the last path segment; anything else is a clean gRPC answer.
fn grpc_faults() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let fault = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let _ = req.into_body().collect().await;
            match fault.as_str() {
                "503" => Response::builder().status(503).body(full("busy")).unwrap(),
                "stall" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Response::new(full("late"))
                }
                "reset_body" => Response::builder()
                    .header("content-type", "application/grpc")
                    .body(CutBody::default().boxed())
                    .unwrap(),
                _ => Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "0")
                    .body(full(Bytes::from_static(b"\0\0\0\0\x02ok")))
                    .unwrap(),
            }
        })
    })
}

/// One gRPC message frame, then (50 ms later) a body error: hyper resets the stream.
#[derive(Default)]
struct CutBody {
    sent: bool,
    wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.sent {
            self.sent = true;
            return std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"\0\0\0\0\x05hello",
            )))));
        }
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        std::task::ready!(wait.as_mut().poll(cx));
        std::task::Poll::Ready(Some(Err("cut mid-message".into())))
    }
}

/// A listener whose accept queue is full, so further connects hang (never accepted).
async fn black_hole() -> (SocketAddr, Vec<TcpStream>) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    std::mem::forget(listener);
    (addr, fillers)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
    Grpc,
    Sse,
}

/// What the client must see.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A complete response with this status.
    Status(u16),
    /// gRPC: HTTP 200 carrying this grpc-status.
    GrpcStatus(String),
    /// Headers, then an error while reading the body.
    Aborted,
}

async fn call(proto: Proto, url: &str) -> Answer {
    let mut req = Request::post(url);
    let client = match proto {
        Proto::H1 | Proto::Sse => h1_client(),
        Proto::H2c | Proto::Grpc => h2_client(),
    };
    if proto == Proto::Sse {
        req = req.header("accept", "text/event-stream");
    }
    if proto == Proto::Grpc {
        req = req
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let body = full(Bytes::from_static(b"\0\0\0\0\x02{}"));
    let resp = client.request(req.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let grpc = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    match resp.into_body().collect().await {
        Err(_) => Answer::Aborted,
        Ok(_) if status == 200 && proto == Proto::Grpc && grpc.as_deref() != Some("0") => {
            Answer::GrpcStatus(grpc.unwrap_or_default())
        }
        Ok(_) => Answer::Status(status),
    }
}

const ROUNDS: usize = 2;

#[tokio::test]
async fn every_fault_gets_its_answer_and_is_counted_once_under_the_faulty_version() {
    let healthy = Upstream::start(oi_handler("1")).await;
    let faults = fault_server().await;
    let grpc = Upstream::start(grpc_faults()).await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (hole, _fillers) = black_hole().await;
    let route = |name: &str, prefix: &str, up: SocketAddr, proto: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmodel = \"churn\"\nupstream = \"{up}\"\nserves = \"2\"\n\
             upstream_protocol = \"{proto}\"\nresponse_timeout = \"300ms\"\nmatch = {{ path_prefix = \"{prefix}\" }}\n"
        )
    };
    let routes = [
        churn_route(healthy.addr, "1", ""),
        route("faults", "/f/", faults, "http1"),
        route("grpc-faults", "/g/", grpc.addr, "http2"),
        route("h2-garbage", "/h2garbage/", faults, "http2"),
        route("refused", "/refused/", refused, "auto"),
        route("black-hole", "/hole/", hole, "auto"),
    ]
    .concat();
    let h = Harness::start(&routes, "[upstream]\nconnect_timeout = \"300ms\"\n").await;

    use Answer::*;
    let grpc_14 = || GrpcStatus("14".into());
    // (protocol, path, expected answer, expected upstream error kind)
    let mut cases: Vec<(Proto, &str, Answer, Option<&str>)> = Vec::new();
    for proto in [Proto::H1, Proto::H2c, Proto::Sse] {
        cases.extend([
            (proto, "/f/503", Status(503), Some("5xx")),
            (proto, "/f/stall", Status(504), Some("timeout")),
            (proto, "/f/reset_early", Status(502), Some("reset")),
            (proto, "/f/garbage", Status(502), Some("reset")),
            (proto, "/f/truncate", Aborted, Some("reset")),
            (proto, "/f/reset_body", Aborted, Some("reset")),
            (proto, "/f/drip", Status(200), None),
            (proto, "/refused/x", Status(502), Some("connect")),
            (proto, "/hole/x", Status(504), Some("timeout")),
        ]);
    }
    cases.extend([
        (Proto::Grpc, "/g/503", Status(503), Some("5xx")),
        (
            Proto::Grpc,
            "/g/stall",
            GrpcStatus("4".into()),
            Some("timeout"),
        ),
        (Proto::Grpc, "/g/reset_body", Aborted, Some("reset")),
        (Proto::Grpc, "/g/ok", Status(200), None),
        (Proto::Grpc, "/h2garbage/x", grpc_14(), Some("reset")),
        (Proto::Grpc, "/refused/x", grpc_14(), Some("connect")),
        (
            Proto::Grpc,
            "/hole/x",
            GrpcStatus("4".into()),
            Some("timeout"),
        ),
    ]);

    let mut injected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for _ in 0..ROUNDS {
        for (proto, path, want, kind) in &cases {
            let got = call(*proto, &h.url(path)).await;
            if &got != want {
                failures.push(format!("{proto:?} {path}: want {want:?}, got {got:?}"));
            }
            if let Some(k) = kind {
                *injected.entry(k).or_default() += 1;
            }
            // A healthy request between two faults, alternating protocols.
            let ok = call(Proto::H1, &h.url("/v2/models/churn/infer")).await;
            assert_eq!(
                ok,
                Status(200),
                "healthy route failed after {proto:?} {path}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let series = |v: &str, k: &str| {
        format!(r#"modelstamp_upstream_errors_total{{model="churn",version="{v}",kind="{k}"}}"#)
    };
    for kind in ["connect", "timeout", "reset", "5xx"] {
        let want = injected.get(kind).copied().unwrap_or(0) as f64;
        assert!(
            h.metric_reaches(&series("2", kind), want).await,
            "{kind}: want {want}, got {}",
            h.metric(&series("2", kind)).await
        );
        assert_eq!(
            h.metric(&series("1", kind)).await,
            0.0,
            "healthy version charged"
        );
    }
    let healthy_ok = (ROUNDS * cases.len()) as f64;
    assert!(
        h.metric_reaches(
            r#"modelstamp_requests_total{model="churn",version="1",status_class="2xx"}"#,
            healthy_ok
        )
        .await
    );
}

#[tokio::test]
async fn a_failing_access_log_disk_loses_lines_not_requests() {
    let up = Upstream::start(oi_handler("1")).await;
    let dir = temp_dir("devfull");
    std::fs::write(dir.join("registry.yaml"), REGISTRY).unwrap();
    let config = dir.join("modelstamp.toml");
    let text = config_text(&dir, &churn_route(up.addr, "1", ""), "").replace(
        &format!("{}", dir.join("access.log").display()),
        "/dev/full",
    );
    std::fs::write(&config, text).unwrap();
    let sidecar = modelstamp::Sidecar::start(modelstamp::routing::Source::File(config))
        .await
        .unwrap();
    let url = format!("http://{}/v2/models/churn/infer", sidecar.proxy_addr);
    for _ in 0..20 {
        let (resp, body) = send(post(&url, "{}")).await;
        assert_eq!(resp.status(), 200);
        assert!(!body.is_empty());
    }
    let metrics = format!("http://{}/metrics", sidecar.admin_addr);
    let series = r#"modelstamp_observe_dropped_total{reason="access_log_write_failed"}"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric_value(&get_text(&metrics).await, series) == 20.0
        })
        .await,
        "{}",
        get_text(&metrics).await
    );
}
