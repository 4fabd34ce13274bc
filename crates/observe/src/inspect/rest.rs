//! The row/column JSON protocols: KServe v1 (`instances` → `predictions`), TensorFlow Serving
//! REST (`instances` or `inputs` → `predictions` or `outputs`) and the MLflow scoring server
//! (`dataframe_split`, `dataframe_records`, `instances`, `inputs` → `predictions`).

use serde_json::Value as Json;

use super::table::{CodecError, Columns, MAX_VALUES, Value};

/// Input features of a KServe v1 or TF Serving request; `names` label positional values.
pub fn instances_features(body: &[u8], names: &[String]) -> Result<Columns, CodecError> {
    let v: Json = serde_json::from_slice(body)?;
    match (&v["instances"], &v["inputs"]) {
        (Json::Array(rows), _) => Ok(Columns::from_rows(rows, names, "input")),
        (_, Json::Object(cols)) => Ok(Columns::from_object(cols)),
        (_, Json::Array(rows)) => Ok(Columns::from_rows(rows, names, "input")),
        _ => Err(CodecError::Shape("expected \"instances\" or \"inputs\"")),
    }
}

/// Input features of an MLflow scoring-server request.
pub fn mlflow_features(body: &[u8], names: &[String]) -> Result<Columns, CodecError> {
    let v: Json = serde_json::from_slice(body)?;
    if let Some(split) = v.get("dataframe_split") {
        let columns: Vec<String> = split["columns"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| names.to_vec());
        let rows = split["data"]
            .as_array()
            .ok_or(CodecError::Shape("dataframe_split without \"data\""))?;
        return Ok(Columns::from_rows(rows, &columns, "input"));
    }
    if let Some(records) = v.get("dataframe_records") {
        let rows = records
            .as_array()
            .ok_or(CodecError::Shape("dataframe_records is not a list"))?;
        return Ok(Columns::from_rows(rows, names, "input"));
    }
    instances_features(body, names)
}

/// Predictions of a KServe v1, TF Serving or MLflow response, one output per name: a list of
/// scalars is one output (`predictions`); a list of lists becomes one output per position
/// (`predictions[0]`, ... e.g. class probabilities); a list of objects one output per key.
pub fn predictions(body: &[u8]) -> Result<Columns, CodecError> {
    let v: Json = serde_json::from_slice(body)?;
    let (name, list) = match (&v["predictions"], &v["outputs"]) {
        (Json::Array(p), _) => ("predictions", p),
        (_, Json::Array(p)) => ("outputs", p),
        (_, Json::Object(cols)) => return Ok(Columns::from_object(cols)),
        _ => return Err(CodecError::Shape("expected \"predictions\" or \"outputs\"")),
    };
    let mut out = Columns::default();
    for row in list.iter().take(MAX_VALUES) {
        match row {
            Json::Array(cells) => {
                for (i, cell) in cells.iter().enumerate() {
                    out.push(&format!("{name}[{i}]"), Value::from_json(cell));
                }
            }
            Json::Object(map) => {
                for (k, cell) in map {
                    out.push(k, Value::from_json(cell));
                }
            }
            scalar => out.push(name, Value::from_json(scalar)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kserve_v1_sklearn_iris() {
        // KServe's v1 protocol example (sklearn iris).
        let req = br#"{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}"#;
        let f = instances_features(
            req,
            &names(&["sepal_length", "sepal_width", "petal_length", "petal_width"]),
        )
        .unwrap_or_default();
        assert_eq!(f.rows(), 2);
        assert_eq!(
            f.get("petal_width"),
            Some(&[Value::Number(1.4), Value::Number(1.6)][..])
        );
        let p = predictions(br#"{"predictions": [1, 1]}"#).unwrap_or_default();
        assert_eq!(
            p.get("predictions"),
            Some(&[Value::Number(1.0), Value::Number(1.0)][..])
        );
        let unnamed = instances_features(req, &[]).unwrap_or_default();
        assert_eq!(unnamed.columns()[3].0, "3");
    }

    #[test]
    fn tf_serving_row_and_columnar_formats() {
        // TensorFlow Serving REST API docs: row ("instances") and columnar ("inputs") formats.
        let row = br#"{"signature_name": "serving_default", "instances": [{"tag": "foo", "signal": [1, 2, 3, 4, 5]}, {"tag": "bar", "signal": [3, 4, 1, 2, 5]}]}"#;
        let f = instances_features(row, &[]).unwrap_or_default();
        assert_eq!(
            f.get("tag"),
            Some(&[Value::Text("foo".into()), Value::Text("bar".into())][..])
        );
        assert_eq!(f.get("signal"), Some(&[Value::Nested, Value::Nested][..]));
        let col = br#"{"inputs": {"tag": ["foo", "bar"], "sensor": [1.5, null]}}"#;
        let f = instances_features(col, &[]).unwrap_or_default();
        assert_eq!(
            f.get("sensor"),
            Some(&[Value::Number(1.5), Value::Null][..])
        );
        let p = predictions(br#"{"predictions": [[0.1, 0.9], [0.8, 0.2]]}"#).unwrap_or_default();
        assert_eq!(
            p.get("predictions[1]"),
            Some(&[Value::Number(0.9), Value::Number(0.2)][..])
        );
        let o = predictions(br#"{"outputs": {"scores": [0.3, 0.7]}}"#).unwrap_or_default();
        assert_eq!(
            o.get("scores"),
            Some(&[Value::Number(0.3), Value::Number(0.7)][..])
        );
    }

    #[test]
    fn mlflow_scoring_formats() {
        // MLflow scoring server docs: dataframe_split, dataframe_records, instances, inputs.
        let split = br#"{"dataframe_split": {"columns": ["tenure", "plan"], "data": [[12, "basic"], [3, null]]}}"#;
        let f = mlflow_features(split, &[]).unwrap_or_default();
        assert_eq!(
            f.get("plan"),
            Some(&[Value::Text("basic".into()), Value::Null][..])
        );
        let records = br#"{"dataframe_records": [{"tenure": 12, "plan": "basic"}, {"tenure": 3}]}"#;
        let f = mlflow_features(records, &[]).unwrap_or_default();
        assert_eq!(
            f.get("tenure"),
            Some(&[Value::Number(12.0), Value::Number(3.0)][..])
        );
        assert_eq!(
            f.get("plan").map(<[Value]>::len),
            Some(1),
            "a missing key is missing, not null"
        );
        let inputs = br#"{"inputs": {"tenure": [1, 2]}}"#;
        assert_eq!(mlflow_features(inputs, &[]).unwrap_or_default().rows(), 2);
        let instances = br#"{"instances": [[1, 2]]}"#;
        assert_eq!(
            mlflow_features(instances, &names(&["a", "b"]))
                .unwrap_or_default()
                .get("b"),
            Some(&[Value::Number(2.0)][..])
        );
        let p = predictions(br#"{"predictions": [0, 1, 0]}"#).unwrap_or_default();
        assert_eq!(p.rows(), 3);
        let df = predictions(br#"{"predictions": [{"label": "churn", "score": 0.8}]}"#)
            .unwrap_or_default();
        assert_eq!(df.get("label"), Some(&[Value::Text("churn".into())][..]));
    }

    #[test]
    fn wrong_shapes_and_garbage_are_errors_not_panics() {
        assert!(matches!(
            instances_features(b"{}", &[]),
            Err(CodecError::Shape(_))
        ));
        assert!(matches!(
            mlflow_features(br#"{"dataframe_split": {}}"#, &[]),
            Err(CodecError::Shape(_))
        ));
        assert!(matches!(predictions(b"\xff\x00"), Err(CodecError::Json(_))));
        let deep = "[".repeat(10_000);
        assert!(predictions(deep.as_bytes()).is_err());
    }
}
