//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, each connection watched
//! for graceful shutdown. Used for the data plane and the admin listener alike.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::body::BoxError;

/// Connection settings shared by both listeners.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    b
}

/// Serve until `shutdown` turns true, then stop accepting and wait for open connections to
/// finish, at most `grace()` (read at shutdown time, so a reload can change it).
pub async fn serve<F, S, B>(
    listener: TcpListener,
    make_service: F,
    mut shutdown: watch::Receiver<bool>,
    grace: impl Fn() -> Duration,
    name: &'static str,
) where
    F: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = builder();
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(make_service(peer));
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(error = %e, %peer, "Connection ended with an error.");
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
    let grace = grace();
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

/// Resolves once the flag is true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
