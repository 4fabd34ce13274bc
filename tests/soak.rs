//! Soak: the real binary under fixed-rate HTTP/1.1, h2c, gRPC and SSE traffic for
//! `SOAK_SECONDS` (default 600), with a config reload every 30 s that moves the route between two
//! model servers. Zero lost or misattributed requests, resident memory after warm-up grows less
//! than 16 MiB, and open file descriptors return to their baseline once traffic stops.
//!
//! Ignored by `cargo test`; `.ci/run` runs it for 10 minutes, longer runs by hand:
//! `SOAK_SECONDS=3600 cargo test --test soak -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;

const SSE_EVENTS: usize = 10;

/// One model server per version: Open Inference JSON, SSE on `generate_stream`, gRPC on
/// `/inference.`; every answer names the version that produced it.
fn server(version: &'static str) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let _ = req.into_body().collect().await;
            if path.starts_with("/inference.") {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let (tx, body) = channel_body(2);
                tokio::spawn(async move {
                    let _ = tx
                        .send(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok")))
                        .await;
                    let _ = tx.send(Frame::trailers(trailers)).await;
                });
                return Response::builder()
                    .header("content-type", "application/grpc")
                    .header("x-served-by", version)
                    .body(body)
                    .unwrap();
            }
            if path.ends_with("generate_stream") {
                let body = sse_events(SSE_EVENTS, Duration::from_millis(20));
                return Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("x-served-by", version)
                    .body(body)
                    .unwrap();
            }
            let body = format!(
                r#"{{"model_name":"churn","model_version":"{version}","outputs":[{{"name":"p","shape":[1,1],"datatype":"FP64","data":[0.5]}}]}}"#
            );
            Response::builder()
                .header("content-type", "application/json")
                .header("x-served-by", version)
                .body(full(body))
                .unwrap()
        })
    })
}

fn routes(up: std::net::SocketAddr, version: &str) -> String {
    format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{up}\"\nserves = \"{version}\"\nmatch = {{ open_inference = true }}\n\
         [[routes]]\nname = \"grpc\"\nmodel = \"churn\"\nupstream = \"{up}\"\nserves = \"{version}\"\nupstream_protocol = \"http2\"\n\
         match = {{ path_prefix = \"/inference.\" }}\n"
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    lost: AtomicU64,
    misattributed: AtomicU64,
}

#[derive(Clone, Copy)]
enum Kind {
    Http1,
    H2c,
    Grpc,
    Sse,
}

/// One request of `kind`; Ok(true) when answered in full by the version it was stamped with.
async fn one(
    kind: Kind,
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    base: &str,
) -> Result<bool, BoxError> {
    let (path, ctype) = match kind {
        Kind::Http1 | Kind::H2c => ("/v2/models/churn/infer", "application/json"),
        Kind::Grpc => (
            "/inference.GRPCInferenceService/ModelInfer",
            "application/grpc",
        ),
        Kind::Sse => ("/v2/models/churn/generate_stream", "application/json"),
    };
    let req = Request::post(format!("{base}{path}"))
        .header("content-type", ctype)
        .header("te", "trailers")
        .body(full(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = client.request(req).await?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()).into());
    }
    let stamped = resp.headers()["x-model-version"].to_str()?.to_string();
    let served = resp.headers()["x-served-by"].to_str()?.to_string();
    let collected = resp.into_body().collect().await?;
    let grpc_ok = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|v| v == "0");
    let body = collected.to_bytes();
    let complete = match kind {
        Kind::Http1 | Kind::H2c => body.ends_with(b"}"),
        Kind::Grpc => grpc_ok && body.len() == 7,
        Kind::Sse => body.ends_with(format!("data: {}\n\n", SSE_EVENTS - 1).as_bytes()),
    };
    if !complete {
        return Err(format!("incomplete: {body:?}").into());
    }
    Ok(stamped == served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 10-minute run: .ci/run runs it, or by hand with --ignored"]
async fn soak_fixed_rate_mixed_traffic_with_reloads() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let warmup = Duration::from_secs((seconds / 10).clamp(5, 60));
    let a = Upstream::start_quiet(server("1")).await;
    let b = Upstream::start_quiet(server("2")).await;
    let dir = temp_dir("soak");
    std::fs::write(dir.join("registry.yaml"), REGISTRY).unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("m.toml");
    let extra = "[upstream]\npool_idle_timeout = \"2s\"\n[limits]\nheader_read_timeout = \"3s\"\n";
    let write = |up, v: &str| {
        let mut text = config_text_on(&dir, &routes(up, v), extra, "1h", port, admin);
        // Logging 100k+ lines to a file is part of the soak, but not their disk use.
        text = text.replace(&dir.join("access.log").display().to_string(), "/dev/null");
        std::fs::write(&cfg, text).unwrap();
    };
    write(a.addr, "1");
    let child = spawn_run(&cfg);
    let guard = Guard(child);
    let pid = guard.0.id();
    let base = format!("http://127.0.0.1:{port}");
    assert!(wait_ready(admin).await);
    let fd_baseline = fds(pid);

    // Fixed rates: 100/s HTTP/1.1, 50/s h2c, 25/s gRPC, 5 SSE streams/s.
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let plan = [
        (Kind::Http1, 4, 25u64),
        (Kind::H2c, 2, 25),
        (Kind::Grpc, 1, 25),
        (Kind::Sse, 1, 5),
    ];
    let mut workers = Vec::new();
    for (kind, n, per_second) in plan {
        for _ in 0..n {
            let (tally, base) = (tally.clone(), base.clone());
            workers.push(tokio::spawn(async move {
                // Pooled connections are dropped after 1 s idle, below the sidecar's 3 s
                // keep-alive deadline, as a well-configured client does.
                let h2 = matches!(kind, Kind::H2c | Kind::Grpc);
                let client = client_idle(h2, Duration::from_secs(1));
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while tokio::time::Instant::now() < deadline {
                    tick.tick().await;
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let (client, base, tally) = (client.clone(), base.clone(), tally.clone());
                    // Each request on its own task: a slow one never lowers the rate.
                    tokio::spawn(async move {
                        match one(kind, &client, &base).await {
                            Ok(true) => tally.ok.fetch_add(1, Ordering::Relaxed),
                            Ok(false) => tally.misattributed.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("lost: {e}");
                                tally.lost.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    });
                }
            }));
        }
    }

    // Reload every 30 s, alternating model servers; sample RSS every 10 s.
    let started = Instant::now();
    let mut rss_after_warmup = None;
    let mut rss_max_after_warmup = 0;
    let mut reloads = 0;
    let mut next_reload = Duration::from_secs(30);
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = started.elapsed();
        if t >= next_reload {
            reloads += 1;
            let (up, v) = if reloads % 2 == 1 {
                (b.addr, "2")
            } else {
                (a.addr, "1")
            };
            write(up, v);
            let ok = Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            next_reload += Duration::from_secs(30);
        }
        if t >= warmup {
            let rss = rss_kib(pid);
            rss_after_warmup.get_or_insert(rss);
            rss_max_after_warmup = rss_max_after_warmup.max(rss);
        }
        if t.as_secs().is_multiple_of(30) {
            eprintln!(
                "soak t={:>4}s sent={} ok={} lost={} misattributed={} rss={} KiB fds={}",
                t.as_secs(),
                tally.sent.load(Ordering::Relaxed),
                tally.ok.load(Ordering::Relaxed),
                tally.lost.load(Ordering::Relaxed),
                tally.misattributed.load(Ordering::Relaxed),
                rss_kib(pid),
                fds(pid)
            );
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    // Let the last requests finish.
    let done = |t: &Tally| {
        t.ok.load(Ordering::Relaxed)
            + t.lost.load(Ordering::Relaxed)
            + t.misattributed.load(Ordering::Relaxed)
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            done(&tally) == tally.sent.load(Ordering::Relaxed)
        })
        .await,
        "requests never finished"
    );
    let rss_end = rss_kib(pid);
    let growth = rss_max_after_warmup.saturating_sub(rss_after_warmup.unwrap());
    let (sent, ok) = (
        tally.sent.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
    );
    // Traffic over: idle client connections close at the header deadline and pooled upstream
    // connections at pool_idle_timeout.
    let fds_back = eventually(Duration::from_secs(20), || async {
        fds(pid) <= fd_baseline
    })
    .await;
    eprintln!(
        "soak: {seconds} s, {sent} requests, {ok} ok, {} lost, {} misattributed, {reloads} reloads; \
         RSS after warm-up {} KiB, max {} KiB (growth {} KiB), end {} KiB; fds baseline {fd_baseline}, now {}",
        tally.lost.load(Ordering::Relaxed),
        tally.misattributed.load(Ordering::Relaxed),
        rss_after_warmup.unwrap(),
        rss_max_after_warmup,
        growth,
        rss_end,
        fds(pid),
    );
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0, "lost requests");
    assert_eq!(tally.misattributed.load(Ordering::Relaxed), 0);
    assert_eq!(ok, sent);
    assert!(growth < 16 * 1024, "RSS grew {growth} KiB after warm-up");
    assert!(fds_back, "fds {} > baseline {fd_baseline}", fds(pid));
    drop(guard);
}
