//! OpenMetrics exemplars `{trace_id="…",span_id="…"}` linking a latency observation or a request
//! count to its trace. Held as raw bytes (`Copy`, no allocation per observation) and hex-encoded
//! only when scraped.

use opentelemetry::trace::SpanContext;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// A sampled span's IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceExemplar {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl TraceExemplar {
    /// The exemplar for a span, if it is sampled (an exemplar must point at a stored trace).
    pub fn of(sc: &SpanContext) -> Option<Self> {
        (sc.is_valid() && sc.is_sampled()).then(|| Self {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
        })
    }
}

impl EncodeLabelSet for TraceExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (mut trace, mut span) = ([0u8; 32], [0u8; 16]);
        super::trace::hex_into(&mut trace, &self.trace_id);
        super::trace::hex_into(&mut span, &self.span_id);
        let trace = std::str::from_utf8(&trace).map_err(|_| std::fmt::Error)?;
        let span = std::str::from_utf8(&span).map_err(|_| std::fmt::Error)?;
        [("trace_id", trace), ("span_id", span)].encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn only_sampled_spans_become_exemplars_and_encode_as_hex() {
        let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID);
        let s = SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID);
        let sampled = SpanContext::new(t, s, TraceFlags::SAMPLED, false, TraceState::default());
        let unsampled = SpanContext::new(t, s, TraceFlags::default(), false, TraceState::default());
        assert!(TraceExemplar::of(&unsampled).is_none());
        let e = TraceExemplar::of(&sampled).unwrap_or_else(|| unreachable!());
        let mut trace = [0u8; 32];
        crate::trace::hex_into(&mut trace, &e.trace_id);
        assert_eq!(&trace, b"4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
