//! One canonical request path: the path the sidecar routes, resolves, enforces and inspects is
//! the path it forwards, and the path a model server that percent-decodes its paths (uvicorn
//! and Starlette, MLServer's stack) acts on.
//!
//! RFC 3986 §6.2.2: escapes of characters that may stand in a path as they are (unreserved,
//! sub-delimiters, `:` and `@`) are decoded, the others keep their escape with upper-case hex;
//! dot segments are removed (§5.2.4). An escape that a server would decode into a different
//! path structure (`%2F`, `%5C`, `%3F`, `%23`, `%25`), into a control character, or into a
//! visible character that cannot stand in a path as it is, is refused: no canonical form
//! means the same thing to the sidecar and to every server behind it.

use std::borrow::Cow;

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// An escape a server could read as a different path.
    AmbiguousEscape,
}

impl PathError {
    /// The reason given to the client (in a 400) and in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::MalformedEscape => "a malformed percent-escape in the path",
            PathError::AmbiguousEscape => {
                "a percent-escape in the path that a server could read as another path"
            }
        }
    }
}

/// What an escaped byte becomes in the canonical form.
enum Escaped {
    /// Written as the character itself.
    Decode,
    /// Kept as `%XX`, upper-case.
    Keep,
    /// No canonical form.
    Refuse,
}

fn escaped(b: u8) -> Escaped {
    match b {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Escaped::Decode,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':'
        | b'@' => Escaped::Decode,
        // Non-ASCII (UTF-8 of a name) and the space: never part of a model name or version
        // (visible ASCII), so matching on the escape is exact.
        b' ' | 0x80..=0xff => Escaped::Keep,
        _ => Escaped::Refuse,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The canonical form of `path` (an origin-form path, without its query), borrowed when it is
/// canonical already, the case of nearly every request: one scan for `%` and dot segments.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    let dotted = has_dot_segment(bytes);
    if !dotted && !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Copy up to the next escape in one piece (paths are ASCII from `http::Uri`, but a
            // `&str` is all this function asks for).
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'%')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::MalformedEscape);
        };
        let decoded = hi << 4 | lo;
        match escaped(decoded) {
            Escaped::Decode => out.push(char::from(decoded)),
            Escaped::Keep => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(hi)]));
                out.push(char::from(HEX[usize::from(lo)]));
            }
            Escaped::Refuse => return Err(PathError::AmbiguousEscape),
        }
        i += 3;
    }
    if has_dot_segment(out.as_bytes()) {
        out = remove_dot_segments(&out);
    }
    Ok(Cow::Owned(out))
}

/// Whether a segment of `path` is `.` or `..`.
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/')
        .any(|segment| segment == b"." || segment == b"..")
}

/// RFC 3986 §5.2.4, for an absolute path: `.` segments dropped, `..` removes the segment
/// before it (never above the root); a trailing `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." | ".." => {
                if segment == ".." {
                    kept.pop();
                }
                if i == last {
                    kept.push("");
                }
            }
            s => kept.push(s),
        }
    }
    format!("/{}", kept.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(path: &str) -> Result<String, PathError> {
        canonical(path).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/v2/models/m/infer",
            "/v1/chat/completions",
            "/a.b/.c/d..",
            "",
        ] {
            assert!(
                matches!(canonical(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p}"
            );
        }
    }

    #[test]
    fn unreserved_and_sub_delimiter_escapes_are_decoded() {
        assert_eq!(
            c("/v2/models/m/versions/%32/infer"),
            Ok("/v2/models/m/versions/2/infer".into())
        );
        assert_eq!(c("/v2/models/m/%69nfer"), Ok("/v2/models/m/infer".into()));
        assert_eq!(c("/%7e%41%2d%5F%2E"), Ok("/~A-_.".into()));
        assert_eq!(c("/a%3Ab%40c%2Bd%21"), Ok("/a:b@c+d!".into()));
    }

    #[test]
    fn other_escapes_keep_upper_case_hex() {
        assert_eq!(c("/a%20b/%c3%a9"), Ok("/a%20b/%C3%A9".into()));
    }

    #[test]
    fn escapes_a_server_could_read_as_another_path_are_refused() {
        for p in [
            "/v2/models/a%2Fb/infer",
            "/v2/models/a%2fb/infer",
            "/a%5Cb",
            "/a%3Fb",
            "/a%23b",
            "/a%2541",
            "/a%00b",
            "/a%0Ab",
            "/a%7Fb",
            "/a%7Cb",
            "/a%22b",
        ] {
            assert_eq!(c(p), Err(PathError::AmbiguousEscape), "{p}");
        }
        for p in ["/a%", "/a%4", "/a%4g", "/a%%41"] {
            assert_eq!(c(p), Err(PathError::MalformedEscape), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        // RFC 3986 §5.4 examples, as absolute paths.
        assert_eq!(c("/a/b/c/./../../g"), Ok("/a/g".into()));
        assert_eq!(c("/mid/content=5/../6"), Ok("/mid/6".into()));
        assert_eq!(c("/../a"), Ok("/a".into()));
        assert_eq!(c("/a/.."), Ok("/".into()));
        assert_eq!(c("/a/."), Ok("/a/".into()));
        assert_eq!(c("/a/b/.."), Ok("/a/".into()));
        assert_eq!(
            c("/v2/models/other/../m/versions/2/infer"),
            Ok("/v2/models/m/versions/2/infer".into())
        );
        // Encoded dots are dots.
        assert_eq!(
            c("/v2/models/x/%2e%2E/m/infer"),
            Ok("/v2/models/m/infer".into())
        );
        assert_eq!(
            c("/v2/models/m/versions/2/%2e/infer"),
            Ok("/v2/models/m/versions/2/infer".into())
        );
    }

    proptest::proptest! {
        /// The canonical form is canonical: a second pass changes nothing.
        #[test]
        fn canonical_is_idempotent(path in "/[a-zA-Z0-9%./:@!$&'()*+,;=~_ -]{0,40}") {
            if let Ok(once) = canonical(&path) {
                let twice = canonical(&once).map(Cow::into_owned);
                proptest::prop_assert_eq!(twice, Ok(once.clone().into_owned()), "{}", path);
            }
        }
    }
}
