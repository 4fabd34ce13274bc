//! Routing: the immutable [`Snapshot`] built from config and registry records, swapped in by the
//! [`Reloader`]; [`resolve`] decides which route, model and version a request is for. Knows
//! nothing of HTTP servers, so everything here is a plain function over plain data.

mod resolve;
mod snapshot;
pub use modelstamp_model::split;

pub use resolve::{OpenInferencePath, Resolved, parse_open_inference, resolve, resolve_as};
pub use snapshot::{BackendState, ModelState, RouteState, Served, Snapshot, Stale, UNKNOWN};
