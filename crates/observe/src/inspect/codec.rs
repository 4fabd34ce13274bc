//! Which codec reads a payload (configured per route, or detected from the path), and the two
//! questions asked of it: the input features of a request and what its response predicted.

use crate::config::CodecChoice;

use super::openai::{self, Usage};
use super::table::{CodecError, Columns};
use super::{open_inference, rest};

/// A protocol the inspector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Open Inference Protocol v2 REST.
    OpenInference,
    /// KServe v1 and TensorFlow Serving REST.
    KserveV1,
    /// MLflow scoring server.
    Mlflow,
    /// OpenAI-compatible APIs.
    OpenAi,
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
    pub fn choose(choice: CodecChoice, path: &str) -> Option<Self> {
        match choice {
            CodecChoice::Auto => Self::detect(path),
            CodecChoice::OpenInference => Some(Self::OpenInference),
            CodecChoice::KserveV1 => Some(Self::KserveV1),
            CodecChoice::Mlflow => Some(Self::Mlflow),
            CodecChoice::OpenAi => Some(Self::OpenAi),
            CodecChoice::Off => None,
        }
    }

    /// The codec a path implies: `/v2/models/…/infer`, `/v1/models/…:predict`, `…/invocations`,
    /// OpenAI `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`. Others (metadata,
    /// health) are not inference calls and are not inspected.
    pub fn detect(path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path);
        if path.starts_with("/v2/models/") && path.ends_with("/infer") {
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
            Self::KserveV1 => "kserve_v1",
            Self::Mlflow => "mlflow",
            Self::OpenAi => "openai",
        }
    }

    /// Whether requests carry tabular features (everything but LLM APIs).
    pub fn tabular(self) -> bool {
        self != Self::OpenAi
    }

    /// The input features of a request; `names` label positional values (the training schema).
    pub fn features(self, body: &[u8], names: &[String]) -> Result<Columns, CodecError> {
        match self {
            Self::OpenInference => open_inference::request_features(body, names),
            Self::KserveV1 => rest::instances_features(body, names),
            Self::Mlflow => rest::mlflow_features(body, names),
            Self::OpenAi => Ok(Columns::default()),
        }
    }

    /// What a response predicted; `sse` when it is an event stream.
    pub fn predicted(self, body: &[u8], sse: bool) -> Result<Predicted, CodecError> {
        Ok(match self {
            Self::OpenInference => Predicted::Table(open_inference::response_predictions(body)?),
            Self::KserveV1 | Self::Mlflow => Predicted::Table(rest::predictions(body)?),
            Self::OpenAi if sse => Predicted::Llm(openai::sse_usage(body)),
            Self::OpenAi => Predicted::Llm(openai::json_usage(body)?),
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
        ];
        for (path, want) in cases {
            assert_eq!(Codec::detect(path), want, "{path}");
        }
        assert_eq!(
            Codec::choose(CodecChoice::Mlflow, "/predict"),
            Some(Codec::Mlflow)
        );
        assert_eq!(Codec::choose(CodecChoice::Off, "/invocations"), None);
    }

    #[test]
    fn each_codec_reads_its_protocol() {
        let f = Codec::Mlflow
            .features(
                br#"{"dataframe_split":{"columns":["a"],"data":[[1]]}}"#,
                &[],
            )
            .unwrap_or_default();
        assert_eq!(f.rows(), 1);
        let p = Codec::KserveV1.predicted(br#"{"predictions":[1,0]}"#, false);
        assert!(matches!(p, Ok(Predicted::Table(c)) if c.rows() == 2));
        let p = Codec::OpenAi.predicted(b"data: [DONE]\n\n", true);
        assert!(matches!(p, Ok(Predicted::Llm(_))));
        assert!(Codec::OpenInference.predicted(b"<html>", false).is_err());
    }
}
