//! What the inspector knows about one model version, built once per config snapshot from its
//! lineage record: the schema to check, the bins to measure drift on, what to count of its
//! predictions, and the thresholds in force.

use std::sync::Arc;

use super::drift::Bins;
use super::quality::FeatureCheck;
use crate::config::Inspect;
use crate::registry::{LineageRecord, Reference};

/// Default histogram buckets of numeric predictions (probabilities are the common case).
pub const DEFAULT_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// A signal drift is measured on: its bins and, when the registry has one, the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// How values are binned.
    pub bins: Bins,
    /// Reference shares per bin.
    pub reference: Option<Vec<f64>>,
}

impl Signal {
    fn new(bins: Bins, reference: Option<&Reference>) -> Self {
        let reference = reference.map(|r| {
            let mut f = r.fractions.clone();
            f.resize(bins.len(), 0.0);
            f
        });
        Self { bins, reference }
    }
}

/// What is read from the predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionProfile {
    /// The output to read; the first one when `None`.
    pub output: Option<String>,
    /// Class labels (counted per label, the rest as `other`); empty for numeric predictions.
    pub classes: Vec<String>,
    /// Histogram bucket bounds for numeric predictions.
    pub buckets: Vec<f64>,
    /// Drift signal.
    pub signal: Signal,
}

/// One model version as the inspector sees it.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Model label value.
    pub model: Arc<str>,
    /// Version label value.
    pub version: Arc<str>,
    /// Lineage ID (changes when the record changes).
    pub lineage_id: Arc<str>,
    /// Schema feature names, in order (names positional values).
    pub names: Vec<String>,
    /// Checks per schema feature.
    pub schema: Vec<FeatureCheck>,
    /// Upstream source per schema feature.
    pub sources: Vec<Option<String>>,
    /// Drift signal per schema feature (numeric features with a reference or a range,
    /// categorical ones with categories).
    pub feature_signals: Vec<Option<Signal>>,
    /// Predictions.
    pub prediction: PredictionProfile,
    /// Windows and thresholds.
    pub settings: Inspect,
}

impl Profile {
    /// Build from a lineage record (`None` for versions the registry does not know: their
    /// predictions are still counted, nothing is checked).
    pub fn new(
        model: Arc<str>,
        version: Arc<str>,
        lineage_id: Arc<str>,
        record: Option<&LineageRecord>,
        settings: &Inspect,
    ) -> Self {
        let schema = record.map(|r| r.input_schema.as_slice()).unwrap_or(&[]);
        let feature_signals = schema
            .iter()
            .map(|f| {
                if !f.categories.is_empty() {
                    return Some(Signal::new(
                        Bins::Categorical(f.categories.clone()),
                        f.reference.as_ref(),
                    ));
                }
                if let Some(r) = f.reference.as_ref().filter(|r| !r.edges.is_empty()) {
                    return Some(Signal::new(Bins::Numeric(r.edges.clone()), Some(r)));
                }
                let (lo, hi) = (f.min?, f.max?);
                (hi > lo).then(|| {
                    let edges = (1..10)
                        .map(|k| lo + (hi - lo) * f64::from(k) / 10.0)
                        .collect();
                    Signal::new(Bins::Numeric(edges), None)
                })
            })
            .collect();
        let spec = record
            .and_then(|r| r.prediction.clone())
            .unwrap_or_default();
        let buckets = if !spec.buckets.is_empty() {
            spec.buckets.clone()
        } else if let Some(r) = spec.reference.as_ref().filter(|r| !r.edges.is_empty()) {
            r.edges.clone()
        } else {
            DEFAULT_BUCKETS.to_vec()
        };
        let bins = if spec.classes.is_empty() {
            Bins::Numeric(
                spec.reference
                    .as_ref()
                    .filter(|r| !r.edges.is_empty())
                    .map_or_else(|| buckets.clone(), |r| r.edges.clone()),
            )
        } else {
            Bins::Categorical(spec.classes.clone())
        };
        Self {
            names: schema.iter().map(|f| f.name.clone()).collect(),
            schema: schema.iter().map(FeatureCheck::new).collect(),
            sources: schema
                .iter()
                .map(|f| record.and_then(|r| r.feature_source(f)))
                .collect(),
            feature_signals,
            prediction: PredictionProfile {
                output: spec.output.clone(),
                signal: Signal::new(bins, spec.reference.as_ref()),
                classes: spec.classes,
                buckets,
            },
            settings: settings.clone(),
            model,
            version,
            lineage_id,
        }
    }
}
