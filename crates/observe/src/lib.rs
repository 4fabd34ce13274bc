//! modelstamp-observe: observation. Everything per request is observed once, when the response
//! body ends or is dropped: the proxy builds one [`exchange::Exchange`] and the
//! [`exchange::Observer`] fans it out to the sinks. Nothing here can fail a request: lost
//! telemetry is counted in `modelstamp_observe_dropped_total`.
//!
//! The sinks (metrics, spans and their OTLP export, the access log, the
//! recent-requests index) and inspection (codecs, data quality, drift, the shadow
//! comparison's statistics). Depends on modelstamp-model and modelstamp-codec; knows nothing
//! of the proxy or the control plane.
pub use modelstamp_codec::trace;
pub use modelstamp_model::{clock, codec, config, journal, registry, stamp, tls};

pub mod canary;
pub mod inspect;

pub mod access_log;
pub mod exchange;
pub mod exemplar;
pub mod metrics;
pub mod otlp;
pub mod pace;
pub mod recent;
pub mod spans;
pub mod window;

use access_log::AccessLog;
use metrics::Metrics;
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
