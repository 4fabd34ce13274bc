//! modelstamp-codec, the bottom layer: pure text codecs every other layer may use (RFC 3339
//! time stamps, percent-encoding, W3C trace context and hex, gRPC status codes). No I/O, no HTTP server, no
//! config, no dependency on any other modelstamp crate.
//!
//! Cold paths use the standard crates (`jiff` parses RFC 3339, `percent-encoding` and
//! `form_urlencoded` encode and decode); the one hand-written piece, the RFC 3339 writer of the
//! access log, is a measured hot path (BENCHMARKS.md, decisions) checked against `jiff` here.

pub mod grpc;
pub mod path;
pub mod percent;
pub mod time;
pub mod trace;
