//! The MLflow backend against an in-process fake MLflow that answers with the real MLflow 3.17
//! captures: start-up while MLflow is down, recovery, fail_fast, alias moves, unknown models.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use modelstamp::Sidecar;
use modelstamp::routing::Source;
use support::*;

const FIX: &str = "tests/fixtures/mlflow-3.17";

#[derive(Default)]
struct Fake {
    down: AtomicBool,
    champion: Mutex<String>,
    calls: AtomicUsize,
    /// The `Authorization` header every call must carry (`mlflow server --app-name
    /// basic-auth` answers 401 without it).
    authorization: Mutex<Option<String>>,
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}/{name}")).unwrap()
}

async fn fake_mlflow(state: Arc<Fake>) -> Upstream {
    *state.champion.lock().unwrap() = "1".into();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let state = state.clone();
        Box::pin(async move {
            state.calls.fetch_add(1, Ordering::SeqCst);
            if state.down.load(Ordering::SeqCst) {
                return Response::builder().status(503).body(full("down")).unwrap();
            }
            let wanted = state.authorization.lock().unwrap().clone();
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if wanted.is_some() && given != wanted.as_deref() {
                // What MLflow's basic-auth app answers.
                return Response::builder()
                    .status(401)
                    .header("www-authenticate", "Basic realm=\"mlflow\"")
                    .body(full("You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow on how to authenticate."))
                    .unwrap();
            }
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let json = |s: String| {
                Response::builder()
                    .header("content-type", "application/json")
                    .body(full(s))
                    .unwrap()
            };
            match path.as_str() {
                "/api/2.0/mlflow/registered-models/get" if query.contains("name=churn") => {
                    let champion = state.champion.lock().unwrap().clone();
                    json(format!(r#"{{"registered_model":{{"name":"churn","aliases":[{{"alias":"champion","version":"{champion}"}}]}}}}"#))
                }
                "/api/2.0/mlflow/registered-models/get" => Response::builder()
                    .status(404)
                    .body(full(r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"Registered Model with name=ghost not found"}"#))
                    .unwrap(),
                "/api/2.0/mlflow/model-versions/search" => {
                    let v1 = serde_json::from_str::<serde_json::Value>(&fixture("rest-alias.json")).unwrap()["model_version"].clone();
                    let v2 = serde_json::from_str::<serde_json::Value>(&fixture("rest-mv.json")).unwrap()["model_version"].clone();
                    json(serde_json::json!({ "model_versions": [v1, v2] }).to_string())
                }
                "/api/2.0/mlflow/runs/get" => json(fixture("rest-run.json")),
                "/api/2.0/mlflow/runs/search" => json(r#"{"runs": []}"#.into()),
                p if p.starts_with("/api/2.0/mlflow/logged-models/") => json(fixture("rest-logged-model.json")),
                p if p.ends_with("/artifacts/MLmodel") => Response::new(full(fixture("MLmodel"))),
                p if p.ends_with("/artifacts/requirements.txt") => Response::new(full("scikit-learn==1.9.1\n")),
                _ => Response::builder().status(404).body(full("{}")).unwrap(),
            }
        })
    });
    Upstream::start_quiet(handler).await
}

async fn start(
    mlflow: &Upstream,
    model_server: &Upstream,
    retries: u32,
    extra: &str,
) -> Result<(Sidecar, std::path::PathBuf), modelstamp::StartError> {
    let authority = mlflow.addr.to_string();
    start_in(temp_dir("mlflow"), &authority, model_server, retries, extra).await
}

/// [`start`] with the config in `dir` and MLflow reached at `authority` (`host:port`, perhaps
/// with `user:password@`, over http; or a whole `https://` URL).
async fn start_in(
    dir: std::path::PathBuf,
    authority: &str,
    model_server: &Upstream,
    retries: u32,
    extra: &str,
) -> Result<(Sidecar, std::path::PathBuf), modelstamp::StartError> {
    start_watching(dir, authority, model_server, retries, extra, "1h").await
}

/// [`start_in`], with the config's files polled every `poll`.
async fn start_watching(
    dir: std::path::PathBuf,
    authority: &str,
    model_server: &Upstream,
    retries: u32,
    extra: &str,
    poll: &str,
) -> Result<(Sidecar, std::path::PathBuf), modelstamp::StartError> {
    let uri = if authority.contains("://") {
        authority.to_string()
    } else {
        format!("http://{authority}")
    };
    let registry = format!(
        "[registry]\nbackend = \"mlflow\"\nuri = \"{uri}\"\npoll_interval = \"200ms\"\ntimeout = \"1s\"\nretries = {retries}\n{extra}\n"
    );
    let routes = format!(
        "{}[[routes]]\nname = \"ghost\"\nmodel = \"ghost\"\nupstream = \"{}\"\nserves = \"@champion\"\nmatch = {{ path_prefix = \"/ghost\" }}\n",
        churn_route(model_server.addr, "@champion", ""),
        model_server.addr
    );
    let cfg = dir.join("m.toml");
    std::fs::write(&cfg, config_text_polling(&dir, &routes, &registry, poll)).unwrap();
    Sidecar::start(Source::File(cfg)).await.map(|s| (s, dir))
}

async fn stamped(s: &Sidecar, path: &str) -> (String, String) {
    let (resp, _) = send(post(&format!("http://{}{path}", s.proxy_addr), "{}")).await;
    let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
    (h("x-model-version"), h("x-lineage-id"))
}

async fn metric(s: &Sidecar, series: &str) -> f64 {
    metric_value(
        &get_text(&format!("http://{}/metrics", s.admin_addr)).await,
        series,
    )
}

#[tokio::test]
async fn records_come_from_mlflow_and_alias_moves_are_followed() {
    let state = Arc::new(Fake::default());
    let mlflow = fake_mlflow(state.clone()).await;
    let up = Upstream::start(oi_handler("1")).await;
    let (s, _) = start(&mlflow, &up, 0, "").await.unwrap();
    let (version, lineage) = stamped(&s, "/v2/models/churn/infer").await;
    assert_eq!(version, "1");
    let record: serde_json::Value = serde_json::from_str(
        &get_text(&format!("http://{}/lineage/{lineage}", s.admin_addr)).await,
    )
    .unwrap();
    assert_eq!(
        record["record"]["code"]["commit"],
        "97f447d6223f68cae5edd43a0b1c522b1caa9515"
    );
    assert_eq!(record["record"]["training_data"]["digest"], "e5d39153");
    assert_eq!(
        record["record"]["environment"]["lock_digest"]
            .as_str()
            .unwrap()
            .len(),
        "sha256:".len() + 64
    );
    *state.champion.lock().unwrap() = "2".into();
    assert!(
        eventually(Duration::from_secs(5), || async {
            stamped(&s, "/v2/models/churn/infer").await.0 == "2"
        })
        .await,
        "alias move followed"
    );
    // A model MLflow does not know resolves to unknown; it is not an outage.
    assert_eq!(stamped(&s, "/ghost").await.0, "unknown");
    assert_eq!(metric(&s, "modelstamp_registry_up").await, 1.0);
}

#[tokio::test]
async fn starts_while_mlflow_is_down_then_picks_records_up() {
    let state = Arc::new(Fake::default());
    state.down.store(true, Ordering::SeqCst);
    let mlflow = fake_mlflow(state.clone()).await;
    let up = Upstream::start(oi_handler("1")).await;
    let (s, _) = start(&mlflow, &up, 0, "").await.unwrap();
    let (version, lineage) = stamped(&s, "/v2/models/churn/infer").await;
    assert_eq!(
        (version.as_str(), lineage.as_str()),
        ("unknown", "unknown"),
        "serving, lineage unknown"
    );
    assert_eq!(metric(&s, "modelstamp_registry_up").await, 0.0);
    state.down.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            stamped(&s, "/v2/models/churn/infer").await.0 == "1"
        })
        .await
    );
    assert_eq!(metric(&s, "modelstamp_registry_up").await, 1.0);
    // Down again: the last known good records keep serving.
    state.down.store(true, Ordering::SeqCst);
    let failures = r#"modelstamp_registry_refreshes_total{result="failure"}"#;
    let before = metric(&s, failures).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&s, failures).await > before
        })
        .await
    );
    assert_eq!(metric(&s, "modelstamp_registry_up").await, 0.0);
    assert_eq!(stamped(&s, "/v2/models/churn/infer").await.0, "1");
}

#[tokio::test]
async fn fail_fast_refuses_to_start_while_mlflow_is_down() {
    let state = Arc::new(Fake::default());
    state.down.store(true, Ordering::SeqCst);
    let mlflow = fake_mlflow(state).await;
    let up = Upstream::start(oi_handler("1")).await;
    let err = start(&mlflow, &up, 0, "fail_fast = true")
        .await
        .err()
        .expect("refused to start");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
}

#[tokio::test]
async fn transient_errors_are_retried() {
    let state = Arc::new(Fake::default());
    let mlflow = fake_mlflow(state.clone()).await;
    let flaky = Arc::new(AtomicUsize::new(0));
    // A proxy in front of the fake that fails every other call with 502.
    let target = mlflow.addr;
    let f = flaky.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let f = f.clone();
        Box::pin(async move {
            if f.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                return Response::builder().status(502).body(full("flaky")).unwrap();
            }
            let url = format!("http://{target}{}", req.uri().path_and_query().unwrap());
            let (resp, body) = send(Request::get(url).body(full("")).unwrap()).await;
            Response::builder()
                .status(resp.status())
                .body(full(body))
                .unwrap()
        })
    });
    let flaky_mlflow = Upstream::start_quiet(handler).await;
    let up = Upstream::start(oi_handler("1")).await;
    let (s, _) = start(&flaky_mlflow, &up, 2, "fail_fast = true")
        .await
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stamped(&s, "/v2/models/churn/infer").await.0, "1");
}

/// `mlflow server --app-name basic-auth`, or a hosted MLflow taking bearer tokens: each
/// credential style MLflow's clients use reads the records; none, or wrong ones, is a clear
/// error naming the settings, and no password is ever printed.
#[tokio::test]
async fn an_authenticated_mlflow_is_read_with_each_credential_style() {
    use base64::Engine as _;
    let state = Arc::new(Fake::default());
    let mlflow = fake_mlflow(state.clone()).await;
    let up = Upstream::start(oi_handler("1")).await;
    let basic = |user: &str, password: &str| {
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let lineage_of = |s: Sidecar| async move {
        let (version, lineage) = stamped(&s, "/v2/models/churn/infer").await;
        assert_eq!(version, "1");
        assert!(lineage.starts_with("ln_"), "{lineage}");
        lineage
    };

    // A user and a password file (a Kubernetes Secret mount).
    *state.authorization.lock().unwrap() = Some(basic("alice", "w0nderland-pass"));
    let dir = temp_dir("mlflow-basic");
    std::fs::write(dir.join("password"), "w0nderland-pass\n").unwrap();
    let (s, _) = start_in(
        dir,
        &mlflow.addr.to_string(),
        &up,
        0,
        "username = \"alice\"\npassword_file = \"password\"\nfail_fast = true",
    )
    .await
    .unwrap();
    let from_file = lineage_of(s).await;

    // The same user and password in the URL: taken out of it, sent as basic auth, and the
    // lineage ID is the same.
    let (s, _) = start_in(
        temp_dir("mlflow-url"),
        &format!("alice:w0nderland-pass@{}", mlflow.addr),
        &up,
        0,
        "fail_fast = true",
    )
    .await
    .unwrap();
    // What spans export as `ml.registry.uri` and `check` prints.
    let exported = s.reloader.current().load().registry_uri.to_string();
    assert_eq!(exported, format!("http://{}", mlflow.addr));
    assert_eq!(lineage_of(s).await, from_file);

    // A bearer token from a file.
    *state.authorization.lock().unwrap() = Some("Bearer tok-7f3a9c".into());
    let dir = temp_dir("mlflow-token");
    std::fs::write(dir.join("token"), "tok-7f3a9c").unwrap();
    let (s, _) = start_in(
        dir,
        &mlflow.addr.to_string(),
        &up,
        0,
        "token_file = \"token\"\nfail_fast = true",
    )
    .await
    .unwrap();
    assert_eq!(lineage_of(s).await, from_file);

    // No credentials, then wrong ones: refused at start with fail_fast, saying what to set.
    let err = start(&mlflow, &up, 2, "fail_fast = true")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(
            "HTTP 401: MLflow asks for credentials and none are set; set MLFLOW_TRACKING_USERNAME"
        ),
        "{err}"
    );
    let calls = state.calls.load(Ordering::SeqCst);
    let err = start_in(
        temp_dir("mlflow-wrong"),
        &format!("alice:not-the-pass@{}", mlflow.addr),
        &up,
        2,
        "fail_fast = true",
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("HTTP 401: MLflow refused the credentials"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-pass"),
        "the password is printed: {err}"
    );
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        calls + 1,
        "a refusal is not retried"
    );
}

/// Two replicas that spell the MLflow URL differently stamp one record with one lineage ID; the
/// ID the record had when the run link was hashed still resolves to it.
#[tokio::test]
async fn a_record_has_one_lineage_id_however_mlflow_is_addressed() {
    let state = Arc::new(Fake::default());
    let mlflow = fake_mlflow(state).await;
    let up = Upstream::start(oi_handler("1")).await;
    let by_ip = mlflow.addr.to_string();
    let by_name = format!("localhost:{}", mlflow.addr.port());
    let (a, _) = start_in(temp_dir("mlflow-ip"), &by_ip, &up, 0, "")
        .await
        .unwrap();
    let (b, _) = start_in(temp_dir("mlflow-name"), &by_name, &up, 0, "")
        .await
        .unwrap();
    let (_, id_a) = stamped(&a, "/v2/models/churn/infer").await;
    let (_, id_b) = stamped(&b, "/v2/models/churn/infer").await;
    assert!(id_a.starts_with("ln_"), "{id_a}");
    assert_eq!(id_a, id_b, "one record, one ID");

    let lineage = |s: &Sidecar, id: String| {
        let url = format!("http://{}/lineage/{id}", s.admin_addr);
        async move { serde_json::from_str::<serde_json::Value>(&get_text(&url).await).unwrap() }
    };
    let answer = lineage(&b, id_b.clone()).await;
    assert_eq!(
        answer["record"]["training_run_url"]
            .as_str()
            .map(|u| u.starts_with(&format!("http://{by_name}/"))),
        Some(true),
        "the run link stays in the record for display: {answer}"
    );
    // The form that hashed the link, as a replica before this change stamped it.
    let record: modelstamp::registry::LineageRecord =
        serde_json::from_value(answer["record"].clone()).unwrap();
    let former = record.lineage_id();
    assert_ne!(former, id_b);
    assert_eq!(lineage(&b, former).await["lineage_id"], id_b.as_str());
}

async fn readyz(s: &Sidecar) -> (u16, String) {
    let url = format!("http://{}/readyz", s.admin_addr);
    let (resp, body) = send(Request::get(url).body(full("")).unwrap()).await;
    (
        resp.status().as_u16(),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Readiness says when requests are stamped without lineage because MLflow has never answered
/// (here: it refuses the sidecar), and with `ready_needs_lineage` it holds traffic off until it
/// has.
#[tokio::test]
async fn readiness_says_lineage_is_unavailable_until_mlflow_answers() {
    let state = Arc::new(Fake::default());
    *state.authorization.lock().unwrap() = Some("Bearer right".into());
    let mlflow = fake_mlflow(state.clone()).await;
    let up = Upstream::start(oi_handler("1")).await;
    let (serving, _) = start(&mlflow, &up, 0, "").await.unwrap();
    let (strict, _) = start(&mlflow, &up, 0, "ready_needs_lineage = true")
        .await
        .unwrap();
    let (status, body) = readyz(&serving).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ready: lineage unavailable (") && body.contains("HTTP 401"),
        "{body}"
    );
    let (status, body) = readyz(&strict).await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: lineage unavailable ("),
        "{body}"
    );
    assert_eq!(
        stamped(&strict, "/v2/models/churn/infer").await.1,
        "unknown"
    );

    // MLflow lets it in: records are read on the next refresh and both are plainly ready.
    *state.authorization.lock().unwrap() = None;
    for s in [&serving, &strict] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                readyz(s).await == (200, "ready\n".to_string())
            })
            .await,
            "{:?}",
            readyz(s).await
        );
    }
    assert!(
        stamped(&strict, "/v2/models/churn/infer")
            .await
            .1
            .starts_with("ln_")
    );
}

/// MLflow over https: its certificate checked against a private CA (`registry.tls.ca_file`),
/// refused without it with an error that says what to set, and a client certificate presented
/// where the server asks for one (mutual TLS). The records, and their IDs, are those read over
/// http.
#[tokio::test]
async fn an_https_mlflow_is_read_with_a_private_ca_and_a_client_certificate() {
    let mlflow = fake_mlflow(Arc::new(Fake::default())).await;
    let up = Upstream::start(oi_handler("1")).await;
    let tls_dir = std::fs::canonicalize("tests/fixtures/tls").unwrap();
    let file = |name: &str| tls_dir.join(name).display().to_string();
    let https = tls::front(mlflow.addr, false).await;
    let mutual = tls::front(mlflow.addr, true).await;
    let ca = format!("tls = {{ ca_file = \"{}\" }}", file("ca.pem"));
    let start_at = |uri: String, extra: String| {
        let up = &up;
        async move {
            start_in(temp_dir("mlflow-tls"), &uri, up, 0, &extra)
                .await
                .unwrap()
                .0
        }
    };
    let (plain, _) = start(&mlflow, &up, 0, "").await.unwrap();
    let by_ca = start_at(format!("https://localhost:{}", https.port()), ca.clone()).await;
    let untrusted = start_at(format!("https://localhost:{}", https.port()), String::new()).await;
    let with_cert = start_at(
        format!("https://127.0.0.1:{}", mutual.port()),
        format!(
            "tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
            file("ca.pem"),
            file("client.pem"),
            file("client.key")
        ),
    )
    .await;
    let without_cert = start_at(format!("https://127.0.0.1:{}", mutual.port()), ca).await;

    let id = stamped(&plain, "/v2/models/churn/infer").await.1;
    assert!(id.starts_with("ln_"), "{id}");
    for (name, s) in [("private CA", &by_ca), ("client certificate", &with_cert)] {
        assert_eq!(stamped(s, "/v2/models/churn/infer").await.1, id, "{name}");
        assert_eq!(readyz(s).await, (200, "ready\n".to_string()), "{name}");
    }
    let (status, body) = readyz(&untrusted).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ready: lineage unavailable (")
            && body.contains("invalid peer certificate")
            && body.contains("registry.tls.ca_file or MLFLOW_TRACKING_SERVER_CERT_PATH"),
        "{body}"
    );
    assert_eq!(
        stamped(&untrusted, "/v2/models/churn/infer").await.1,
        "unknown"
    );
    let (_, body) = readyz(&without_cert).await;
    assert!(body.starts_with("ready: lineage unavailable ("), "{body}");
    assert_eq!(
        stamped(&without_cert, "/v2/models/churn/infer").await.1,
        "unknown"
    );

    // Settings that cannot work are config errors, named.
    let refused = |uri: String, extra: String| {
        let up = &up;
        async move {
            match start_in(temp_dir("mlflow-tls-bad"), &uri, up, 0, &extra).await {
                Ok(_) => panic!("started with {extra}"),
                Err(e) => e.to_string(),
            }
        }
    };
    let err = refused(
        mlflow.addr.to_string(),
        format!("tls = {{ ca_file = \"{}\" }}", file("ca.pem")),
    )
    .await;
    assert!(
        err.contains("registry.tls: set, but registry.uri is not https://"),
        "{err}"
    );
    let err = refused(
        format!("https://localhost:{}", https.port()),
        format!("tls = {{ ca_file = \"{}\" }}", file("client.key")),
    )
    .await;
    assert!(
        err.contains("registry.tls.ca_file") && err.contains("no PEM certificate in it"),
        "{err}"
    );
}

/// A rotated password file (a Kubernetes Secret updated in place) is read without a restart or
/// a SIGHUP: the reloader watches the files the MLflow settings came from. It works whichever
/// of MLflow and the Secret changes first.
#[tokio::test]
async fn a_rotated_password_file_is_used_without_a_restart() {
    use base64::Engine as _;
    let state = Arc::new(Fake::default());
    let mlflow = fake_mlflow(state.clone()).await;
    let up = Upstream::start(oi_handler("1")).await;
    let basic = |password: &str| {
        let pair = format!("alice:{password}");
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        Some(format!("Basic {encoded}"))
    };
    *state.authorization.lock().unwrap() = basic("first-pass-1234");
    let dir = temp_dir("mlflow-rotate");
    std::fs::write(dir.join("password"), "first-pass-1234\n").unwrap();
    let (s, _) = start_watching(
        dir.clone(),
        &mlflow.addr.to_string(),
        &up,
        0,
        "username = \"alice\"\npassword_file = \"password\"\nfail_fast = true",
        "100ms",
    )
    .await
    .unwrap();
    let up_metric = "modelstamp_registry_up";
    assert_eq!(metric(&s, up_metric).await, 1.0);
    // MLflow's password changes first: the refreshes are refused, the records kept.
    *state.authorization.lock().unwrap() = basic("second-pass-5678");
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&s, up_metric).await == 0.0
        })
        .await
    );
    assert!(
        stamped(&s, "/v2/models/churn/infer")
            .await
            .1
            .starts_with("ln_")
    );
    // Then the Secret: the next poll reads it and MLflow answers again.
    std::fs::write(dir.join("password"), "second-pass-5678\n").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&s, up_metric).await == 1.0
        })
        .await,
        "the new password is used"
    );
    // The other order: the Secret is rotated before MLflow takes the new password. The new
    // settings are kept and retried, not refused for good.
    let reloads = r#"modelstamp_config_reloads_total{result="success"}"#;
    let before = metric(&s, reloads).await;
    std::fs::write(dir.join("password"), "third-pass-9012\n").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&s, reloads).await > before
        })
        .await,
        "the rotated file is read"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&s, up_metric).await == 0.0
        })
        .await
    );
    *state.authorization.lock().unwrap() = basic("third-pass-9012");
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&s, up_metric).await == 1.0
        })
        .await,
        "MLflow takes the rotated password once it accepts it"
    );
}
