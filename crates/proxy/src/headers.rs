//! Header plumbing a proxy owes both peers: hop-by-hop headers (and those named in
//! `Connection`) removed in both directions, and `x-forwarded-*` added.

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING,
    UPGRADE,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const TRAILER: HeaderName = HeaderName::from_static("trailer");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Why a request cannot be proxied without ambiguity, if it cannot: a path without a canonical
/// form (an escape a server could read as another path), a `CONNECT` or
/// asterisk-form (`*`) target, more than one `Host`, or a header name that a server which
/// reads `_` as `-` would take for `Content-Length` or `Transfer-Encoding` (a second, hidden
/// framing).
pub fn refusal<B>(req: &http::Request<B>) -> Option<&'static str> {
    if let Some(refused) = req.extensions().get::<super::resolve::PathRefused>() {
        return Some(refused.0);
    }
    if req.method() == http::Method::CONNECT {
        return Some("CONNECT is not proxied");
    }
    if req.uri().path() == "*" {
        return Some("an asterisk-form target is not proxied");
    }
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        return Some("more than one Host header");
    }
    let disguised = req.headers().keys().any(|name| {
        let n = name.as_str();
        n.contains('_')
            && ["content-length", "transfer-encoding"].iter().any(|m| {
                n.len() == m.len()
                    && n.bytes()
                        .zip(m.bytes())
                        .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
            })
    });
    disguised.then_some("a header name that reads as Content-Length or Transfer-Encoding")
}

/// Headers a `Connection` header can never remove: the target, the framing and what the
/// sidecar itself stamps or forwards (`Connection: host` or `Connection: x-model-version`
/// would otherwise strip them after they were set).
fn end_to_end(n: &HeaderName) -> bool {
    n == HOST
        || n == CONTENT_LENGTH
        || n == CONTENT_TYPE
        || n == TE
        || n == X_FORWARDED_FOR
        || n == X_FORWARDED_PROTO
        || n == "traceparent"
        || n == "tracestate"
}

/// Remove hop-by-hop headers, and those `Connection` names unless they are end to end or
/// `stamped` (the configured stamp headers). `TE: trailers` survives (gRPC needs it end to
/// end); any other TE value is dropped.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, stamped: impl Fn(&HeaderName) -> bool) {
    // Most messages carry none: one scan of the names instead of seven removals.
    let hop = |n: &HeaderName| {
        n == CONNECTION
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
            || n == TRAILER
            || n == TRANSFER_ENCODING
            || n == UPGRADE
            || n == TE
    };
    if !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !end_to_end(&name) && !stamped(&name) {
            headers.remove(&name);
        }
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    let te_trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(TE);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The client's IP as a header value (formatted once per connection).
pub fn ip_value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Append the client (`ip`, from [`ip_value`]) to `x-forwarded-for` and set
/// `x-forwarded-proto` to the client connection's scheme (kept from trusted callers).
pub fn add_forwarded(headers: &mut HeaderMap, ip: &HeaderValue, trusted: bool, tls: bool) {
    let prev = headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|_| trusted);
    let xff = match (prev, ip.to_str()) {
        (Some(prev), Ok(ip)) => HeaderValue::from_str(&format!("{prev}, {ip}")).ok(),
        _ => Some(ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        let scheme = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(CONNECTION),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn connection_cannot_name_the_target_the_framing_or_a_stamp() {
        let mut h = map(&[
            (
                "connection",
                "Host, X-Model-Version, x-model-name, content-length, traceparent, x-other",
            ),
            ("host", "model:8081"),
            ("x-model-version", "2"),
            ("x-model-name", "churn"),
            ("content-length", "3"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-other", "1"),
        ]);
        remove_hop_by_hop(&mut h, |n| n == "x-model-version" || n == "x-model-name");
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        let want = [
            "content-length",
            "host",
            "traceparent",
            "x-model-name",
            "x-model-version",
        ];
        assert_eq!(names, want);
    }

    #[test]
    fn removes_standard_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip, trailers"),
            ("content-type", "application/json"),
        ]);
        remove_hop_by_hop(&mut h, |_| false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["content-type", "te"]);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip")]);
        remove_hop_by_hop(&mut h, |_| false);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_is_replaced_unless_trusted() {
        let client: SocketAddr = "10.1.2.3:5555".parse().unwrap_or_else(|_| unreachable!());
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(&mut h, &ip_value(client), false, false);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(&mut h, &ip_value(client), true, false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
