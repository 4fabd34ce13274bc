//! An embedded Open Inference Protocol v2 (REST) model server hosting two versions of a `churn`
//! model that predict differently. Shapes follow MLServer 1.7: `model_version` in the body, 404
//! `{"error": "Model churn with version 9 not found"}` for an unknown version.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::observe::metrics::ListenerMetrics;
use crate::proxy::server::{Listener, ListenerSettings, serve};
use crate::routing::parse_open_inference;

/// The features the demo model reads, in order.
pub const FEATURES: [&str; 4] = ["tenure", "monthly_charges", "support_calls", "usage_gb"];

/// Versions the demo server hosts.
const VERSIONS: [&str; 2] = ["1", "2"];

/// Logistic-regression weights per version: bias, then one per feature.
fn weights(version: &str) -> Option<[f64; 5]> {
    match version {
        "1" => Some([-1.0, -0.8, 0.6, 0.9, -0.2]),
        // Version 2 leans harder on support calls and charges: it predicts more churn.
        "2" => Some([-0.4, -0.5, 0.9, 1.2, -0.1]),
        _ => None,
    }
}

/// The fixed answer of [`start_fixed`]: a small Open Inference v2 response.
pub const FIXED_RESPONSE: &str = r#"{"model_name":"churn","model_version":"1","id":"bench","parameters":{"content_type":"np"},"outputs":[{"name":"churn_probability","shape":[1,1],"datatype":"FP64","data":[0.42]}]}"#;

/// The same answer as a gRPC `ModelInferResponse`, framed, for gRPC calls to [`start_fixed`].
fn fixed_grpc_response() -> Bytes {
    use crate::inspect::grpc_infer::pb;
    let message = prost::Message::encode_to_vec(&pb::ModelInferResponse {
        model_name: "churn".into(),
        model_version: "1".into(),
        id: "bench".into(),
        outputs: vec![pb::InferTensor {
            name: "churn_probability".into(),
            datatype: "FP64".into(),
            shape: vec![1, 1],
            contents: Some(pb::InferTensorContents {
                fp64_contents: vec![0.42],
                ..Default::default()
            }),
        }],
        ..Default::default()
    });
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

/// A stub answer: a body, then trailers for a gRPC one.
type Fixed = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<http::HeaderMap, Infallible>>>,
>;

/// Start a stub that answers every request with [`FIXED_RESPONSE`] (a gRPC call with the same
/// prediction as a `ModelInferResponse` and `grpc-status: 0`) without reading the body beyond
/// draining it: the fast upstream of the load comparison.
pub async fn start_fixed(
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let grpc_answer = fixed_grpc_response();
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let grpc_answer = grpc_answer.clone();
        async move {
            let grpc = (req.headers().get(header::CONTENT_TYPE))
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let _ = req.into_body().collect().await;
            let answer: Response<Fixed> = if grpc {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let mut r = Response::new(
                    Full::new(grpc_answer).with_trailers(std::future::ready(Some(Ok(trailers)))),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                r
            } else {
                reply_text(StatusCode::OK, FIXED_RESPONSE)
                    .map(|b| b.with_trailers(std::future::ready(None)))
            };
            Ok::<_, Infallible>(answer)
        }
    });
    tokio::spawn(serve(
        listener,
        move |_, _| svc.clone(),
        shutdown,
        Listener {
            name: "stub-model",
            settings: ListenerSettings::default,
            metrics: ListenerMetrics::default(),
            tls: None,
        },
    ));
    Ok(local)
}

fn reply_text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Start the server on `addr`; unversioned paths are answered by `default_version`.
pub async fn start(
    addr: SocketAddr,
    default_version: &'static str,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let svc = tower::service_fn(move |req: Request<Incoming>| handle(req, default_version));
    tokio::spawn(serve(
        listener,
        move |_, _| svc,
        shutdown,
        Listener {
            name: "demo-model",
            settings: ListenerSettings::default,
            metrics: ListenerMetrics::default(),
            tls: None,
        },
    ));
    Ok(local)
}

async fn handle(
    req: Request<Incoming>,
    default_version: &'static str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/v2/health/ready" || path == "/v2/health/live" {
        return Ok(reply(StatusCode::OK, &json!({})));
    }
    let Some(oi) = parse_open_inference(&path).filter(|p| p.name == "churn") else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("Model {path} not found") }),
        ));
    };
    let version = oi.version.unwrap_or(default_version);
    let Some(w) = weights(version) else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("Model churn with version {version} not found") }),
        ));
    };
    if !oi.infer {
        return Ok(reply(StatusCode::OK, &metadata(version)));
    }
    if req.method() != Method::POST {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "use POST" }),
        ));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("invalid JSON: {e}") }),
            ));
        }
    };
    Ok(match infer(&request, version, &w) {
        Ok(v) => reply(StatusCode::OK, &v),
        Err((status, msg)) => reply(status, &json!({ "error": msg })),
    })
}

fn metadata(version: &str) -> Value {
    let inputs: Vec<Value> = FEATURES
        .iter()
        .map(|f| json!({ "name": f, "datatype": "FP64", "shape": [-1, 1] }))
        .collect();
    json!({
        "name": "churn",
        "versions": VERSIONS,
        "platform": "modelstamp-demo",
        "inputs": inputs,
        "outputs": [{ "name": "churn_probability", "datatype": "FP64", "shape": [-1, 1] }],
        "parameters": { "version": version },
    })
}

fn column<'a>(request: &'a Value, name: &str) -> Option<&'a Vec<Value>> {
    request["inputs"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)?["data"]
        .as_array()
}

fn infer(request: &Value, version: &str, w: &[f64; 5]) -> Result<Value, (StatusCode, String)> {
    let cols: Vec<&Vec<Value>> = FEATURES
        .iter()
        .map(|f| column(request, f).ok_or((StatusCode::BAD_REQUEST, format!("missing input {f}"))))
        .collect::<Result<_, _>>()?;
    let rows = cols[0].len();
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut z = w[0];
        for (i, col) in cols.iter().enumerate() {
            // Like many serving pipelines, a NULL is imputed with the (standardised) mean: the
            // model answers 200, wrongly. Only the sidecar's data-quality counters notice.
            let x = match col.get(row) {
                Some(Value::Null) => 0.0,
                v => v.and_then(Value::as_f64).ok_or((
                    StatusCode::BAD_REQUEST,
                    format!("input {} row {row} is not a number", FEATURES[i]),
                ))?,
            };
            // Version 2 has a bug the demo makes visible: it rejects very high support-call counts.
            if version == "2" && i == 2 && x > 2.0 {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "support_calls out of supported range".into(),
                ));
            }
            z += w[i + 1] * x;
        }
        out.push(1.0 / (1.0 + (-z).exp()));
    }
    Ok(json!({
        "model_name": "churn",
        "model_version": version,
        "id": request["id"],
        "parameters": { "content_type": "np" },
        "outputs": [{ "name": "churn_probability", "shape": [rows, 1], "datatype": "FP64", "data": out }],
    }))
}

fn reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(support_calls: f64) -> Value {
        let inputs: Vec<Value> = FEATURES
            .iter()
            .map(|f| json!({ "name": f, "datatype": "FP64", "shape": [1, 1], "data": [if *f == "support_calls" { support_calls } else { 0.5 }] }))
            .collect();
        json!({ "id": "r1", "inputs": inputs })
    }

    #[test]
    fn the_stubs_grpc_answer_predicts_as_its_rest_one() {
        use crate::inspect::{Codec, Framing, grpc_infer};
        let grpc = fixed_grpc_response();
        let rest = Codec::OpenInference.predicted(FIXED_RESPONSE.as_bytes(), Framing::Whole);
        let got = Codec::OpenInferenceGrpc.predicted(&grpc, Framing::Whole);
        assert_eq!(got.unwrap(), rest.unwrap());
        assert_eq!(grpc_infer::reported_version(&grpc), Ok(Some("1".into())));
    }

    #[test]
    fn versions_predict_differently() {
        let p = |v: &str| {
            infer(&request(0.0), v, &weights(v).unwrap_or_default())
                .map(|r| r["outputs"][0]["data"][0].as_f64())
        };
        let (p1, p2) = (p("1"), p("2"));
        assert!(
            matches!((p1.clone(), p2.clone()), (Ok(Some(a)), Ok(Some(b))) if b > a),
            "{p1:?} {p2:?}"
        );
    }

    #[test]
    fn version_two_fails_on_extreme_input() {
        assert!(infer(&request(3.0), "2", &weights("2").unwrap_or_default()).is_err());
        assert!(infer(&request(3.0), "1", &weights("1").unwrap_or_default()).is_ok());
    }
}
