//! `[inspect]` and `[routes.inspect]`: which codec reads a route's payloads, how many requests
//! are sampled, whether schema violations are rejected, and the shared queue, memory budget,
//! window and thresholds of the inspection worker.

use std::time::Duration;

use super::ConfigError;
use super::raw::{RawInspect, RawRouteInspect};
use super::validate::dur;

/// Which protocol a route's payloads speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    /// Detect it from each request's path (Open Inference, KServe v1 / TF Serving, MLflow
    /// `/invocations`, OpenAI-compatible); other paths are not inspected.
    Auto,
    /// Open Inference Protocol v2 REST.
    OpenInference,
    /// KServe v1 and TensorFlow Serving REST (`instances` → `predictions`).
    KserveV1,
    /// MLflow scoring server.
    Mlflow,
    /// OpenAI-compatible chat, completions and embeddings (JSON or SSE).
    OpenAi,
    /// No inspection.
    Off,
}

/// How one route is inspected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteInspect {
    /// Codec.
    pub codec: CodecChoice,
    /// Share of requests inspected, 0..=1.
    pub sample: f64,
    /// Reject requests that violate the training schema with 422 (default: only observe).
    pub enforce: bool,
}

impl Default for RouteInspect {
    fn default() -> Self {
        Self {
            codec: CodecChoice::Auto,
            sample: 1.0,
            enforce: false,
        }
    }
}

/// The inspection worker's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspect {
    /// Jobs waiting for the worker; beyond it jobs are skipped (`queue_full`). Read at start.
    pub queue: usize,
    /// Bytes all body copies and queued jobs may hold together. Read at start.
    pub memory_budget_bytes: usize,
    /// Rolling window of issue rates and drift.
    pub window: Duration,
    /// Rows a window needs before a rate or a drift value is reported.
    pub min_samples: u64,
    /// A feature's issue rate at or above this emits one data-quality event.
    pub issue_rate_threshold: f64,
    /// PSI at or above this is logged as a warning.
    pub psi_warn: f64,
    /// PSI at or above this is logged as an alert.
    pub psi_alert: f64,
    /// Jensen–Shannon distance at or above this is logged as a warning.
    pub js_warn: f64,
}

impl Default for Inspect {
    /// The settings an empty `[inspect]` table gives.
    fn default() -> Self {
        inspect(&mut Vec::new(), &RawInspect::default())
    }
}

/// Validate `[inspect]`.
pub fn inspect(errs: &mut Vec<ConfigError>, raw: &RawInspect) -> Inspect {
    let queue = raw.queue.unwrap_or(1024);
    if queue == 0 || queue > 1 << 20 {
        errs.push(ConfigError::new("inspect.queue", "must be 1..=1048576"));
    }
    let budget = raw.memory_budget_bytes.unwrap_or(64 * 1024 * 1024);
    if budget > 1 << 34 {
        errs.push(ConfigError::new(
            "inspect.memory_budget_bytes",
            "must be at most 17179869184",
        ));
    }
    let window = dur(errs, "inspect.window", &raw.window, 300_000);
    if window < Duration::from_secs(10) {
        errs.push(ConfigError::new("inspect.window", "must be at least 10s"));
    }
    let mut share = |path: &str, v: Option<f64>, default: f64| {
        let v = v.unwrap_or(default);
        if !(v.is_finite() && v > 0.0) {
            errs.push(ConfigError::new(path, "must be a positive number"));
        }
        v
    };
    let issue_rate_threshold = share(
        "inspect.issue_rate_threshold",
        raw.issue_rate_threshold,
        0.05,
    );
    let psi_warn = share("inspect.psi_warn", raw.psi_warn, 0.1);
    let psi_alert = share("inspect.psi_alert", raw.psi_alert, 0.25);
    let js_warn = share("inspect.js_warn", raw.js_warn, 0.1);
    if psi_alert < psi_warn {
        errs.push(ConfigError::new(
            "inspect.psi_alert",
            "must be at least inspect.psi_warn",
        ));
    }
    Inspect {
        queue,
        memory_budget_bytes: usize::try_from(budget).unwrap_or(usize::MAX),
        window,
        min_samples: raw.min_samples.unwrap_or(100).max(1),
        issue_rate_threshold,
        psi_warn,
        psi_alert,
        js_warn,
    }
}

/// Validate one route's `inspect`.
pub fn route_inspect(
    errs: &mut Vec<ConfigError>,
    raw: &RawRouteInspect,
    at: &dyn Fn(&str) -> String,
) -> RouteInspect {
    let codec = match raw.codec.as_deref().unwrap_or("auto") {
        "auto" => CodecChoice::Auto,
        "open_inference" => CodecChoice::OpenInference,
        "kserve_v1" | "tf_serving" => CodecChoice::KserveV1,
        "mlflow" => CodecChoice::Mlflow,
        "openai" => CodecChoice::OpenAi,
        "off" => CodecChoice::Off,
        other => {
            errs.push(ConfigError::new(
                at("inspect.codec"),
                format!(
                    "unknown \"{other}\" (auto, open_inference, kserve_v1, tf_serving, mlflow, openai or off)"
                ),
            ));
            CodecChoice::Auto
        }
    };
    let sample = raw.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push(ConfigError::new(at("inspect.sample"), "must be 0..=1"));
    }
    let enforce = raw.enforce.unwrap_or(false);
    if enforce && codec == CodecChoice::OpenAi {
        errs.push(ConfigError::new(
            at("inspect.enforce"),
            "needs a tabular codec (OpenAI payloads have no training schema)",
        ));
    }
    RouteInspect {
        codec,
        sample,
        enforce,
    }
}
