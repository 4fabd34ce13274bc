//! modelstamp-control: the control plane, which runs on a thread and runtime of its own. The
//! reloader (watch → prepare → swap) and the MLflow poller build snapshots; the canary
//! controller compares versions, changes weights and writes the audit log; `explain` ranks
//! causes from the journal and the windows; the admin API serves all of it. The top layer
//! below the binary: it may use every crate beneath it, and none of them knows it.

pub use modelstamp_observe as observe;
pub use modelstamp_observe::{clock, codec, config, inspect, journal, registry, stamp, tls};
pub use modelstamp_proxy as proxy;

pub mod admin;
pub mod canary;
pub mod explain;
pub mod history;
pub mod routing;
