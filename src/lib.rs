//! modelstamp: an inference-side sidecar that stamps every request with the model version that
//! served it and the lineage ID of the registry record behind that version.
//!
//! ```text
//! client ─▶ proxy::server (h1 + h2c)
//!             └▶ resolve ─▶ stamp ─▶ tee ─▶ enforce ─▶ forward ─▶ model server
//!                  │          │       │                  (proxy::pool: lent h1 connections)
//!      routing::Snapshot      │       ├▶ observe: metrics, spans, access log (once per request)
//!      (ArcSwap, hot reload,  │       ├▶ inspect: bounded body copies → worker → quality, drift
//!       canary split)         │       └▶ proxy::shadow: mirrored call, prediction agreement
//!                             └▶ x-model-name / x-model-version / x-lineage-id / x-request-id
//! admin ─▶ /metrics /versions /lineage /requests /canary /audit /explain /ui
//!            canary: comparison, verdict, audit log · explain: journal → ranked causes
//! ```
//!
//! The crates, in data-flow order (each may use only those above it; the build enforces it):
//!
//! | crate | holds |
//! |---|---|
//! | `modelstamp-codec` | RFC 3339, percent-encoding, W3C trace context, hex |
//! | `modelstamp-model` | config, registry and lineage records, the split, the journal, verdicts |
//! | `modelstamp-observe` | metrics, spans and OTLP, access log, recent requests, inspection |
//! | `modelstamp-proxy` | routing snapshot and resolution, the tower stack, the pool |
//! | `modelstamp-control` | reload, canary controller and audit, explain, admin API |
//! | `modelstamp` (here) | the sidecar that wires them, the demo, the CLI |
//!
//! This crate re-exports each layer's modules under the names the CLI and the tests use.

pub use modelstamp_codec as codec;
pub use modelstamp_control::{admin, canary, explain, history, routing};
pub use modelstamp_model::{config, journal, registry, tls};
pub use modelstamp_observe as observe;
pub use modelstamp_observe::inspect;
pub use modelstamp_proxy as proxy;

pub mod demo;
pub mod sidecar;

pub use sidecar::{Sidecar, StartError};
