//! Percent-encoding: one encoder per use, one decoder, one query-string reader.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`): safe in a path
/// segment and in a query value.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// gRPC's `grpc-message`: everything outside printable ASCII, and `%` itself.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Percent-encode a path segment or query value.
pub fn component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Percent-encode a `grpc-message` trailer value.
pub fn grpc_message(s: &str) -> String {
    utf8_percent_encode(s, GRPC_MESSAGE).to_string()
}

/// `%XX` escapes decoded; anything else kept as it is.
pub fn decode(s: &str) -> Cow<'_, [u8]> {
    percent_encoding::percent_decode_str(s).into()
}

/// The decoded value of `key` in a query string (`application/x-www-form-urlencoded`: `%XX`
/// and `+` decoded), the first one if it repeats.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A query string of `pairs`, encoded as browsers and Python's `urlencode` do.
pub fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_keep_only_unreserved_characters() {
        assert_eq!(
            component("a b/c?d=e&f~g.h_i-j"),
            "a%20b%2Fc%3Fd%3De%26f~g.h_i-j"
        );
        assert_eq!(component("é"), "%C3%A9");
        assert_eq!(grpc_message("a%b\n é"), "a%25b%0A %C3%A9");
    }

    #[test]
    fn queries_decode_as_browsers_and_urlencode_write_them() {
        // Python: urlencode({"from": "2026-11-26T10:42:00+00:00", "q": "a b"})
        let q = "from=2026-11-26T10%3A42%3A00%2B00%3A00&q=a+b&q=second";
        assert_eq!(
            query_param(Some(q), "from").as_deref(),
            Some("2026-11-26T10:42:00+00:00")
        );
        assert_eq!(query_param(Some(q), "q").as_deref(), Some("a b"));
        assert_eq!(query_param(Some(q), "to"), None);
        assert_eq!(query_param(None, "q"), None);
        let written = query([("from", "2026-11-26T10:42:00+00:00"), ("q", "a b")]);
        assert_eq!(written, "from=2026-11-26T10%3A42%3A00%2B00%3A00&q=a+b");
        assert_eq!(
            query_param(Some(&written), "from").as_deref(),
            Some("2026-11-26T10:42:00+00:00")
        );
        assert_eq!(&*decode("a%20b%zz%4"), b"a b%zz%4");
    }
}
