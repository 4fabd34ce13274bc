//! The real binary: `check`, `run` with SIGTERM drain and SIGHUP reload, `demo`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Response;
use http_body_util::BodyExt;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_modelstamp");

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Kills the child if a test fails before it exits.
struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn check_accepts_the_shipped_demo_config() {
    let out = Command::new(BIN)
        .args(["check", "--config", "config/demo.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (1 routes; registry file:config/registry.yaml: 1 models, 2 versions)"),
        "{stdout}"
    );
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    // The reader is gone before the command writes: `modelstamp check … | head -0`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["check", "--config", "config/demo.toml"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_prints_every_error_with_its_path_and_exits_1() {
    let dir = temp_dir("check");
    std::fs::write(dir.join("registry.yaml"), REGISTRY).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[upstream]\nresponse_timeout = \"soon\"\n[[routes]]\nmodel = \"churn\"\nupstream = \"127.0.0.1:1\"\n\
         [[routes]]\nmodel = \"churn\"\nupstream = \"x:y\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("upstream.response_timeout: invalid duration \"soon\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[1].upstream: invalid address \"x:y\" (expected host:port)"),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");
}

/// Ten SSE events 100 ms apart on `generate_stream`, else "done" after 800 ms.
fn slow_and_streaming() -> Handler {
    Arc::new(|req: http::Request<hyper::body::Incoming>| {
        Box::pin(async move {
            if !req.uri().path().ends_with("generate_stream") {
                tokio::time::sleep(Duration::from_millis(800)).await;
                return Response::new(full("done"));
            }
            let body = sse_events(10, Duration::from_millis(100));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        })
    })
}

const SSE_COMPLETE: &str = "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\ndata: 5\n\ndata: 6\n\ndata: 7\n\ndata: 8\n\ndata: 9\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_200_requests_and_20_sse_streams_then_exits() {
    let up = Upstream::start_quiet(slow_and_streaming()).await;
    let dir = temp_dir("drain");
    std::fs::write(dir.join("registry.yaml"), REGISTRY).unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("m.toml");
    let text = config_text_on(
        &dir,
        &churn_route(up.addr, "1", ""),
        "",
        "100ms",
        port,
        admin,
    );
    std::fs::write(&cfg, text).unwrap();
    let child = spawn_run(&cfg);
    let mut guard = Guard(Some(child));
    assert!(wait_ready(admin).await);
    let base = format!("http://127.0.0.1:{port}/v2/models/churn");
    // 150 requests on their own HTTP/1.1 connections, 50 multiplexed on one h2c connection,
    // and 20 SSE streams.
    let h2 = h2_client();
    let mut calls = Vec::new();
    for i in 0..220 {
        let (client, path) = match i {
            0..150 => (h1_client(), "infer"),
            150..200 => (h2.clone(), "infer"),
            _ => (h1_client(), "generate_stream"),
        };
        let url = format!("{base}/{path}");
        calls.push(tokio::spawn(async move {
            let resp = client.request(post(&url, "{}")).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, body))
        }));
    }
    // Every request has reached the model server before the signal.
    let hits = up.hits.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let hits = hits.clone();
            async move { hits.load(std::sync::atomic::Ordering::SeqCst) == 220 }
        })
        .await
    );
    let child = guard.0.as_mut().unwrap();
    signal(child, "TERM");
    let started = Instant::now();
    let mut truncated = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let want: &[u8] = if i < 200 {
            b"done"
        } else {
            SSE_COMPLETE.as_bytes()
        };
        match call.await.unwrap() {
            Ok((200, body)) if body == want => {}
            other => truncated.push(format!("#{i}: {other:?}")),
        }
    }
    assert!(truncated.is_empty(), "{}", truncated.join("\n"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "exits within the 5 s grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer accepting"
    );
    guard.0 = None;
    // Every drained request was logged, with its full body counted.
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["path"] != "/readyz")
        .collect();
    assert_eq!(lines.len(), 220);
    assert!(lines.iter().all(|l| l["status"] == 200));
    let sse_bytes = SSE_COMPLETE.len() as u64;
    assert_eq!(
        lines.iter().filter(|l| l["bytes_out"] == sse_bytes).count(),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_registry() {
    let up = Upstream::start(oi_handler("1")).await;
    let dir = temp_dir("hup");
    std::fs::write(dir.join("registry.yaml"), REGISTRY).unwrap();
    let admin = free_port();
    let cfg = dir.join("m.toml");
    let text = config_text_on(&dir, &churn_route(up.addr, "1", ""), "", "1h", 0, admin);
    std::fs::write(&cfg, text).unwrap();
    let child = spawn_run(&cfg);
    let guard = Guard(Some(child));
    let versions = format!("http://127.0.0.1:{admin}/versions");
    let generation = |want: u64| {
        let versions = versions.clone();
        async move {
            let Ok(resp) = h1_client()
                .request(http::Request::get(versions).body(full("")).unwrap())
                .await
            else {
                return false;
            };
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["generation"] == want
        }
    };
    assert!(eventually(Duration::from_secs(10), || generation(1)).await);
    std::fs::write(
        dir.join("registry.yaml"),
        REGISTRY.replace("97f447d", "0000001"),
    )
    .unwrap();
    signal(guard.0.as_ref().unwrap(), "HUP");
    assert!(
        eventually(Duration::from_secs(5), || generation(2)).await,
        "SIGHUP reloaded"
    );
}

#[test]
fn demo_prints_a_table_per_version() {
    let log = temp_dir("demo").join("access.log");
    let out = Command::new(BIN)
        .args(["demo", "--requests", "100", "--access-log"])
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("version  lineage_id"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("1 ") || l.starts_with("2 ") || l.starts_with("unknown "))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    let count = |row: &str| {
        row.split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(rows.iter().map(|r| count(r)).sum::<usize>(), 100);
    assert!(
        rows[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("ln_")
    );
    assert!(stdout.contains("admin:      http://127.0.0.1:"), "{stdout}");
    // The canary table judges the challenger against the champion, with the lineage diff.
    assert!(
        stdout.contains("canary  churn: candidate 2 vs baseline 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("training_data.digest         e5d39153 -> 9a41c07e"),
        "{stdout}"
    );
    assert!(stdout.contains("\nverdict: "), "{stdout}");
    // The candidate's `usage_gb` turns NULL halfway: only version 2 shows it, with its source.
    let issues: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("usage_gb") && l.contains("upstream:"))
        .collect();
    assert_eq!(issues.len(), 1, "{stdout}");
    assert!(
        issues[0].contains("null") && issues[0].contains("telemetry.daily_usage.gb"),
        "{stdout}"
    );
    let v2 = stdout.find("version 2 ").unwrap();
    assert!(stdout.find("usage_gb ").unwrap() > v2, "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        100,
        "one access-log line per request"
    );
}

#[tokio::test]
async fn healthcheck_exits_0_when_ready_and_1_otherwise() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let admin = format!("http://{}", h.sidecar.admin_addr);
    let healthcheck = |admin: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["healthcheck", "--admin", &admin])
                .output()
                .unwrap()
        })
    };
    let ok = healthcheck(admin.clone()).await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    h.sidecar.shutdown();
    let draining = healthcheck(admin).await.unwrap();
    assert_eq!(draining.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&draining.stderr).contains("503: not ready"),
        "{}",
        String::from_utf8_lossy(&draining.stderr)
    );
    let down = Command::new(BIN)
        .args(["healthcheck", "--admin"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the admin API"));
}

#[test]
fn the_shipped_kubernetes_config_and_registry_pass_check() {
    let out = Command::new(BIN)
        .args(["check", "--config", "deploy/kubernetes/modelstamp.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const TOKEN: &str = "cli-test-token-0123456789";

/// A split route (90/10 between versions 1 and 2) with an admin token and an audit file.
async fn split_harness() -> (Harness, Upstream, std::path::PathBuf) {
    let up = Upstream::start(oi_handler("1")).await;
    let dir = temp_dir("canary-cli");
    let audit = dir.join("audit.jsonl");
    let route = format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{}\"\nmatch = {{ open_inference = true }}\n\
         [[routes.backends]]\nversion = \"1\"\nweight = 90\n[[routes.backends]]\nversion = \"2\"\nweight = 10\n",
        up.addr
    );
    let h = Harness::start(
        &route,
        &format!("[audit]\npath = \"{}\"\n", audit.display()),
    )
    .await;
    let text = std::fs::read_to_string(&h.config).unwrap().replacen(
        "[admin]\n",
        &format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        1,
    );
    std::fs::write(&h.config, text).unwrap();
    h.sidecar.reloader.reload().await.unwrap();
    (h, up, audit)
}

async fn bin(args: Vec<String>, token: Option<&str>) -> std::process::Output {
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut c = Command::new(BIN);
        c.args(&args).env_remove("MODELSTAMP_ADMIN_TOKEN");
        if let Some(t) = token {
            c.env("MODELSTAMP_ADMIN_TOKEN", t);
        }
        c.output().unwrap()
    })
    .await
    .unwrap()
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[tokio::test]
async fn compare_prints_the_table_verdict_and_lineage_diff() {
    let (h, _up, _) = split_harness().await;
    for _ in 0..10 {
        send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
    }
    let admin = format!("http://{}", h.sidecar.admin_addr);
    let out = bin(
        args(&format!("compare --model churn --admin {admin}")),
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("canary  churn: candidate 2 vs baseline 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("code.commit                  97f447d -> 1c2b8e0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("training_data.digest         e5d39153 -> 9a41c07e"),
        "{stdout}"
    );
    assert!(stdout.contains("verdict: HOLD"), "{stdout}");
    let json = bin(
        args(&format!("compare --model churn --json --admin {admin}")),
        None,
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["verdict"], "hold");
    assert_eq!(v["baseline"]["weight"], 90);
    let unknown = bin(args(&format!("compare --model nope --admin {admin}")), None).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"));
}

#[tokio::test]
async fn promote_and_rollback_are_token_guarded_and_audit_verify_detects_tampering() {
    let (h, _up, audit) = split_harness().await;
    let admin = format!("http://{}", h.sidecar.admin_addr);
    let promote =
        format!("promote --model churn --reason green --ticket ML-9 --actor ci --admin {admin}");
    let denied = bin(args(&promote), None).await;
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));
    let ok = bin(args(&promote), Some(TOKEN)).await;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("promote: route churn"), "{stdout}");
    let rollback = format!("rollback --model churn --reason red --actor ci --admin {admin}");
    assert!(bin(args(&rollback), Some(TOKEN)).await.status.success());
    let file = audit.display().to_string();
    let verified = bin(args(&format!("audit verify {file}")), None).await;
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("2 entries, chain intact"));
    let show = bin(args(&format!("audit show --admin {admin}")), None).await;
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.starts_with("chain: ok") && shown.contains("rollback"),
        "{shown}"
    );
    let head = bin(args(&format!("audit verify {file} --head 00ff")), None).await;
    assert_eq!(head.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&head.stderr).contains("removed from its end"));
    let text = std::fs::read_to_string(&audit).unwrap();
    std::fs::write(&audit, text.replacen("\"green\"", "\"greener\"", 1)).unwrap();
    let tampered = bin(args(&format!("audit verify {file}")), None).await;
    assert_eq!(tampered.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&tampered.stderr)
            .contains("line 1: hash does not match the content (edited)"),
        "{}",
        String::from_utf8_lossy(&tampered.stderr)
    );
}
