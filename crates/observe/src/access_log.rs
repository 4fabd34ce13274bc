//! The access log: exactly one JSON line per request, written by a dedicated thread from a
//! bounded queue. A full queue or a failed write drops the line and counts it; the request
//! never waits for the log.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use crate::codec::time::rfc3339_bytes;

use std::net::SocketAddr;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use opentelemetry::trace::{SpanId, TraceId};
use serde::Serialize;
use tracing::warn;

use super::metrics::{Metrics, ObserveDrop};
use super::pace::Gather;
use super::recent::RecentRequests;
use crate::config::AccessLogTarget;
use crate::inspect::open_inference::string_specials;

/// The path and query in storage of its own. hyper's are slices of a connection's read
/// buffer; what keeps a path beyond its request (a queued line, the recent-requests index)
/// copies it, so as not to keep that whole buffer allocated.
pub fn owned_path(pq: &PathAndQuery) -> PathAndQuery {
    PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(pq.as_str().as_bytes()))
        // A valid path parses again; keeping the shared one is the fallback, not an error.
        .unwrap_or_else(|_| pq.clone())
}

/// One access-log line.
#[derive(Debug, Clone, Serialize)]
pub struct AccessLine {
    /// When the request started (RFC 3339, UTC).
    #[serde(serialize_with = "ser_time")]
    pub time: SystemTime,
    /// Request ID.
    #[serde(serialize_with = "ser_header")]
    pub request_id: HeaderValue,
    /// Trace ID of the server span.
    #[serde(serialize_with = "ser_trace_id")]
    pub trace_id: Option<TraceId>,
    /// Span ID of the server span.
    #[serde(serialize_with = "ser_span_id")]
    pub span_id: Option<SpanId>,
    /// Matched route.
    pub route: Option<Arc<str>>,
    /// Model.
    pub model: Arc<str>,
    /// Version.
    pub version: Arc<str>,
    /// Lineage ID.
    pub lineage_id: Arc<str>,
    /// Version the model server reported, when it differs or was read.
    pub reported_version: Option<String>,
    /// Client address.
    #[serde(serialize_with = "ser_display")]
    pub client: SocketAddr,
    /// Method.
    #[serde(serialize_with = "ser_method")]
    pub method: Method,
    /// Path and query.
    #[serde(serialize_with = "ser_path")]
    pub path: PathAndQuery,
    /// HTTP version of the client.
    pub protocol: &'static str,
    /// Status sent to the client.
    pub status: u16,
    /// Status the model server sent.
    pub upstream_status: Option<u16>,
    /// The `grpc-status` the client got; only gRPC calls have the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// Total latency in milliseconds.
    pub duration_ms: f64,
    /// Upstream latency to response headers in milliseconds.
    pub upstream_ms: Option<f64>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// What went wrong, if anything.
    pub error: Option<&'static str>,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let b = rfc3339_bytes(*t);
    s.serialize_str(std::str::from_utf8(&b).unwrap_or_default())
}

// The line is built on the request path from cheap (refcounted or Copy) values and formatted
// here, on the log thread.
fn ser_header<S: serde::Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.to_str().unwrap_or_default())
}

fn ser_method<S: serde::Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_path<S: serde::Serializer>(p: &PathAndQuery, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

fn ser_trace_id<S: serde::Serializer>(v: &Option<TraceId>, s: S) -> Result<S::Ok, S::Error> {
    ser_hex(v.map(|t| t.to_bytes()).as_ref().map(|b| &b[..]), s)
}

fn ser_span_id<S: serde::Serializer>(v: &Option<SpanId>, s: S) -> Result<S::Ok, S::Error> {
    ser_hex(v.map(|id| id.to_bytes()).as_ref().map(|b| &b[..]), s)
}

/// An ID of up to 16 bytes as a lowercase hex string, or null.
fn ser_hex<S: serde::Serializer>(bytes: Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => {
            let mut hex = [0u8; 32];
            let hex = &mut hex[..b.len() * 2];
            super::trace::hex_into(hex, b);
            s.serialize_str(std::str::from_utf8(hex).unwrap_or_default())
        }
        None => s.serialize_none(),
    }
}

impl AccessLine {
    /// Append the line as JSON: the same bytes `serde_json::to_writer` writes for it (a test
    /// holds it to that), without serde's per-character escaping loop. This runs on the log
    /// thread once per request.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let id_hex = |out: &mut Vec<u8>, bytes: &[u8]| {
            let mut hex = [0u8; 32];
            let hex = &mut hex[..bytes.len() * 2];
            super::trace::hex_into(hex, bytes);
            out.push(b'"');
            out.extend_from_slice(hex);
            out.push(b'"');
        };
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(&rfc3339_bytes(self.time));
        out.extend_from_slice(b"\",\"request_id\":");
        json_str(out, self.request_id.to_str().unwrap_or_default());
        out.extend_from_slice(b",\"trace_id\":");
        match self.trace_id {
            Some(t) => id_hex(out, &t.to_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"span_id\":");
        match self.span_id {
            Some(s) => id_hex(out, &s.to_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"route\":");
        json_opt_str(out, self.route.as_deref());
        out.extend_from_slice(b",\"model\":");
        json_str(out, &self.model);
        out.extend_from_slice(b",\"version\":");
        json_str(out, &self.version);
        out.extend_from_slice(b",\"lineage_id\":");
        json_str(out, &self.lineage_id);
        out.extend_from_slice(b",\"reported_version\":");
        json_opt_str(out, self.reported_version.as_deref());
        out.extend_from_slice(b",\"client\":\"");
        // An address never needs escaping.
        write_addr(out, &self.client);
        out.extend_from_slice(b"\",\"method\":");
        json_str(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path.as_str());
        out.extend_from_slice(b",\"protocol\":");
        json_str(out, self.protocol);
        out.extend_from_slice(b",\"status\":");
        json_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"upstream_status\":");
        match self.upstream_status {
            Some(s) => json_u64(out, u64::from(s)),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(code) = self.grpc_status {
            out.extend_from_slice(b",\"grpc_status\":");
            json_u64(out, u64::from(code));
        }
        out.extend_from_slice(b",\"duration_ms\":");
        json_f64(out, self.duration_ms);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_ms {
            Some(ms) => json_f64(out, ms),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"bytes_in\":");
        json_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        json_u64(out, self.bytes_out);
        out.extend_from_slice(b",\"error\":");
        json_opt_str(out, self.error);
        out.push(b'}');
    }
}

/// A JSON string as serde_json writes it: `"`, `\\` and control characters escaped (short
/// forms where JSON has them), everything else copied; runs without escapes are copied whole,
/// found eight bytes at a time.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(chunk) = b.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if string_specials(u64::from_le_bytes(word)) == 0 {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        i += 1;
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&b[start..i - 1]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                let mut esc = *b"\\u0000";
                super::trace::hex_into(&mut esc[4..], &[c]);
                out.extend_from_slice(&esc);
            }
        }
        start = i;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// `ip:port` (IPv4 by hand; IPv6 through `fmt`, bracketed).
fn write_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                json_u64(out, u64::from(octet));
            }
            out.push(b':');
            json_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_u64(out: &mut Vec<u8>, mut v: u64) {
    // Two digits per division: most values here (status codes, byte counts) take one or two.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

/// Floats through serde_json itself (shortest round-trip form; non-finite values as `null`).
fn json_f64(out: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

enum Msg {
    Line(Box<AccessLine>),
    Flush(SyncSender<()>),
}

/// Sends lines to the writer thread, which writes them and feeds the recent-requests index.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    metrics: Metrics,
    /// The trace → lineage index this log feeds.
    pub recent: Arc<RecentRequests>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.tx.is_some())
            .finish()
    }
}

impl AccessLog {
    /// Start the writer thread for a target.
    pub fn start(
        target: &AccessLogTarget,
        queue: usize,
        metrics: Metrics,
        recent: Arc<RecentRequests>,
    ) -> std::io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stdout => Some(Box::new(std::io::stdout())),
            AccessLogTarget::File(path) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        };
        let (tx, rx) = sync_channel(queue);
        let (m, r) = (metrics.clone(), recent.clone());
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, queue, out, m, r))?;
        Ok(Self {
            tx: Some(tx),
            metrics,
            recent,
        })
    }

    /// Queue a line; never blocks.
    pub fn send(&self, line: AccessLine) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Line(Box::new(line))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self
                .metrics
                .observe_dropped(ObserveDrop::AccessLogQueueFull),
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.observe_dropped(ObserveDrop::AccessLogWrite)
            }
        }
    }

    /// Wait until every line queued so far is written and flushed (shutdown, tests).
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (ack_tx, ack_rx) = sync_channel(1);
        tx.send(Msg::Flush(ack_tx)).is_ok() && ack_rx.recv_timeout(timeout).is_ok()
    }
}

/// Lines gathered before one write; each write is all-or-nothing in the accounting.
const BATCH_BYTES: usize = 64 * 1024;

/// Lines serialized but not yet written.
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
    failures: u64,
}

impl Batch {
    /// Write the batch. On failure every line in it is counted as dropped (a full or broken
    /// disk loses lines, never requests, and never silently).
    fn write(&mut self, out: &mut dyn Write, metrics: &Metrics) {
        if self.lines == 0 {
            return;
        }
        if let Err(e) = out.write_all(&self.bytes).and_then(|()| out.flush()) {
            metrics.observe_dropped_n(ObserveDrop::AccessLogWrite, self.lines);
            self.failures += 1;
            // One warning per power of two keeps a full disk from flooding the log.
            if self.failures.is_power_of_two() {
                warn!(error = %e, failures = self.failures, lost = self.lines, "Access log write failed.");
            }
        }
        self.bytes.clear();
        self.lines = 0;
    }
}

fn write_loop(
    rx: Receiver<Msg>,
    queue: usize,
    mut out: Option<Box<dyn Write + Send>>,
    metrics: Metrics,
    recent: Arc<RecentRequests>,
) {
    let mut batch = Batch {
        bytes: Vec::with_capacity(BATCH_BYTES + 4096),
        lines: 0,
        failures: 0,
    };
    let mut acks = Vec::new();
    let mut gather = Gather::new(queue);
    while let Ok(mut msg) = rx.recv() {
        // Let lines gather before draining (see `pace`): one wake-up per interval, not per line.
        gather.wait();
        let mut drained = 0usize;
        loop {
            drained += 1;
            let line = match msg {
                Msg::Line(line) => line,
                Msg::Flush(ack) => {
                    acks.push(ack);
                    match rx.try_recv() {
                        Ok(next) => {
                            msg = next;
                            continue;
                        }
                        Err(_) => break,
                    }
                }
            };
            if let Some(out) = out.as_mut() {
                line.write_json(&mut batch.bytes);
                batch.bytes.push(b'\n');
                batch.lines += 1;
                if batch.bytes.len() >= BATCH_BYTES {
                    batch.write(out.as_mut(), &metrics);
                }
            }
            recent.insert(line);
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        // Write whenever the queue runs dry, so lines appear promptly at low rates.
        if let Some(out) = out.as_mut() {
            batch.write(out.as_mut(), &metrics);
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        gather.drained(drained);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn line() -> AccessLine {
        AccessLine {
            time: UNIX_EPOCH + Duration::from_millis(1_795_673_127_853),
            request_id: HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
            trace_id: Some(TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128)),
            span_id: Some(SpanId::from(0x00f0_67aa_0ba9_02b7u64)),
            route: Some("models".into()),
            model: "churn".into(),
            version: "3".into(),
            lineage_id: "ln_526204c212f0100a".into(),
            reported_version: Some("3".into()),
            client: "127.0.0.1:50312"
                .parse()
                .unwrap_or(SocketAddr::from(([0; 4], 0))),
            method: Method::POST,
            path: PathAndQuery::from_static("/v2/models/churn/infer?x=1"),
            protocol: "1.1",
            status: 200,
            upstream_status: Some(200),
            grpc_status: None,
            duration_ms: 0.412_345,
            upstream_ms: Some(0.25),
            bytes_in: 213,
            bytes_out: 17_000_000_000,
            error: None,
        }
    }

    #[test]
    fn lines_are_the_bytes_serde_json_writes() {
        let mut lines = vec![line()];
        let mut empty = line();
        empty.trace_id = None;
        empty.span_id = None;
        empty.route = None;
        empty.reported_version = None;
        empty.upstream_status = None;
        empty.upstream_ms = None;
        empty.error = Some("upstream_connect");
        empty.status = 0;
        empty.bytes_in = 0;
        empty.duration_ms = 1e-9;
        empty.client = "[fe80::1]:8080".parse().unwrap_or(empty.client);
        lines.push(empty);
        let mut grpc = line();
        grpc.grpc_status = Some(14);
        lines.push(grpc);
        // Every control character, quotes, backslashes and non-ASCII, in the free-text fields.
        let nasty: String = (0u8..0x20)
            .map(char::from)
            .chain("\"\\/é漢\u{7f}🙂 end".chars())
            .collect();
        let mut escaped = line();
        escaped.model = nasty.as_str().into();
        escaped.version = format!("v\"{nasty}").into();
        escaped.lineage_id = "".into();
        escaped.reported_version = Some(nasty.clone());
        escaped.route = Some("r\\".into());
        escaped.duration_ms = f64::NAN;
        escaped.upstream_ms = Some(f64::INFINITY);
        escaped.method = Method::from_bytes(b"PURGE").unwrap_or(Method::GET);
        escaped.bytes_out = u64::MAX;
        lines.push(escaped);
        for (i, duration) in [0.0, 1.0, 12.5, 1_234.000_001, 1e21, 3.0e-5]
            .into_iter()
            .enumerate()
        {
            let mut l = line();
            l.duration_ms = duration;
            l.status = [200, 404, 503, 599, 100, 1][i];
            lines.push(l);
        }
        for (i, addr) in ["0.0.0.0:0", "255.255.255.255:65535", "10.1.20.3:8080"]
            .into_iter()
            .enumerate()
        {
            let mut l = line();
            l.client = addr.parse().unwrap_or(l.client);
            // Escapes at every offset of a long run, so the eight-byte skip is exercised.
            let mut long: String = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(i + 1);
            for (k, c) in ['"', '\\', '\u{1f}', '\n'].into_iter().enumerate() {
                long.insert((k * 7 + i * 3) % long.len(), c);
            }
            l.path = PathAndQuery::from_static("/v2/models/a%20b/infer");
            l.model = long.as_str().into();
            lines.push(l);
        }
        for l in lines {
            let mut ours = Vec::new();
            l.write_json(&mut ours);
            let expected = serde_json::to_vec(&l).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn the_eight_byte_test_never_misses_a_byte_to_escape() {
        for pos in 0..8 {
            for byte in 0..=255u8 {
                let mut word = *b"plain ok";
                word[pos] = byte;
                let needs = byte < 0x20 || byte == b'"' || byte == b'\\';
                let flagged = string_specials(u64::from_le_bytes(word)) != 0;
                assert!(flagged || !needs, "byte {byte:#x} at {pos}");
                if !needs {
                    assert!(
                        !flagged,
                        "plain byte {byte:#x} at {pos} sent to the slow path"
                    );
                }
            }
        }
        // The lowest flag is the first byte to escape, whatever else the word holds (the
        // scanner of the Open Inference readers relies on it).
        let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        for first in 0..8 {
            for marker in [b'"', b'\\', 0x00, 0x1f] {
                for other in 0..8 {
                    for byte in 0..=255u8 {
                        let mut word = *b"plain ok";
                        word[first] = marker;
                        if other != first {
                            word[other] = byte;
                        }
                        let expected = word.iter().position(|&b| special(b));
                        let found = string_specials(u64::from_le_bytes(word)).trailing_zeros() / 8;
                        assert_eq!(expected, Some(found as usize), "{word:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn integers_are_written_as_their_decimal_digits() {
        let check = |v: u64| {
            let mut out = Vec::new();
            json_u64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes(), "{v}");
        };
        (0..10_000).for_each(check);
        [65_535, 99_999, 100_000, 1 << 32, u64::MAX / 10, u64::MAX]
            .into_iter()
            .for_each(check);
    }
}
