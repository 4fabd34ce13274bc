//! A client for a running sidecar's admin API, used by the commands that talk to one
//! (`lineage`, `compare`, `promote`, `rollback`, `audit show`, `explain`, `healthcheck`), and the
//! human-readable rendering of answers.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port` or `https://host:port`.
    #[error("invalid admin URL {0:?} (expected http://host:port or https://host:port)")]
    Url(String),
    /// The TLS settings could not be read.
    #[error("admin API TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The sidecar could not be reached.
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable {
        /// The admin URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The sidecar answered with an error.
    #[error("{0}")]
    Api(String),
}

/// A client for one admin base URL.
pub struct AdminClient {
    base: String,
    client: Transport,
}

enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl AdminClient {
    /// A client for `http://host:port`, or `https://host:port` checked with `tls` (by default
    /// the platform's certificate authorities).
    pub fn new(base: &str, tls: Option<rustls::ClientConfig>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let scheme = base
            .parse::<http::Uri>()
            .ok()
            .filter(|u| u.host().is_some())
            .and_then(|u| u.scheme_str().map(str::to_string));
        let builder = Client::builder(TokioExecutor::new());
        let client = match scheme.as_deref() {
            Some("http") => Transport::Plain(builder.build_http()),
            Some("https") => {
                let config = match tls {
                    Some(config) => config,
                    None => (crate::tls::TlsClient::default().client_config())
                        .map_err(ClientError::Tls)?,
                };
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http);
                Transport::Tls(builder.build(connector))
            }
            _ => return Err(ClientError::Url(base)),
        };
        Ok(Self { base, client })
    }

    /// Whether the sidecar is ready (`GET /readyz` answers 200): the container healthcheck.
    pub async fn ready(&self) -> Result<(), ClientError> {
        let (status, body) = self.get(&format!("{}/readyz", self.base)).await?;
        if status == StatusCode::OK {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&body);
        Err(ClientError::Api(format!(
            "{}: not ready: {}",
            status.as_u16(),
            text.trim()
        )))
    }

    /// GET a JSON document; a non-2xx answer becomes [`ClientError::Api`] with its message.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.get(&url).await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Api(format!("{status}: not JSON: {e}")))?;
        if status != StatusCode::OK {
            let msg = value["error"].as_str().unwrap_or("error").to_string();
            return Err(ClientError::Api(format!("{}: {msg}", status.as_u16())));
        }
        Ok(value)
    }

    /// POST a JSON body with a bearer token; a non-2xx answer becomes [`ClientError::Api`].
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::post(&url).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| ClientError::Url(url.clone()))?;
        let (status, body) = self.send(req).await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Api(format!("{status}: not JSON: {e}")))?;
        if !status.is_success() {
            let msg = value["error"].as_str().unwrap_or("error").to_string();
            return Err(ClientError::Api(format!("{}: {msg}", status.as_u16())));
        }
        Ok(value)
    }

    async fn get(&self, url: &str) -> Result<(StatusCode, Bytes), ClientError> {
        let req = Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(|_| ClientError::Url(url.to_string()))?;
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let sent = async {
            match &self.client {
                Transport::Plain(c) => c.request(req).await,
                Transport::Tls(c) => c.request(req).await,
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    /// The lineage answer for a trace ID, request ID or lineage ID, as
    /// `{"requests": [...], "lineage": {id: record}}`.
    pub async fn lineage(&self, id: &str) -> Result<Value, ClientError> {
        if id.starts_with("ln_") {
            let v = self.get_json(&format!("/lineage/{id}")).await?;
            let mut lineage = serde_json::Map::new();
            lineage.insert(id.to_string(), v["record"].clone());
            return Ok(serde_json::json!({ "requests": [], "lineage": lineage }));
        }
        self.get_json(&format!("/requests/{id}")).await
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Render a lineage answer for a person.
pub fn render_lineage(answer: &Value) -> String {
    let mut out = String::new();
    for r in answer["requests"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "request   {}  trace {}  span {}",
            s(&r["request_id"]),
            s(&r["trace_id"]),
            s(&r["span_id"])
        );
        let _ = writeln!(
            out,
            "          {} {} {} -> {} in {:.2} ms (route {}){}",
            s(&r["time"]),
            s(&r["method"]),
            s(&r["path"]),
            r["status"],
            r["duration_ms"].as_f64().unwrap_or(0.0),
            s(&r["route"]),
            r["error"]
                .as_str()
                .map(|e| format!(", error {e}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "served by {} version {}  lineage {}",
            s(&r["model"]),
            s(&r["version"]),
            s(&r["lineage_id"])
        );
    }
    let lineage = answer["lineage"].as_object();
    if lineage.is_none_or(|m| m.is_empty()) {
        let _ = writeln!(
            out,
            "\nno lineage record (the version is unknown to the registry)"
        );
    }
    for (id, rec) in lineage.into_iter().flatten() {
        render_record(&mut out, id, rec);
    }
    out
}

fn render_record(out: &mut String, id: &str, rec: &Value) {
    let _ = writeln!(
        out,
        "\nlineage   {id}: {} version {}",
        s(&rec["model"]),
        s(&rec["version"])
    );
    let code = &rec["code"];
    let _ = writeln!(
        out,
        "code      {} @ {} ({})",
        s(&code["repo"]),
        s(&code["commit"]),
        s(&code["branch"])
    );
    let data = &rec["training_data"];
    if data.is_object() {
        let tables: Vec<&str> = data["upstream_tables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(
            out,
            "data      {} digest {} from {}",
            s(&data["name"]),
            s(&data["digest"]),
            s(&data["source"])
        );
        if !tables.is_empty() {
            let _ = writeln!(out, "          built from {}", tables.join(", "));
        }
    }
    let env = &rec["environment"];
    let _ = writeln!(
        out,
        "env       python {}, runtime {}, lock {}, image {}",
        s(&env["python"]),
        s(&env["runtime"]),
        s(&env["lock_digest"]),
        s(&env["image"])
    );
    let _ = writeln!(
        out,
        "run       {} created by {} at {}",
        s(&rec["training_run"]),
        s(&rec["created_by"]),
        s(&rec["created_at"])
    );
    let p = &rec["promotion"];
    let _ = writeln!(
        out,
        "promoted  by {} at {}: {} (ticket {})",
        s(&p["by"]),
        s(&p["at"]),
        s(&p["reason"]),
        s(&p["ticket"])
    );
    let features: Vec<String> = rec["input_schema"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("{} {}", s(&f["name"]), s(&f["type"])))
        .collect();
    if !features.is_empty() {
        let _ = writeln!(out, "schema    {}", features.join(", "));
    }
    if let Some(m) = rec["metrics"].as_object().filter(|m| !m.is_empty()) {
        let metrics: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "metrics   {}", metrics.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_request_and_record() {
        let answer = serde_json::json!({
            "requests": [{"request_id": "r1", "trace_id": "t1", "span_id": "s1", "time": "2026-11-26T00:00:00.000Z",
                          "method": "POST", "path": "/v2/models/churn/infer", "status": 200, "duration_ms": 1.5,
                          "route": "churn", "model": "churn", "version": "2", "lineage_id": "ln_1", "error": null}],
            "lineage": {"ln_1": {"model": "churn", "version": "2", "code": {"repo": "git", "commit": "1c2b", "branch": "main"},
                                 "training_data": {"name": "churn-train", "digest": "9a41", "source": "s3://x", "upstream_tables": ["crm.accounts"]},
                                 "environment": {}, "promotion": {}, "metrics": {"auc": 0.87}}}
        });
        let text = render_lineage(&answer);
        assert!(
            text.contains("served by churn version 2  lineage ln_1"),
            "{text}"
        );
        assert!(text.contains("code      git @ 1c2b (main)"), "{text}");
        assert!(
            text.contains("data      churn-train digest 9a41 from s3://x"),
            "{text}"
        );
        assert!(text.contains("built from crm.accounts"), "{text}");
        assert!(text.contains("metrics   auc 0.87"), "{text}");
    }

    #[test]
    fn rejects_non_http_urls() {
        assert!(AdminClient::new("127.0.0.1:9901", None).is_err());
        assert!(AdminClient::new("ftp://127.0.0.1:9901", None).is_err());
        assert!(AdminClient::new("http://127.0.0.1:9901/", None).is_ok());
        assert!(AdminClient::new("https://127.0.0.1:9901/", None).is_ok());
    }
}
