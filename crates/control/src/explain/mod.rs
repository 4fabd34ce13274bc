//! Root cause in one step: `explain` joins what the sidecar saw — the journal of changes, the
//! per-version health windows, data quality, drift, mismatches, stale lineage — with the lineage
//! records, into a timeline and a ranked list of likely causes.

pub use modelstamp_model::journal;

pub mod gather;
pub mod onset;
pub mod prometheus;
pub mod render;
pub mod rules;
