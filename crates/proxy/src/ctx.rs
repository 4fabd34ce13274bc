//! What the layers share about one request: the snapshot it started with, what it resolved to,
//! and counters the request body updates as it streams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method, Request, Version};

use super::body::ClientBody;
use super::error::ClientFault;
use crate::inspect::Codec;
use crate::inspect::worker::Copied;
use crate::routing::{Resolved, RouteState, Snapshot};

/// One request's context, shared by every layer (one allocation per request).
#[derive(Debug)]
pub struct RequestCtx {
    /// The snapshot this request uses from start to end.
    pub snapshot: Arc<Snapshot>,
    /// Route, model and version.
    pub resolved: Resolved,
    /// The request ID stamped up and down.
    pub request_id: HeaderValue,
    /// The server span (continuing the caller's trace, if any).
    pub span: crate::observe::spans::Span,
    /// Method.
    pub method: Method,
    /// Path and query (refcounted, from the request URI).
    pub path: http::uri::PathAndQuery,
    /// Client HTTP version.
    pub version: Version,
    /// Client address.
    pub client: SocketAddr,
    /// The client's IP, formatted once per connection (`x-forwarded-for`).
    pub client_ip: HeaderValue,
    /// The client connection is TLS (`x-forwarded-proto: https`).
    pub tls: bool,
    /// Monotonic start.
    pub start: Instant,
    /// Wall-clock start.
    pub time: SystemTime,
    /// Whether this is a gRPC call (errors are reported as grpc-status).
    pub grpc: bool,
    /// How the request body is laid out (Triton's binary extension, per its headers).
    pub framing: crate::inspect::Framing,
    /// Request body bytes forwarded so far.
    pub bytes_in: AtomicU64,
    /// Set when the request body went over the limit.
    pub body_too_large: AtomicBool,
    /// Set when the client's side of the body failed (it hung up, sent a malformed body, or
    /// stalled): an upstream failure that follows is the client's doing, not the version's.
    pub client_fault: OnceLock<ClientFault>,
    /// Set while the request body waits for the client's next bytes (cleared when they come):
    /// a response timeout then is the client's stall, not the model server's.
    pub awaiting_client: AtomicBool,
    /// Set once the model server's response headers arrived: from then on a request body
    /// that pauses (a gRPC or SSE stream both ways) is a live exchange, not a stalled upload.
    pub responded: AtomicBool,
    /// The `model` an OpenAI-compatible request asked for (read once the body is complete).
    pub gen_ai_request_model: OnceLock<String>,
    /// How this exchange is inspected; `None` when it is not (no codec, or sampled out).
    pub inspect: Option<Codec>,
    /// The request body's copy, once it was read whole within the cap and budget.
    pub request_copy: OnceLock<Copied>,
}

impl RequestCtx {
    /// The matched route.
    pub fn route(&self) -> Option<&RouteState> {
        self.snapshot.routes.get(self.resolved.route?)
    }

    /// Bytes of request body seen.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
}

/// A request travelling down the stack with its context.
#[derive(Debug)]
pub struct ProxyRequest {
    /// The request as it will be forwarded.
    pub req: Request<ClientBody>,
    /// Its context.
    pub ctx: Arc<RequestCtx>,
}
