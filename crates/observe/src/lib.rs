//! Observation: metrics, the access log and trace context. Everything per request is emitted
//! once, through [`RequestOutcome::emit`], when the response body ends or is dropped. Nothing
//! here can fail a request: lost telemetry is counted in `modelstamp_observe_dropped_total`.
//!
//! modelstamp-observe: the sinks (metrics, spans and their OTLP export, the access log, the
//! recent-requests index) and inspection (codecs, data quality, drift, the shadow
//! comparison's statistics). Depends on modelstamp-model and modelstamp-codec; knows nothing
//! of the proxy or the control plane.
pub use modelstamp_codec::trace;
pub use modelstamp_model::{codec, config, journal, registry};

pub mod canary;
pub mod inspect;

pub mod access_log;
pub mod exemplar;
pub mod metrics;
pub mod otlp;
pub mod pace;
pub mod recent;
pub mod spans;
pub mod window;

use access_log::{AccessLine, AccessLog};
use metrics::{Metrics, Recorded, VersionMetrics};
use spans::Tracing;

/// Where telemetry goes.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Metric families.
    pub metrics: Metrics,
    /// Access-log writer.
    pub access_log: AccessLog,
    /// Span builder and exporter.
    pub tracing: Tracing,
    /// Payload inspection queue.
    pub inspector: crate::inspect::Inspector,
    /// What changed and when, for `explain`.
    pub journal: std::sync::Arc<crate::journal::Journal>,
}

/// Everything one finished request contributes.
#[derive(Debug)]
pub struct RequestOutcome {
    /// The access-log line.
    pub line: AccessLine,
    /// The metric observations.
    pub recorded: Recorded,
}

impl RequestOutcome {
    /// Record metrics and queue the access-log line (the only per-request INFO-level output).
    pub fn emit(self, version_metrics: &VersionMetrics, telemetry: &Telemetry) {
        version_metrics.record(&self.recorded);
        telemetry.access_log.send(self.line);
    }
}
