//! Evidence from a Prometheus server's history (`modelstamp explain --prometheus URL`), so a
//! fleet of sidecars and windows longer than a sidecar's memory can be explained. Health, data
//! quality, drift, stale flags and mismatches come from PromQL over the window; the timeline,
//! aliases and lineage records from the sidecar given by `--admin`, when it answers.

use std::collections::BTreeMap;

use serde_json::Value;

use super::rules::{Evidence, MismatchSeen, VersionHealth};
use crate::canary::prometheus::{PromError, Prometheus, esc};

fn num(s: &Value) -> Option<f64> {
    s["value"][1]
        .as_str()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

fn label<'a>(s: &'a Value, key: &str) -> &'a str {
    s["metric"][key].as_str().unwrap_or("")
}

/// Per-version health and signals of `model` over `[from_ms, to_ms]`.
pub async fn evidence(
    prom: &Prometheus,
    model: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Evidence, PromError> {
    let w = format!("{}s", ((to_ms - from_ms) / 1000).max(1));
    let at = Some(to_ms as f64 / 1000.0);
    let m = format!("model=\"{}\"", esc(model));
    let q = |promql: String| async move { prom.query_at(&promql, at).await };
    let mut versions: BTreeMap<String, VersionHealth> = BTreeMap::new();
    for s in q(format!(
        "max by (version, lineage_id) (modelstamp_model_version_info{{{m}}})"
    ))
    .await?
    {
        let v = label(&s, "version").to_string();
        versions.insert(
            v.clone(),
            VersionHealth {
                version: v,
                lineage_id: label(&s, "lineage_id").to_string(),
                ..VersionHealth::default()
            },
        );
    }
    let mut each = |rows: Vec<Value>, set: &mut dyn FnMut(&mut VersionHealth, &Value)| {
        for s in rows {
            if let Some(h) = versions.get_mut(label(&s, "version")) {
                set(h, &s);
            }
        }
    };
    each(
        q(format!(
            "sum by (version) (increase(modelstamp_requests_total{{{m}}}[{w}]))"
        ))
        .await?,
        &mut |h, s| h.requests = num(s).unwrap_or(0.0).round() as u64,
    );
    each(
        q(format!("sum by (version) (increase(modelstamp_requests_total{{{m},status_class=\"5xx\"}}[{w}]))")).await?,
        &mut |h, s| h.errors = num(s).unwrap_or(0.0).round() as u64,
    );
    for (quantile, p99) in [(0.5, false), (0.99, true)] {
        each(
            q(format!(
                "histogram_quantile({quantile}, sum by (version, le) (rate(modelstamp_request_duration_seconds_bucket{{{m}}}[{w}])))"
            ))
            .await?,
            &mut |h, s| {
                if p99 {
                    h.p99 = num(s);
                } else {
                    h.p50 = num(s);
                }
            },
        );
    }
    each(
        q(format!(
            "max by (version) (max_over_time(modelstamp_model_version_stale{{{m}}}[{w}])) == 1"
        ))
        .await?,
        &mut |h, _| {
            h.stale = Some("flagged stale in the window (modelstamp_model_version_stale)".into())
        },
    );
    each(
        q(format!(
            "max by (version) (max_over_time(modelstamp_drift{{{m},signal=\"prediction\",against=\"reference\",statistic=\"psi\"}}[{w}]))"
        ))
        .await?,
        &mut |h, s| h.prediction_psi = num(s),
    );
    each(
        q(format!(
            "sum by (version, feature, issue) (increase(modelstamp_feature_issues_total{{{m}}}[{w}])) \
             / on (version) group_left () sum by (version) (increase(modelstamp_inspected_rows_total{{{m}}}[{w}])) > 0"
        ))
        .await?,
        &mut |h, s| {
            if let Some(r) = num(s) {
                h.issue_rates.push((label(s, "feature").to_string(), label(s, "issue").to_string(), r));
            }
        },
    );
    let mismatches = q(format!(
        "sum by (expected, reported) (increase(modelstamp_version_mismatch_total{{{m}}}[{w}])) > 0"
    ))
    .await?
    .iter()
    .map(|s| MismatchSeen {
        expected: label(s, "expected").to_string(),
        reported: label(s, "reported").to_string(),
        responses: num(s).unwrap_or(0.0).round() as u64,
        ..MismatchSeen::default()
    })
    .collect();
    Ok(Evidence {
        model: model.to_string(),
        from_ms,
        to_ms,
        now_ms: crate::journal::now_ms(),
        health_source: format!(
            "Prometheus over {w} to {}",
            crate::codec::time::rfc3339_ms(to_ms)
        ),
        versions: versions.into_values().collect(),
        mismatches,
        ..Evidence::default()
    })
}
