//! `request_filter` for gRPC `ModelInfer`: the model and version are in the message, not the
//! path. The first bytes of the body are read ahead (the leading fields, a few dozen bytes: never
//! the tensors) so the call resolves, stamps and counts as the REST call naming the same model
//! and version would; a split route sharing the model server sets the chosen version in the
//! message, as it sets `/versions/{v}` in a REST path. What was read is sent first, then the rest
//! of the body streams unchanged.

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::ClientBody;
use crate::inspect::grpc_infer::{self, Leading, LeadingFields};
use crate::routing::Resolved;

/// What was read ahead, to be replayed in order: the bytes, then the failure or the rest.
fn buffered(
    buf: BytesMut,
    rest: Option<Incoming>,
    trailers: Option<http::HeaderMap>,
    failed: Option<hyper::Error>,
) -> ClientBody {
    ClientBody::Buffered {
        head: Some(buf.freeze()).filter(|h| !h.is_empty()),
        trailers,
        rest,
        failed,
    }
}

/// Read the body until its first message's leading fields are known, it ends, it fails, it is
/// unreadable, or it stalls for `stall`. Never fails: whatever happened is replayed to the
/// forward phase in order (bytes, then the failure or the rest), which judges it as for any body.
pub async fn read_leading(
    mut body: Incoming,
    stall: std::time::Duration,
) -> (ClientBody, Option<LeadingFields>) {
    let mut buf = BytesMut::new();
    loop {
        let Ok(frame) = tokio::time::timeout(stall, body.frame()).await else {
            // The client stalled: forwarded as is, its body's own timeout applies from here.
            return (buffered(buf, Some(body), None, None), None);
        };
        match frame {
            None => {
                let lead = read(&buf);
                return (buffered(buf, None, None, None), lead);
            }
            Some(Err(e)) => return (buffered(buf, None, None, Some(e)), None),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    match grpc_infer::leading(&buf) {
                        Leading::NeedMore => {}
                        Leading::Read(lead) => {
                            return (buffered(buf, Some(body), None, None), Some(lead));
                        }
                        Leading::Unreadable => {
                            return (buffered(buf, Some(body), None, None), None);
                        }
                    }
                }
                Err(frame) => {
                    let lead = read(&buf);
                    return (buffered(buf, None, frame.into_trailers().ok(), None), lead);
                }
            },
        }
    }
}

fn read(buf: &[u8]) -> Option<LeadingFields> {
    match grpc_infer::leading(buf) {
        Leading::Read(lead) => Some(lead),
        _ => None,
    }
}

/// A split route whose backend shares the route's model server: the chosen version goes into the
/// message (the REST path gets `/versions/{v}`), so the version that serves is the one stamped.
/// A message that names a version itself was resolved to it and is not split. A compressed
/// message is read whole first (waiting at most `limits.body_read_timeout` per frame) and sent
/// inflated with the version set, when it is at most `limits.max_inspect_bytes` both compressed
/// and inflated; one larger, or one whose client stalls, goes as it came, and the version its
/// answer reports shows the mismatch. A declared `content-length` is moved by as many bytes as the message grew or
/// shrank.
pub async fn steer(
    body: ClientBody,
    lead: Option<&LeadingFields>,
    resolved: &Resolved,
    headers: &mut http::HeaderMap,
    limits: &crate::config::Limits,
) -> ClientBody {
    let Some(lead) = lead else { return body };
    let steered = resolved
        .split
        .as_ref()
        .is_some_and(|c| c.version_path && resolved.served.is_known());
    // Only a message for the served model: a route matched by prefix or header may see
    // another model's calls, whose version this split does not choose.
    let same_model = lead.model_name.as_deref() == Some(&*resolved.served.model);
    if !steered || !same_model || lead.model_version.is_some() {
        return body;
    }
    let body = match lead.compressed() {
        true => read_message(body, limits.max_inspect_bytes, limits.body_read_timeout).await,
        false => body,
    };
    let ClientBody::Buffered {
        head: Some(head),
        trailers,
        rest,
        failed,
    } = body
    else {
        return body;
    };
    let max_inflated = limits.max_inspect_bytes;
    let head = match grpc_infer::with_version(&head, lead, &resolved.served.version, max_inflated) {
        Some(rewritten) => {
            let declared = (headers.get(http::header::CONTENT_LENGTH))
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            // A length that cannot be moved stays as declared (and is refused as too large).
            let moved = declared.and_then(|n| {
                n.checked_sub(head.len() as u64)?
                    .checked_add(rewritten.len() as u64)
            });
            if let Some(n) = moved {
                headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
            }
            bytes::Bytes::from(rewritten)
        }
        None => head,
    };
    ClientBody::Buffered {
        head: Some(head),
        trailers,
        rest,
        failed,
    }
}

/// Read on until the body's first bytes hold its whole first message, it ends, fails or stalls
/// for `stall`, or it would hold more than `cap` bytes. Never fails: what was read is replayed.
async fn read_message(body: ClientBody, cap: usize, stall: std::time::Duration) -> ClientBody {
    let ClientBody::Buffered {
        head,
        trailers: None,
        rest: Some(mut rest),
        failed: None,
    } = body
    else {
        return body;
    };
    let mut buf = BytesMut::from(head.unwrap_or_default());
    loop {
        let whole = grpc_infer::framed_len(&buf).is_some_and(|n| buf.len() >= n);
        if whole || buf.len() > cap {
            return buffered(buf, Some(rest), None, None);
        }
        let Ok(frame) = tokio::time::timeout(stall, rest.frame()).await else {
            return buffered(buf, Some(rest), None, None);
        };
        match frame {
            None => return buffered(buf, None, None, None),
            Some(Err(e)) => return buffered(buf, None, None, Some(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(frame) => return buffered(buf, None, frame.into_trailers().ok(), None),
            },
        }
    }
}
