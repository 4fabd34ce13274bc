//! Sending a request to the collector (gRPC or HTTP/protobuf, http:// or https://, gzip) and
//! reading its answer: accepted (with a partial success), or refused, retryable or not.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;

use crate::config::{OtlpExport, OtlpProtocol};

/// Why a transport cannot be built or a batch cannot be sent at all.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not an http:// or https:// URL.
    #[error("invalid endpoint {0}: {1}")]
    Endpoint(String, String),
    /// The TLS settings cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A batch over gRPC's 4 GiB message limit.
    #[error("batch too large")]
    TooLarge,
    /// Compressing the batch failed.
    #[error("gzip: {0}")]
    Gzip(std::io::Error),
}

/// The gRPC method of the OTLP trace service.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The gRPC frame header: compression flag and message length.
const GRPC_HEADER: usize = 5;

/// Headers from `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (the
/// latter wins): `key=value` pairs separated by commas, values percent-encoded.
pub fn env_headers(generic: Option<&str>, traces: Option<&str>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for list in [generic, traces].into_iter().flatten() {
        for pair in list.split(',') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_bytes(&crate::codec::percent::decode(v.trim())),
            ) else {
                continue;
            };
            out.insert(name, value);
        }
    }
    out
}

/// Sends encoded requests to the collector.
#[derive(Debug)]
pub struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    grpc: bool,
    gzip: bool,
    headers: HeaderMap,
}

impl Transport {
    /// A transport for `export` (call inside a tokio runtime).
    pub fn new(export: &OtlpExport, headers: HeaderMap) -> Result<Self, OtlpError> {
        let grpc = export.protocol == OtlpProtocol::Grpc;
        let endpoint = export.endpoint.trim_end_matches('/');
        let uri = if grpc {
            format!("{endpoint}{GRPC_PATH}")
        } else {
            endpoint.to_string()
        };
        let uri: Uri = uri.parse().map_err(|e: http::uri::InvalidUri| {
            OtlpError::Endpoint(endpoint.to_string(), e.to_string())
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(OtlpError::Endpoint(
                endpoint.to_string(),
                "expected an http:// or https:// collector".into(),
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(export.timeout));
        connector.enforce_http(false);
        // https:// collectors over the project's TLS client (ALPN h2 for gRPC, http/1.1
        // otherwise); http:// ones in the clear, as before.
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(export.tls.client_config()?)
            .https_or_http();
        let connector = if grpc {
            tls.enable_http2().wrap_connector(connector)
        } else {
            tls.enable_http1().wrap_connector(connector)
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(grpc)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            client,
            uri,
            grpc,
            gzip: export.gzip,
            headers,
        })
    }

    /// An empty body to encode one `ExportTraceServiceRequest` into (after the gRPC frame
    /// header's room, which [`Self::send`] fills in).
    pub fn body(&self, capacity: usize) -> Vec<u8> {
        let mut body = Vec::with_capacity(capacity + GRPC_HEADER);
        if self.grpc {
            body.resize(GRPC_HEADER, 0);
        }
        body
    }

    /// Frame (gRPC) and compress (gzip) a body from [`Self::body`] holding one encoded
    /// request, once for every attempt to send it.
    pub fn prepare(&self, mut body: Vec<u8>) -> Result<Bytes, OtlpError> {
        if !self.grpc {
            return Ok(Bytes::from(if self.gzip { gzip(&body)? } else { body }));
        }
        if self.gzip {
            let message = gzip(body.get(GRPC_HEADER..).unwrap_or_default())?;
            body.truncate(GRPC_HEADER);
            body.extend_from_slice(&message);
        }
        // gRPC message framing: the compressed flag, then the length (big-endian u32).
        let len = body
            .len()
            .checked_sub(GRPC_HEADER)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(OtlpError::TooLarge)?;
        body[0] = u8::from(self.gzip);
        body[1..GRPC_HEADER].copy_from_slice(&len.to_be_bytes());
        Ok(Bytes::from(body))
    }

    /// One attempt to send a prepared body: how many spans the collector took or rejected, or
    /// why not and whether to try again.
    pub async fn send(&self, body: Bytes) -> Result<Accepted, Refused> {
        let mut req = Request::post(self.uri.clone())
            .header(
                CONTENT_TYPE,
                if self.grpc {
                    "application/grpc"
                } else {
                    "application/x-protobuf"
                },
            )
            .body(Full::new(body))
            .map_err(|e| Refused::fatal(e.to_string()))?;
        if self.grpc {
            req.headers_mut()
                .insert("te", HeaderValue::from_static("trailers"));
            if self.gzip {
                req.headers_mut()
                    .insert("grpc-encoding", HeaderValue::from_static("gzip"));
            }
        } else if self.gzip {
            req.headers_mut()
                .insert("content-encoding", HeaderValue::from_static("gzip"));
        }
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        // Not reaching the collector is worth another try: it may be restarting.
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| Refused::retry(format!("{e:?}"), None))?;
        let status = resp.status();
        let head = resp.headers().clone();
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Refused::retry(e.to_string(), None))?;
        if !status.is_success() {
            let why = format!("collector answered HTTP {status}");
            // The retryable answers of the OTLP specification, after Retry-After if given.
            return Err(match status.as_u16() {
                429 | 502 | 503 | 504 => Refused::retry(why, retry_after(&head)),
                _ => Refused::fatal(why),
            });
        }
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let body = collected.to_bytes();
        let message = if self.grpc {
            // Trailers-only responses carry the status in the headers.
            let grpc_status = trailers
                .get("grpc-status")
                .or_else(|| head.get("grpc-status"))
                .and_then(|v| v.to_str().ok());
            match grpc_status {
                Some("0") => {}
                Some(code) => {
                    let message = trailers
                        .get("grpc-message")
                        .or_else(|| head.get("grpc-message"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let why = format!("collector answered grpc-status {code} {message}");
                    let details = trailers
                        .get("grpc-status-details-bin")
                        .or_else(|| head.get("grpc-status-details-bin"));
                    let retry_info = details.and_then(|v| retry_delay(v.as_bytes()));
                    return Err(grpc_refusal(code, why, retry_info));
                }
                None => {
                    return Err(Refused::fatal(
                        "collector answered without a grpc-status".to_string(),
                    ));
                }
            }
            // A collector may compress its answer as the request was (grpc-go does).
            match body.first() {
                Some(1) => Cow::Owned(gunzip(body.get(GRPC_HEADER..).unwrap_or_default())),
                _ => Cow::Borrowed(body.get(GRPC_HEADER..).unwrap_or_default()),
            }
        } else if head
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes() == b"gzip")
        {
            Cow::Owned(gunzip(&body))
        } else {
            Cow::Borrowed(&body[..])
        };
        // An `ExportTraceServiceResponse`: a partial success names the spans it rejected.
        let partial = ExportTraceServiceResponse::decode(&message[..])
            .ok()
            .and_then(|r| r.partial_success)
            .unwrap_or_default();
        Ok(Accepted {
            rejected: u64::try_from(partial.rejected_spans).unwrap_or(0),
            message: partial.error_message,
        })
    }
}

/// What the collector took.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans it rejected (a partial success); the rest were accepted.
    pub rejected: u64,
    /// Why, as it said.
    pub message: String,
}

/// Why a batch was not taken, and whether (and after how long) to try it again.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// What went wrong.
    pub why: String,
    /// Worth another attempt.
    pub retryable: bool,
    /// The wait the collector asked for (`Retry-After`).
    pub after: Option<Duration>,
}

impl Refused {
    pub(super) fn retry(why: String, after: Option<Duration>) -> Self {
        Self {
            why,
            retryable: true,
            after,
        }
    }

    pub(super) fn fatal(why: String) -> Self {
        Self {
            why,
            retryable: false,
            after: None,
        }
    }
}

/// A collector's gRPC error: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE
/// and DATA_LOSS are retryable by the OTLP specification, after the RetryInfo delay when the
/// collector gives one; RESOURCE_EXHAUSTED only with a RetryInfo (the collector says recovery
/// is possible); every other code is final.
fn grpc_refusal(code: &str, why: String, retry_info: Option<Duration>) -> Refused {
    match (code, retry_info) {
        ("1" | "4" | "10" | "11" | "14" | "15", after) => Refused::retry(why, after),
        ("8", Some(after)) => Refused::retry(why, Some(after)),
        _ => Refused::fatal(why),
    }
}

/// `google.rpc.Status`, as `grpc-status-details-bin` carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The delay of a `google.rpc.RetryInfo` in a `grpc-status-details-bin` value (base64, padded
/// or not, as gRPC's binary metadata may be).
fn retry_delay(value: &[u8]) -> Option<Duration> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(value).ok()?;
    let status = <RpcStatus as prost::Message>::decode(bytes.as_slice()).ok()?;
    let info = status
        .details
        .iter()
        .find(|d| d.type_url.ends_with("/google.rpc.RetryInfo"))?;
    let delay = <RetryInfo as prost::Message>::decode(info.value.as_slice())
        .ok()?
        .retry_delay?;
    let secs = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(secs, nanos))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by collectors and is ignored).
fn retry_after(head: &HeaderMap) -> Option<Duration> {
    let secs: u64 = head
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// A gzip answer's bytes, or nothing when they are not gzip (the answer is then read as empty:
/// no partial success).
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    // An answer is small; a hostile one is cut at 1 MiB.
    let read = flate2::read::GzDecoder::new(bytes)
        .take(1 << 20)
        .read_to_end(&mut out);
    if read.is_err() {
        out.clear();
    }
    out
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, OtlpError> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(bytes)
        .and_then(|()| enc.finish())
        .map_err(OtlpError::Gzip)
}

/// The collector's answer (opentelemetry-proto's `ExportTraceServiceResponse`), read with prost:
/// a cold path, once per batch.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<ExportTracePartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExportTracePartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_bodies_leave_room_for_the_frame_header() {
        let export = |protocol| OtlpExport {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol,
            timeout: Duration::from_secs(1),
            tls: Default::default(),
            gzip: false,
        };
        let grpc = Transport::new(&export(OtlpProtocol::Grpc), HeaderMap::new());
        let http = Transport::new(&export(OtlpProtocol::HttpProtobuf), HeaderMap::new());
        assert_eq!(grpc.ok().map(|t| t.body(10).len()), Some(GRPC_HEADER));
        assert_eq!(http.ok().map(|t| t.body(10).len()), Some(0));
    }
    #[test]
    fn resource_exhausted_is_retried_only_with_a_retry_info_and_after_its_delay() {
        use base64::Engine as _;
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 1,
                nanos: 500_000_000,
            }),
        };
        let status = RpcStatus {
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: prost::Message::encode_to_vec(&info),
            }],
        };
        let bytes = prost::Message::encode_to_vec(&status);
        let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        let delay = Some(Duration::from_millis(1500));
        assert_eq!(retry_delay(padded.as_bytes()), delay);
        assert_eq!(retry_delay(unpadded.as_bytes()), delay);
        assert_eq!(retry_delay(b"not base64!"), None);
        let why = || "refused".to_string();
        assert_eq!(grpc_refusal("8", why(), None), Refused::fatal(why()));
        assert_eq!(
            grpc_refusal("8", why(), delay),
            Refused::retry(why(), delay)
        );
        assert_eq!(grpc_refusal("14", why(), None), Refused::retry(why(), None));
        assert_eq!(
            grpc_refusal("14", why(), delay),
            Refused::retry(why(), delay)
        );
        assert_eq!(grpc_refusal("3", why(), delay), Refused::fatal(why()));
    }
    #[test]
    fn headers_from_the_environment_are_parsed_and_decoded() {
        let h = env_headers(
            Some("authorization=Bearer%20abc, x-team = ml ,broken, bad name=1"),
            Some("x-team=sre"),
        );
        assert_eq!(
            h.get("authorization").map(|v| v.as_bytes()),
            Some(&b"Bearer abc"[..])
        );
        assert_eq!(h.get("x-team").map(|v| v.as_bytes()), Some(&b"sre"[..]));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_a_date_is_ignored() {
        let mut head = HeaderMap::new();
        head.insert("retry-after", HeaderValue::from_static(" 12 "));
        assert_eq!(retry_after(&head), Some(Duration::from_secs(12)));
        head.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&head), None);
    }
}
