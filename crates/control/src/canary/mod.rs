//! Canary releases: the statistics, the comparison of a candidate with its baseline and its
//! verdict, the lineage diff, and the hash-chained audit log of every traffic change.

pub use modelstamp_observe::canary::*;

pub mod audit;
pub mod control;
pub mod prometheus;
pub mod render;
