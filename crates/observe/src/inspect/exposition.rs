//! The inspector's Prometheus families, encoded at scrape time from the worker's stats (drift is
//! computed here, over the windows as they stand): label values come only from the registry
//! (model, version, schema features, classes) or bounded enums.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;

use super::openai::FINISH_REASONS;
use super::quality::Issue;
use super::stats::{self, VersionStats};
use super::worker::Shared;

type NoExemplar<'a> = Option<&'a Exemplar<Vec<(String, String)>, f64>>;

/// Registers with the metrics registry; reads [`Shared`] on each scrape.
#[derive(Debug)]
pub struct InspectCollector(pub Arc<Shared>);

fn counter(m: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet, v: u64) -> fmt::Result {
    m.encode_family(labels)?
        .encode_counter(&v, None as NoExemplar<'_>)
}

fn gauge(m: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet, v: f64) -> fmt::Result {
    m.encode_family(labels)?.encode_gauge(&v)
}

impl Collector for InspectCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let shared = &self.0;
        let mut m = enc.encode_descriptor(
            "inspect_skipped",
            "Messages not inspected, by reason (the requests themselves were unaffected)",
            None,
            MetricType::Counter,
        )?;
        for (skip, n) in shared.skipped() {
            counter(&mut m, &[("reason", skip.as_str())], n)?;
        }
        let mut m = enc.encode_descriptor(
            "inspect_queue_depth",
            "Exchanges waiting for the inspection worker",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(shared.queued() as f64))?;
        let mut m = enc.encode_descriptor(
            "inspect_held_bytes",
            "Body bytes held by copies and queued jobs (bounded by inspect.memory_budget_bytes)",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(shared.held_bytes() as f64))?;
        let slice = shared.slice_now();
        let all = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let versions: Vec<&VersionStats> = all.values().collect();
        encode_counts(&mut enc, &versions)?;
        encode_predictions(&mut enc, &versions)?;
        encode_drift(&mut enc, &versions, slice)
    }
}

fn encode_counts(enc: &mut DescriptorEncoder<'_>, versions: &[&VersionStats]) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "inspected_messages",
        "Requests and responses read by the inspector",
        None,
        MetricType::Counter,
    )?;
    for v in versions {
        let (model, version) = (&*v.profile.model, &*v.profile.version);
        for (message, n) in [("request", v.requests), ("response", v.responses)] {
            let labels = [("model", model), ("version", version), ("message", message)];
            counter(&mut m, &labels, n)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "inspected_rows",
        "Input rows checked against the training schema",
        None,
        MetricType::Counter,
    )?;
    for v in versions {
        let labels = [
            ("model", &*v.profile.model),
            ("version", &*v.profile.version),
        ];
        counter(&mut m, &labels, v.rows)?;
    }
    let mut m = enc.encode_descriptor(
        "feature_issues",
        "Input values that break the training schema, by feature and issue",
        None,
        MetricType::Counter,
    )?;
    for v in versions {
        for (f, counts) in v.issues.iter().enumerate() {
            for issue in Issue::ALL {
                let labels = [
                    ("model", &*v.profile.model),
                    ("version", &*v.profile.version),
                    ("feature", v.profile.names[f].as_str()),
                    ("issue", issue.as_str()),
                ];
                counter(&mut m, &labels, counts[issue as usize])?;
            }
        }
    }
    Ok(())
}

fn encode_predictions(enc: &mut DescriptorEncoder<'_>, versions: &[&VersionStats]) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "prediction",
        "Numeric predictions (buckets per model, from the registry)",
        None,
        MetricType::Histogram,
    )?;
    for v in versions
        .iter()
        .filter(|v| v.profile.prediction.classes.is_empty())
    {
        let h = &v.histogram;
        let count: u64 = h.counts.iter().sum();
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.counts.iter().copied())
            .collect();
        let labels = [
            ("model", &*v.profile.model),
            ("version", &*v.profile.version),
        ];
        m.encode_family(&labels)?
            .encode_histogram::<Vec<(String, String)>>(h.sum, count, &buckets, None)?;
    }
    let mut m = enc.encode_descriptor(
        "prediction_class",
        "Predictions per class label (classes from the registry, the rest as other)",
        None,
        MetricType::Counter,
    )?;
    for v in versions {
        let classes = &v.profile.prediction.classes;
        if classes.is_empty() {
            continue;
        }
        let names = classes.iter().map(String::as_str).chain(["other"]);
        for (class, n) in names.zip(&v.classes) {
            let labels = [
                ("model", &*v.profile.model),
                ("version", &*v.profile.version),
                ("class", class),
            ];
            counter(&mut m, &labels, *n)?;
        }
    }
    let llm: Vec<_> = versions
        .iter()
        .filter(|v| v.tokens != [0, 0] || v.finish.iter().any(|n| *n > 0))
        .collect();
    let mut m = enc.encode_descriptor(
        "llm_tokens",
        "Tokens reported by OpenAI-compatible responses, by type (input, output)",
        None,
        MetricType::Counter,
    )?;
    for v in &llm {
        for (kind, n) in [("input", v.tokens[0]), ("output", v.tokens[1])] {
            let labels = [
                ("model", &*v.profile.model),
                ("version", &*v.profile.version),
                ("type", kind),
            ];
            counter(&mut m, &labels, n)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "llm_finish_reasons",
        "Finished choices of OpenAI-compatible responses, by finish_reason",
        None,
        MetricType::Counter,
    )?;
    for v in &llm {
        for (reason, n) in FINISH_REASONS
            .iter()
            .copied()
            .chain(["other"])
            .zip(&v.finish)
        {
            let labels = [
                ("model", &*v.profile.model),
                ("version", &*v.profile.version),
                ("reason", reason),
            ];
            counter(&mut m, &labels, *n)?;
        }
    }
    Ok(())
}

fn encode_drift(
    enc: &mut DescriptorEncoder<'_>,
    versions: &[&VersionStats],
    slice: u64,
) -> fmt::Result {
    let mut by_model: BTreeMap<&str, Vec<&VersionStats>> = BTreeMap::new();
    for v in versions {
        by_model.entry(&v.profile.model).or_default().push(v);
    }
    let mut m = enc.encode_descriptor(
        "drift",
        "Drift over the rolling window: PSI and Jensen-Shannon distance of predictions and features, against the registry reference or another live version",
        None,
        MetricType::Gauge,
    )?;
    for model_versions in by_model.values() {
        for (i, d) in stats::drift(model_versions, slice) {
            let v = model_versions[i];
            let labels = [
                ("model", &*v.profile.model),
                ("version", &*v.profile.version),
                ("signal", d.signal.as_str()),
                ("statistic", d.statistic),
                ("against", d.against.as_str()),
            ];
            gauge(&mut m, &labels, d.value)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "drift_window_samples",
        "Values in the rolling window of each drift signal",
        None,
        MetricType::Gauge,
    )?;
    for v in versions {
        for (signal, _, counts) in v.windows(slice) {
            let labels = [
                ("model", &*v.profile.model),
                ("version", &*v.profile.version),
                ("signal", signal.as_str()),
            ];
            gauge(&mut m, &labels, counts.iter().sum::<u64>() as f64)?;
        }
    }
    Ok(())
}
