//! Open Inference over gRPC (`inference.GRPCInferenceService`, KServe's `grpc_predict_v2.proto`,
//! which Triton and MLServer serve): the model name and version a `ModelInfer` message carries.
//! Decoded with prost from a message that declares only those two fields (tags 1 and 2 of both
//! `ModelInferRequest` and `ModelInferResponse`): the tensors are skipped by length, never copied.

use prost::Message as _;

/// The `:path` of a `ModelInfer` call.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Bytes before each gRPC message: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// Fields 1 and 2 of `ModelInferRequest` and `ModelInferResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferHead {
    /// `model_name`.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// `model_version` (empty: none given).
    #[prost(string, tag = "2")]
    pub model_version: String,
}

/// Why a gRPC body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    /// Fewer bytes than the first message's prefix announces (a copy cut at the cap).
    #[error("the first gRPC message is incomplete")]
    Incomplete,
    /// The message is compressed (`grpc-encoding`), which is not read.
    #[error("the first gRPC message is compressed")]
    Compressed,
    /// Not the protobuf of a `ModelInfer` message.
    #[error("not a ModelInfer message: {0}")]
    Protobuf(String),
}

/// The first message of a gRPC body.
pub fn first_message(body: &[u8]) -> Result<&[u8], GrpcError> {
    let (&flag, rest) = body.split_first().ok_or(GrpcError::Incomplete)?;
    let len = rest.get(..4).ok_or(GrpcError::Incomplete)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if flag != 0 {
        return Err(GrpcError::Compressed);
    }
    body.get(PREFIX..PREFIX + len).ok_or(GrpcError::Incomplete)
}

/// The model name and version of the first `ModelInfer` message of a body.
pub fn head(body: &[u8]) -> Result<InferHead, GrpcError> {
    InferHead::decode(first_message(body)?).map_err(|e| GrpcError::Protobuf(e.to_string()))
}

/// The version a `ModelInferResponse` reports; `None` when it names none.
pub fn reported_version(body: &[u8]) -> Result<Option<String>, GrpcError> {
    let head = head(body)?;
    Ok(Some(head.model_version).filter(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ModelInferResponse` as the proto declares it, tensors included.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Response {
        #[prost(string, tag = "1")]
        model_name: String,
        #[prost(string, tag = "2")]
        model_version: String,
        #[prost(string, tag = "3")]
        id: String,
        #[prost(message, repeated, tag = "5")]
        outputs: Vec<Output>,
        #[prost(bytes = "vec", repeated, tag = "6")]
        raw_output_contents: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Output {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        datatype: String,
        #[prost(int64, repeated, tag = "3")]
        shape: Vec<i64>,
        #[prost(message, optional, tag = "5")]
        contents: Option<Contents>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Contents {
        #[prost(double, repeated, tag = "7")]
        fp64_contents: Vec<f64>,
    }

    fn framed(message: &impl prost::Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    fn response(version: &str) -> Response {
        Response {
            model_name: "churn".into(),
            model_version: version.into(),
            id: "req-1".into(),
            outputs: vec![Output {
                name: "predict".into(),
                datatype: "FP64".into(),
                shape: vec![2, 1],
                contents: Some(Contents {
                    fp64_contents: vec![0.1, 0.9],
                }),
            }],
            raw_output_contents: vec![vec![0; 64]],
        }
    }

    #[test]
    fn the_reported_version_is_read_past_the_tensors() {
        let body = framed(&response("2"));
        assert_eq!(reported_version(&body), Ok(Some("2".into())));
        assert_eq!(head(&body).map(|h| h.model_name), Ok("churn".into()));
        assert_eq!(reported_version(&framed(&response(""))), Ok(None));
        // A second message after the first is not read.
        let mut two = body.clone();
        two.extend_from_slice(&framed(&response("3")));
        assert_eq!(reported_version(&two), Ok(Some("2".into())));
    }

    #[test]
    fn cut_compressed_or_foreign_bodies_are_errors() {
        let body = framed(&response("2"));
        for cut in [0, 3, 5, body.len() - 1] {
            assert_eq!(head(&body[..cut]), Err(GrpcError::Incomplete), "{cut}");
        }
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(head(&compressed), Err(GrpcError::Compressed));
        // Field 1 as a varint: not a string.
        let foreign = [0, 0, 0, 0, 2, 0x08, 0x01];
        assert!(matches!(head(&foreign), Err(GrpcError::Protobuf(_))));
    }
}
