//! Per-request hot-path functions, each measured alone and together.
//!
//! What a regression here means:
//! - `resolve`: route matching, version lookup or the canary split got slower; every request
//!   pays it.
//! - `stamp`: header writes allocate or copy where they should share pre-built values.
//! - `record`: metric recording took a lock or a label lookup (handles must be pre-resolved).
//! - `request_path`: the sum a request pays before and after forwarding, minus I/O.
//! - `span/*`: building and ending the server and client spans (sampled: the full cost; a
//!   dropped span should cost next to nothing).
//! - `access_log/write_json`: the JSON line, on the log thread (escaping or number formatting
//!   got slower).
//! - `inspect/*`: the codecs that read the copied bodies after the response, the schema check
//!   and the counting (off the byte path, but on the one worker thread's budget: a regression
//!   lowers the exchanges per second it keeps up with before `queue_full` skips start).
//!   `inspect/drift_check_*` is the once-a-second drift check: it must grow with the versions
//!   that have traffic, not with the registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use modelstamp::config;
use modelstamp::demo::{DEMO_CONFIG, DEMO_REGISTRY};
use modelstamp::inspect::Framing;
use modelstamp::observe::exemplar::TraceExemplar;
use modelstamp::observe::metrics::{Metrics, Recorded};
use modelstamp::proxy::{new_request_id, stamp};
use modelstamp::registry::parse_registry;
use modelstamp::routing::{Snapshot, resolve};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn snapshot() -> Snapshot {
    let raw = config::parse(DEMO_CONFIG, "demo.toml").unwrap();
    let cfg = config::validate(&raw, Path::new("config")).unwrap();
    let reg = parse_registry(DEMO_REGISTRY, "registry.yaml").unwrap();
    Snapshot::build(1, cfg, reg, Default::default(), &Metrics::new().0).unwrap()
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("user-agent", HeaderValue::from_static("bench"));
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    h
}

fn exemplar() -> Option<TraceExemplar> {
    let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let s = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    TraceExemplar::of(&SpanContext::new(
        t,
        s,
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ))
}

fn recorded() -> Recorded {
    Recorded {
        status: 200,
        total_seconds: 0.0012,
        upstream_seconds: Some(0.001),
        upstream_error: None,
        request_error: None,
        bytes_in: 300,
        bytes_out: 200,
        exemplar: None,
        upstream_exemplar: None,
    }
}

fn benches(c: &mut Criterion) {
    let snap = snapshot();
    let headers = client_headers();
    c.bench_function("resolve/explicit_version", |b| {
        b.iter(|| {
            resolve(
                &snap,
                black_box("/v2/models/churn/versions/2/infer"),
                &headers,
                CLIENT,
            )
        })
    });
    c.bench_function("resolve/route_alias", |b| {
        b.iter(|| resolve(&snap, black_box("/v2/models/churn/infer"), &headers, CLIENT))
    });
    let served = resolve(&snap, "/v2/models/churn/infer", &headers, CLIENT).served;
    let names = &snap.config.headers;
    let rid = new_request_id();
    c.bench_function("stamp", |b| {
        b.iter_batched_ref(
            client_headers,
            |h| stamp(h, names, &served, &rid),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("request_id", |b| b.iter(new_request_id));
    let r = recorded();
    c.bench_function("record", |b| {
        b.iter(|| served.metrics.record(black_box(&r)))
    });
    let with_exemplar = Recorded {
        exemplar: exemplar(),
        upstream_exemplar: exemplar(),
        ..r
    };
    c.bench_function("record_with_exemplars", |b| {
        b.iter(|| served.metrics.record(black_box(&with_exemplar)))
    });
    c.bench_function("request_path", |b| {
        b.iter_batched_ref(
            client_headers,
            |h| {
                let resolved = resolve(&snap, "/v2/models/churn/infer", h, CLIENT);
                let id = new_request_id();
                stamp(h, names, &resolved.served, &id);
                resolved.served.metrics.in_flight.inc();
                resolved.served.metrics.record(&r);
                resolved.served.metrics.in_flight.dec();
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn span_benches(c: &mut Criterion) {
    use modelstamp::config::{OtlpExport, OtlpProtocol, Sampler, Traces};
    use modelstamp::observe::spans::{Attributes, SharedAttributes, Tracing};
    use opentelemetry::KeyValue;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let metrics = Metrics::new().0;
    for (name, sampler) in [
        ("sampled", Sampler::AlwaysOn),
        ("dropped", Sampler::AlwaysOff),
    ] {
        // Spans are recorded only when exported: send them toward a closed port (the queue
        // fills and the rest are counted as dropped; the worker-side cost is what is measured).
        let cfg = Traces {
            service_name: "bench".into(),
            sampler,
            export: Some(OtlpExport {
                endpoint: "http://127.0.0.1:9".into(),
                protocol: OtlpProtocol::Grpc,
                timeout: std::time::Duration::from_millis(100),
                tls: Default::default(),
                gzip: false,
            }),
            queue: 1024,
            batch: 512,
            lineage_url: "http://x/lineage/{lineage_id}".into(),
            recent_requests: 0,
        };
        let tracing = Tracing::start(&cfg, &metrics).unwrap();
        // The version's attributes are shared, built once per snapshot as the proxy does.
        let shared = std::sync::Arc::new(SharedAttributes::new(vec![
            KeyValue::new("ml.model.name", "churn"),
            KeyValue::new("ml.model.version", "1"),
            KeyValue::new("ml.lineage.id", "ln_526204c212f0100a"),
            KeyValue::new("ml.lineage.url", tracing.lineage_url("ln_526204c212f0100a")),
        ]));
        let upstream = std::sync::Arc::new(SharedAttributes::upstream(
            &"127.0.0.1:8081".parse().unwrap(),
        ));
        c.bench_function(&format!("span/server_and_client_{name}"), |b| {
            b.iter(|| {
                let attrs = |a: &mut Attributes| {
                    a.str("http.request.method", "POST");
                    a.str("url.path", "/v2/models/churn/infer");
                };
                let server =
                    tracing.server_span(None, "POST churn".to_string(), Some(&shared), attrs);
                let client = tracing.client_span(&server, "POST".into(), Some(&upstream), |a| {
                    a.str("url.full", "http://127.0.0.1:8081/v2/models/churn/infer")
                });
                client.end();
                server.end();
            })
        });
    }
}

fn inspect_benches(c: &mut Criterion) {
    use modelstamp::inspect::{open_inference, openai};
    let mlserver = br#"{"model_name":"churn","model_version":"2","id":"req-1","parameters":{"content_type":"np"},"outputs":[{"name":"output-1","shape":[2,1],"datatype":"INT64","parameters":{"content_type":"np"},"data":[0,0]}]}"#;
    c.bench_function("inspect/open_inference_reported_version", |b| {
        b.iter(|| open_inference::reported_version(black_box(mlserver)))
    });
    let sse = b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
    c.bench_function("inspect/openai_sse_model", |b| {
        b.iter(|| openai::sse_model(black_box(sse)))
    });
    c.bench_function("inspect/openai_sse_usage", |b| {
        b.iter(|| openai::sse_usage(black_box(sse)))
    });
    grpc_benches(c);
    inspect_worker_benches(c);
}

/// gRPC ModelInfer: the leading fields read ahead of a request (on the proxy thread, before
/// resolving), a split's version written into them, and a response's version read after it.
fn grpc_benches(c: &mut Criterion) {
    use modelstamp::inspect::grpc_infer::{self, Leading};
    // model_name "churn", model_version "2", id "req-1", then 4 KiB of raw input tensors: the
    // leading fields are read from the first bytes, the tensors never.
    let mut message = vec![0x0a, 5];
    message.extend_from_slice(b"churn");
    message.extend_from_slice(&[0x12, 1, b'2', 0x1a, 5]);
    message.extend_from_slice(b"req-1");
    message.extend_from_slice(&[0x3a, 0x80, 0x20]);
    message.extend_from_slice(&[7; 4096]);
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    c.bench_function("grpc/model_infer_leading_fields", |b| {
        b.iter(|| grpc_infer::leading(black_box(&body)))
    });
    let Leading::Read(lead) = grpc_infer::leading(&body) else {
        return;
    };
    let head = &body[..64];
    c.bench_function("grpc/model_infer_set_version", |b| {
        b.iter(|| grpc_infer::with_version(black_box(head), &lead, "3", 1 << 16))
    });
    c.bench_function("grpc/model_infer_response_reported_version", |b| {
        b.iter(|| grpc_infer::reported_version(black_box(&body)))
    });
}

/// An Open Inference JSON request (FP64 inputs) as gRPC messages (typed contents; raw
/// contents) and as a binary-extension body with its JSON head's length.
fn other_forms(json: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>, usize) {
    use modelstamp::inspect::grpc_infer::pb;
    use prost::Message as _;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let inputs = v["inputs"].as_array().unwrap();
    let tensor = |t: &serde_json::Value, contents| pb::InferTensor {
        name: t["name"].as_str().unwrap().into(),
        datatype: "FP64".into(),
        shape: vec![1, 1],
        contents,
    };
    let data = |t: &serde_json::Value| -> Vec<f64> {
        let d = t["data"].as_array().unwrap();
        d.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()
    };
    let frame = |m: &pb::ModelInferRequest| {
        let bytes = m.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    };
    let typed = pb::ModelInferRequest {
        model_name: "churn".into(),
        inputs: (inputs.iter())
            .map(|t| {
                let fp64_contents = data(t);
                tensor(
                    t,
                    Some(pb::InferTensorContents {
                        fp64_contents,
                        ..Default::default()
                    }),
                )
            })
            .collect(),
        ..Default::default()
    };
    let le = |t: &serde_json::Value| {
        data(t)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let raw = pb::ModelInferRequest {
        model_name: "churn".into(),
        inputs: inputs.iter().map(|t| tensor(t, None)).collect(),
        raw_input_contents: inputs.iter().map(le).collect(),
        ..Default::default()
    };
    let head = serde_json::json!({
        "inputs": inputs.iter().map(|t| serde_json::json!({
            "name": t["name"], "datatype": "FP64", "shape": [1, 1],
            "parameters": {"binary_data_size": 8},
        })).collect::<Vec<_>>(),
    });
    let mut binary = serde_json::to_vec(&head).unwrap();
    let head_len = binary.len();
    for t in inputs {
        binary.extend_from_slice(&le(t));
    }
    (frame(&typed), frame(&raw), binary, head_len)
}

/// The worker's per-exchange work: decode with each codec, check the schema, count.
fn inspect_worker_benches(c: &mut Criterion) {
    use modelstamp::inspect::Codec;
    use modelstamp::inspect::quality;
    use modelstamp::inspect::stats::VersionStats;
    let snap = snapshot();
    let profile = snap.models["churn"].versions["2"].profile.clone();
    let oi_req = modelstamp::demo::demo_request(7, 10).to_string();
    let oi_resp = br#"{"model_name":"churn","model_version":"2","outputs":[{"name":"churn_probability","shape":[1,1],"datatype":"FP64","data":[0.42]}]}"#;
    let bodies: [(&str, Codec, &[u8], &[u8]); 3] = [
        ("open_inference", Codec::OpenInference, oi_req.as_bytes(), oi_resp),
        (
            "kserve_v1",
            Codec::KserveV1,
            br#"{"instances": [[0.1, -0.3, 1.2, 0.4]]}"#,
            br#"{"predictions": [0.42]}"#,
        ),
        (
            "mlflow",
            Codec::Mlflow,
            br#"{"dataframe_split": {"columns": ["tenure", "monthly_charges", "support_calls", "usage_gb"], "data": [[0.1, -0.3, 1.2, 0.4]]}}"#,
            br#"{"predictions": [0.42]}"#,
        ),
    ];
    for (name, codec, req, resp) in bodies {
        c.bench_function(&format!("inspect/{name}_features"), |b| {
            b.iter(|| codec.features(black_box(req), Framing::Whole, &profile.names))
        });
        c.bench_function(&format!("inspect/{name}_predictions"), |b| {
            b.iter(|| codec.predicted(black_box(resp), Framing::Whole))
        });
    }
    // The same request in the other forms Open Inference takes: gRPC with typed contents and
    // with raw contents, and Triton's binary extension over REST.
    let (grpc_typed, grpc_raw, binary, head_len) = other_forms(&oi_req);
    let forms: [(&str, Codec, &[u8], Framing); 3] = [
        (
            "grpc_contents",
            Codec::OpenInferenceGrpc,
            &grpc_typed,
            Framing::Whole,
        ),
        (
            "grpc_raw",
            Codec::OpenInferenceGrpc,
            &grpc_raw,
            Framing::Whole,
        ),
        (
            "binary",
            Codec::OpenInference,
            &binary,
            Framing::JsonHead(head_len),
        ),
    ];
    let want = Codec::OpenInference.features(oi_req.as_bytes(), Framing::Whole, &profile.names);
    for (name, codec, req, framing) in forms {
        let got = codec.features(req, framing, &profile.names);
        assert_eq!(
            got.ok(),
            want.as_ref().ok().cloned(),
            "{name} reads as the JSON form"
        );
        c.bench_function(&format!("inspect/open_inference_{name}_features"), |b| {
            b.iter(|| codec.features(black_box(req), framing, &profile.names))
        });
    }
    let columns = Codec::OpenInference
        .features(oi_req.as_bytes(), Framing::Whole, &profile.names)
        .unwrap();
    c.bench_function("inspect/quality_check", |b| {
        b.iter(|| quality::check(&profile.schema, black_box(&columns)))
    });
    let predicted = Codec::OpenInference
        .predicted(oi_resp, Framing::Whole)
        .unwrap();
    let mut stats = VersionStats::new(profile.clone());
    c.bench_function("inspect/count_exchange", |b| {
        b.iter(|| {
            stats.features(black_box(&columns), 0);
            if let modelstamp::inspect::codec::Predicted::Table(p) = &predicted {
                stats.predictions(p, 0);
            }
        })
    });
    // The worker's once-a-second drift check over a large registry where two versions have
    // traffic: the other 998 must cost next to nothing.
    let mut many: Vec<VersionStats> = (0..1000)
        .map(|v| {
            let mut p = (*profile).clone();
            p.version = v.to_string().into();
            VersionStats::new(std::sync::Arc::new(p))
        })
        .collect();
    for s in &mut many[..2] {
        for _ in 0..200 {
            s.features(&columns, 0);
            if let modelstamp::inspect::codec::Predicted::Table(p) = &predicted {
                s.predictions(p, 0);
            }
        }
    }
    let mut watch = modelstamp::inspect::stats::DriftWatch::default();
    c.bench_function("inspect/drift_check_1000_versions_2_live", |b| {
        b.iter(|| watch.check(black_box(&many), 0))
    });
}

fn access_log_benches(c: &mut Criterion) {
    use modelstamp::observe::access_log::AccessLine;
    let line = AccessLine {
        time: std::time::SystemTime::now(),
        request_id: new_request_id(),
        trace_id: Some(TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128)),
        span_id: Some(SpanId::from(0x00f0_67aa_0ba9_02b7u64)),
        route: Some("models".into()),
        model: "churn".into(),
        version: "3".into(),
        lineage_id: "ln_526204c212f0100a".into(),
        reported_version: Some("3".into()),
        client: "127.0.0.1:50312".parse().unwrap(),
        method: http::Method::POST,
        path: http::uri::PathAndQuery::from_static("/v2/models/churn/infer"),
        protocol: "1.1",
        status: 200,
        upstream_status: Some(200),
        grpc_status: None,
        duration_ms: 0.412_345,
        upstream_ms: Some(0.25),
        bytes_in: 213,
        bytes_out: 187,
        error: None,
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("access_log/write_json", |b| {
        b.iter(|| {
            out.clear();
            black_box(&line).write_json(&mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(
    hot_path,
    benches,
    span_benches,
    access_log_benches,
    inspect_benches
);
criterion_main!(hot_path);
