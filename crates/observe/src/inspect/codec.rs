//! Which codec reads a payload (configured per route, or detected from the path), and the two
//! questions asked of it: the input features of a request and what its response predicted.

use crate::config::CodecChoice;

use super::openai::{self, Usage};
use super::table::{CodecError, Columns};
use super::{binary, grpc_infer, open_inference, rest};

/// A protocol the inspector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Open Inference Protocol v2 REST (JSON, or Triton's binary tensor extension).
    OpenInference,
    /// Open Inference Protocol v2 over gRPC (`ModelInfer`).
    OpenInferenceGrpc,
    /// KServe v1 and TensorFlow Serving REST.
    KserveV1,
    /// MLflow scoring server.
    Mlflow,
    /// OpenAI-compatible APIs.
    OpenAi,
}

/// How a body is laid out around what its codec reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Framing {
    /// One document.
    #[default]
    Whole,
    /// A `text/event-stream`.
    Sse,
    /// Triton's binary tensor extension: a JSON head of this many bytes
    /// (`Inference-Header-Content-Length`), then raw tensors.
    JsonHead(usize),
    /// gRPC messages; a compressed one is inflated to at most this many bytes to be read.
    Grpc(usize),
}

/// The header that announces Triton's binary tensor extension.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

impl Framing {
    /// The framing a message's headers declare: Triton's binary extension when they carry
    /// `Inference-Header-Content-Length`, an event stream by its content type, else whole.
    pub fn of(headers: &http::HeaderMap) -> Self {
        if let Some(len) = headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
            return match len.to_str().ok().and_then(|v| v.trim().parse().ok()) {
                Some(len) => Self::JsonHead(len),
                // A length that cannot be read: the body is not read as plain JSON either.
                None => Self::JsonHead(usize::MAX),
            };
        }
        let sse = (headers.get(http::header::CONTENT_TYPE))
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if sse { Self::Sse } else { Self::Whole }
    }

    /// How far a compressed gRPC message is inflated.
    fn max_inflated(self) -> usize {
        match self {
            Self::Grpc(max) => max,
            _ => grpc_infer::DEFAULT_MAX_INFLATED,
        }
    }

    /// The JSON part of a body: all of it, or the head of a binary one.
    pub fn json(self, body: &[u8]) -> Result<&[u8], CodecError> {
        match self {
            Self::JsonHead(len) => binary::head(body, len),
            Self::Whole | Self::Sse | Self::Grpc(_) => Ok(body),
        }
    }
}

/// What a response said.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicted {
    /// Predictions by output.
    Table(Columns),
    /// An LLM's token usage and finish reasons.
    Llm(Usage),
}

impl Codec {
    /// The codec for a request: the route's choice, or detected from the path under `auto`.
    /// A gRPC `ModelInfer` call is read as such under `auto` and `open_inference`.
    pub fn choose(choice: CodecChoice, path: &str) -> Option<Self> {
        match choice {
            CodecChoice::Auto => Self::detect(path),
            CodecChoice::OpenInference if path == grpc_infer::MODEL_INFER => {
                Some(Self::OpenInferenceGrpc)
            }
            CodecChoice::OpenInference => Some(Self::OpenInference),
            CodecChoice::KserveV1 => Some(Self::KserveV1),
            CodecChoice::Mlflow => Some(Self::Mlflow),
            CodecChoice::OpenAi => Some(Self::OpenAi),
            CodecChoice::Off => None,
        }
    }

    /// The codec a path implies: `/v2/models/…/infer`, gRPC `ModelInfer`, `/v1/models/…:predict`,
    /// `…/invocations`, OpenAI `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
    /// Others (metadata, health) are not inference calls and are not inspected.
    pub fn detect(path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path);
        if path == grpc_infer::MODEL_INFER {
            Some(Self::OpenInferenceGrpc)
        } else if path.starts_with("/v2/models/") && path.ends_with("/infer") {
            Some(Self::OpenInference)
        } else if path.starts_with("/v1/models/") && path.ends_with(":predict") {
            Some(Self::KserveV1)
        } else if path.ends_with("/invocations") {
            Some(Self::Mlflow)
        } else if openai::operation(path).is_some() {
            Some(Self::OpenAi)
        } else {
            None
        }
    }

    /// The label value of this codec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenInference => "open_inference",
            Self::OpenInferenceGrpc => "open_inference_grpc",
            Self::KserveV1 => "kserve_v1",
            Self::Mlflow => "mlflow",
            Self::OpenAi => "openai",
        }
    }

    /// Whether requests carry tabular features (everything but LLM APIs).
    pub fn tabular(self) -> bool {
        self != Self::OpenAi
    }

    /// The input features of a request laid out as `framing` says; `names` label positional
    /// values (the training schema).
    pub fn features(
        self,
        body: &[u8],
        framing: Framing,
        names: &[String],
    ) -> Result<Columns, CodecError> {
        let body = match (self, framing) {
            (Self::OpenInference, Framing::JsonHead(len)) => {
                return binary::request_features(body, len, names);
            }
            (Self::OpenInferenceGrpc, _) => {
                return grpc_infer::request_features(body, names, framing.max_inflated());
            }
            _ => framing.json(body)?,
        };
        match self {
            Self::OpenInference | Self::OpenInferenceGrpc => {
                open_inference::request_features(body, names)
            }
            Self::KserveV1 => rest::instances_features(body, names),
            Self::Mlflow => rest::mlflow_features(body, names),
            Self::OpenAi => Ok(Columns::default()),
        }
    }

    /// What a response laid out as `framing` says predicted.
    pub fn predicted(self, body: &[u8], framing: Framing) -> Result<Predicted, CodecError> {
        Ok(match (self, framing) {
            (Self::OpenInference, Framing::JsonHead(len)) => {
                Predicted::Table(binary::response_predictions(body, len)?)
            }
            (Self::OpenInference, _) => {
                Predicted::Table(open_inference::response_predictions(framing.json(body)?)?)
            }
            (Self::OpenInferenceGrpc, _) => Predicted::Table(grpc_infer::response_predictions(
                body,
                framing.max_inflated(),
            )?),
            (Self::KserveV1 | Self::Mlflow, _) => {
                Predicted::Table(rest::predictions(framing.json(body)?)?)
            }
            (Self::OpenAi, Framing::Sse) => Predicted::Llm(openai::sse_usage(body)),
            (Self::OpenAi, _) => Predicted::Llm(openai::json_usage(framing.json(body)?)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_codecs_and_config_overrides() {
        let cases = [
            ("/v2/models/churn/infer", Some(Codec::OpenInference)),
            (
                "/v2/models/churn/versions/2/infer",
                Some(Codec::OpenInference),
            ),
            ("/v2/models/churn/ready", None),
            ("/v1/models/iris:predict", Some(Codec::KserveV1)),
            ("/v1/models/iris/versions/3:predict", Some(Codec::KserveV1)),
            ("/invocations", Some(Codec::Mlflow)),
            ("/v1/chat/completions", Some(Codec::OpenAi)),
            ("/v1/embeddings?x=1", Some(Codec::OpenAi)),
            ("/health", None),
            (
                "/inference.GRPCInferenceService/ModelInfer",
                Some(Codec::OpenInferenceGrpc),
            ),
            ("/inference.GRPCInferenceService/ModelMetadata", None),
        ];
        for (path, want) in cases {
            assert_eq!(Codec::detect(path), want, "{path}");
        }
        assert_eq!(
            Codec::choose(CodecChoice::Mlflow, "/predict"),
            Some(Codec::Mlflow)
        );
        assert_eq!(Codec::choose(CodecChoice::Off, "/invocations"), None);
        assert_eq!(
            Codec::choose(CodecChoice::OpenInference, grpc_infer::MODEL_INFER),
            Some(Codec::OpenInferenceGrpc)
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(Framing::of(&headers), Framing::Whole);
        headers.insert("Inference-Header-Content-Length", " 42".parse().unwrap());
        assert_eq!(Framing::of(&headers), Framing::JsonHead(42));
        headers.insert("Inference-Header-Content-Length", "-1".parse().unwrap());
        assert_eq!(Framing::of(&headers), Framing::JsonHead(usize::MAX));
    }

    #[test]
    fn each_codec_reads_its_protocol() {
        let f = Codec::Mlflow
            .features(
                br#"{"dataframe_split":{"columns":["a"],"data":[[1]]}}"#,
                Framing::Whole,
                &[],
            )
            .unwrap_or_default();
        assert_eq!(f.rows(), 1);
        let p = Codec::KserveV1.predicted(br#"{"predictions":[1,0]}"#, Framing::Whole);
        assert!(matches!(p, Ok(Predicted::Table(c)) if c.rows() == 2));
        let p = Codec::OpenAi.predicted(b"data: [DONE]\n\n", Framing::Sse);
        assert!(matches!(p, Ok(Predicted::Llm(_))));
        assert!(
            Codec::OpenInference
                .predicted(b"<html>", Framing::Whole)
                .is_err()
        );
        // Triton's binary extension: the same columns as the JSON form.
        let head = br#"{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"parameters":{"binary_data_size":4}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&9i32.to_le_bytes());
        let f = Codec::OpenInference.features(&body, Framing::JsonHead(head.len()), &[]);
        let json = br#"{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"data":[9]}]}"#;
        assert_eq!(
            f.unwrap(),
            Codec::OpenInference
                .features(json, Framing::Whole, &[])
                .unwrap()
        );
        assert!(
            Codec::OpenInference
                .features(&body, Framing::Whole, &[])
                .is_err()
        );
    }

    /// Messages built by tritonclient and MLServer (`tests/fixtures/open_inference/capture.py`).
    mod golden {
        use super::*;
        use crate::inspect::table::Value;

        const GRPC_REQUEST: &[u8] =
            include_bytes!("../../../../tests/fixtures/open_inference/grpc_request.bin");
        const GRPC_REQUEST_GZIP: &[u8] =
            include_bytes!("../../../../tests/fixtures/open_inference/grpc_request_gzip.bin");
        const GRPC_REQUEST_DEFLATE: &[u8] =
            include_bytes!("../../../../tests/fixtures/open_inference/grpc_request_deflate.bin");
        const GRPC_RESPONSE: &[u8] =
            include_bytes!("../../../../tests/fixtures/open_inference/grpc_response.bin");
        const HTTP_BINARY_REQUEST: &[u8] =
            include_bytes!("../../../../tests/fixtures/open_inference/http_binary_request.bin");
        const EXPECTED: &str =
            include_str!("../../../../tests/fixtures/open_inference/expected.json");

        fn expected() -> serde_json::Value {
            serde_json::from_str(EXPECTED).unwrap()
        }

        /// Every expected column, value for value.
        fn check(got: &Columns, want: &serde_json::Value) {
            let want = want.as_object().unwrap();
            for (name, values) in want {
                let values: Vec<Value> = (values.as_array().unwrap().iter())
                    .map(Value::from_json)
                    .collect();
                assert_eq!(got.get(name), Some(&values[..]), "{name}");
            }
        }

        #[test]
        fn tritonclient_grpc_requests_read_plain_gzip_and_deflate() {
            let want = expected();
            for body in [GRPC_REQUEST, GRPC_REQUEST_GZIP, GRPC_REQUEST_DEFLATE] {
                let f = Codec::OpenInferenceGrpc.features(body, Framing::Whole, &[]);
                check(&f.unwrap(), &want["features"]);
                let grpc_infer::Leading::Read(lead) = grpc_infer::leading(body) else {
                    panic!("{:?}", grpc_infer::leading(body))
                };
                assert_eq!(lead.model_name.as_deref(), Some("churn"));
                assert_eq!(lead.model_version.as_deref(), Some("2"));
            }
            // A split's version is written into a plain message; a compressed one is sent
            // inflated with it.
            for body in [GRPC_REQUEST, GRPC_REQUEST_GZIP] {
                let steered =
                    grpc_infer::set_version(body, "3", grpc_infer::DEFAULT_MAX_INFLATED).unwrap();
                assert_eq!(steered[0], 0, "sent uncompressed");
                let grpc_infer::Leading::Read(lead) = grpc_infer::leading(&steered) else {
                    panic!()
                };
                assert_eq!(lead.model_version.as_deref(), Some("3"));
                let f = Codec::OpenInferenceGrpc.features(&steered, Framing::Whole, &[]);
                check(&f.unwrap(), &want["features"]);
            }
        }

        #[test]
        fn mlserver_grpc_responses_read_typed_contents() {
            let p = Codec::OpenInferenceGrpc.predicted(GRPC_RESPONSE, Framing::Whole);
            let Ok(Predicted::Table(p)) = p else {
                panic!("{p:?}")
            };
            check(&p, &expected()["predictions"]);
            assert_eq!(
                grpc_infer::reported_version(GRPC_RESPONSE),
                Ok(Some("2".into()))
            );
        }

        #[test]
        fn tritonclient_http_binary_requests_read_as_json_ones() {
            let want = expected();
            let len = want["http_binary_json_size"].as_u64().unwrap() as usize;
            let f = Codec::OpenInference.features(HTTP_BINARY_REQUEST, Framing::JsonHead(len), &[]);
            check(&f.unwrap(), &want["features"]);
            // Without its header the body is not JSON, and is not guessed at.
            assert!(
                Codec::OpenInference
                    .features(HTTP_BINARY_REQUEST, Framing::Whole, &[])
                    .is_err()
            );
        }
    }
}
