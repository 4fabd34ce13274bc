//! Canary arithmetic over plain numbers: lineage diffs between two records, the statistics of
//! a comparison (error-rate p-values) and the verdict rules. The controller that acts on a
//! verdict lives in modelstamp-control.

pub mod diff;
pub mod stats;
pub mod verdict;
