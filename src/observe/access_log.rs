//! The access log: exactly one JSON line per request, written by a dedicated thread from a
//! bounded queue. A full queue or a failed write drops the line and counts it; the request
//! never waits for the log.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use opentelemetry::trace::{SpanId, TraceId};
use serde::Serialize;
use tracing::warn;

use super::metrics::{Metrics, ObserveDrop};
use super::recent::RecentRequests;
use crate::config::AccessLogTarget;

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
    match v {
        Some(t) => {
            let mut hex = [0u8; 32];
            super::trace::hex_into(&mut hex, &t.to_bytes());
            s.serialize_str(std::str::from_utf8(&hex).unwrap_or_default())
        }
        None => s.serialize_none(),
    }
}

fn ser_span_id<S: serde::Serializer>(v: &Option<SpanId>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(id) => {
            let mut hex = [0u8; 16];
            super::trace::hex_into(&mut hex, &id.to_bytes());
            s.serialize_str(std::str::from_utf8(&hex).unwrap_or_default())
        }
        None => s.serialize_none(),
    }
}

/// Format milliseconds since the epoch as RFC 3339 UTC (negative times as the epoch).
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// Format a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    String::from_utf8_lossy(&rfc3339_bytes(t)).into_owned()
}

/// [`rfc3339`] into a fixed buffer (`YYYY-MM-DDTHH:MM:SS.mmmZ`), without `fmt`; years past
/// 9999 are written as 9999.
fn rfc3339_bytes(t: SystemTime) -> [u8; 24] {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, v: u64| {
        let mut v = v;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, u64::try_from(y).unwrap_or(0).min(9999));
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(day));
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 3, u64::from(d.subsec_millis()));
    out
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
            .spawn(move || write_loop(rx, out, m, r))?;
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
    let mut busy = false;
    while let Ok(mut msg) = rx.recv() {
        // Under load, sleep a moment before draining: senders only wake a thread blocked in
        // `recv`, so this turns one wake-up per request into one per few milliseconds.
        if busy {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
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
                let mark = batch.bytes.len();
                if serde_json::to_writer(&mut batch.bytes, &*line).is_ok() {
                    batch.bytes.push(b'\n');
                    batch.lines += 1;
                } else {
                    batch.bytes.truncate(mark);
                }
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
        busy = drained > 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_673_127_853);
        assert_eq!(rfc3339(t), "2026-11-26T06:05:27.853Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
