//! `modelstamp explain` on replayed incidents, through the real binary: each scenario drives a
//! sidecar process against fake model servers, asks `explain --json`, and checks the top cause
//! and that unrelated signals do not outrank it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use http::Request;
use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_modelstamp");

const REGISTRY: &str = r#"
models:
  churn:
    aliases: { champion: "2", challenger: "2" }
    versions:
      "1":
        code: { commit: "97f447d" }
        training_data: { name: churn-train, digest: e5d39153, upstream_tables: [crm.accounts] }
        environment: { lock_digest: "sha256:aaaa1111" }
        input_schema:
          - { name: tenure, type: double }
          - { name: plan_type, type: string, source: crm.accounts.plan_type }
      "2":
        code: { commit: "1c2b8e0" }
        training_data: { name: churn-train, digest: 9a41c07e, upstream_tables: [crm.accounts] }
        environment: { lock_digest: "sha256:aaaa1111" }
        created_at: "2026-11-03T11:40:00Z"
        promotion: { by: carol, ticket: ML-1502 }
        input_schema:
          - { name: tenure, type: double }
          - { name: plan_type, type: string, source: crm.accounts.plan_type }
      "3":
        code: { commit: "97f447d" }
        training_data: { name: churn-train, digest: e5d39153 }
        environment: { lock_digest: "sha256:bbbb2222" }
"#;

/// The shared versioned model server (unversioned paths are version 2): `fail_every`-th calls
/// of `fail_version` answer 500, `slow_version` sleeps `delay`, and it reports `reported` (or
/// the path's version).
fn server(
    fail_version: &'static str,
    fail_every: usize,
    slow_version: &'static str,
    delay: Duration,
    reported: Option<&'static str>,
) -> Handler {
    versioned_server(Versions {
        default: "2",
        fail: fail_version,
        fail_every,
        slow: slow_version,
        delay,
        reported,
        prediction: None,
    })
}

struct Sidecar {
    child: Child,
    port: u16,
    admin: u16,
    cfg: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(routes: &str, extra: &str) -> Sidecar {
    start_with(REGISTRY, routes, extra).await
}

async fn start_with(registry: &str, routes: &str, extra: &str) -> Sidecar {
    let dir = temp_dir("explain");
    std::fs::write(dir.join("registry.yaml"), registry).unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("m.toml");
    let extra = extra.replace("{dir}", &dir.display().to_string());
    std::fs::write(
        &cfg,
        config_text_on(&dir, routes, &extra, "1h", port, admin),
    )
    .unwrap();
    run(&cfg, port, admin).await
}

/// The sidecar of a config written before (again, after a restart).
async fn run(cfg: &std::path::Path, port: u16, admin: u16) -> Sidecar {
    // Every scenario's admin API takes the token (traffic changes need one).
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(cfg)
        .env("MODELSTAMP_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let s = Sidecar {
        child,
        port,
        admin,
        cfg: cfg.to_path_buf(),
    };
    assert!(wait_ready(admin).await, "sidecar ready");
    s
}

fn split(upstream: std::net::SocketAddr, second: &str) -> String {
    format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{upstream}\"\nmatch = {{ open_inference = true }}\n\
         [[routes.backends]]\nversion = \"1\"\nweight = 50\n[[routes.backends]]\nversion = \"{second}\"\nweight = 50\n\
         [routes.canary]\nsticky_header = \"x-user\"\n"
    )
}

fn body(plan: Option<&str>) -> String {
    let plan = plan.map_or(Value::Null, |p| p.into());
    serde_json::json!({"inputs": [
        {"name": "tenure", "datatype": "FP64", "shape": [1, 1], "data": [0.4]},
        {"name": "plan_type", "datatype": "BYTES", "shape": [1, 1], "data": [plan]}]})
    .to_string()
}

async fn traffic(s: &Sidecar, n: usize, null_from: Option<usize>) {
    for i in 0..n {
        let plan = if null_from.is_some_and(|k| i >= k) {
            None
        } else {
            Some("basic")
        };
        let req = Request::post(format!("http://127.0.0.1:{}/v2/models/churn/infer", s.port))
            .header("content-type", "application/json")
            .header("x-user", format!("user-{i}"))
            .body(full(body(plan)))
            .unwrap();
        send(req).await;
    }
    // Wait (with a deadline) until the inspection worker has read every queued exchange:
    // each was queued before its response's last byte left the sidecar.
    let metrics = format!("http://127.0.0.1:{}/metrics", s.admin);
    let drained =
        eventually(Duration::from_secs(10), || {
            let metrics = metrics.clone();
            async move {
                metric_value(&get_text(&metrics).await, "modelstamp_inspect_queue_depth") == 0.0
            }
        })
        .await;
    assert!(drained, "the inspection worker never caught up");
}

/// `modelstamp explain --model churn` with these arguments (no `MODELSTAMP_ADMIN` inherited).
async fn explain_cli(args: Vec<String>) -> std::process::Output {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["explain", "--model", "churn"])
            .args(&args)
            .env_remove("MODELSTAMP_ADMIN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `explain --json` with these arguments.
async fn explain_json(args: &[&str]) -> Value {
    let out = explain_cli(args.iter().map(|a| a.to_string()).collect()).await;
    serde_json::from_slice(&out.stdout).unwrap()
}

fn admin_url(s: &Sidecar) -> String {
    format!("http://127.0.0.1:{}", s.admin)
}

async fn explain(s: &Sidecar) -> Value {
    explain_json(&["--since", "10m", "--json", "--admin", &admin_url(s)]).await
}

/// The human-readable explanation (printed, for the CI log and the issue note).
async fn explain_text(s: &Sidecar) -> String {
    let args = ["--since", "10m", "--admin", &admin_url(s)];
    let out = explain_cli(args.iter().map(|a| a.to_string()).collect()).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("explain  churn  from "), "{text}");
    println!("{text}");
    text
}

fn rules(e: &Value) -> Vec<String> {
    e["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rule"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_trained_on_a_changed_dataset() {
    let up = Upstream::start(server("2", 8, "", Duration::ZERO, None)).await;
    let s = start(&split(up.addr, "2"), "").await;
    traffic(&s, 400, None).await;
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "version_errors", "{e:#}");
    let title = top["title"].as_str().unwrap();
    assert!(
        title.starts_with("errors started with version 2 (lineage ln_"),
        "{title}"
    );
    assert!(
        title.contains("dataset digest e5d3 → 9a41 and commit 97f4 → 1c2b"),
        "{title}"
    );
    assert!(
        !rules(&e).contains(&"upstream_data".to_string()),
        "{:?}",
        rules(&e)
    );
    let fields: Vec<&str> = top["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"training_data.digest") && fields.contains(&"code.commit"),
        "{fields:?}"
    );
    assert!(explain_text(&s).await.contains(" 1. ["), "a ranked list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_field_turning_null() {
    let up = Upstream::start(server("", 1, "", Duration::ZERO, None)).await;
    let s = start(&split(up.addr, "2"), "[inspect]\nmin_samples = 20\n").await;
    traffic(&s, 300, Some(100)).await;
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "upstream_data", "{e:#}");
    let title = top["title"].as_str().unwrap();
    assert!(title.starts_with("feature `plan_type` NULL on "), "{title}");
    assert_eq!(
        (&top["feature"], &top["source"]),
        (&"plan_type".into(), &"crm.accounts.plan_type".into())
    );
    assert_eq!(top["action"], "page the owner of crm.accounts.plan_type");
    assert!(
        title.contains("on all versions: upstream source crm.accounts.plan_type"),
        "{title}"
    );
    assert!(
        title.contains(" since 20"),
        "the first crossing's time: {title}"
    );
    assert!(
        !rules(&e).iter().any(|r| r.starts_with("version_")),
        "no version is blamed: {:?}",
        rules(&e)
    );
    let timeline: Vec<&str> = e["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(timeline.contains(&"data_quality"), "{timeline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_wrong_model_version_on_the_server() {
    let up = Upstream::start(server("", 1, "", Duration::ZERO, Some("1"))).await;
    let route = format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"@champion\"\nmatch = {{ open_inference = true }}\n",
        up.addr
    );
    let s = start(&route, "").await;
    traffic(&s, 60, None).await;
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "version_mismatch", "{e:#}");
    assert_eq!(
        top["title"],
        "the model server reports version 1 while the registry alias champion points to 2"
    );
    assert!(
        top["evidence"][0]
            .as_str()
            .unwrap()
            .starts_with("60 responses stamped 2 reported model_version 1"),
        "{top}"
    );
    assert_eq!(rules(&e).len(), 1, "{:?}", rules(&e));
}

/// The admin token of every scenario's sidecar (`MODELSTAMP_ADMIN_TOKEN`).
const TOKEN: &str = "0123456789abcdef";

async fn admin_post(s: &Sidecar, path: &str, body: &str) -> Value {
    let req = Request::post(format!("http://127.0.0.1:{}{path}", s.admin))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(body.to_string()))
        .unwrap();
    let (resp, body) = send(req).await;
    assert!(
        resp.status().is_success(),
        "{path}: {} {}",
        resp.status(),
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_snapshot_with_nothing_wrong_is_a_risk_not_a_cause() {
    let up = Upstream::start(server("", 1, "", Duration::ZERO, None)).await;
    let route = format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"2\"\nmatch = {{ open_inference = true }}\n",
        up.addr
    );
    let s = start(&route, "").await;
    traffic(&s, 40, None).await;
    // A snapshot older than the one version 2 was trained on (made 2026-11-03), announced late:
    // not newer for arriving last.
    let old = admin_post(
        &s,
        "/events/dataset-changed",
        r#"{"name": "churn-train", "digest": "0ld00000", "at": "2026-10-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(old["outcome"], "matched");
    assert!(
        !old["stale"].to_string().contains(r#""version":"2""#),
        "version 2 was trained on a later snapshot: {old}"
    );
    // Tonight's routine snapshot.
    let nightly = admin_post(
        &s,
        "/events/dataset-changed",
        r#"{"name": "churn-train", "digest": "77aa0000"}"#,
    )
    .await;
    assert!(
        nightly["stale"].to_string().contains(r#""version":"2""#),
        "{nightly}"
    );
    traffic(&s, 40, None).await;
    let e = explain(&s).await;
    assert_eq!(rules(&e), Vec::<String>::new(), "nothing is wrong: {e:#}");
    let risk = &e["risks"][0];
    assert_eq!(risk["rule"], "stale_lineage", "{e:#}");
    let title = risk["title"].as_str().unwrap();
    assert!(title.starts_with("version 2 serves traffic but its training data has a newer version: churn-train trained on 9a41c07e, latest 77aa0000 written at 20"), "{title}");
    assert_eq!(risk["digests"], serde_json::json!(["9a41c07e", "77aa0000"]));
    assert_eq!(
        (&risk["owner"], &risk["ticket"]),
        (&"carol".into(), &"ML-1502".into())
    );
    let kinds: Vec<&str> = e["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"stale") && kinds.contains(&"dataset_written"),
        "{kinds:?}"
    );
    assert!(
        explain_text(&s)
            .await
            .contains("risks (no symptom moves with them):")
    );
}

/// Versions 1 and 2 split `weights`, with the admin API open (no token) to change them.
fn weighted(upstream: std::net::SocketAddr, w1: u32, w2: u32) -> String {
    format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{upstream}\"\nmatch = {{ open_inference = true }}\n\
         [[routes.backends]]\nversion = \"1\"\nweight = {w1}\n[[routes.backends]]\nversion = \"2\"\nweight = {w2}\n\
         [routes.canary]\nsticky_header = \"x-user\"\n"
    )
}

/// Wait (bounded) until the journal holds an event of `kind`.
async fn journaled(s: &Sidecar, kind: &str) -> bool {
    let url = format!("http://127.0.0.1:{}/explain/churn?since=10m", s.admin);
    let kind = kind.to_string();
    eventually(Duration::from_secs(10), move || {
        let (url, kind) = (url.clone(), kind.clone());
        async move {
            get_text(&url)
                .await
                .contains(&format!("\"kind\": \"{kind}\""))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_changes_with_the_harmless_one_first() {
    // plan_type arrives NULL (imputed downstream, harmless) from the start, on every version.
    // Minutes later version 2 is rolled out and fails one call in four. The NULL is the
    // stronger signal by size; the rollout is what started the errors.
    let up = Upstream::start(server("2", 4, "", Duration::ZERO, None)).await;
    let s = start(
        &weighted(up.addr, 100, 0),
        "[inspect]\nmin_samples = 20\nwindow = \"20s\"\n",
    )
    .await;
    traffic(&s, 150, Some(0)).await;
    assert!(journaled(&s, "data_quality").await);
    let before = explain(&s).await;
    assert!(
        !rules(&before).iter().any(|r| r.starts_with("version_")),
        "{before:#}"
    );
    // Onsets are known to a tenth of the window (2 s): the rollout comes well after.
    tokio::time::sleep(Duration::from_secs(4)).await;
    admin_post(
        &s,
        "/routes/churn/weights",
        r#"{"weights": {"1": 50, "2": 50}, "actor": "dana", "reason": "canary step"}"#,
    )
    .await;
    traffic(&s, 300, Some(0)).await;
    assert!(journaled(&s, "onset").await, "the error onset is journaled");
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "version_errors", "{e:#}");
    assert_eq!(top["version"], "2");
    assert!(
        top["action"]
            .as_str()
            .unwrap()
            .starts_with("modelstamp rollback churn"),
        "{top}"
    );
    let rollout = e["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "weights_changed" && t["version"] == "2")
        .expect("the rollout is on the timeline")["at_ms"]
        .as_i64()
        .unwrap();
    assert!(
        top["onset_ms"].as_i64().unwrap() >= rollout,
        "errors cannot begin before version 2 took traffic: {e:#}"
    );
    assert_eq!(top["onset"], e["symptom_onset"], "{e:#}");
    let null = e["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["rule"] == "upstream_data")
        .expect("the NULL is still listed");
    let evidence = null["evidence"].to_string();
    assert!(evidence.contains("before the symptom began"), "{null:#}");
    assert!(
        evidence.contains("also on version 1, which shows no symptom"),
        "{null:#}"
    );
    let text = explain_text(&s).await;
    assert!(text.contains("symptom began 20"), "{text}");
    println!("{}", serde_json::to_string_pretty(&e["causes"]).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrained_candidate_that_only_shifts_predictions() {
    // Version 2 (retrained on another dataset digest) answers 0.2 where version 1 answers 0.1,
    // on the same inputs; nothing errs, nothing is slow, the inputs are healthy.
    let up = Upstream::start(server("", 0, "", Duration::ZERO, None)).await;
    let s = start(&split(up.addr, "2"), "[inspect]\nmin_samples = 20\n").await;
    traffic(&s, 200, None).await;
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "candidate_drift", "{e:#}");
    let title = top["title"].as_str().unwrap();
    assert!(
        title.starts_with(
            "candidate 2 predicts differently from version 1 on the same inputs (PSI "
        ),
        "{title}"
    );
    assert!(
        title.ends_with("trained with dataset digest e5d3 → 9a41 and commit 97f4 → 1c2b"),
        "{title}"
    );
    assert_eq!(top["digests"], serde_json::json!(["e5d39153", "9a41c07e"]));
    assert!(
        top["action"]
            .as_str()
            .unwrap()
            .starts_with("modelstamp rollback churn"),
        "{top}"
    );
    assert!(
        !rules(&e)
            .iter()
            .any(|r| r == "version_errors" || r.contains("upstream")),
        "{:?}",
        rules(&e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_model_on_both_sides_stays_quiet() {
    // The healthy control of the scenario above: one prediction for every version.
    let up = Upstream::start(versioned_server(Versions {
        default: "2",
        prediction: Some(0.3),
        ..Versions::default()
    }))
    .await;
    let s = start(&split(up.addr, "2"), "[inspect]\nmin_samples = 20\n").await;
    traffic(&s, 200, None).await;
    let e = explain(&s).await;
    assert_eq!(rules(&e), Vec::<String>::new(), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_asked_after_the_window() {
    // Version 2 errs, is rolled back, and the question comes after the window has moved on.
    let up = Upstream::start(server("2", 3, "", Duration::ZERO, None)).await;
    let s = start(&split(up.addr, "2"), "[inspect]\nwindow = \"10s\"\n").await;
    let start_ms = modelstamp::journal::now_ms();
    traffic(&s, 300, None).await;
    assert!(journaled(&s, "onset").await);
    // --from/--to bound the causes: asked about a window that ended before the incident, while
    // the errors still fill the rolling window, there are none.
    let to = (start_ms - 60_000).to_string();
    let from = (start_ms - 120_000).to_string();
    let before = explain_json(&[
        "--from",
        &from,
        "--to",
        &to,
        "--json",
        "--admin",
        &admin_url(&s),
    ])
    .await;
    assert_eq!(rules(&before), Vec::<String>::new(), "{before:#}");
    assert!(
        before["health_source"]
            .as_str()
            .unwrap()
            .contains("does not reach"),
        "{before:#}"
    );
    assert!(
        rules(&explain(&s).await).contains(&"version_errors".to_string()),
        "the last 10 minutes hold them"
    );
    admin_post(
        &s,
        "/routes/churn/weights",
        r#"{"weights": {"1": 100, "2": 0}, "actor": "dana", "reason": "errors"}"#,
    )
    .await;
    // The window (10 s, the shortest allowed) passes with no traffic.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let e = explain(&s).await;
    assert!(
        e["health_source"]
            .as_str()
            .unwrap()
            .contains("rolling window"),
        "{e:#}"
    );
    assert!(
        e["note"].as_str().unwrap().contains("--prometheus"),
        "{e:#}"
    );
    let top = &e["causes"][0];
    assert_eq!(
        (&top["rule"], &top["version"]),
        (&"past_errors".into(), &"2".into()),
        "{e:#}"
    );
    let title = top["title"].as_str().unwrap();
    assert!(title.starts_with("errors on version 2 from 20"), "{title}");
    assert!(
        title.contains("against version 1 it was trained with dataset digest e5d3 → 9a41"),
        "{title}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_regression_from_an_environment_change() {
    let up = Upstream::start(server("", 1, "3", Duration::from_millis(40), None)).await;
    let s = start(&split(up.addr, "3"), "").await;
    traffic(&s, 300, None).await;
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "environment_latency", "{e:#}");
    let title = top["title"].as_str().unwrap();
    assert!(
        title.starts_with("latency regression with version 3 ("),
        "{title}"
    );
    assert!(
        title.ends_with("environment.lock_digest aaaa → bbbb"),
        "{title}"
    );
    assert_eq!(top["lineage"][0]["field"], "environment.lock_digest");
    assert_eq!(top["lineage"][0]["candidate"], "sha256:bbbb2222");
    explain_text(&s).await;
    assert!(
        !rules(&e).contains(&"version_errors".to_string()),
        "{:?}",
        rules(&e)
    );
}

/// One version whose `tenure` has a training reference (quartiles) and an upstream source.
const SHIFT_REGISTRY: &str = r#"
models:
  churn:
    aliases: { champion: "2" }
    versions:
      "2":
        code: { commit: "1c2b8e0" }
        training_data: { name: churn-train, digest: 9a41c07e, upstream_tables: [crm.accounts] }
        input_schema:
          - name: tenure
            type: double
            min: 0
            max: 1
            source: crm.accounts.tenure_months
            reference: { edges: [0.25, 0.5, 0.75], fractions: [0.25, 0.25, 0.25, 0.25] }
          - { name: plan_type, type: string, source: crm.accounts.plan_type }
"#;

async fn tenures(s: &Sidecar, values: impl Iterator<Item = f64>) {
    for t in values {
        let body = serde_json::json!({"inputs": [
            {"name": "tenure", "datatype": "FP64", "shape": [1, 1], "data": [t]},
            {"name": "plan_type", "datatype": "BYTES", "shape": [1, 1], "data": ["basic"]}]});
        let req = Request::post(format!("http://127.0.0.1:{}/v2/models/churn/infer", s.port))
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap();
        send(req).await;
    }
    traffic(s, 0, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_shifting_inside_its_range() {
    // An upstream unit change moves `tenure` into the top of its range: no value is out of
    // range, nothing is NULL, no version errs; only its distribution tells.
    let up = Upstream::start(server("", 0, "", Duration::ZERO, None)).await;
    let route = format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"@champion\"\nmatch = {{ open_inference = true }}\n",
        up.addr
    );
    let s = start_with(SHIFT_REGISTRY, &route, "").await;
    // The nightly Airflow job wrote crm.accounts (OpenLineage, as its integration posts it).
    let written = admin_post(
        &s,
        "/api/v1/lineage",
        r#"{"eventType": "COMPLETE", "eventTime": "2026-12-07T02:00:00+01:00",
            "producer": "https://github.com/apache/airflow/tree/providers-openlineage/2.3.0",
            "run": {"runId": "01938c2e-0000-7000-8000-000000000001"},
            "job": {"namespace": "airflow-prod", "name": "churn_features"},
            "outputs": [{"namespace": "postgres://crm-db:5432", "name": "crm.accounts"}]}"#,
    )
    .await;
    assert_eq!(written["datasets"][0]["outcome"], "matched", "{written}");
    // The healthy control: 200 values spread as in training say nothing about drift.
    tenures(&s, (0..200).map(|i| f64::from(i % 100) / 100.0 + 0.005)).await;
    let quiet = explain(&s).await;
    assert!(
        rules(&quiet).iter().all(|r| !r.contains("drift")),
        "{quiet:#}"
    );
    // Then 300 values inside the range, all in its top quarter.
    tenures(&s, (0..300).map(|i| 0.8 + f64::from(i % 15) / 100.0)).await;
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "upstream_drift", "{e:#}");
    let title = top["title"].as_str().unwrap();
    assert!(
        title.starts_with("feature `tenure` moved from its training distribution (PSI 0.8"),
        "{title}"
    );
    assert!(
        title.ends_with(
            "upstream source crm.accounts.tenure_months, last written by job airflow-prod/churn_features"
        ),
        "{title}"
    );
    assert_eq!(top["job"], "airflow-prod/churn_features");
    assert_eq!(
        top["action"],
        "page the owner of crm.accounts.tenure_months (last written by job airflow-prod/churn_features)"
    );
    assert!(
        !rules(&e)
            .iter()
            .any(|r| r == "upstream_data" || r == "version_data"),
        "in range: no data-quality cause {:?}",
        rules(&e)
    );
    assert!(explain_text(&s).await.contains("feature `tenure` moved"));
    println!("{}", serde_json::to_string_pretty(&e["causes"]).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_asked_after_a_restart_is_answered_from_the_history_store() {
    // Version 2 errs; the sidecar that saw it restarts (its memory gone); the new process
    // answers from the SQLite history store.
    let up = Upstream::start(server("2", 3, "", Duration::ZERO, None)).await;
    let mut s = start(
        &split(up.addr, "2"),
        "[history]\npath = \"{dir}/history.db\"\n",
    )
    .await;
    traffic(&s, 300, None).await;
    assert!(journaled(&s, "onset").await);
    // The onset is in the store (read as the CLI reads it) before the sidecar dies.
    let db = s.cfg.parent().unwrap().join("history.db");
    let written = eventually(Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            let Ok(store) = modelstamp::history::sqlite::SqliteStore::open_read_only(&db) else {
                return false;
            };
            use modelstamp::history::Store as _;
            let events = store.events("churn", 0, i64::MAX, 1000).await;
            events.is_ok_and(|e| {
                e.iter()
                    .any(|s| s.event.kind == modelstamp::journal::Kind::Onset)
            })
        }
    })
    .await;
    assert!(written, "the onset reached the store");
    let _ = s.child.kill();
    let _ = s.child.wait();
    let (cfg, port, admin) = (s.cfg.clone(), s.port, s.admin);
    drop(s);
    let s = run(&cfg, port, admin).await;
    let e = explain(&s).await;
    assert!(
        e["events_source"].as_str().unwrap().contains("sqlite:"),
        "{e:#}"
    );
    errors_of_version_2_with_their_lineage(&e);
    assert!(
        explain_text(&s)
            .await
            .contains("events from the journal and sqlite:")
    );
    // No sidecar at all: the same answer from the store and the config's registry.
    drop(s);
    let cfg = cfg.display().to_string();
    let e = explain_json(&["--since", "10m", "--json", "--config", &cfg]).await;
    assert!(
        e["health_source"]
            .as_str()
            .unwrap()
            .starts_with("no sidecar"),
        "{e:#}"
    );
    errors_of_version_2_with_their_lineage(&e);
}

/// The top cause: version 2's errors, from the journal, with its lineage against version 1.
fn errors_of_version_2_with_their_lineage(e: &Value) {
    let top = &e["causes"][0];
    assert_eq!(
        (&top["rule"], &top["version"]),
        (&"past_errors".into(), &"2".into()),
        "{e:#}"
    );
    assert!(
        top["title"]
            .as_str()
            .unwrap()
            .contains("against version 1 it was trained with dataset digest e5d3 → 9a41"),
        "{top}"
    );
}
