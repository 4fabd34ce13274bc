//! The canary arithmetic from modelstamp-model, and the shadow comparison's statistics, which
//! need inspection's distributions.

pub use modelstamp_model::canary::*;

pub mod shadow;
