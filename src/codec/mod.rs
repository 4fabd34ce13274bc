//! Pure text codecs every layer may use: time stamps and percent-encoding. No I/O, no HTTP
//! server, no config: the bottom of the dependency order.
//!
//! Cold paths use the standard crates (`jiff` parses RFC 3339, `percent-encoding` and
//! `form_urlencoded` encode and decode); the one hand-written piece, the RFC 3339 writer of the
//! access log, is a measured hot path (BENCHMARKS.md, decisions) checked against `jiff` here.

pub mod percent;
pub mod time;
