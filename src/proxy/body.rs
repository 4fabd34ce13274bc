//! Body types: the request body with its size limit and byte count, and the response body
//! that is either the upstream's stream or a locally generated error.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::ctx::RequestCtx;

/// The boxed error every body here yields.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body went over `limits.max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

pin_project_lite::pin_project! {
    /// The client's body on its way upstream: streamed, counted, cut at the limit. On
    /// OpenAI-compatible routes a bounded copy is kept to read the requested `model`.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        ctx: Arc<RequestCtx>,
        limit: u64,
        tee: Option<BytesMut>,
    }
}

impl LimitedBody {
    /// Wrap a request body.
    pub fn new(inner: Incoming, ctx: Arc<RequestCtx>, limit: u64) -> Self {
        let tee = ctx.resolved.openai.map(|_| BytesMut::new());
        Self {
            inner,
            ctx,
            limit,
            tee,
        }
    }
}

/// Copy `data` into a bounded tee; over `cap` the copy is abandoned (the bytes still flow).
fn tee_into(tee: &mut Option<BytesMut>, data: &Bytes, cap: usize) {
    if let Some(buf) = tee {
        if buf.len() + data.len() > cap {
            *tee = None;
        } else {
            buf.extend_from_slice(data);
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
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
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
                    tee_into(
                        this.tee,
                        data,
                        this.ctx.snapshot.config.limits.max_inspect_bytes,
                    );
                }
                if this.inner.is_end_stream() {
                    read_request_model(this.tee.take(), this.ctx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                read_request_model(this.tee.take(), this.ctx);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn read_request_model(tee: Option<BytesMut>, ctx: &RequestCtx) {
    if let Some(model) = tee.and_then(|b| crate::inspect::openai::json_model(&b)) {
        let _ = ctx.gen_ai_request_model.set(model);
    }
}

/// A response body: the upstream's stream, or a complete local body.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the model server.
    Upstream(Incoming),
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
