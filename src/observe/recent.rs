//! A bounded index of recent requests (their access-log lines), by trace ID and request ID, so a responder holding either
//! gets to the model version and lineage record in one step. Fed by the access-log thread (never
//! the request path); capped by entry count and by approximate bytes, oldest evicted first.

use std::collections::VecDeque;
use std::sync::RwLock;

use super::access_log::AccessLine;

/// Approximate fixed cost of one entry beyond its strings (the boxed line, its deque slot).
const ENTRY_OVERHEAD: usize = 256;

/// Memory an entry holds beyond its fixed size.
fn size(l: &AccessLine) -> usize {
    ENTRY_OVERHEAD
        + l.request_id.len()
        + l.reported_version.as_ref().map_or(0, String::len)
        + l.path.as_str().len()
}

/// The path and an incoming request ID are slices of hyper's read buffer: kept as they are, each
/// entry would pin a whole buffer. The index keeps compact copies.
fn detach(l: &mut AccessLine) {
    if let Ok(p) = http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(
        l.path.as_str().as_bytes(),
    )) {
        l.path = p;
    }
    if let Ok(v) = http::HeaderValue::from_bytes(l.request_id.as_bytes()) {
        l.request_id = v;
    }
}

/// Entries oldest first. There is no map: inserting is a push (the access-log thread does it
/// for every request), and a lookup, an admin call, scans at most `traces.recent_requests`
/// entries (10,000 by default: tens of microseconds).
#[derive(Default)]
struct Ring {
    entries: VecDeque<Box<AccessLine>>,
    bytes: usize,
}

/// The index.
pub struct RecentRequests {
    ring: RwLock<Ring>,
    max_entries: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentRequests")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl RecentRequests {
    /// An index keeping at most `max_entries` requests and about `max_bytes` of memory.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            ring: RwLock::new(Ring::default()),
            max_entries,
            max_bytes,
        }
    }

    /// Add a finished request, evicting the oldest beyond either cap.
    pub fn insert(&self, mut entry: Box<AccessLine>) {
        if self.max_entries == 0 {
            return;
        }
        detach(&mut entry);
        let mut ring = self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.bytes += size(&entry);
        ring.entries.push_back(entry);
        while ring.entries.len() > self.max_entries || ring.bytes > self.max_bytes {
            let Some(old) = ring.entries.pop_front() else {
                break;
            };
            ring.bytes = ring.bytes.saturating_sub(size(&old));
        }
    }

    /// Requests with this trace ID (oldest first), or the one with this request ID.
    pub fn lookup(&self, id: &str) -> Vec<AccessLine> {
        let ring = self
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Trace IDs are 32 lowercase hex digits, as the access log and the span exporters
        // print them (a request ID may look the same: the trace is looked up first).
        let trace = (id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u128::from_str_radix(id, 16).ok())
            .flatten()
            .map(opentelemetry::trace::TraceId::from);
        if trace.is_some() {
            let found: Vec<AccessLine> = ring
                .entries
                .iter()
                .filter(|e| e.trace_id == trace)
                .map(|e| (**e).clone())
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        // The latest request with this ID (a trusted caller may reuse one).
        ring.entries
            .iter()
            .rev()
            .find(|e| e.request_id.as_bytes() == id.as_bytes())
            .map(|e| (**e).clone())
            .into_iter()
            .collect()
    }

    /// How many requests and approximately how many bytes are held.
    pub fn usage(&self) -> (usize, usize) {
        let ring = self
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (ring.entries.len(), ring.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn line(i: usize, trace: u128) -> Box<AccessLine> {
        Box::new(AccessLine {
            time: SystemTime::UNIX_EPOCH,
            request_id: http::HeaderValue::from_str(&format!("req-{i}"))
                .unwrap_or(http::HeaderValue::from_static("x")),
            trace_id: Some(opentelemetry::trace::TraceId::from(trace)),
            span_id: Some(opentelemetry::trace::SpanId::from(i as u64 + 1)),
            route: Some("churn".into()),
            model: "churn".into(),
            version: "1".into(),
            lineage_id: "ln_0123456789abcdef".into(),
            reported_version: None,
            client: "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            method: http::Method::POST,
            path: http::uri::PathAndQuery::from_static("/v2/models/churn/infer"),
            protocol: "HTTP/1.1",
            status: 200,
            upstream_status: Some(200),
            duration_ms: 1.0,
            upstream_ms: Some(0.5),
            bytes_in: 1,
            bytes_out: 1,
            error: None,
        })
    }

    #[test]
    fn finds_by_trace_and_request_id_and_evicts_oldest() {
        let idx = RecentRequests::new(3, usize::MAX);
        let hex = |t: u128| format!("{t:032x}");
        idx.insert(line(0, 0xa0));
        idx.insert(line(1, 0xbb));
        idx.insert(line(2, 0xbb));
        assert_eq!(idx.lookup(&hex(0xbb)).len(), 2);
        assert_eq!(
            idx.lookup("req-0")[0].trace_id.map(|t| t.to_string()),
            Some(hex(0xa0))
        );
        idx.insert(line(3, 0xc3));
        assert!(idx.lookup("req-0").is_empty(), "evicted");
        assert!(idx.lookup(&hex(0xa0)).is_empty(), "its trace key too");
        assert_eq!(idx.lookup(&hex(0xc3))[0].request_id, "req-3");
        assert_eq!(idx.usage().0, 3);
        idx.insert(line(4, 0xd4));
        let rest = idx.lookup(&hex(0xbb));
        assert_eq!(rest.len(), 1, "one of the trace's two requests evicted");
        assert_eq!(rest[0].request_id, "req-2");
        idx.insert(line(5, 0xe5));
        assert!(idx.lookup(&hex(0xbb)).is_empty(), "and then the other");
        assert_eq!(idx.lookup(&hex(0xBB).to_uppercase()).len(), 0);
    }

    #[test]
    fn the_byte_cap_bounds_memory() {
        let one = size(&line(0, 1));
        let idx = RecentRequests::new(1_000_000, one * 10);
        for i in 0..10_000 {
            idx.insert(line(i, i as u128 + 1));
        }
        let (n, bytes) = idx.usage();
        assert!(n <= 10 && bytes <= one * 10, "{n} entries, {bytes} bytes");
        assert_eq!(idx.lookup("req-9999").len(), 1);
    }
}
