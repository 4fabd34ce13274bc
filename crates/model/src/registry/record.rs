//! The lineage record of one model version and its lineage ID: a content hash of the canonical
//! record, so the same record always has the same ID and any change gives a new one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the code came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    /// Repository URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Git commit the model was trained from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Git branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// The training data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingData {
    /// Dataset name.
    pub name: String,
    /// Where it was read from (URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Content digest of the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Upstream tables the dataset was built from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_tables: Vec<String>,
    /// How the run used it (`training`, `evaluation`, ...), as MLflow records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// The training and serving environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Python version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Serving runtime and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Digest of the package lock file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_digest: Option<String>,
    /// Container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// One input feature of the training schema.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Feature name.
    pub name: String,
    /// Type: `double`, `long`, `string`, `boolean`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Allowed categories for categorical features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Smallest value seen in training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest value seen in training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Whether the feature may be null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nullable: bool,
    /// Where the feature comes from upstream (`crm.accounts.plan_type`), named in data-quality
    /// events; defaults to the training data's upstream tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The feature's distribution in the training data, for drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// A reference distribution: for a numeric signal, `edges` e0 < e1 < … split the line into
/// `(-inf, e0], (e0, e1], …, (e_last, +inf)` and `fractions` holds one share per bin
/// (`edges.len() + 1` of them); for a categorical one, `edges` is empty and `fractions` follows
/// the listed categories (or classes), optionally with one more share for everything else.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Upper bin edges (numeric signals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    /// Share of the training data in each bin; they sum to 1.
    pub fractions: Vec<f64>,
}

impl Reference {
    /// Why this reference is unusable, if it is: `categories` is the number of listed categories
    /// (0 for a numeric signal).
    pub fn problem(&self, categories: usize) -> Option<String> {
        if !self.edges.iter().all(|e| e.is_finite()) {
            return Some("edges must be finite numbers".into());
        }
        if self.edges.windows(2).any(|w| w[0] >= w[1]) {
            return Some("edges must increase strictly".into());
        }
        let want: &[usize] = if self.edges.is_empty() && categories > 0 {
            &[categories, categories + 1]
        } else {
            &[self.edges.len() + 1]
        };
        if self.edges.is_empty() && categories == 0 {
            return Some("a numeric reference needs edges".into());
        }
        if !want.contains(&self.fractions.len()) {
            return Some(format!(
                "{} fractions for {} bins",
                self.fractions.len(),
                want[0]
            ));
        }
        if self.fractions.iter().any(|f| !f.is_finite() || *f < 0.0) {
            return Some("fractions must be non-negative numbers".into());
        }
        let sum: f64 = self.fractions.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Some(format!("fractions sum to {sum}, not 1"));
        }
        None
    }
}

/// What the model predicts, so the sidecar can count it per version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionSpec {
    /// The response output to read (a tensor or column name); the first one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Class labels: predictions are counted per label (anything else as `other`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Histogram bucket bounds for numeric predictions (default: the reference edges, else
    /// 0.1, 0.2, …, 1.0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<f64>,
    /// The predictions' distribution on the evaluation data, for drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// Who promoted the version, when and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// Who promoted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Change ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// Everything the registry knows about how one model version was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageRecord {
    /// Model name (filled from the registry key).
    #[serde(default)]
    pub model: String,
    /// Model version (filled from the registry key).
    #[serde(default)]
    pub version: String,
    /// Source code.
    #[serde(default)]
    pub code: Code,
    /// Training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data: Option<TrainingData>,
    /// Environment.
    #[serde(default)]
    pub environment: Environment,
    /// Other datasets the run logged (evaluation, test, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_datasets: Vec<TrainingData>,
    /// Training run ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_run: Option<String>,
    /// Link to the training run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_run_url: Option<String>,
    /// Who created the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Promotion.
    #[serde(default)]
    pub promotion: Promotion,
    /// Input schema: the features the model was trained on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_schema: Vec<Feature>,
    /// What the model predicts (classes, buckets, reference distribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionSpec>,
    /// Evaluation metrics at promotion.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Training parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl LineageRecord {
    /// The lineage ID: `ln_` + the first 16 hex chars of SHA-256 over the canonical JSON.
    ///
    /// Canonical JSON: object keys sorted (serde_json's map is ordered), no whitespace, empty
    /// optional fields left out, so adding an empty field to the file does not change the ID.
    pub fn lineage_id(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let canonical = canonical_json(&value);
        let digest = Sha256::digest(canonical.as_bytes());
        let mut id = String::with_capacity(19);
        id.push_str("ln_");
        for b in &digest[..8] {
            id.push_str(&format!("{b:02x}"));
        }
        id
    }

    /// The lineage ID of the record without its `training_run_url`: what the MLflow backend
    /// stamps, since that link depends on how the registry is addressed
    /// (`http://127.0.0.1:5000` and `http://localhost:5000` are one MLflow).
    pub fn lineage_id_without_run_url(&self) -> String {
        if self.training_run_url.is_none() {
            return self.lineage_id();
        }
        Self {
            training_run_url: None,
            ..self.clone()
        }
        .lineage_id()
    }

    /// Where a feature comes from upstream: its own `source`, else the training data's tables.
    pub fn feature_source(&self, feature: &Feature) -> Option<String> {
        feature.source.clone().or_else(|| {
            let tables = &self.training_data.as_ref()?.upstream_tables;
            (!tables.is_empty()).then(|| tables.join(","))
        })
    }

    /// The dataset digest, if any.
    pub fn dataset_digest(&self) -> Option<&str> {
        self.training_data.as_ref()?.digest.as_deref()
    }
}

/// JSON with object keys sorted at every level, independent of serde_json's map features.
fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String((*k).clone()),
                        canonical_json(&map[*k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LineageRecord {
        LineageRecord {
            model: "churn".into(),
            version: "1".into(),
            code: Code {
                commit: Some("97f447d".into()),
                ..Code::default()
            },
            training_data: Some(TrainingData {
                name: "churn-train".into(),
                digest: Some("e5d39153".into()),
                ..TrainingData::default()
            }),
            ..LineageRecord::default()
        }
    }

    #[test]
    fn lineage_id_is_stable_and_shaped() {
        let id = record().lineage_id();
        assert_eq!(id, record().lineage_id());
        assert_eq!(id.len(), 19);
        assert!(id.starts_with("ln_"));
        assert!(
            id[3..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn any_change_gives_a_new_id() {
        let base = record().lineage_id();
        let mut r = record();
        r.training_data = Some(TrainingData {
            digest: Some("9a41".into()),
            ..r.training_data.clone().unwrap_or_default()
        });
        assert_ne!(r.lineage_id(), base);
        let mut r = record();
        r.version = "2".into();
        assert_ne!(r.lineage_id(), base);
        let mut r = record();
        r.metrics.insert("auc".into(), 0.91);
        assert_ne!(r.lineage_id(), base);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":{"y":1,"x":[{"d":1,"c":2}]},"a":"s"}"#)
                .unwrap_or_default();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"s","b":{"x":[{"c":2,"d":1}],"y":1}}"#
        );
    }

    /// The product's primary key must not change by accident: these pin the canonical form of a
    /// small record and the IDs of every version the shipped registry holds. A failure here
    /// means every stamped lineage ID would change; see docs/registry.md before touching it.
    #[test]
    fn golden_canonical_form_and_id() {
        let mut r = record();
        r.metrics.insert("auc".into(), 0.9);
        r.metrics.insert("accuracy".into(), 1.0);
        r.promotion.reason = Some("a \"quoted\" reason, ünïcode".into());
        let value = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(
            canonical_json(&value),
            r#"{"code":{"commit":"97f447d"},"environment":{},"metrics":{"accuracy":1.0,"auc":0.9},"model":"churn","promotion":{"reason":"a \"quoted\" reason, ünïcode"},"training_data":{"digest":"e5d39153","name":"churn-train"},"version":"1"}"#
        );
        assert_eq!(r.lineage_id(), "ln_ac6b7e4eda0aee79");
    }

    #[test]
    fn golden_ids_of_the_shipped_registry() {
        let data = crate::registry::parse_registry(
            include_str!("../../../../config/registry.yaml"),
            "config/registry.yaml",
        )
        .unwrap_or_default();
        let ids: Vec<(String, String)> = (data.models.values())
            .flat_map(|m| m.versions.values())
            .map(|v| (v.record.version.clone(), v.lineage_id.clone()))
            .collect();
        assert_eq!(
            ids,
            [("1", "ln_cb2e6173797431e6"), ("2", "ln_b0f12873165f486e")]
                .map(|(v, id)| (v.to_string(), id.to_string()))
        );
    }
}
