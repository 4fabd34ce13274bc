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
    std::fs::write(&cfg, config_text_on(&dir, routes, extra, "1h", port, admin)).unwrap();
    let child = spawn_run(&cfg);
    let s = Sidecar { child, port, admin };
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

async fn explain(s: &Sidecar) -> Value {
    let admin = format!("http://127.0.0.1:{}", s.admin);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "explain", "--model", "churn", "--since", "10m", "--json", "--admin", &admin,
            ])
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
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The human-readable explanation (printed, for the CI log and the issue note).
async fn explain_text(s: &Sidecar) -> String {
    let admin = format!("http://127.0.0.1:{}", s.admin);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "explain", "--model", "churn", "--since", "10m", "--admin", &admin,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
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
    assert!(explain_text(&s).await.contains(" 1. [0."), "a ranked list");
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
    assert!(
        title.starts_with("feature `plan_type` NULL rate 0% → "),
        "{title}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_update_leaves_a_live_version_stale() {
    let up = Upstream::start(server("", 1, "", Duration::ZERO, None)).await;
    let route = format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{}\"\nserves = \"2\"\nmatch = {{ open_inference = true }}\n",
        up.addr
    );
    let s = start(&route, "").await;
    traffic(&s, 40, None).await;
    let req = Request::post(format!(
        "http://127.0.0.1:{}/events/dataset-changed",
        s.admin
    ))
    .header("content-type", "application/json")
    .body(full(r#"{"name": "churn-train", "digest": "77aa0000"}"#))
    .unwrap();
    let (resp, _) = send(req).await;
    assert_eq!(resp.status(), 200);
    traffic(&s, 40, None).await;
    let e = explain(&s).await;
    let top = &e["causes"][0];
    assert_eq!(top["rule"], "stale_lineage", "{e:#}");
    let title = top["title"].as_str().unwrap();
    assert!(title.starts_with("version 2 serves traffic but its training dataset has a newer digest: churn-train trained on 9a41c07e, latest 77aa0000"), "{title}");
    let kinds: Vec<&str> = e["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"stale"), "{kinds:?}");
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
        title.ends_with("upstream source crm.accounts.tenure_months"),
        "{title}"
    );
    assert!(
        !rules(&e)
            .iter()
            .any(|r| r == "upstream_data" || r == "version_data"),
        "in range: no data-quality cause {:?}",
        rules(&e)
    );
    assert!(explain_text(&s).await.contains("feature `tenure` moved"));
}
