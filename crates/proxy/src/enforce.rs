//! `request_filter` for `enforce` routes: read the request body ahead (up to
//! `limits.max_inspect_bytes`), check it against the training schema of the version that will
//! serve it, and answer 422 with every violation instead of forwarding. Clean requests go on
//! byte for byte (the read-ahead is sent first, then the unread rest). Bodies over the cap,
//! unreadable payloads and versions without a schema are forwarded unchecked: the model server
//! is the authority on its own input format.

use std::task::{Context, Poll};

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower::{Layer, Service};
use tracing::debug;

use super::body::ClientBody;
use super::ctx::ProxyRequest;
use super::error::{BodyReadTimeout, ClientFault, ProxyError};
use super::resolve::BoxFuture;
use crate::inspect::Codec;
use crate::inspect::quality::violations;

/// Violations listed in a 422 body; the total is always given.
const MAX_LISTED: usize = 100;

/// Adds [`Enforce`].
#[derive(Clone, Copy, Debug)]
pub struct EnforceLayer;

impl<S> Layer<S> for EnforceLayer {
    type Service = Enforce<S>;
    fn layer(&self, inner: S) -> Enforce<S> {
        Enforce { inner }
    }
}

/// Rejects schema violations on `enforce` routes.
#[derive(Clone, Debug)]
pub struct Enforce<S> {
    inner: S,
}

impl<S> Service<ProxyRequest> for Enforce<S>
where
    S: Service<ProxyRequest, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, pr: ProxyRequest) -> Self::Future {
        let ctx = &pr.ctx;
        let codec = ctx
            .route()
            .filter(|r| r.route.inspect.enforce)
            .and_then(|r| Codec::choose(r.route.inspect.codec, pr.req.uri().path()))
            .filter(|c| c.tabular() && !ctx.resolved.served.profile.schema.is_empty());
        let Some(codec) = codec else {
            return Box::pin(self.inner.call(pr));
        };
        // The clone is ready-checked by `poll_ready` semantics of the forward service, which is
        // always ready (a pooled client).
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let ProxyRequest { req, ctx } = pr;
            let (parts, body) = req.into_parts();
            let limits = &ctx.snapshot.config.limits;
            let (cap, stall) = (limits.max_inspect_bytes, limits.body_read_timeout);
            let body = match body {
                ClientBody::Streaming(incoming) => {
                    read_ahead(BytesMut::new(), incoming, cap, stall).await?
                }
                // Read ahead in part already (a gRPC call's leading fields): read on.
                ClientBody::Buffered {
                    head,
                    trailers: None,
                    rest: Some(incoming),
                    failed: None,
                } if head.as_ref().is_none_or(|h| h.len() <= cap) => {
                    let head = BytesMut::from(head.unwrap_or_default());
                    read_ahead(head, incoming, cap, stall).await?
                }
                buffered => buffered,
            };
            if let ClientBody::Buffered {
                head: Some(head),
                rest: None,
                failed: None,
                ..
            } = &body
            {
                let profile = &ctx.resolved.served.profile;
                match codec.features(head, ctx.framing, &profile.names) {
                    Ok(columns) => {
                        let (listed, total) = violations(&profile.schema, &columns, MAX_LISTED);
                        if total > 0 {
                            return Err(ProxyError::SchemaViolation {
                                model: profile.model.clone(),
                                version: profile.version.clone(),
                                violations: listed,
                                total,
                            });
                        }
                    }
                    Err(e) => debug!(error = %e, "Enforce: body not readable; forwarding it."),
                }
            }
            let req = http::Request::from_parts(parts, body);
            inner.call(ProxyRequest { req, ctx }).await
        })
    }
}

/// Read on from `head` up to `cap` bytes (or the whole body, with its trailers, if it ends
/// first), waiting at most `stall` for each frame.
async fn read_ahead(
    mut head: BytesMut,
    mut body: Incoming,
    cap: usize,
    stall: std::time::Duration,
) -> Result<ClientBody, ProxyError> {
    loop {
        let Ok(frame) = tokio::time::timeout(stall, body.frame()).await else {
            return Err(ProxyError::ClientBody {
                fault: ClientFault::Timeout,
                source: Box::new(BodyReadTimeout(stall)),
            });
        };
        match frame {
            None => {
                return Ok(ClientBody::Buffered {
                    head: Some(head.freeze()),
                    trailers: None,
                    rest: None,
                    failed: None,
                });
            }
            Some(Err(e)) => {
                return Err(ProxyError::ClientBody {
                    fault: ClientFault::of(&e),
                    source: Box::new(e),
                });
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    head.extend_from_slice(&data);
                    if head.len() > cap {
                        return Ok(ClientBody::Buffered {
                            head: Some(head.freeze()),
                            trailers: None,
                            rest: Some(body),
                            failed: None,
                        });
                    }
                }
                Err(frame) => {
                    return Ok(ClientBody::Buffered {
                        head: Some(head.freeze()),
                        trailers: frame.into_trailers().ok(),
                        rest: None,
                        failed: None,
                    });
                }
            },
        }
    }
}
