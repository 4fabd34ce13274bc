//! Open Inference Protocol v2 REST: the version the model server reports in its response.

use serde::Deserialize;

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

#[cfg(test)]
mod tests {
    use super::*;

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
