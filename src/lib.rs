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
//! Data flows down this list and never back up.

pub mod admin;
pub mod canary;
pub mod codec;
pub mod config;
pub mod demo;
pub mod explain;
pub mod inspect;
pub mod observe;
pub mod proxy;
pub mod registry;
pub mod routing;
pub mod sidecar;

pub use sidecar::{Sidecar, StartError};
