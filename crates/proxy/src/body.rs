//! Body types: the request body with its size limit and byte count, and the response body
//! that is either the upstream's stream or a locally generated error.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::ctx::RequestCtx;
use super::error::{BodyReadTimeout, ClientFault};
use super::shadow::Shadower;
use crate::inspect::worker::BodyCopy;
use crate::inspect::{Codec, Inspector};

/// The boxed error every body here yields.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body went over `limits.max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The client's body as the forward phase gets it: streaming, or (on `enforce` routes) a
/// prefix read ahead to validate, followed by whatever was not read.
#[derive(Debug)]
pub enum ClientBody {
    /// Straight from the client.
    Streaming(Incoming),
    /// Read ahead, then the rest.
    Buffered {
        /// Bytes read ahead, sent first.
        head: Option<Bytes>,
        /// Trailers read ahead, sent last.
        trailers: Option<http::HeaderMap>,
        /// The unread rest, if the body did not end within the read-ahead.
        rest: Option<Incoming>,
        /// The client's body failed during the read-ahead: the failure, after the bytes read.
        failed: Option<hyper::Error>,
    },
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Streaming(b) => Pin::new(b).poll_frame(cx),
            Self::Buffered {
                head,
                trailers,
                rest,
                failed,
            } => {
                if let Some(h) = head.take() {
                    return Poll::Ready(Some(Ok(Frame::data(h))));
                }
                if let Some(e) = failed.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                if let Some(r) = rest {
                    match Pin::new(r).poll_frame(cx) {
                        Poll::Ready(None) => *rest = None,
                        other => return other,
                    }
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming(b) => b.is_end_stream(),
            Self::Buffered {
                head,
                trailers,
                rest,
                failed,
            } => {
                head.is_none()
                    && failed.is_none()
                    && trailers.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streaming(b) => b.size_hint(),
            // A body that failed has no length: an exact one would let the failure go unseen.
            Self::Buffered {
                failed: Some(_), ..
            } => SizeHint::default(),
            Self::Buffered { head, rest, .. } => {
                let head = head.as_ref().map_or(0, |h| h.len() as u64);
                match rest {
                    None => SizeHint::with_exact(head),
                    Some(r) => {
                        // The upper bound first: a lower bound above the current upper panics.
                        let mut hint = r.size_hint();
                        if let Some(upper) = hint.upper() {
                            hint.set_upper(upper + head);
                        }
                        hint.set_lower(hint.lower() + head);
                        hint
                    }
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The client's body on its way upstream: streamed, counted, cut at the limit, and given
    /// at most `limits.body_read_timeout` between frames. When the exchange is inspected (or
    /// on OpenAI-compatible routes, to read the requested `model`) a bounded copy is kept,
    /// charged to the inspector's memory budget. A failure on the client's side is noted in
    /// the context before anything upstream can fail because of it.
    pub struct LimitedBody {
        #[pin]
        inner: ClientBody,
        ctx: Arc<RequestCtx>,
        limit: u64,
        tee: Option<Box<BodyCopy>>,
        inspector: Inspector,
        // Armed only when the client makes the body wait: most bodies arrive with the head.
        stall: Option<Pin<Box<tokio::time::Sleep>>>,
        stall_after: Duration,
    }
}

impl LimitedBody {
    /// Wrap a request body.
    pub fn new(inner: ClientBody, ctx: Arc<RequestCtx>, limit: u64, inspector: Inspector) -> Self {
        let wanted = ctx.inspect.is_some_and(Codec::tabular)
            || ctx.resolved.openai.is_some()
            || Shadower::wanted(&ctx);
        let cap = ctx.snapshot.config.limits.max_inspect_bytes;
        let tee = wanted.then(|| Box::new(inspector.copy(cap)));
        let stall_after = ctx.snapshot.config.limits.body_read_timeout;
        Self {
            inner,
            ctx,
            limit,
            tee,
            inspector,
            stall: None,
            stall_after,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let waiting = polled.is_pending();
        if this.ctx.awaiting_client.load(Ordering::Relaxed) != waiting {
            this.ctx.awaiting_client.store(waiting, Ordering::Relaxed);
        }
        match polled {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    super::stamp::strip_stamps(trailers, &this.ctx.snapshot.config.headers);
                }
                if let Some(stall) = this.stall.as_mut() {
                    stall
                        .as_mut()
                        .reset(tokio::time::Instant::now() + *this.stall_after);
                }
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    let total = this
                        .ctx
                        .bytes_in
                        .fetch_add(len, Ordering::Relaxed)
                        .saturating_add(len);
                    if total > *this.limit {
                        this.ctx.body_too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*this.limit)))));
                    }
                    if let Some(copy) = this.tee.as_mut()
                        && let Err(why) = copy.push(data)
                    {
                        *this.tee = None;
                        if this.ctx.inspect.is_some() {
                            this.inspector.skip(why);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    request_read(this.tee.take(), this.ctx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let _ = this.ctx.client_fault.set(ClientFault::of(&e));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                request_read(this.tee.take(), this.ctx);
                Poll::Ready(None)
            }
            // Once the model server answered, a pause in the request body is a stream both
            // ways taking its time; `limits.idle_timeout` still closes a silent connection.
            Poll::Pending if this.ctx.responded.load(Ordering::Relaxed) => {
                *this.stall = None;
                Poll::Pending
            }
            Poll::Pending => {
                let after = *this.stall_after;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let _ = this.ctx.client_fault.set(ClientFault::Timeout);
                Poll::Ready(Some(Err(Box::new(BodyReadTimeout(after)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body was copied whole: read the OpenAI `model`, keep the copy for the inspector.
fn request_read(tee: Option<Box<BodyCopy>>, ctx: &RequestCtx) {
    let Some(copy) = tee.map(|b| *b) else {
        return;
    };
    if ctx.resolved.openai.is_some()
        && let Some(model) = crate::inspect::openai::json_model(copy.bytes())
    {
        let _ = ctx.gen_ai_request_model.set(model);
    }
    if ctx.inspect.is_some_and(Codec::tabular) || Shadower::wanted(ctx) {
        let _ = ctx.request_copy.set(copy.freeze());
    }
}

/// A response body: the upstream's stream, or a complete local body.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the model server.
    Upstream(super::pool::UpstreamBody),
    /// Generated here (errors); `None` once sent.
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        Self::Full(if b.is_empty() { None } else { Some(b) })
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Self::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(b) => b.is_end_stream(),
            Self::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(b) => b.size_hint(),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
