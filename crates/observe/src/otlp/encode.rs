//! The `ExportTraceServiceRequest` written straight from finished spans into one buffer:
//! protobuf's wire format by hand, opentelemetry-proto's field numbers (a differential test holds
//! the bytes to its generated messages).

use std::borrow::Borrow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};

use crate::spans::SpanRecord;

/// The instrumentation scope every span is written under.
const SCOPE_NAME: &str = "modelstamp";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        key(buf, field, LEN);
        varint(buf, v.len() as u64);
        buf.extend_from_slice(v);
    }
}

fn uint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A length-delimited sub-message written by `body` in place: one byte is reserved for its
/// length and the body is shifted only when the length needs more (messages ≥ 128 bytes).
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    sized_message(buf, field, 1, body);
}

/// [`message`] with `reserve` bytes held for the length prefix: sized to the usual length,
/// so the body moves only when the guess was wrong.
fn sized_message(buf: &mut Vec<u8>, field: u32, reserve: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + reserve, 0);
    body(buf);
    let len = buf.len() - at - reserve;
    let mut prefix = [0u8; 10];
    let mut width = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        prefix[width] = (v as u8) | 0x80;
        v >>= 7;
        width += 1;
    }
    prefix[width] = v as u8;
    width += 1;
    if width != reserve {
        let end = buf.len();
        if width > reserve {
            buf.resize(end + width - reserve, 0);
        }
        buf.copy_within(at + reserve..end, at + width);
        buf.truncate(at + width + len);
    }
    buf[at..at + width].copy_from_slice(&prefix[..width]);
}

fn any_value(buf: &mut Vec<u8>, v: &Value) {
    // A oneof member is written even when it holds its type's default (false, 0, "").
    match v {
        Value::String(s) => {
            key(buf, 1, LEN);
            varint(buf, s.as_str().len() as u64);
            buf.extend_from_slice(s.as_str().as_bytes());
        }
        Value::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            key(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Array(array) => message(buf, 5, |buf| match array {
            Array::Bool(vs) => vs.iter().for_each(|v| element(buf, &Value::Bool(*v))),
            Array::I64(vs) => vs.iter().for_each(|v| element(buf, &Value::I64(*v))),
            Array::F64(vs) => vs.iter().for_each(|v| element(buf, &Value::F64(*v))),
            Array::String(vs) => vs
                .iter()
                .for_each(|v| element(buf, &Value::String(v.clone()))),
            _ => {}
        }),
        // A value kind added to the API after this encoder: sent as an empty value.
        _ => {}
    }
}

/// One `ArrayValue.values` element.
fn element(buf: &mut Vec<u8>, v: &Value) {
    message(buf, 1, |buf| any_value(buf, v));
}

/// The bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The encoded length of a scalar `AnyValue`; `None` for arrays and unknown kinds.
fn scalar_len(v: &Value) -> Option<usize> {
    Some(match v {
        Value::String(s) => {
            let n = s.as_str().len();
            1 + varint_len(n as u64) + n
        }
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        _ => return None,
    })
}

/// A `KeyValue`. Scalars (nearly every attribute) have lengths known up front, so their
/// prefixes are written directly, with one reservation; arrays go through [`message`].
fn key_value(buf: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    let Some(any) = scalar_len(v) else {
        message(buf, field, |buf| {
            bytes_field(buf, 1, k.as_bytes());
            message(buf, 2, |buf| any_value(buf, v));
        });
        return;
    };
    key_value_head(buf, field, k, any);
    any_value(buf, v);
}

/// A `KeyValue` entry up to its value's body, which is `any` bytes long: room for the whole
/// entry, then its tag and length, the key, and the value's tag and length.
fn key_value_head(buf: &mut Vec<u8>, field: u32, k: &str, any: usize) {
    let kv = key_entry_len(k) + 1 + varint_len(any as u64) + any;
    buf.reserve(5 + varint_len(kv as u64) + kv);
    key(buf, field, LEN);
    varint(buf, kv as u64);
    bytes_field(buf, 1, k.as_bytes());
    key(buf, 2, LEN);
    varint(buf, any as u64);
}

fn attributes<'a>(buf: &mut Vec<u8>, field: u32, kvs: impl IntoIterator<Item = &'a KeyValue>) {
    for kv in kvs {
        key_value(buf, field, kv.key.as_str(), &kv.value);
    }
}

/// A span's own attributes, written as OTLP `Span.attributes` entries (field 9) as they are
/// set. A span carries one byte buffer instead of a vector of `KeyValue`s with an allocation per
/// owned string value, and the exporter copies the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    buf: Vec<u8>,
}

impl Attributes {
    /// Empty, with room for `bytes` of encoded attributes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// Any attribute.
    pub fn push(&mut self, kv: &KeyValue) {
        key_value(&mut self.buf, 9, kv.key.as_str(), &kv.value);
    }

    /// A string attribute.
    pub fn str(&mut self, key: &str, value: &str) {
        let (k, n) = (key.len(), value.len());
        // The usual entry: every length fits one varint byte, so the prefixes are constants
        // but for those bytes.
        let kv = k + n + 6;
        if k > 0 && kv < 0x80 {
            let buf = &mut self.buf;
            buf.reserve(2 + kv);
            buf.extend_from_slice(&[ATTRIBUTE_TAG, kv as u8, KEY_TAG, k as u8]);
            buf.extend_from_slice(key.as_bytes());
            buf.extend_from_slice(&[VALUE_TAG, (n + 2) as u8, STRING_TAG, n as u8]);
            buf.extend_from_slice(value.as_bytes());
            return;
        }
        self.str_parts(key, &[value]);
    }

    /// A string attribute whose value is `parts` joined, written without building the string.
    pub fn str_parts(&mut self, key: &str, parts: &[&str]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        let any = 1 + varint_len(n as u64) + n;
        let buf = &mut self.buf;
        key_value_head(buf, 9, key, any);
        self::key(buf, 1, LEN);
        varint(buf, n as u64);
        for p in parts {
            buf.extend_from_slice(p.as_bytes());
        }
    }

    /// An integer attribute.
    pub fn i64(&mut self, key: &str, value: i64) {
        key_value(&mut self.buf, 9, key, &Value::I64(value));
    }

    /// Whether none was set.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded entries.
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.buf
    }
}

impl From<&[KeyValue]> for Attributes {
    fn from(kvs: &[KeyValue]) -> Self {
        Self {
            buf: span_attributes(kvs),
        }
    }
}

/// `Span.attributes`, `KeyValue.key`, `KeyValue.value` and `AnyValue.string_value` tags, all
/// length-delimited.
const ATTRIBUTE_TAG: u8 = (9 << 3) | LEN;
const KEY_TAG: u8 = (1 << 3) | LEN;
const VALUE_TAG: u8 = (2 << 3) | LEN;
const STRING_TAG: u8 = (1 << 3) | LEN;

/// The bytes of a `KeyValue.key` field (none for an empty key).
fn key_entry_len(k: &str) -> usize {
    if k.is_empty() {
        0
    } else {
        1 + varint_len(k.len() as u64) + k.len()
    }
}

/// `attributes` as they appear in a `Span` message (field 9): what [`super::spans::SharedAttributes`]
/// keeps, so spans that share them copy the bytes instead of encoding them again.
pub(crate) fn span_attributes(kvs: &[KeyValue]) -> Vec<u8> {
    let mut buf = Vec::new();
    attributes(&mut buf, 9, kvs);
    buf
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// OTLP span flags: the W3C flags plus "whether the parent is remote is known" (bit 8) and
/// "the parent is remote" (bit 9).
fn span_flags(trace_flags: u8, parent_is_remote: bool) -> u32 {
    u32::from(trace_flags) | 0x100 | if parent_is_remote { 0x200 } else { 0 }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn span(buf: &mut Vec<u8>, s: &SpanRecord) {
    let sc = &s.context;
    bytes_field(buf, 1, &sc.trace_id().to_bytes());
    bytes_field(buf, 2, &sc.span_id().to_bytes());
    bytes_field(buf, 3, sc.trace_state().header().as_bytes());
    if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes_field(buf, 4, &s.parent_span_id.to_bytes());
    }
    bytes_field(buf, 5, s.name.as_bytes());
    uint_field(buf, 6, kind(&s.kind));
    fixed64_field(buf, 7, nanos(s.start));
    fixed64_field(buf, 8, nanos(s.end));
    if let Some(shared) = &s.shared {
        buf.extend_from_slice(shared.encoded());
    }
    buf.extend_from_slice(s.attributes.encoded());
    for e in &s.events {
        message(buf, 11, |buf| {
            fixed64_field(buf, 1, nanos(e.timestamp));
            bytes_field(buf, 2, e.name.as_bytes());
            attributes(buf, 3, &e.attributes);
            uint_field(buf, 4, u64::from(e.dropped_attributes_count));
        });
    }
    message(buf, 15, |buf| {
        let (code, description) = match &s.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        bytes_field(buf, 2, description.as_bytes());
        uint_field(buf, 3, code);
    });
    key(buf, 16, FIXED32);
    buf.extend_from_slice(&span_flags(sc.trace_flags().to_u8(), s.parent_is_remote).to_le_bytes());
}

/// Writes `ExportTraceServiceRequest`s for one resource.
#[derive(Debug)]
pub struct Encoder {
    /// The encoded `Resource` message body.
    resource: Vec<u8>,
}

impl Encoder {
    /// An encoder for spans of the resource described by `attributes`.
    pub fn new(attributes: &[KeyValue]) -> Self {
        let mut buf = Vec::new();
        for kv in attributes {
            key_value(&mut buf, 1, kv.key.as_str(), &kv.value);
        }
        Self { resource: buf }
    }

    /// Append one request carrying `spans` (one resource, one scope) to `out`.
    pub fn encode<S: Borrow<SpanRecord>>(&self, spans: &[S], out: &mut Vec<u8>) {
        // ResourceSpans and ScopeSpans of a batch take 3-byte lengths (up to 2 MiB), spans 2.
        sized_message(out, 1, 3, |buf| {
            message(buf, 1, |buf| buf.extend_from_slice(&self.resource));
            if !spans.is_empty() {
                sized_message(buf, 2, 3, |buf| {
                    message(buf, 1, |buf| {
                        bytes_field(buf, 1, SCOPE_NAME.as_bytes());
                        bytes_field(buf, 2, SCOPE_VERSION.as_bytes());
                    });
                    for s in spans {
                        sized_message(buf, 2, 2, |buf| span(buf, s.borrow()));
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn varints_and_long_messages_take_the_right_length_prefix() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(varint_len(v), b.len(), "{v}");
        }
        for reserve in 1..=3 {
            for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_152] {
                let mut buf = b"head".to_vec();
                let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                sized_message(&mut buf, 1, reserve, |b| b.extend_from_slice(&body));
                let mut prefix = Vec::new();
                varint(&mut prefix, len as u64);
                assert_eq!(&buf[..5], b"head\x0a");
                assert_eq!(&buf[5..5 + prefix.len()], &prefix[..], "{reserve} {len}");
                assert_eq!(&buf[5 + prefix.len()..], &body[..], "{reserve} {len}");
            }
        }
    }
    /// Spans, each with every attribute it carries (shared, then its own) as `KeyValue`s.
    fn batch() -> Vec<(SpanRecord, Vec<KeyValue>)> {
        use opentelemetry::trace::{
            Event, SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState,
        };
        use std::borrow::Cow;
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        let ctx = |t: u128, s: u64, remote| {
            SpanContext::new(
                TraceId::from(t),
                SpanId::from(s),
                TraceFlags::SAMPLED,
                remote,
                TraceState::from_key_value([("vendor", "v1")]).unwrap_or_default(),
            )
        };
        let attrs = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.response.status_code", 200i64),
            KeyValue::new("negative", -7i64),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("flag", false),
            KeyValue::new("empty", ""),
            KeyValue::new("zero", 0i64),
            KeyValue::new("long", "x".repeat(300)),
            KeyValue::new(
                "ml.list",
                Value::Array(Array::String(vec!["a".into(), "b".into()])),
            ),
            KeyValue::new("ml.ints", Value::Array(Array::I64(vec![1, -2]))),
            KeyValue::new("ml.floats", Value::Array(Array::F64(vec![0.5]))),
            KeyValue::new("ml.bools", Value::Array(Array::Bool(vec![true, false]))),
        ];
        // What the typed setters write, and what they stand for.
        let mut own = Attributes::from(&attrs[..]);
        own.str("url.path", "/v2/models/churn/infer");
        own.str("long.str", &"z".repeat(130));
        own.str_parts(
            "url.full",
            &["http://", "10.0.0.1:8080", "/v2/models/churn/infer"],
        );
        own.str_parts("joined", &["x".repeat(100).as_str(), &"y".repeat(100)]);
        own.i64("server.port", 8080);
        let mut all = attrs.clone();
        all.extend([
            KeyValue::new("url.path", "/v2/models/churn/infer"),
            KeyValue::new("long.str", "z".repeat(130)),
            KeyValue::new("url.full", "http://10.0.0.1:8080/v2/models/churn/infer"),
            KeyValue::new("joined", format!("{}{}", "x".repeat(100), "y".repeat(100))),
            KeyValue::new("server.port", 8080i64),
        ]);
        let span = |context, parent: u64, remote, kind, name: &'static str| SpanRecord {
            context,
            parent_span_id: SpanId::from(parent),
            parent_is_remote: remote,
            kind,
            name: Cow::Borrowed(name),
            start: t0,
            end: t0 + Duration::from_micros(850),
            shared: None,
            attributes: own.clone(),
            events: Vec::new(),
            status: Status::Unset,
        };
        let mut server = span(
            ctx(1, 2, false),
            9,
            true,
            SpanKind::Server,
            "POST /v2/models/{model}/infer",
        );
        server.status = Status::error("upstream_5xx");
        // Shared attributes are written (pre-encoded) before the span's own.
        server.shared = Some(std::sync::Arc::new(crate::spans::SharedAttributes::new(
            vec![
                KeyValue::new("ml.model.name", "churn"),
                KeyValue::new(
                    "ml.model.version",
                    opentelemetry::StringValue::from(std::sync::Arc::<str>::from("2")),
                ),
            ],
        )));
        let client = span(ctx(1, 3, false), 2, false, SpanKind::Client, "POST");
        let mut event = span(
            ctx(1, 4, false),
            2,
            false,
            SpanKind::Internal,
            "modelstamp.data_quality",
        );
        event.events.push(Event::new(
            "modelstamp.data_quality",
            t0,
            attrs[..3].to_vec(),
            1,
        ));
        event.status = Status::Ok;
        let mut before_epoch = span(ctx(7, 8, false), 0, false, SpanKind::Producer, "");
        before_epoch.start = UNIX_EPOCH;
        let shared = server.shared.as_ref().map(|s| s.attributes().to_vec());
        let server_all = shared.unwrap_or_default().into_iter().chain(all.clone());
        vec![
            (server, server_all.collect()),
            (client, all.clone()),
            (event, all.clone()),
            (before_epoch, all),
        ]
    }
    /// The SDK's span data for one of ours: what opentelemetry-proto's transform takes.
    fn sdk_span(
        (s, attributes): &(SpanRecord, Vec<KeyValue>),
    ) -> opentelemetry_sdk::trace::SpanData {
        use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
        let mut events = SpanEvents::default();
        events.events = s.events.clone();
        SpanData {
            span_context: s.context.clone(),
            parent_span_id: s.parent_span_id,
            parent_span_is_remote: s.parent_is_remote,
            span_kind: s.kind.clone(),
            name: s.name.clone(),
            start_time: s.start,
            end_time: s.end,
            attributes: attributes.clone(),
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: s.status.clone(),
            instrumentation_scope: opentelemetry::InstrumentationScope::builder(SCOPE_NAME)
                .with_version(SCOPE_VERSION)
                .build(),
        }
    }
    #[test]
    fn requests_decode_to_what_opentelemetry_proto_builds_from_the_same_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
        use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
        use prost::Message as _;
        let attributes = [
            KeyValue::new("service.name", "modelstamp"),
            KeyValue::new("service.version", "0.1.0"),
            KeyValue::new("k8s.pod.name", "churn-7f9c"),
        ];
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(attributes.clone())
            .build();
        // The SDK's resource is a hash map: compare resource attributes in key order.
        let sorted = |mut r: ExportTraceServiceRequest| {
            for rs in &mut r.resource_spans {
                if let Some(res) = &mut rs.resource {
                    res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            r
        };
        for spans in [batch(), batch()[1..2].to_vec()] {
            let mut ours = Vec::new();
            let records: Vec<&SpanRecord> = spans.iter().map(|(s, _)| s).collect();
            Encoder::new(&attributes).encode(&records, &mut ours);
            let decoded = ExportTraceServiceRequest::decode(&ours[..]).map(sorted);
            let expected = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(
                    spans.iter().map(sdk_span).collect(),
                    &ResourceAttributesWithSchema::from(&resource),
                ),
            };
            assert_eq!(decoded.ok(), Some(sorted(expected)));
        }
    }
}
