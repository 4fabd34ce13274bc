//! W3C Trace Context: parse an incoming `traceparent` so the access log can carry its IDs; write
//! IDs as hex; and splitmix64, the mixer behind generated span IDs, the split's hashes and
//! sampling draws (request IDs use a keyed hash instead: they must not be predictable).

/// splitmix64's increment (the golden ratio): a Weyl sequence stepping by it, mixed by [`mix`],
/// is splitmix64.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's finalizer: a bijective 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The IDs of a valid `traceparent` header, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 hex chars.
    pub trace_id: String,
    /// 16 hex chars: the caller's span.
    pub span_id: String,
    /// Trace flags byte.
    pub flags: u8,
}

/// Parse `version-traceid-spanid-flags`; `None` for anything the spec says to ignore.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace_id, 32)
        || !lower_hex(span_id, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(TraceParent {
        trace_id: trace_id.to_string(),
        span_id: span_id.to_string(),
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

/// Write `bytes` as lowercase hex into `out` (two digits per byte; `out` is twice as long).
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// The `traceparent` value (version 00) for these IDs and flags, formatted without `fmt`.
pub fn traceparent_bytes(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut out[3..35], &trace_id);
    hex_into(&mut out[36..52], &span_id);
    hex_into(&mut out[53..55], &[flags]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_bytes_match_the_formatted_header() {
        let trace = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128;
        let span = 0x00f0_67aa_0ba9_02b7u64;
        for flags in [0u8, 1, 0xab] {
            let ours = traceparent_bytes(trace.to_be_bytes(), span.to_be_bytes(), flags);
            assert_eq!(
                std::str::from_utf8(&ours).ok(),
                Some(format!("00-{trace:032x}-{span:016x}-{flags:02x}").as_str())
            );
        }
        let mut four = [0u8; 4];
        hex_into(&mut four, &[0x0f, 0xa3]);
        assert_eq!(&four, b"0fa3");
    }

    #[test]
    fn parses_valid_and_rejects_invalid() {
        let tp = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            tp,
            Some(TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "00f067aa0ba902b7".into(),
                flags: 1
            })
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future")
                .is_some()
        );
    }
}
