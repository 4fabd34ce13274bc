//! Open Inference Protocol v2 REST: the version the model server reports in its response, the
//! input features of a request and the predictions of a response (tensors in `inputs` /
//! `outputs`: `name`, `shape`, `datatype`, `data` flat or nested row-major).

use serde::Deserialize;
use serde_json::Value as Json;

use super::table::{CodecError, Columns, MAX_VALUES, Value, positional};

#[derive(Deserialize)]
struct Reported {
    model_version: Option<serde_json::Value>,
}

/// The response's `model_version` (a string, or a number some servers send). `Err` when the
/// body is not JSON; `Ok(None)` when it carries no version.
pub fn reported_version(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    let r: Reported = serde_json::from_slice(body)?;
    Ok(match r.model_version {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Flatten a tensor's `data` (flat or nested) into scalars, at most [`MAX_VALUES`].
fn flatten(data: &Json, out: &mut Vec<Value>) {
    match data {
        Json::Array(items) => {
            for item in items {
                if out.len() >= MAX_VALUES {
                    return;
                }
                flatten(item, out);
            }
        }
        scalar => out.push(Value::from_json(scalar)),
    }
}

/// Tensors as columns: shape `[N]` or `[N, 1]` is one column named after the tensor; `[N, F]`
/// gives F columns, named from `names` when a request carries a single tensor (a whole row of
/// features, as many clients send), else `name[i]` (e.g. class probabilities of an output).
fn tensors(list: &Json, names: Option<&[String]>) -> Result<Columns, CodecError> {
    let list = list
        .as_array()
        .ok_or(CodecError::Shape("expected a list of tensors"))?;
    let row_names = names.filter(|_| list.len() == 1);
    let mut out = Columns::default();
    for t in list {
        let name = t["name"]
            .as_str()
            .ok_or(CodecError::Shape("tensor without a name"))?;
        let mut values = Vec::new();
        flatten(&t["data"], &mut values);
        let width = t["shape"]
            .as_array()
            .and_then(|s| s.get(1))
            .and_then(Json::as_u64)
            .unwrap_or(1)
            .max(1);
        let width = usize::try_from(width).unwrap_or(1);
        if width == 1 {
            for v in values {
                out.push(name, v);
            }
            continue;
        }
        for (i, v) in values.into_iter().enumerate() {
            let col = i % width;
            let col_name = match row_names {
                Some(n) => positional(n, col),
                None => format!("{name}[{col}]"),
            };
            out.push(&col_name, v);
        }
    }
    Ok(out)
}

/// The input features of an inference request.
pub fn request_features(body: &[u8], names: &[String]) -> Result<Columns, CodecError> {
    let v: Json = serde_json::from_slice(body)?;
    tensors(&v["inputs"], Some(names))
}

/// The predictions of an inference response, one column per output (or output position).
pub fn response_predictions(body: &[u8]) -> Result<Columns, CodecError> {
    let v: Json = serde_json::from_slice(body)?;
    tensors(&v["outputs"], None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLSERVER_REQUEST: &[u8] = br#"{"id":"req-1","parameters":{"content_type":"pd"},"inputs":[{"name":"tenure","datatype":"FP64","shape":[2,1],"data":[-0.67,-1.8]},{"name":"monthly_charges","datatype":"FP64","shape":[2,1],"data":[1.04,-1.7]},{"name":"support_calls","datatype":"FP64","shape":[2,1],"data":[0.06,2.2]},{"name":"usage_gb","datatype":"FP64","shape":[2,1],"data":[0.65,0.6]}]}"#;
    const MLSERVER_RESPONSE: &[u8] = br#"{"model_name":"churn","model_version":"2","id":"req-1","parameters":{"content_type":"np"},"outputs":[{"name":"output-1","shape":[2,1],"datatype":"INT64","parameters":{"content_type":"np"},"data":[0,0]}]}"#;

    #[test]
    fn golden_mlserver_pair() {
        // shared/reference/mlserver-1.7.1: a pandas-content request and its response.
        let f = request_features(MLSERVER_REQUEST, &[]).unwrap_or_default();
        assert_eq!(
            f.columns()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["tenure", "monthly_charges", "support_calls", "usage_gb"]
        );
        assert_eq!(
            f.get("support_calls"),
            Some(&[Value::Number(0.06), Value::Number(2.2)][..])
        );
        let p = response_predictions(MLSERVER_RESPONSE).unwrap_or_default();
        assert_eq!(
            p.get("output-1"),
            Some(&[Value::Number(0.0), Value::Number(0.0)][..])
        );
    }

    #[test]
    fn a_single_row_tensor_takes_schema_names_and_nested_data_flattens() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let req = br#"{"inputs":[{"name":"input-0","datatype":"FP32","shape":[2,3],"data":[[1,2,3],[4,null,6]]}]}"#;
        let f = request_features(req, &names).unwrap_or_default();
        assert_eq!(f.get("b"), Some(&[Value::Number(2.0), Value::Null][..]));
        let probs =
            br#"{"outputs":[{"name":"proba","datatype":"FP64","shape":[1,2],"data":[0.3,0.7]}]}"#;
        assert_eq!(
            response_predictions(probs)
                .unwrap_or_default()
                .get("proba[1]"),
            Some(&[Value::Number(0.7)][..])
        );
        let bytes =
            br#"{"outputs":[{"name":"label","datatype":"BYTES","shape":[1],"data":["churn"]}]}"#;
        assert_eq!(
            response_predictions(bytes).unwrap_or_default().get("label"),
            Some(&[Value::Text("churn".into())][..])
        );
        assert!(matches!(
            request_features(br#"{"inputs": 3}"#, &[]),
            Err(CodecError::Shape(_))
        ));
    }

    #[test]
    fn reads_mlserver_responses() {
        // MLServer 1.7.1, mlserver-mlflow runtime (shared/reference/mlserver-1.7.1).
        let body = br#"{"model_name":"churn","model_version":"2","id":"req-1","parameters":{"content_type":"np"},
            "outputs":[{"name":"output-1","shape":[2,1],"datatype":"INT64","parameters":{"content_type":"np"},"data":[0,0]}]}"#;
        assert_eq!(reported_version(body).ok().flatten().as_deref(), Some("2"));
        assert_eq!(
            reported_version(br#"{"model_version":3}"#)
                .ok()
                .flatten()
                .as_deref(),
            Some("3")
        );
        assert_eq!(
            reported_version(br#"{"model_name":"churn"}"#)
                .ok()
                .flatten(),
            None
        );
        assert!(reported_version(b"not json").is_err());
    }
}
