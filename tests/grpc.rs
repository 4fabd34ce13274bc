//! gRPC calls count by their `grpc-status`, not by the HTTP 200 they ride in: per-version status
//! classes, `upstream_errors{kind="grpc"}` for what the server caused, the rolling window the
//! canary and `explain` judge from, the access log's `grpc_status`, and `rpc.grpc.status_code`
//! on both spans. The sidecar's own gRPC answers (upstream down) count as an HTTP client's would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use modelstamp::inspect::grpc_infer;
use support::otlp::{self, attr};
use support::*;

use modelstamp::inspect::grpc_infer::pb::{
    self, ModelInferRequest as InferRequest, ModelInferResponse as InferResponse,
};

/// A length-prefixed gRPC message (uncompressed, 3 bytes).
const MESSAGE: &[u8] = &[0, 0, 0, 0, 3, 1, 2, 3];

/// A model server answering `/t/{code}` with the status in trailers, `/h/{code}` trailers-only
/// (the status in the head), and `/none` without any status.
fn grpc_server() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let _ = req.into_body().collect().await;
            let (how, code) = path[1..].split_once('/').unwrap_or((&path[1..], ""));
            if how == "h" {
                return Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code)
                    .body(full(Bytes::new()))
                    .unwrap();
            }
            let status = (how == "t").then(|| code.to_string());
            grpc_answer(Bytes::from_static(MESSAGE), status)
        })
    })
}

/// A gRPC answer: one message, then `grpc-status` in trailers (none at all when `None`).
fn grpc_answer(message: Bytes, status: Option<String>) -> Response<TestBody> {
    let (tx, body) = channel_body(4);
    tokio::spawn(async move {
        tx.send(Frame::data(message)).await.unwrap();
        if let Some(code) = status {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code.parse().unwrap());
            tx.send(Frame::trailers(trailers)).await.unwrap();
        }
    });
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

fn grpc_route(upstream: impl std::fmt::Display) -> String {
    format!(
        "[[routes]]\nname = \"grpc\"\nmodel = \"churn\"\nupstream = \"{upstream}\"\nserves = \"1\"\n"
    )
}

/// One unary call; returns the `grpc-status` the client got (trailers, else the head).
async fn call(h: &Harness, path: &str) -> Option<String> {
    let req = Request::post(h.url(path))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(Bytes::from_static(MESSAGE)))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let head = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.unwrap();
    collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head)
        .map(|v| v.to_str().unwrap().to_string())
}

fn series(name: &str, label: &str) -> String {
    format!(r#"modelstamp_{name}{{model="churn",version="1",{label}}}"#)
}

#[tokio::test]
async fn a_grpc_call_counts_by_its_status_in_metrics_window_log_and_spans() {
    let (collector, received) = otlp::start().await;
    let up = Upstream::start(grpc_server()).await;
    let traces = format!(
        "[traces]\notlp_endpoint = \"http://{}\"\notlp_protocol = \"grpc\"\n",
        collector.addr
    );
    let h = Harness::start(&grpc_route(up.addr), &traces).await;
    let calls = [
        ("/t/0", Some("0")),
        ("/t/5", Some("5")),   // NOT_FOUND: the client's
        ("/t/8", Some("8")),   // RESOURCE_EXHAUSTED: the client's (429)
        ("/t/14", Some("14")), // UNAVAILABLE: the server's
        ("/h/13", Some("13")), // INTERNAL, trailers-only
        ("/none", None),       // no status at all: UNKNOWN
    ];
    for (path, want) in calls {
        assert_eq!(call(&h, path).await.as_deref(), want, "{path}");
    }
    let class = |c: &str| series("requests_total", &format!("status_class=\"{c}\""));
    assert!(
        h.metric_reaches(&class("2xx"), 1.0).await,
        "{}",
        h.metrics().await
    );
    assert_eq!(h.metric(&class("4xx")).await, 2.0);
    assert_eq!(h.metric(&class("5xx")).await, 3.0);
    assert_eq!(
        h.metric(&series("upstream_errors_total", "kind=\"grpc\""))
            .await,
        3.0,
        "UNAVAILABLE, INTERNAL and a missing status are the version's errors"
    );
    let snap = h.sidecar.reloader.current().load_full();
    let window = snap.models["churn"].versions["1"].metrics.window.totals();
    assert_eq!((window.requests, window.errors), (6, 3));

    let log = h.access_log();
    let got: Vec<(Option<u64>, Option<&str>)> = log
        .iter()
        .map(|l| (l["grpc_status"].as_u64(), l["error"].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(0), None),
            (Some(5), None),
            (Some(8), None),
            (Some(14), Some("upstream_grpc")),
            (Some(13), Some("upstream_grpc")),
            (None, Some("upstream_grpc")),
        ]
    );
    assert!(log.iter().all(|l| l["status"] == 200));

    // Both spans carry the code; the server's is an error only for the server's codes.
    assert!(
        eventually(Duration::from_secs(10), || async {
            received.spans().len() >= 12
        })
        .await
    );
    let spans = received.spans();
    let server: Vec<_> = spans.iter().filter(|(_, s)| s.kind == 2).collect();
    let codes: Vec<Option<String>> = server
        .iter()
        .map(|(_, s)| attr(s, "rpc.grpc.status_code"))
        .collect();
    for want in ["0", "5", "14", "13"] {
        assert!(codes.contains(&Some(want.to_string())), "{codes:?}");
    }
    for (_, s) in &server {
        let code = attr(s, "rpc.grpc.status_code");
        let is_error = s.status.as_ref().is_some_and(|st| st.code == 2);
        let server_fault = !matches!(code.as_deref(), Some("0" | "5" | "8"));
        assert_eq!(is_error, server_fault, "{code:?}");
    }
    let client = spans.iter().filter(|(_, s)| s.kind == 3);
    assert_eq!(
        client
            .filter(|(_, s)| attr(s, "rpc.grpc.status_code").as_deref() == Some("14"))
            .count(),
        1
    );
}

#[tokio::test]
async fn the_sidecars_own_grpc_answers_count_as_an_http_clients_would() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start(&grpc_route(closed), "").await;
    assert_eq!(call(&h, "/g/ModelInfer").await.as_deref(), Some("14"));
    let five = series("requests_total", "status_class=\"5xx\"");
    assert!(h.metric_reaches(&five, 1.0).await, "{}", h.metrics().await);
    assert_eq!(
        h.metric(&series("requests_total", "status_class=\"2xx\""))
            .await,
        0.0,
        "a refused upstream is not a success because the answer was HTTP 200"
    );
    assert_eq!(
        h.metric(&series("upstream_errors_total", "kind=\"connect\""))
            .await,
        1.0
    );
    let log = h.access_log();
    assert_eq!(log[0]["grpc_status"], 14);
    assert_eq!(log[0]["error"], "upstream_connect");
}

#[tokio::test]
async fn rest_lines_have_no_grpc_status() {
    let up = Upstream::start(oi_handler("1")).await;
    let h = Harness::start(&churn_route(up.addr, "1", ""), "").await;
    let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
    assert_eq!(resp.status(), 200);
    let log = h.access_log();
    assert!(log[0].get("grpc_status").is_none(), "{}", log[0]);
}

#[tokio::test]
async fn auto_sends_grpc_over_h2c_and_everything_else_over_http1() {
    let up = Upstream::start(grpc_server()).await;
    let h = Harness::start(&grpc_route(up.addr), "").await;
    assert_eq!(call(&h, "/t/0").await.as_deref(), Some("0"));
    assert_eq!(up.last().version, http::Version::HTTP_2);
    // An HTTP/2 REST client in front of a REST port: HTTP/1.1 upstream.
    let resp = h2_client()
        .request(post(&h.url("/v2/models/churn/infer"), "{}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().version, http::Version::HTTP_11);

    // A server that speaks HTTP/1.1 only, as MLServer's REST port: it refuses the h2c preface.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http1_only = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let route = format!("{}upstream_protocol = \"http2\"\n", grpc_route(http1_only));
    let h = Harness::start(&route, "").await;
    let (resp, body) = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
    assert_eq!(resp.status(), 502);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("upstream_reset") && body.contains("upstream_protocol = \\\"http1\\\""),
        "{body}"
    );
}

#[tokio::test]
async fn the_version_a_model_infer_response_reports_is_read_and_a_mismatch_counted() {
    // The model server answers ModelInfer as version 2; the route says it serves 1.
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            let answer = framed(&InferResponse {
                model_name: "churn".into(),
                model_version: "2".into(),
                // Past limits.max_inspect_bytes: the version is read from the copy's prefix.
                raw_output_contents: vec![vec![7; 200_000]],
                ..Default::default()
            });
            grpc_answer(answer, Some("0".into()))
        })
    });
    let up = Upstream::start(handler).await;
    let h = Harness::start(&grpc_route(up.addr), "").await;
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    assert_eq!(call(&h, infer).await.as_deref(), Some("0"));
    let mismatch = r#"modelstamp_version_mismatch_total{model="churn",expected="1",reported="2"}"#;
    assert!(
        h.metric_reaches(mismatch, 1.0).await,
        "{}",
        h.metrics().await
    );
    let log = h.access_log();
    assert_eq!(log[0]["reported_version"], "2");
    assert_eq!(log[0]["version"], "1");
    // Another method's answer is not read as a ModelInferResponse.
    assert_eq!(
        call(&h, "/inference.GRPCInferenceService/ModelMetadata")
            .await
            .as_deref(),
        Some("0")
    );
    assert!(h.access_log()[1]["reported_version"].is_null());
}

fn framed(message: &impl prost::Message) -> Bytes {
    let bytes = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    Bytes::from(out)
}

/// A model server that serves the version a `ModelInfer` message names (its default, "1",
/// when none), reports it in its answer, and keeps every request body it got.
fn versioned_grpc_server(bodies: Arc<std::sync::Mutex<Vec<Bytes>>>) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        let bodies = bodies.clone();
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            bodies.lock().unwrap().push(body.clone());
            let asked: InferRequest = prost::Message::decode(&*message_of(&body)).unwrap();
            if asked.model_version == "7" {
                // A version it does not have: NOT_FOUND, trailers-only, as MLServer answers.
                return Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "5")
                    .body(full(Bytes::new()))
                    .unwrap();
            }
            let version = Some(asked.model_version).filter(|v| !v.is_empty());
            // Predicts each row's `tenure` (so tests choose the predictions).
            let tenure = (asked.inputs.iter())
                .find(|t| t.name == "tenure")
                .and_then(|t| t.contents.clone());
            let outputs = tenure.iter().map(|c| pb::InferTensor {
                name: "p".into(),
                datatype: "FP64".into(),
                shape: vec![c.fp64_contents.len() as i64, 1],
                contents: None,
            });
            let raw = tenure.iter().map(|c| {
                c.fp64_contents
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>()
            });
            let answer = framed(&InferResponse {
                model_name: asked.model_name,
                model_version: version.unwrap_or_else(|| "1".into()),
                outputs: outputs.collect(),
                raw_output_contents: raw.collect(),
                ..Default::default()
            });
            grpc_answer(answer, Some("0".into()))
        })
    })
}

/// The message of a one-message gRPC body, inflated when it is gzip-compressed.
fn message_of(body: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    match body[0] {
        0 => body[5..].to_vec(),
        _ => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[5..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
    }
}

/// A `ModelInfer` request with one row: `tenure` (FP64) and `plan` (BYTES), typed contents.
fn row(version: &str, tenure: f64, plan: &str) -> InferRequest {
    let tensor = |name: &str, datatype: &str, contents| pb::InferTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![1, 1],
        contents: Some(contents),
    };
    InferRequest {
        model_name: "churn".into(),
        model_version: version.into(),
        inputs: vec![
            tensor(
                "tenure",
                "FP64",
                pb::InferTensorContents {
                    fp64_contents: vec![tenure],
                    ..Default::default()
                },
            ),
            tensor(
                "plan",
                "BYTES",
                pb::InferTensorContents {
                    bytes_contents: vec![plan.as_bytes().to_vec()],
                    ..Default::default()
                },
            ),
        ],
        ..Default::default()
    }
}

fn gzipped(message: &InferRequest) -> Bytes {
    use std::io::Write as _;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&prost::Message::encode_to_vec(message))
        .unwrap();
    let deflated = z.finish().unwrap();
    let mut out = vec![1];
    out.extend_from_slice(&(deflated.len() as u32).to_be_bytes());
    out.extend_from_slice(&deflated);
    Bytes::from(out)
}

const SCHEMA_REGISTRY: &str = r#"
models:
  churn:
    aliases: { champion: "1" }
    versions:
      "1":
        input_schema:
          - { name: tenure, type: double, min: 0, max: 1 }
          - { name: plan, type: string, categories: [basic, pro] }
        prediction: { buckets: [0.5] }
      "2":
        input_schema:
          - { name: tenure, type: double, min: 0, max: 1 }
          - { name: plan, type: string, categories: [basic, pro] }
        prediction: { buckets: [0.5] }
"#;

/// One `ModelInfer` call with this body (and `grpc-encoding`, when compressed): the stamped
/// version and the `grpc-status`.
async fn infer_raw(h: &Harness, body: Bytes, encoding: Option<&str>) -> (String, Option<String>) {
    let mut req = Request::post(h.url("/inference.GRPCInferenceService/ModelInfer"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        req = req.header("grpc-encoding", e);
    }
    let resp = h2_client()
        .request(req.body(full(body)).unwrap())
        .await
        .unwrap();
    let stamped = (resp.headers().get("x-model-version"))
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let head = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.unwrap();
    let status = (collected.trailers())
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head)
        .map(|v| v.to_str().unwrap().to_string());
    (stamped, status)
}

/// One `ModelInfer` call: the stamped version and the version the answer reports.
async fn model_infer(h: &Harness, message: &InferRequest) -> (String, String) {
    let req = Request::post(h.url("/inference.GRPCInferenceService/ModelInfer"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(framed(message)))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stamped = resp.headers()["x-model-version"]
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: InferResponse = prost::Message::decode(&body[5..]).unwrap();
    (stamped, answer.model_version)
}

#[tokio::test]
async fn model_infer_resolves_by_the_model_and_version_its_message_names() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = Upstream::start(versioned_grpc_server(bodies.clone())).await;
    // The model comes from the message, as from an Open Inference REST path.
    let route = format!(
        "[[routes]]\nname = \"oi\"\nupstream = \"{}\"\nserves = \"@champion\"\nmatch = {{ open_inference = true }}\n",
        up.addr
    );
    let h = Harness::start(&route, "").await;
    let tensors = vec![vec![5u8; 200_000]];
    let explicit = InferRequest {
        model_name: "churn".into(),
        model_version: "2".into(),
        raw_input_contents: tensors.clone(),
        ..Default::default()
    };
    assert_eq!(
        model_infer(&h, &explicit).await,
        ("2".into(), "2".into()),
        "an explicit version wins over the route's alias"
    );
    assert_eq!(
        bodies.lock().unwrap()[0],
        framed(&explicit),
        "the message reaches the model server byte for byte"
    );
    assert_eq!(up.last().headers["x-model-version"], "2");
    assert_eq!(up.last().headers["x-lineage-id"], h.lineage_id("2"));
    let default = InferRequest {
        model_version: String::new(),
        ..explicit.clone()
    };
    assert_eq!(model_infer(&h, &default).await, ("1".into(), "1".into()));
    let requests = |v: &str| {
        format!(r#"modelstamp_requests_total{{model="churn",version="{v}",status_class="2xx"}}"#)
    };
    assert!(h.metric_reaches(&requests("2"), 1.0).await);
    assert_eq!(h.metric(&requests("1")).await, 1.0);
    let mismatches = h.metrics().await;
    assert!(
        !mismatches.contains("modelstamp_version_mismatch_total{"),
        "{mismatches}"
    );
    // A model the registry does not know is stamped unknown, as over REST.
    let other = InferRequest {
        model_name: "fraud".into(),
        ..default.clone()
    };
    assert_eq!(model_infer(&h, &other).await.0, "unknown");
}

#[tokio::test]
async fn a_grpc_canary_split_sets_the_version_it_stamps_in_the_message() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = Upstream::start(versioned_grpc_server(bodies.clone())).await;
    let route = format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{}\"\n\
         [[routes.backends]]\nversion = \"1\"\nweight = 50\n[[routes.backends]]\nversion = \"2\"\nweight = 50\n",
        up.addr
    );
    let h = Harness::start(&route, "").await;
    let message = InferRequest {
        model_name: "churn".into(),
        model_version: String::new(),
        raw_input_contents: vec![vec![1, 2, 3, 4]],
        ..Default::default()
    };
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (stamped, answered) = model_infer(&h, &message).await;
        assert_eq!(
            stamped, answered,
            "the version stamped is the version that served"
        );
        *served.entry(stamped).or_insert(0) += 1;
    }
    assert_eq!(served.len(), 2, "both backends served: {served:?}");
    // A gzip-compressed message is read whole and sent inflated, with the chosen version; this
    // one (40 kB of noise) spans several h2 frames past the leading fields.
    let mut seed = 0x5eed_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect()
    };
    let large = InferRequest {
        raw_input_contents: vec![noise(100_000)],
        ..message.clone()
    };
    let message = InferRequest {
        raw_input_contents: vec![noise(40_000)],
        ..message
    };
    let mut compressed = std::collections::BTreeSet::new();
    for i in 0..20 {
        let (stamped, status) = infer_raw(&h, gzipped(&message), Some("gzip")).await;
        assert_eq!(status.as_deref(), Some("0"));
        let body = bodies.lock().unwrap()[40 + i].clone();
        assert_eq!(body[0], 0, "sent uncompressed");
        let got: InferRequest = prost::Message::decode(&body[5..]).unwrap();
        assert_eq!(got.model_version, stamped);
        assert_eq!(got.raw_input_contents, message.raw_input_contents);
        *served.entry(stamped.clone()).or_insert(0) += 1;
        compressed.insert(stamped);
    }
    assert_eq!(compressed.len(), 2, "both backends served compressed calls");
    // The message is otherwise unchanged.
    for body in bodies.lock().unwrap().iter().take(40) {
        let got: InferRequest = prost::Message::decode(&body[5..]).unwrap();
        assert_eq!(got.raw_input_contents, vec![vec![1, 2, 3, 4]]);
        assert_eq!(
            body.len() - 5,
            u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize
        );
    }
    for (v, n) in &served {
        let series = format!(
            r#"modelstamp_requests_total{{model="churn",version="{v}",status_class="2xx"}}"#
        );
        assert!(h.metric_reaches(&series, f64::from(*n)).await, "{v}");
    }
    let metrics = h.metrics().await;
    assert!(
        !metrics.contains("modelstamp_version_mismatch_total{"),
        "{metrics}"
    );
    // The route matches every call; one whose message names another model (fraud) is not
    // steered by churn's split: it reaches the model server as sent.
    let fraud = InferRequest {
        model_name: "fraud".into(),
        ..message.clone()
    };
    let sent = framed(&fraud);
    let req = Request::post(h.url("/inference.GRPCInferenceService/ModelInfer"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(full(sent.clone()))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    let _ = resp.into_body().collect().await;
    assert_eq!(bodies.lock().unwrap().pop(), Some(sent));
    // A compressed message past limits.max_inspect_bytes (64 KiB) is not read whole: it goes
    // as it came, and the version its answer reports shows any mismatch.
    // Sent until the split picks version 2 (the server's default is 1).
    let mismatch = r#"modelstamp_version_mismatch_total{model="churn",expected="2",reported="1"}"#;
    let before = h.metric(mismatch).await;
    for _ in 0..40 {
        let (stamped, status) = infer_raw(&h, gzipped(&large), Some("gzip")).await;
        assert_eq!(status.as_deref(), Some("0"));
        assert_eq!(bodies.lock().unwrap().pop().unwrap()[0], 1, "as it came");
        if stamped == "2" {
            break;
        }
    }
    assert!(
        h.metric_reaches(mismatch, before + 1.0).await,
        "{}",
        h.metrics().await
    );
}

#[tokio::test]
async fn model_infer_tensors_are_inspected_per_version_plain_and_compressed() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = Upstream::start(versioned_grpc_server(bodies.clone())).await;
    let h = Harness::start_with_registry(&grpc_route(up.addr), "", SCHEMA_REGISTRY).await;
    // Version 1 (the route's): 12 rows, 4 of them with a plan the training data never had.
    for i in 0..12 {
        let plan = if i % 3 == 0 { "gold" } else { "basic" };
        let body = framed(&row("", 0.25, plan));
        assert_eq!(
            infer_raw(&h, body, None).await,
            ("1".into(), Some("0".into()))
        );
    }
    // Version 2, named in gzip-compressed messages: resolved, stamped and inspected as well.
    for _ in 0..5 {
        let body = gzipped(&row("2", 0.75, "pro"));
        assert_eq!(
            infer_raw(&h, body, Some("gzip")).await,
            ("2".into(), Some("0".into()))
        );
    }
    let (_, status) = infer_raw(&h, framed(&row("7", 0.25, "basic")), None).await;
    assert_eq!(status.as_deref(), Some("5"));
    assert!(h.sidecar.telemetry.inspector.drain(Duration::from_secs(10)));
    let m = h.metrics().await;
    let v = |s: &str| metric_value(&m, s);
    let rows = |version: &str| {
        v(&format!(
            "modelstamp_inspected_rows_total{{model=\"churn\",version=\"{version}\"}}"
        ))
    };
    assert_eq!(rows("1"), 12.0, "{m}");
    assert_eq!(rows("2"), 5.0, "{m}");
    let unseen = r#"modelstamp_feature_issues_total{model="churn",version="1",feature="plan",issue="unseen_category"}"#;
    assert_eq!(v(unseen), 4.0, "{m}");
    assert_eq!(
        v(r#"modelstamp_prediction_count{model="churn",version="1"}"#),
        12.0
    );
    assert_eq!(
        v(r#"modelstamp_prediction_sum{model="churn",version="2"}"#),
        3.75
    );
    // A call answered NOT_FOUND holds no response message: nothing unparseable.
    assert_eq!(
        v(r#"modelstamp_inspect_skipped_total{reason="unparseable"}"#),
        0.0
    );
    // The compressed messages reached the model server as they were sent.
    assert_eq!(bodies.lock().unwrap()[12][0], 1);
}

#[tokio::test]
async fn grpc_calls_are_mirrored_with_the_shadow_version_in_their_message() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = Upstream::start(versioned_grpc_server(bodies.clone())).await;
    let route = format!(
        "{}[routes.shadow]\nversion = \"2\"\nsample = 1.0\n",
        grpc_route(up.addr)
    );
    let h = Harness::start_with_registry(&route, "", SCHEMA_REGISTRY).await;
    for i in 0..3 {
        let body = framed(&row("", 0.25, "basic"));
        assert_eq!(infer_raw(&h, body, None).await.0, "1");
        // A compressed call is mirrored inflated, with the shadow's version in it.
        let body = gzipped(&row("", 0.25, "pro"));
        assert_eq!(infer_raw(&h, body, Some("gzip")).await.0, "1", "{i}");
    }
    let agreed = r#"modelstamp_shadow_comparisons_total{model="churn",baseline="1",candidate="2",result="agree"}"#;
    assert!(h.metric_reaches(agreed, 6.0).await, "{}", h.metrics().await);
    let ok =
        r#"modelstamp_shadow_requests_total{model="churn",baseline="1",candidate="2",result="ok"}"#;
    assert_eq!(h.metric(ok).await, 6.0);
    let shadowed: Vec<_> = (up.seen.lock().unwrap().clone().into_iter())
        .filter(|s| s.headers.contains_key("x-modelstamp-shadow"))
        .collect();
    assert_eq!(shadowed.len(), 6);
    assert!(shadowed.iter().all(|s| s.path == grpc_infer::MODEL_INFER));
    let asked: Vec<String> = (bodies.lock().unwrap().iter())
        .map(|b| {
            let m: InferRequest = prost::Message::decode(&*message_of(b)).unwrap();
            m.model_version
        })
        .collect();
    assert_eq!(asked.iter().filter(|v| *v == "2").count(), 6, "{asked:?}");
    assert_eq!(
        asked.iter().filter(|v| v.is_empty()).count(),
        6,
        "{asked:?}"
    );
}

/// A request body fed from a channel that may fail (the client resets the call).
struct Fallible(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl http_body::Body for Fallible {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn a_call_reset_while_its_first_bytes_are_read_ahead_is_logged_once() {
    let up = Upstream::start(grpc_server()).await;
    let h = Harness::start(&grpc_route(up.addr), "").await;
    // Two bytes of a message, then the client resets the call.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let req = Request::post(h.url("/inference.GRPCInferenceService/ModelInfer"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(Fallible(rx).boxed())
        .unwrap();
    let call = tokio::spawn(h2_client().request(req));
    tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0]))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(Err("the client gave up".into())).await.unwrap();
    let _ = call.await;
    let mut log = Vec::new();
    for _ in 0..100 {
        log = h.access_log();
        if !log.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["status"], 499);
    assert_eq!(log[0]["error"], "client_abort");
    assert_eq!(log[0]["path"], grpc_infer::MODEL_INFER);
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let m = h.metrics().await;
    assert!(m.contains(r#"kind="client_abort"} 1"#), "{m}");
    assert!(
        m.contains(r#"modelstamp_in_flight_requests{model="churn",version="1"} 0"#),
        "{m}"
    );
}

#[tokio::test]
async fn enforce_refuses_a_model_infer_that_breaks_the_schema_as_invalid_argument() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = Upstream::start(versioned_grpc_server(bodies.clone())).await;
    let route = format!("{}[routes.inspect]\nenforce = true\n", grpc_route(up.addr));
    let h = Harness::start_with_registry(&route, "", SCHEMA_REGISTRY).await;
    let req = Request::post(h.url("/inference.GRPCInferenceService/ModelInfer"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(full(framed(&row("", 7.0, "gold"))))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "3", "INVALID_ARGUMENT");
    assert_eq!(
        resp.headers()["grpc-message"],
        "request violates the training schema of churn version 1: \
         row 0 tenure out_of_range, row 0 plan unseen_category (2 in all)"
    );
    assert!(bodies.lock().unwrap().is_empty(), "never forwarded");
    let (_, status) = infer_raw(&h, framed(&row("", 0.5, "basic")), None).await;
    assert_eq!(status.as_deref(), Some("0"));
    assert_eq!(bodies.lock().unwrap().len(), 1);
}
