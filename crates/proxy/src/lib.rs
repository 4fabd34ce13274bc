//! The data plane: a hyper server (HTTP/1.1 and h2c on one port) in front of a tower stack whose
//! phases are named after pingora's:
//!
//! ```text
//! resolve (request_filter) → stamp (upstream_request_filter / response_filter)
//!   → tee (logging: timing, errors → responses, one outcome per request)
//!   → enforce (request_filter: schema check on `enforce` routes) → forward (upstream_peer)
//! ```

//!
//! modelstamp-proxy: the data plane, and `routing`, the immutable snapshot each request loads
//! once (routes, versions, weights, metric handles) and the pure resolution over it. Depends
//! on modelstamp-observe and the layers below; the control plane that builds and swaps
//! snapshots lives above, in modelstamp-control.

pub use modelstamp_observe as observe;
pub use modelstamp_observe::{canary, codec, config, inspect, journal, registry, tls};

pub mod routing;

mod body;
mod ctx;
mod enforce;
mod error;
mod forward;
mod grpc_lead;
mod headers;
mod held;
pub mod idle;
mod pool;
mod resolve;
pub mod server;
pub mod shadow;
mod stamp;
mod tee;
mod tls_clients;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Layer, Service};

pub use error::{ProxyError, error_response};
pub use forward::Forward;
pub use headers::{add_forwarded, ip_value, remove_hop_by_hop};
pub use resolve::{new_request_id, protocol_version};
pub use stamp::stamp;
pub use tee::ObservedBody;

use crate::observe::Telemetry;
use crate::observe::exchange::Observer;
use crate::routing::Snapshot;

/// What every connection's stack is built from.
#[derive(Clone)]
pub struct Proxy {
    snapshots: Arc<ArcSwap<Snapshot>>,
    telemetry: Arc<Telemetry>,
    observer: Arc<Observer<ctx::RequestCtx>>,
    forward: Forward,
    held: held::Held,
}

impl Proxy {
    /// A proxy reading snapshots from `snapshots`.
    pub fn new(
        snapshots: Arc<ArcSwap<Snapshot>>,
        telemetry: Arc<Telemetry>,
        forward: Forward,
        shadow: shadow::Shadower,
    ) -> Self {
        // Every finished exchange goes to the standard sinks, then to the shadow calls.
        let observer = Arc::new(Observer::standard(&telemetry, vec![Box::new(shadow)]));
        let held = held::Held::new(telemetry.metrics.response_bytes_held.clone());
        Self {
            snapshots,
            telemetry,
            observer,
            forward,
            held,
        }
    }

    /// The service for one client connection (`tls`: it arrived over TLS).
    pub fn service(
        &self,
        client: SocketAddr,
        tls: bool,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<ObservedBody>,
        Error = Infallible,
        Future: Send,
    >
    + Clone
    + Send
    + 'static
    + use<> {
        // Outermost first: resolve once, stamp both ways, observe everything, then forward.
        let forward = enforce::EnforceLayer.layer(self.forward.clone());
        let tee = tee::TeeLayer::new(
            self.observer.clone(),
            self.telemetry.inspector.clone(),
            self.held.clone(),
        )
        .layer(forward);
        let stamp = stamp::StampLayer.layer(tee);
        resolve::ResolveLayer::new(
            self.snapshots.clone(),
            self.telemetry.clone(),
            self.held.clone(),
            client,
            tls,
        )
        .layer(stamp)
    }
}
