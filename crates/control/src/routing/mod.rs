//! The snapshot and resolution from modelstamp-proxy, and the reloader that builds and swaps
//! snapshots.

pub use modelstamp_proxy::routing::*;

mod reload;

pub use reload::{
    JournalFollower, ReloadEvent, Reloader, Source, Subscriber, WeightChange, WeightsError,
    WriteOutcome, Written, route_weights,
};
