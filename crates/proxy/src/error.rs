//! Proxy errors and the one function that maps each to the response the client gets.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use crate::observe::metrics::{RequestErrorKind, UpstreamErrorKind};

/// nginx's "client closed request".
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// What a client did wrong while sending its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// It went away (connection closed or stream reset) before the body ended.
    Aborted,
    /// The body broke HTTP framing (a bad chunk size or chunk delimiter).
    Malformed,
    /// It stopped sending for longer than `limits.body_read_timeout`.
    Timeout,
}

impl ClientFault {
    /// How a failed read of the client's body came about.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if c.is::<BodyReadTimeout>() {
                return Self::Timeout;
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::{InvalidData, InvalidInput};
                if matches!(io.kind(), InvalidData | InvalidInput) {
                    return Self::Malformed;
                }
            }
            if let Some(h) = c.downcast_ref::<hyper::Error>()
                && h.is_parse()
            {
                return Self::Malformed;
            }
            cause = c.source();
        }
        Self::Aborted
    }

    /// The `modelstamp_request_errors_total` kind.
    pub fn request_kind(self) -> RequestErrorKind {
        match self {
            Self::Aborted => RequestErrorKind::ClientAbort,
            Self::Malformed => RequestErrorKind::BodyMalformed,
            Self::Timeout => RequestErrorKind::BodyTimeout,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Aborted => "aborted by the client",
            Self::Malformed => "malformed",
            Self::Timeout => "stalled past limits.body_read_timeout",
        }
    }
}

/// The client sent no body bytes for `limits.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes for {0:?}")]
pub struct BodyReadTimeout(pub std::time::Duration);

/// Why the proxy answered instead of the model server.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// The request cannot be proxied without ambiguity.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Answers held for clients that do not read are over `limits.max_held_response_bytes`.
    #[error("overloaded: answers held for slow clients are over the limit")]
    Overloaded,
    /// The request body is over the limit.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// The client's body failed: it hung up, sent a malformed body, or stalled. Whatever the
    /// upstream did next is the client's doing, never the version's.
    #[error("request body {}: {source}", .fault.as_str())]
    ClientBody {
        /// What the client did.
        fault: ClientFault,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An `enforce` route found inputs that break the training schema.
    #[error("request violates the training schema of {model} version {version}")]
    SchemaViolation {
        /// Model.
        model: std::sync::Arc<str>,
        /// Version.
        version: std::sync::Arc<str>,
        /// The first violations.
        violations: Vec<crate::inspect::quality::Violation>,
        /// How many there are in all.
        total: usize,
    },
    /// The upstream exchange failed.
    #[error("upstream {}: {source}", .kind.as_str())]
    Upstream {
        /// What kind of failure.
        kind: UpstreamErrorKind,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ProxyError {
    /// The `error` field of the access log.
    pub fn kind_str(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BadRequest(_) => "bad_request",
            Self::Overloaded => "overloaded",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::SchemaViolation { .. } => "schema_violation",
            Self::ClientBody { fault, .. } => fault.request_kind().as_str(),
            Self::Upstream { kind, .. } => match kind {
                UpstreamErrorKind::Connect => "upstream_connect",
                UpstreamErrorKind::Timeout => "upstream_timeout",
                UpstreamErrorKind::Reset => "upstream_reset",
                UpstreamErrorKind::Status5xx => "upstream_5xx",
                UpstreamErrorKind::Grpc => "upstream_grpc",
            },
        }
    }

    /// Whether the client's connection cannot carry another request after this one (HTTP/1):
    /// the request's framing was ambiguous or its body was not read to the end.
    pub fn ends_connection(&self) -> bool {
        matches!(self, Self::BadRequest(_) | Self::ClientBody { .. })
    }

    /// The upstream error kind, if any.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            Self::Upstream { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The downstream error kind, if any.
    pub fn request_kind(&self) -> Option<RequestErrorKind> {
        match self {
            Self::BodyTooLarge(_) => Some(RequestErrorKind::BodyTooLarge),
            Self::BadRequest(_) => Some(RequestErrorKind::BadRequest),
            Self::Overloaded => Some(RequestErrorKind::Overloaded),
            Self::SchemaViolation { .. } => Some(RequestErrorKind::SchemaViolation),
            Self::ClientBody { fault, .. } => Some(fault.request_kind()),
            _ => None,
        }
    }

    /// The HTTP status of the answer, and the gRPC code a gRPC client gets instead.
    pub(crate) fn status_and_grpc(&self) -> (StatusCode, u16) {
        match self {
            Self::NoRoute => (StatusCode::NOT_FOUND, 12),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, 3),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, 14),
            Self::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 8),
            Self::SchemaViolation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 3),
            // 499 as nginx logs a client that left; gRPC CANCELLED, INVALID_ARGUMENT and
            // DEADLINE_EXCEEDED for the same three.
            Self::ClientBody {
                fault: ClientFault::Aborted,
                ..
            } => (CLIENT_CLOSED_REQUEST, 1),
            Self::ClientBody {
                fault: ClientFault::Malformed,
                ..
            } => (StatusCode::BAD_REQUEST, 3),
            Self::ClientBody {
                fault: ClientFault::Timeout,
                ..
            } => (StatusCode::REQUEST_TIMEOUT, 4),
            Self::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => (StatusCode::GATEWAY_TIMEOUT, 4),
            Self::Upstream { .. } => (StatusCode::BAD_GATEWAY, 14),
        }
    }
}

/// Schema violations named in a gRPC answer's `grpc-message`.
const GRPC_LISTED: usize = 10;

/// The response for an error: JSON for HTTP clients; a trailers-only response with
/// `grpc-status` for gRPC clients (refused/reset → 14 UNAVAILABLE, timeout → 4).
pub fn error_response(
    err: &ProxyError,
    grpc: bool,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let (status, grpc_status) = err.status_and_grpc();
    let mut message = err.to_string();
    let mut resp = if grpc {
        // A gRPC client has no body to read the violations from: the first ones go in the
        // message.
        if let ProxyError::SchemaViolation {
            violations, total, ..
        } = err
        {
            let listed: Vec<String> = (violations.iter().take(GRPC_LISTED))
                .map(|v| format!("row {} {} {}", v.row, v.feature, v.issue.as_str()))
                .collect();
            message = format!("{message}: {} ({total} in all)", listed.join(", "));
        }
        let mut r = Response::new(ProxyBody::full(Bytes::new()));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(grpc_status));
        if let Ok(v) = HeaderValue::from_str(&crate::codec::percent::grpc_message(&message)) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut body = serde_json::json!({
            "error": message,
            "kind": err.kind_str(),
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        if let ProxyError::SchemaViolation {
            violations, total, ..
        } = err
        {
            body["violations"] = serde_json::to_value(violations).unwrap_or_default();
            body["violations_total"] = (*total).into();
        }
        let mut r = Response::new(ProxyBody::full(body.to_string()));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(kind: UpstreamErrorKind) -> ProxyError {
        ProxyError::Upstream {
            kind,
            source: "x".into(),
        }
    }

    #[test]
    fn statuses_per_error() {
        let id = HeaderValue::from_static("r1");
        assert_eq!(
            error_response(&ProxyError::NoRoute, false, &id).status(),
            404
        );
        assert_eq!(
            error_response(&ProxyError::BodyTooLarge(1), false, &id).status(),
            413
        );
        assert_eq!(
            error_response(&upstream(UpstreamErrorKind::Connect), false, &id).status(),
            502
        );
        assert_eq!(
            error_response(&upstream(UpstreamErrorKind::Reset), false, &id).status(),
            502
        );
        assert_eq!(
            error_response(&upstream(UpstreamErrorKind::Timeout), false, &id).status(),
            504
        );
    }

    #[test]
    fn grpc_errors_carry_grpc_status() {
        let id = HeaderValue::from_static("r1");
        let r = error_response(&upstream(UpstreamErrorKind::Connect), true, &id);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        let r = error_response(&upstream(UpstreamErrorKind::Timeout), true, &id);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(crate::codec::percent::grpc_message("a%b\n"), "a%25b%0A");
    }
}
