//! A bounded index of recent requests (their access-log lines), by trace ID and request ID, so
//! a responder holding either gets to the model version and lineage record in one step. Fed by
//! the access-log thread (never the request path); capped by entry count and by approximate
//! bytes, oldest evicted first. Lines are kept as compact entries (what consecutive requests
//! share is held once) and given back as the lines they were.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use opentelemetry::trace::{SpanId, TraceId};

use super::access_log::{AccessLine, owned_path};
use super::trace::hex_into;

/// What consecutive requests share: kept once and referenced by every entry that has it.
#[derive(PartialEq)]
struct Shared {
    route: Option<Arc<str>>,
    model: Arc<str>,
    version: Arc<str>,
    lineage_id: Arc<str>,
    method: Method,
    /// A compact copy: the line's path is a slice of hyper's read buffer, which the index must
    /// not pin.
    path: PathAndQuery,
    protocol: &'static str,
}

/// Request IDs this sidecar generates are 32 lowercase hex digits: kept as their value.
enum RequestId {
    Hex([u8; 16]),
    Other(Box<[u8]>),
}

/// The 16 bytes written as 32 lowercase hex digits, the inverse of [`hex_into`] (every
/// request's ID goes through here: one pass, no parsing library).
fn hex_id(b: &[u8]) -> Option<[u8; 16]> {
    if b.len() != 32 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

impl RequestId {
    fn new(v: &HeaderValue) -> Self {
        match hex_id(v.as_bytes()) {
            Some(id) => Self::Hex(id),
            None => Self::Other(v.as_bytes().into()),
        }
    }

    fn header(&self) -> HeaderValue {
        let v = match self {
            Self::Hex(id) => {
                let mut hex = [0u8; 32];
                hex_into(&mut hex, id);
                HeaderValue::from_bytes(&hex)
            }
            Self::Other(b) => HeaderValue::from_bytes(b),
        };
        // Both were valid header values when they came in.
        v.unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn is(&self, id: &[u8]) -> bool {
        match self {
            Self::Hex(v) => hex_id(id) == Some(*v),
            Self::Other(b) => **b == *id,
        }
    }

    fn heap(&self) -> usize {
        match self {
            Self::Hex(_) => 0,
            Self::Other(b) => b.len(),
        }
    }
}

/// One request: about 190 bytes and, in the common case, no allocation of its own (an
/// `AccessLine` kept whole cost about 520 bytes in three allocations).
struct Entry {
    time: SystemTime,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    has_ids: (bool, bool),
    shared: Arc<Shared>,
    request_id: RequestId,
    reported_version: Option<Box<str>>,
    client: SocketAddr,
    status: u16,
    upstream_status: Option<u16>,
    grpc_status: Option<u16>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    error: Option<&'static str>,
    /// What this entry added to the byte count (its share included when it created one).
    cost: u32,
}

impl Entry {
    fn line(&self) -> AccessLine {
        let s = &*self.shared;
        AccessLine {
            time: self.time,
            request_id: self.request_id.header(),
            trace_id: self.has_ids.0.then(|| TraceId::from_bytes(self.trace_id)),
            span_id: self.has_ids.1.then(|| SpanId::from_bytes(self.span_id)),
            route: s.route.clone(),
            model: s.model.clone(),
            version: s.version.clone(),
            lineage_id: s.lineage_id.clone(),
            reported_version: self.reported_version.as_deref().map(str::to_string),
            client: self.client,
            method: s.method.clone(),
            path: s.path.clone(),
            protocol: s.protocol,
            status: self.status,
            upstream_status: self.upstream_status,
            grpc_status: self.grpc_status,
            duration_ms: self.duration_ms,
            upstream_ms: self.upstream_ms,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error: self.error,
        }
    }
}

/// Shared parts recently used, checked before making a new one (a canary alternates between a
/// few).
const SHARED_CACHE: usize = 4;

/// Approximate cost of a shared part beyond its path (its allocation, the `Arc`s it holds).
const SHARED_OVERHEAD: usize = 160;

/// Entries oldest first. There is no map: inserting is a push (the access-log thread does it
/// for every request), and a lookup, an admin call, scans at most `traces.recent_requests`
/// entries (10,000 by default: tens of microseconds).
#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    shared: [Option<Arc<Shared>>; SHARED_CACHE],
    next_shared: usize,
}

impl Ring {
    /// The shared part equal to `wanted` (a compact copy of it if none is cached), and whether
    /// it is new.
    fn shared(&mut self, wanted: Shared) -> (Arc<Shared>, bool) {
        if let Some(hit) = self.shared.iter().flatten().find(|s| ***s == wanted) {
            return (hit.clone(), false);
        }
        let path = owned_path(&wanted.path);
        let made = Arc::new(Shared { path, ..wanted });
        self.shared[self.next_shared] = Some(made.clone());
        self.next_shared = (self.next_shared + 1) % SHARED_CACHE;
        (made, true)
    }
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
            // Room for every entry the caps allow, reserved once: growing by doubling would
            // copy the ring at each step and leave up to half of it unused but touched.
            ring: RwLock::new(Ring {
                entries: VecDeque::with_capacity(
                    max_entries.min(max_bytes / std::mem::size_of::<Entry>()) + 1,
                ),
                ..Ring::default()
            }),
            max_entries,
            max_bytes,
        }
    }

    /// Add a finished request, evicting the oldest beyond either cap.
    pub fn insert(&self, line: Box<AccessLine>) {
        if self.max_entries == 0 {
            return;
        }
        let line = *line;
        let request_id = RequestId::new(&line.request_id);
        let reported_version = line.reported_version.as_deref().map(Box::<str>::from);
        let own = std::mem::size_of::<Entry>()
            + request_id.heap()
            + reported_version.as_ref().map_or(0, |r| r.len());
        let wanted = Shared {
            route: line.route,
            model: line.model,
            version: line.version,
            lineage_id: line.lineage_id,
            method: line.method,
            path: line.path,
            protocol: line.protocol,
        };
        let mut ring = self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (shared, new) = ring.shared(wanted);
        let share = if new {
            SHARED_OVERHEAD + shared.path.as_str().len()
        } else {
            0
        };
        let cost = own + share;
        ring.bytes += cost;
        ring.entries.push_back(Entry {
            time: line.time,
            trace_id: line.trace_id.map_or([0; 16], TraceId::to_bytes),
            span_id: line.span_id.map_or([0; 8], SpanId::to_bytes),
            has_ids: (line.trace_id.is_some(), line.span_id.is_some()),
            shared,
            request_id,
            reported_version,
            client: line.client,
            status: line.status,
            upstream_status: line.upstream_status,
            grpc_status: line.grpc_status,
            duration_ms: line.duration_ms,
            upstream_ms: line.upstream_ms,
            bytes_in: line.bytes_in,
            bytes_out: line.bytes_out,
            error: line.error,
            cost: u32::try_from(cost).unwrap_or(u32::MAX),
        });
        while ring.entries.len() > self.max_entries || ring.bytes > self.max_bytes {
            let Some(old) = ring.entries.pop_front() else {
                break;
            };
            ring.bytes = ring.bytes.saturating_sub(old.cost as usize);
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
        if let Some(trace) = hex_id(id.as_bytes()) {
            let found: Vec<AccessLine> = ring
                .entries
                .iter()
                .filter(|e| e.has_ids.0 && e.trace_id == trace)
                .map(Entry::line)
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        // The latest request with this ID (a trusted caller may reuse one).
        ring.entries
            .iter()
            .rev()
            .find(|e| e.request_id.is(id.as_bytes()))
            .map(Entry::line)
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
            grpc_status: None,
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
    fn hex_ids_are_read_exactly() {
        assert_eq!(
            hex_id(b"0123456789abcdeffedcba9876543210"),
            Some(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128.to_be_bytes())
        );
        assert_eq!(hex_id(&[b'f'; 32]), Some([0xff; 16]));
        for bad in [
            &b"0123456789abcdeffedcba987654321"[..],
            b"0123456789abcdeffedcba98765432100",
            b"0123456789ABCDEFfedcba9876543210",
            b"0123456789abcdeffedcba987654321g",
            b"+123456789abcdeffedcba9876543210",
        ] {
            assert_eq!(hex_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_byte_cap_bounds_memory() {
        let cap = 10 * (std::mem::size_of::<Entry>() + "req-9999".len()) + SHARED_OVERHEAD;
        let idx = RecentRequests::new(1_000_000, cap);
        for i in 0..10_000 {
            idx.insert(line(i, i as u128 + 1));
        }
        let (n, bytes) = idx.usage();
        assert!(
            (9..=11).contains(&n) && bytes <= cap,
            "{n} entries, {bytes} bytes"
        );
        assert_eq!(idx.lookup("req-9999").len(), 1);
    }

    #[test]
    fn entries_are_compact_and_share_what_consecutive_requests_have_in_common() {
        assert!(
            std::mem::size_of::<Entry>() <= 192,
            "{}",
            std::mem::size_of::<Entry>()
        );
        let idx = RecentRequests::new(10_000, usize::MAX);
        for i in 0..10_000 {
            let mut l = line(i, i as u128 + 1);
            l.request_id = HeaderValue::from_str(&format!("{:032x}", i as u128 * 7919))
                .unwrap_or(HeaderValue::from_static("x"));
            if i % 2 == 1 {
                l.version = "2".into();
            }
            idx.insert(l);
        }
        let (n, bytes) = idx.usage();
        assert_eq!(n, 10_000);
        // Two versions alternating: two shared parts; generated request IDs held as values.
        assert_eq!(
            bytes,
            10_000 * std::mem::size_of::<Entry>() + 2 * (SHARED_OVERHEAD + 22)
        );
        let ring = idx
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = &ring.entries[0].shared;
        assert!(Arc::ptr_eq(first, &ring.entries[2].shared));
        assert!(!Arc::ptr_eq(first, &ring.entries[1].shared));
    }

    /// What comes out of the index is what went in, field for field.
    #[test]
    fn lookups_give_back_the_line_as_logged() {
        let mut lines = Vec::new();
        let mut a = line(1, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        a.request_id = HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c");
        a.reported_version = Some("3".into());
        a.client = "[2001:db8::1]:443"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        a.path = PathAndQuery::from_static("/v2/models/churn/infer?x=1&y=%20");
        a.error = Some("upstream_5xx");
        a.upstream_status = None;
        a.upstream_ms = None;
        a.method = Method::from_bytes(b"PURGE").unwrap_or(Method::GET);
        lines.push(a);
        let mut b = line(2, 0xbb);
        b.request_id = HeaderValue::from_static("0AF7651916CD43DD8448EB211C80319C");
        b.route = None;
        b.trace_id = None;
        b.span_id = None;
        lines.push(b);
        let mut c = line(3, 0xcc);
        c.request_id = HeaderValue::from_static("caller id: 42 ~");
        c.duration_ms = 0.1 + 0.2;
        c.bytes_out = u64::MAX;
        lines.push(c);
        // Not UTF-8: found by its trace only (lookups take text).
        let mut d = line(4, 0xdd);
        d.request_id =
            HeaderValue::from_bytes(b"caller-\xff").unwrap_or(HeaderValue::from_static("x"));
        let json = |l: &AccessLine| {
            let mut out = Vec::new();
            l.write_json(&mut out);
            String::from_utf8_lossy(&out).to_string()
        };
        let idx = RecentRequests::new(10, usize::MAX);
        for l in lines.iter().chain([&d]) {
            idx.insert(l.clone());
        }
        for l in &lines {
            let found = idx.lookup(&String::from_utf8_lossy(l.request_id.as_bytes()));
            assert_eq!(found.len(), 1, "{:?}", l.request_id);
            assert_eq!(json(&found[0]), json(l));
            assert_eq!(format!("{:?}", found[0]), format!("{l:?}"));
        }
        let by_trace = idx.lookup("4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(by_trace.len(), 1);
        assert_eq!(json(&by_trace[0]), json(&lines[0]));
        let by_trace = idx.lookup(&format!("{:032x}", 0xddu128));
        assert_eq!(by_trace.len(), 1);
        assert_eq!(by_trace[0].request_id.as_bytes(), b"caller-\xff");
    }
}
