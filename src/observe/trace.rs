//! W3C Trace Context: parse an incoming `traceparent` so the access log can carry its IDs.

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

/// Write `v` as lowercase hex into `out` (two digits per byte, most significant first; `out`
/// takes the low `out.len() / 2` bytes of `v`).
pub fn hex_into(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((v >> (4 * (n - 1 - i))) & 0xf) as usize];
    }
}

/// The `traceparent` value (version 00) for these IDs and flags, formatted without `fmt`.
pub fn traceparent_bytes(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let hi = u64::from_be_bytes(trace_id[..8].try_into().unwrap_or_default());
    let lo = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default());
    hex_into(&mut out[3..19], hi);
    hex_into(&mut out[19..35], lo);
    hex_into(&mut out[36..52], u64::from_be_bytes(span_id));
    hex_into(&mut out[53..55], u64::from(flags));
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
        let mut two = [0u8; 2];
        hex_into(&mut two, 0x1f3);
        assert_eq!(&two, b"f3");
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
