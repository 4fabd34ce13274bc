//! Triton's binary tensor extension to Open Inference REST, which tritonclient's HTTP client
//! sends by default: the body is a JSON head of `Inference-Header-Content-Length` bytes, then
//! the raw bytes of every tensor whose `parameters.binary_data_size` says how many, in the order
//! the head lists them (the others carry JSON `data` as usual). Responses use it the same way
//! when outputs were asked for as binary. The head is small (no data) and read with serde.

use serde::Deserialize;
use serde_json::Value as Json;

use super::table::{CodecError, Columns, MAX_VALUES};
use super::tensor::{Tensor, flatten_json, raw, tensors, width};

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    inputs: Option<Vec<HeadTensor>>,
    #[serde(default)]
    outputs: Option<Vec<HeadTensor>>,
}

#[derive(Deserialize)]
struct HeadTensor {
    name: Option<String>,
    #[serde(default)]
    datatype: String,
    #[serde(default)]
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default)]
    data: Option<Json>,
}

#[derive(Deserialize)]
struct Parameters {
    binary_data_size: Option<u64>,
}

/// The JSON head of a body (its first `json_len` bytes).
pub fn head(body: &[u8], json_len: usize) -> Result<&[u8], CodecError> {
    body.get(..json_len)
        .ok_or(CodecError::Shape("the JSON head is longer than the body"))
}

fn read(body: &[u8], json_len: usize, inputs: bool) -> Result<Vec<Tensor<'static>>, CodecError> {
    let head: Head = serde_json::from_slice(head(body, json_len)?)?;
    let list = if inputs { head.inputs } else { head.outputs };
    let list = list.ok_or(CodecError::Shape("expected a list of tensors"))?;
    let mut binary = &body[json_len..];
    let mut room = MAX_VALUES;
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        let mut values = Vec::new();
        match (t.parameters.and_then(|p| p.binary_data_size), &t.data) {
            (Some(size), _) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(CodecError::Shape(
                        "binary data shorter than its head declares",
                    ));
                }
                let (bytes, rest) = binary.split_at(size);
                raw(&t.datatype, bytes, &mut values, room)?;
                binary = rest;
            }
            (None, Some(data)) => flatten_json(data, &mut values, room),
            // Neither (a tensor in shared memory): no values, as the JSON form reads it.
            (None, None) => {}
        }
        room -= values.len();
        out.push(Tensor {
            name: t.name.map(Into::into),
            width: width(&t.shape),
            values,
        });
    }
    Ok(out)
}

/// The input features of a binary inference request whose JSON head is `json_len` bytes.
pub fn request_features(
    body: &[u8],
    json_len: usize,
    names: &[String],
) -> Result<Columns, CodecError> {
    tensors(read(body, json_len, true)?, Some(names))
}

/// The predictions of a binary inference response whose JSON head is `json_len` bytes.
pub fn response_predictions(body: &[u8], json_len: usize) -> Result<Columns, CodecError> {
    tensors(read(body, json_len, false)?, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::open_inference;
    use crate::inspect::table::Value;

    /// A request as tritonclient.http lays it out: one binary input, one JSON input.
    fn request() -> (Vec<u8>, usize) {
        let head = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},{"name":"tag","shape":[2],"datatype":"BYTES","data":["a","b"]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = head.to_vec();
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        (body, head.len())
    }

    #[test]
    fn binary_and_json_tensors_read_as_the_json_form_would() {
        let (body, len) = request();
        let names: Vec<String> = vec!["a".into(), "b".into()];
        let f = request_features(&body, len, &names).unwrap();
        let json = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]},{"name":"tag","shape":[2],"datatype":"BYTES","data":["a","b"]}]}"#;
        assert_eq!(f, open_inference::request_features(json, &names).unwrap());
        assert_eq!(
            f.get("x[1]"),
            Some(&[Value::Number(2.0), Value::Number(4.0)][..])
        );
    }

    #[test]
    fn a_response_reads_its_outputs_and_version_from_the_head() {
        let head = br#"{"model_name":"m","model_version":"3","outputs":[{"name":"y","datatype":"INT64","shape":[2],"parameters":{"binary_data_size":16}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&7i64.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        let p = response_predictions(&body, head.len()).unwrap();
        assert_eq!(
            p.get("y"),
            Some(&[Value::Number(7.0), Value::Number(-1.0)][..])
        );
        let version = open_inference::reported_version(super::head(&body, head.len()).unwrap());
        assert_eq!(version.ok().flatten().as_deref(), Some("3"));
    }

    #[test]
    fn cut_or_lying_bodies_are_errors_not_guesses() {
        let (body, len) = request();
        assert!(request_features(&body[..body.len() - 1], len, &[]).is_err());
        assert!(request_features(&body, len + 1, &[]).is_err());
        assert!(request_features(&body, body.len() + 1, &[]).is_err());
        assert!(request_features(&body, 3, &[]).is_err());
        for cut in 0..body.len() {
            let _ = request_features(&body[..cut], len.min(cut), &[]);
        }
    }
}
