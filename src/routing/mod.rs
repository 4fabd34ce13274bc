//! Routing: the immutable [`Snapshot`] built from config and registry records, swapped in by the
//! [`Reloader`]; [`resolve`] decides which route, model and version a request is for. Knows
//! nothing of HTTP servers, so everything here is a plain function over plain data.

mod reload;
mod resolve;
mod snapshot;
pub mod split;

pub use reload::{Reloader, Source, WeightChange, WeightsError, route_weights};
pub use resolve::{OpenInferencePath, Resolved, parse_open_inference, resolve};
pub use snapshot::{BackendState, ModelState, RouteState, Served, Snapshot, Stale, UNKNOWN};
