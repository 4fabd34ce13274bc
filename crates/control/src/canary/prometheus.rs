//! The same comparison from a Prometheus server's data, so a fleet of sidecars is judged as a
//! whole (`modelstamp compare --prometheus URL`): every number is a PromQL query over the window,
//! summed over all instances.

use std::time::Duration;

use serde_json::Value;

use super::diff::Change;
use super::verdict::{self, Agreement, Comparison, Inputs, Side, Signals};
use crate::config::Thresholds;

/// Why the Prometheus comparison failed.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// Transport or HTTP failure.
    #[error("cannot query Prometheus at {url}: {reason}")]
    Query {
        /// Base URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// A Prometheus HTTP API client.
pub struct Prometheus {
    base: String,
    client: reqwest::Client,
}

/// Escape a PromQL label value.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Prometheus {
    /// A client for `http://host:port` (or `https://`, checked against the platform's CAs).
    pub fn new(base: &str) -> Result<Self, PromError> {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        let client = crate::tls::TlsClient::default()
            .reqwest_client(builder)
            .map_err(|e| PromError::Query {
                url: base.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// Run an instant query; the result vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, PromError> {
        self.query_at(promql, None).await
    }

    /// Run an instant query evaluated at `time` (seconds since the epoch; `None`: now).
    pub async fn query_at(&self, promql: &str, time: Option<f64>) -> Result<Vec<Value>, PromError> {
        let err = |reason: String| PromError::Query {
            url: self.base.clone(),
            reason,
        };
        let resp = self
            .client
            .get(match time {
                Some(t) => format!(
                    "{}/api/v1/query?query={}&time={t}",
                    self.base,
                    crate::codec::percent::component(promql)
                ),
                None => format!(
                    "{}/api/v1/query?query={}",
                    self.base,
                    crate::codec::percent::component(promql)
                ),
            })
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| err(e.to_string()))?;
        if !status.is_success() || v["status"] != "success" {
            return Err(err(format!("{status}: {} ({promql})", v["error"])));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn scalar(&self, promql: &str) -> Result<Option<f64>, PromError> {
        let r = self.query(promql).await?;
        Ok(r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite()))
    }

    async fn side(&self, model: &str, version: &str, w: &str) -> Result<Side, PromError> {
        let sel = format!("model=\"{}\",version=\"{}\"", esc(model), esc(version));
        let requests = self
            .scalar(&format!(
                "sum(increase(modelstamp_requests_total{{{sel}}}[{w}]))"
            ))
            .await?;
        let errors = self
            .scalar(&format!(
                "sum(increase(modelstamp_requests_total{{{sel},status_class=\"5xx\"}}[{w}]))"
            ))
            .await?;
        let q = |p: f64| {
            format!(
                "histogram_quantile({p}, sum by (le) (rate(modelstamp_request_duration_seconds_bucket{{{sel}}}[{w}])))"
            )
        };
        let info = self
            .query(&format!(
                "max by (lineage_id) (modelstamp_model_version_info{{{sel}}})"
            ))
            .await?;
        Ok(Side {
            version: version.to_string(),
            lineage_id: info
                .first()
                .and_then(|s| s["metric"]["lineage_id"].as_str())
                .unwrap_or("unknown")
                .to_string(),
            requests: requests.unwrap_or(0.0).round() as u64,
            errors: errors.unwrap_or(0.0).round() as u64,
            p50: self.scalar(&q(0.5)).await?,
            p95: self.scalar(&q(0.95)).await?,
            p99: self.scalar(&q(0.99)).await?,
            weight: None,
        })
    }

    async fn issue_rates(
        &self,
        model: &str,
        version: &str,
        w: &str,
    ) -> Result<Vec<(String, String, f64)>, PromError> {
        let sel = format!("model=\"{}\",version=\"{}\"", esc(model), esc(version));
        let r = self
            .query(&format!(
                "sum by (feature, issue) (increase(modelstamp_feature_issues_total{{{sel}}}[{w}])) \
                 / scalar(sum(increase(modelstamp_inspected_rows_total{{{sel}}}[{w}])))"
            ))
            .await?;
        Ok(r.iter()
            .filter_map(|s| {
                let v = s["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)?;
                Some((
                    s["metric"]["feature"].as_str()?.to_string(),
                    s["metric"]["issue"].as_str()?.to_string(),
                    v,
                ))
            })
            .collect())
    }

    /// Compare `candidate` with `baseline` of `model` over `window` (a PromQL duration).
    pub async fn compare(
        &self,
        model: &str,
        baseline: &str,
        candidate: &str,
        window: &str,
        lineage_diff: Vec<Change>,
        thresholds: &Thresholds,
    ) -> Result<Comparison, PromError> {
        let b = self.side(model, baseline, window).await?;
        let c = self.side(model, candidate, window).await?;
        let drift = |stat: &str| {
            format!(
                "max(modelstamp_drift{{model=\"{}\",version=\"{}\",signal=\"prediction\",against=\"version:{}\",statistic=\"{stat}\"}})",
                esc(model),
                esc(candidate),
                esc(baseline)
            )
        };
        let pair = format!(
            "model=\"{}\",baseline=\"{}\",candidate=\"{}\"",
            esc(model),
            esc(baseline),
            esc(candidate)
        );
        let agree = self
            .scalar(&format!("sum(increase(modelstamp_shadow_comparisons_total{{{pair},result=\"agree\"}}[{window}]))"))
            .await?;
        let compared = self
            .scalar(&format!(
                "sum(increase(modelstamp_shadow_comparisons_total{{{pair}}}[{window}]))"
            ))
            .await?;
        let shadow = match (agree, compared) {
            (Some(a), Some(n)) if n >= 0.5 => Some(Agreement {
                compared: n.round() as u64,
                ratio: a / n,
            }),
            _ => None,
        };
        let issue_rates = verdict::pair_issue_rates(
            self.issue_rates(model, baseline, window).await?,
            self.issue_rates(model, candidate, window).await?,
        );
        let signals = Signals {
            prediction_psi: self.scalar(&drift("psi")).await?,
            prediction_js: self.scalar(&drift("js")).await?,
            shadow,
            issue_rates,
        };
        let window_seconds = crate::config::parse_duration(window).map_or(0.0, |d| d.as_secs_f64());
        Ok(verdict::compare(
            Inputs {
                model: model.to_string(),
                source: self.base.clone(),
                window_seconds,
                baseline: b,
                candidate: c,
                signals,
                lineage_diff,
            },
            thresholds,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_built_for_http_and_https_prometheus() {
        // reqwest's rustls-no-provider feature panics in `build()` without a TLS configuration.
        assert!(Prometheus::new("http://127.0.0.1:9090").is_ok());
        assert!(Prometheus::new("https://prometheus.example").is_ok());
    }
}
