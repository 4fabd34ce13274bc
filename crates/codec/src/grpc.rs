//! gRPC status codes: read from a `grpc-status` value, and classed as HTTP statuses are, so a gRPC
//! call (always HTTP 200) counts in the same status classes, error rates and verdicts as a REST
//! call. The mapping is Google's (`google/rpc/code.proto`, as grpc-gateway applies it): a code
//! the client caused is a 4xx, one the server caused a 5xx.

/// `OK`.
pub const OK: u16 = 0;

/// Whether a `content-type` is gRPC's: `application/grpc`, `application/grpc+proto` and the
/// like, with or without parameters; not `application/grpc-web*`, whose status is in the body.
pub fn is_grpc(content_type: &[u8]) -> bool {
    let Some(rest) = content_type.strip_prefix(b"application/grpc") else {
        return false;
    };
    matches!(rest.first(), None | Some(b'+' | b';' | b' '))
}

/// The code of a `grpc-status` value: ASCII digits, at most 65535; `None` for anything else.
pub fn parse(value: &[u8]) -> Option<u16> {
    if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The HTTP status a gRPC code stands for. Codes beyond the 17 defined are `UNKNOWN`'s (500), as
/// gRPC clients treat them.
pub fn http_status(code: u16) -> u16 {
    match code {
        0 => 200,  // OK
        1 => 499,  // CANCELLED: the client went away
        3 => 400,  // INVALID_ARGUMENT
        4 => 504,  // DEADLINE_EXCEEDED
        5 => 404,  // NOT_FOUND
        6 => 409,  // ALREADY_EXISTS
        7 => 403,  // PERMISSION_DENIED
        8 => 429,  // RESOURCE_EXHAUSTED
        9 => 400,  // FAILED_PRECONDITION
        10 => 409, // ABORTED
        11 => 400, // OUT_OF_RANGE
        12 => 501, // UNIMPLEMENTED
        14 => 503, // UNAVAILABLE
        16 => 401, // UNAUTHENTICATED
        _ => 500,  // UNKNOWN, INTERNAL, DATA_LOSS, and codes not defined
    }
}

/// Whether the server caused it (a 5xx): `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`,
/// `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, the same set OpenTelemetry marks as a server span's
/// error.
pub fn server_fault(code: u16) -> bool {
    http_status(code) >= 500
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_but_not_grpc_web() {
        for yes in [
            &b"application/grpc"[..],
            b"application/grpc+proto",
            b"application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(yes), "{yes:?}");
        }
        for no in [
            &b"application/grpc-web"[..],
            b"application/grpc-web+proto",
            b"application/json",
            b"",
        ] {
            assert!(!is_grpc(no), "{no:?}");
        }
    }

    #[test]
    fn codes_parse_from_digits_only() {
        assert_eq!(parse(b"0"), Some(0));
        assert_eq!(parse(b"14"), Some(14));
        assert_eq!(parse(b"65535"), Some(65535));
        for bad in [&b""[..], b"-1", b" 5", b"5 ", b"1a", b"65536", b"999999"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn client_caused_codes_are_4xx_and_server_caused_ones_5xx() {
        let server: Vec<u16> = (0..=17).filter(|&c| server_fault(c)).collect();
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, and 17
        // (not defined: UNKNOWN).
        assert_eq!(server, [2, 4, 12, 13, 14, 15, 17]);
        assert_eq!(http_status(OK), 200);
        for client in [1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert!((400..500).contains(&http_status(client)), "{client}");
        }
    }
}
