//! modelstamp-model: what the sidecar knows before any request arrives. Config (raw serde
//! structs → validate → `Config`), the registry (file and MLflow backends, lineage records and
//! the lineage ID), the traffic split (a pure function of weights and a sticky key), the
//! change journal, and the comparison statistics and verdicts over plain numbers.
//!
//! Depends on modelstamp-codec only; knows nothing of HTTP servers, metrics or spans.

pub use modelstamp_codec as codec;

pub mod canary;
pub mod clock;
pub mod config;
pub mod journal;
pub mod registry;
pub mod split;
pub mod stamp;
pub mod tls;
