//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, or both over TLS (ALPN
//! `h2`, `http/1.1`) when the listener has a certificate, each connection watched for graceful
//! shutdown. Used for the data plane and the admin listener alike.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::body::BoxError;
use super::idle::IdleIo;
use crate::config::Limits;
use crate::observe::metrics::{ConnErrorKind, ListenerMetrics};

/// What a listener reads from the current snapshot at each accept (so a reload applies to new
/// connections) and at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerSettings {
    /// How long open connections may take to finish at shutdown.
    pub grace: Duration,
    /// Connection, header and stream limits.
    pub limits: Limits,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(1),
            limits: Limits::default(),
        }
    }
}

/// One listener: its name (the `listener` label), settings and accounting.
pub struct Listener<C> {
    /// `proxy`, `admin`, ...
    pub name: &'static str,
    /// Read at each accept and at shutdown.
    pub settings: C,
    /// Connection metrics.
    pub metrics: ListenerMetrics,
    /// TLS, when the listener has a certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// hyper's smallest read buffer.
const MIN_BUF: usize = 8192;

/// Backpressure, end to end: the most of an answer the sidecar reads from a model server ahead
/// of a client that does not read (per exchange; HTTP/1.1 read buffer and h2c stream window).
/// A response head must fit in it too (nginx's `proxy_buffer_size` is 4–8 KiB).
pub const UPSTREAM_READ_BUF: usize = 16 * 1024;

/// The most an HTTP/2 client's stream buffers in the sidecar for a client whose window is open
/// but who does not read the socket (hyper's default is 400 KiB).
const H2_SEND_BUF: usize = 16 * 1024;

/// The window an HTTP/2 client may fill with a request body before the model server reads it
/// (per stream; the connection window stays hyper's 1 MiB).
const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// Connection settings for both listeners.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer bounds the request head (431 beyond it); bodies stream through it.
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_send_buf_size(H2_SEND_BUF)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Sort a connection error into what the operator can act on; peers that simply went away are
/// not errors.
fn classify(err: &(dyn std::error::Error + 'static)) -> Option<ConnErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return Some(ConnErrorKind::HeaderTimeout);
            }
            if h.is_parse_too_large() {
                return Some(ConnErrorKind::HeaderTooLarge);
            }
            if h.is_parse() || h.is_parse_version_h2() {
                return Some(ConnErrorKind::Malformed);
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.is_io() {
                return None; // idle timeouts are counted where they fire
            }
            // A GOAWAY we sent for a protocol violation (floods included); a peer's own
            // GOAWAY or reset is a normal end.
            return (h2.is_go_away() && !h2.is_remote()).then_some(ConnErrorKind::Malformed);
        }

        cur = e.source();
    }
    None
}

/// Serve until `shutdown` turns true, then stop accepting and wait for open connections to
/// finish, at most the grace period read at that moment.
pub async fn serve<F, S, B, C>(
    listener: TcpListener,
    make_service: F,
    mut shutdown: watch::Receiver<bool>,
    conf: Listener<C>,
) where
    F: Fn(SocketAddr, bool) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Fn() -> ListenerSettings,
{
    let name = conf.name;
    let mut limits = (conf.settings)().limits;
    let mut builder = builder(&limits);
    let graceful = GracefulShutdown::new();
    let tls = conf.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let now = (conf.settings)().limits;
                    if now != limits {
                        limits = now;
                        builder = self::builder(&limits);
                    }
                    // Over the cap the connection is closed at once: a clear, counted refusal
                    // rather than an unbounded queue of half-served clients.
                    if open.load(Ordering::Relaxed) >= limits.max_connections {
                        conf.metrics.refused.inc();
                        debug!(%peer, listener = name, "Connection refused: limits.max_connections reached.");
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let service = Direct::new(make_service(peer, tls.is_some()));
                    // Idle timeouts are counted by the stream itself: hyper reports one on an idle
                    // keep-alive connection as a clean close.
                    let idle = conf.metrics.counter(ConnErrorKind::IdleTimeout);
                    let io = IdleIo::new(stream, limits.idle_timeout, idle);
                    let guard = OpenGuard::new(open.clone(), conf.metrics.clone());
                    let Some(tls) = &tls else {
                        let conn = builder.serve_connection(TokioIo::new(io), service).into_owned();
                        tokio::spawn(finish(graceful.watch(conn), guard, peer));
                        continue;
                    };
                    // The handshake runs on the connection's task, bounded like a request head,
                    // so a client that stalls it holds one connection slot, never the loop.
                    let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
                    let handshake = limits.header_read_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake, tls.accept(io)).await {
                            Ok(Ok(stream)) => {
                                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                                finish(watcher.watch(conn), guard, peer).await;
                            }
                            Ok(Err(e)) => {
                                guard.metrics.error(ConnErrorKind::TlsHandshake);
                                debug!(error = %e, %peer, "TLS handshake failed.");
                            }
                            Err(_) => {
                                guard.metrics.error(ConnErrorKind::TlsHandshake);
                                debug!(%peer, "TLS handshake timed out.");
                            }
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(error = %e, listener = name, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    let grace = (conf.settings)().grace;
    let open = graceful.count();
    info!(
        listener = name,
        open,
        grace_ms = grace.as_millis() as u64,
        "Draining connections."
    );
    tokio::select! {
        _ = graceful.shutdown() => info!(listener = name, "All connections drained."),
        _ = tokio::time::sleep(grace) => warn!(listener = name, "Grace period over; closing remaining connections."),
    }
}

/// Wait for a served connection to end and count how it ended.
async fn finish<E>(
    conn: impl std::future::Future<Output = Result<(), E>>,
    guard: OpenGuard,
    peer: SocketAddr,
) where
    E: std::ops::Deref<Target = dyn std::error::Error + Send + Sync> + std::fmt::Display,
{
    if let Err(e) = conn.await {
        match classify(&*e) {
            Some(kind) => {
                guard.metrics.error(kind);
                debug!(error = %e, %peer, kind = kind.as_str(), "Connection closed.");
            }
            None => debug!(error = %e, %peer, "Connection ended with an error."),
        }
    }
    drop(guard);
}

/// Hands hyper's requests to a connection's tower service. hyper-util's adapter clones the
/// whole stack into a `Oneshot` for every request (a reference count per layer, and the state
/// machine moved into place); the proxy's layers are always ready, so this calls the
/// connection's own service instead, and takes that path only when it is not ready.
struct Direct<S> {
    // hyper calls services one request at a time from the connection's task.
    service: std::cell::RefCell<S>,
}

impl<S> Direct<S> {
    fn new(service: S) -> Self {
        Self {
            service: std::cell::RefCell::new(service),
        }
    }
}

impl<S, R> hyper::service::Service<R> for Direct<S>
where
    S: tower::Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = DirectFuture<S::Future, tower::util::Oneshot<S, R>>;

    fn call(&self, req: R) -> Self::Future {
        let mut service = self.service.borrow_mut();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match service.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => DirectFuture::Ready {
                inner: service.call(req),
            },
            // Not ready (or failed): the general path, which waits for readiness (or reports
            // the error) like any tower caller.
            _ => DirectFuture::Waiting {
                inner: tower::util::Oneshot::new(service.clone(), req),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The called service's future, or the `Oneshot` of one that was not ready.
    #[project = DirectProj]
    enum DirectFuture<A, B> {
        Ready { #[pin] inner: A },
        Waiting { #[pin] inner: B },
    }
}

impl<A, B> std::future::Future for DirectFuture<A, B>
where
    A: std::future::Future,
    B: std::future::Future<Output = A::Output>,
{
    type Output = A::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<A::Output> {
        match self.project() {
            DirectProj::Ready { inner } => inner.poll(cx),
            DirectProj::Waiting { inner } => inner.poll(cx),
        }
    }
}

/// Counts one open connection for the cap and the gauge, until dropped.
struct OpenGuard {
    open: Arc<AtomicUsize>,
    metrics: ListenerMetrics,
}

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>, metrics: ListenerMetrics) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics.open.inc();
        Self { open, metrics }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.open.dec();
    }
}

/// Resolves once the flag is true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::Service as _;
    use std::sync::atomic::AtomicBool;
    use std::task::{Context, Poll};

    /// A service that counts its clones and is ready only once `open` is set.
    #[derive(Clone)]
    struct Gate {
        open: Arc<AtomicBool>,
        clones: Arc<AtomicUsize>,
        calls: Arc<AtomicUsize>,
        waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    }

    struct Counted(Gate);

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.0.clones.fetch_add(1, Ordering::SeqCst);
            Self(self.0.clone())
        }
    }

    impl tower::Service<u32> for Counted {
        type Response = u32;
        type Error = Infallible;
        type Future = std::future::Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.0.open.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                *self.0.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                Poll::Pending
            }
        }

        fn call(&mut self, req: u32) -> Self::Future {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(req * 2))
        }
    }

    fn gate(open: bool) -> Gate {
        Gate {
            open: Arc::new(AtomicBool::new(open)),
            clones: Arc::default(),
            calls: Arc::default(),
            waker: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_ready_service_is_called_without_a_clone() {
        let g = gate(true);
        let direct = Direct::new(Counted(g.clone()));
        for i in 0..3 {
            assert_eq!(direct.call(i).await, Ok(i * 2));
        }
        assert_eq!(g.calls.load(Ordering::SeqCst), 3);
        assert_eq!(g.clones.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_service_that_is_not_ready_is_waited_for() {
        let g = gate(false);
        let direct = Direct::new(Counted(g.clone()));
        let call = tokio::spawn(direct.call(21));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!call.is_finished(), "called before it was ready");
        assert_eq!(g.calls.load(Ordering::SeqCst), 0);
        g.open.store(true, Ordering::SeqCst);
        if let Some(w) = g.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
        assert!(matches!(answer, Ok(Ok(Ok(42)))), "{answer:?}");
        assert_eq!(g.calls.load(Ordering::SeqCst), 1);
    }
}
