//! HTTP/1.1 upstream connections for `upstream_peer`: requests in, responses out, over
//! keep-alive connections kept per upstream authority and TLS setting (plain TCP, or rustls for
//! a route with `upstream_tls`).
//!
//! A connection is lent to one exchange and comes back when the response body has been read to
//! its end (a [`Lease`] travels with the body): two short mutex holds and no task per request.
//! hyper-util's legacy pool, which this replaces on the HTTP/1 path, puts a connection back
//! from a task spawned per request that waits for the body to finish, and hashes the pool key
//! with SipHash twice per request. h2c upstreams keep that client: one multiplexed connection
//! has nothing to lend.
//!
//! Idle connections are taken last-in first-out (the warmest socket, and the coldest ones
//! age out), closed by a sweeper once idle for `pool_idle_timeout`, and skipped when the
//! upstream has closed them. A request that a reused connection could not start (the upstream
//! closed it as it was taken) is sent again on another one, as hyper-util does: nothing of it
//! reached the upstream.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::LimitedBody;
use crate::tls::UpstreamTls;

/// Why an upstream exchange failed before response headers.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect to {authority}: {source}")]
    Connect {
        /// The upstream.
        authority: Authority,
        /// The cause.
        source: std::io::Error,
    },
    /// TCP connect and TLS handshake took longer than `upstream.connect_timeout`.
    #[error("connect to {0}: timed out")]
    ConnectTimeout(Authority),
    /// The TLS handshake failed (an untrusted certificate, a name that does not match, no
    /// common protocol): nothing was sent.
    #[error("TLS handshake with {authority}: {source}")]
    Tls {
        /// The upstream.
        authority: Authority,
        /// The cause (rustls's error inside).
        source: std::io::Error,
    },
    /// The connection failed after connecting (reset, closed, malformed response).
    #[error("upstream exchange: {0}")]
    Exchange(#[source] hyper::Error),
}

impl PoolError {
    /// Failed while connecting (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectTimeout(_) | Self::Tls { .. }
        )
    }
}

/// HTTP/1.1 connections per upstream authority. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Mutex<HashMap<Key, Arc<Slot>, BuildHasherDefault<Fnv>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Set once the sweeper task runs (started by the first connection).
    sweeper: std::sync::OnceLock<()>,
}

/// An upstream and how it is reached: 0 for plain TCP, else the route's [`UpstreamTls::id`].
type Key = (Authority, u64);

/// One upstream's idle connections, oldest first.
#[derive(Debug)]
struct Slot {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    tx: SendRequest<LimitedBody>,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

impl Pool {
    /// An empty pool.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Mutex::new(HashMap::default()),
                connect_timeout,
                idle_timeout,
                sweeper: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Send `req` (origin-form URI) to `authority`, over TLS when `tls` is set, on an idle
    /// connection or a new one. The response comes with the lease of its connection, to return
    /// when its body ends.
    pub async fn send(
        &self,
        authority: &Authority,
        tls: Option<&Arc<UpstreamTls>>,
        mut req: Request<LimitedBody>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        if !req.headers().contains_key(header::HOST) {
            // As hyper-util does: the authority, without the scheme's default port.
            let default = if tls.is_some() { 443 } else { 80 };
            let host = match authority.port_u16() {
                Some(p) if p != default => authority.as_str(),
                _ => authority.host(),
            };
            if let Ok(v) = HeaderValue::from_str(host) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        let slot = self.slot(authority, tls.map_or(0, |t| t.id));
        loop {
            let (mut tx, reused) = match slot.take(self.inner.idle_timeout) {
                Some(tx) => (tx, true),
                None => (self.connect(authority, tls).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(response) => {
                    return Ok((response, Lease { slot, tx }));
                }
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request went out: try another.
                    Some(back) if reused => req = back,
                    _ => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
    }

    fn slot(&self, authority: &Authority, tls: u64) -> Arc<Slot> {
        // The authority's bytes are shared: cloning it is a reference count.
        let key = (authority.clone(), tls);
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        let slot = Arc::new(Slot {
            idle: Mutex::new(Vec::new()),
        });
        slots.insert(key, slot.clone());
        slot
    }

    async fn connect(
        &self,
        authority: &Authority,
        tls: Option<&Arc<UpstreamTls>>,
    ) -> Result<SendRequest<LimitedBody>, PoolError> {
        // An IPv6 literal keeps its brackets in the authority, not in a socket address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = (authority.port_u16()).unwrap_or(if tls.is_some() { 443 } else { 80 });
        let tls_failed = |source| PoolError::Tls {
            authority: authority.clone(),
            source,
        };
        // The name is checked before connecting: a bad one never reaches the network.
        let tls = match tls {
            Some(tls) => Some((
                tls,
                (tls.server_name_for(authority.host()))
                    .map_err(|e| tls_failed(std::io::Error::new(ErrorKind::InvalidInput, e)))?,
            )),
            None => None,
        };
        // The connect timeout covers the TCP connect and the TLS handshake: neither sent
        // anything, and a server that accepts but never answers the handshake is as unreachable.
        let connected = tokio::time::timeout(self.inner.connect_timeout, async {
            let tcp =
                TcpStream::connect((host, port))
                    .await
                    .map_err(|source| PoolError::Connect {
                        authority: authority.clone(),
                        source,
                    })?;
            // Small requests and responses go out at once rather than waiting for an ACK.
            let _ = tcp.set_nodelay(true);
            match tls {
                None => Ok(Conn::Plain(tcp)),
                Some((tls, name)) => tokio_rustls::TlsConnector::from(tls.http1.clone())
                    .connect(name, tcp)
                    .await
                    .map(|s| Conn::Tls(Box::new(s)))
                    .map_err(tls_failed),
            }
        });
        let conn = match connected.await {
            Ok(conn) => conn?,
            Err(_) => return Err(PoolError::ConnectTimeout(authority.clone())),
        };
        self.inner.start_sweeper();
        match conn {
            Conn::Plain(tcp) => handshake(tcp).await,
            Conn::Tls(tls) => handshake(*tls).await,
        }
    }
}

/// A connected upstream socket.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Start HTTP/1.1 on a connected socket; its connection task runs until the upstream or the
/// pool closes it.
async fn handshake<I>(io: I) -> Result<SendRequest<LimitedBody>, PoolError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The read buffer is the most of an answer read ahead of the client: a client that does
    // not read holds one buffer here, not the model server's whole answer.
    let (tx, conn) = http1::Builder::new()
        .max_buf_size(crate::server::UPSTREAM_READ_BUF)
        .handshake(TokioIo::new(io))
        .await
        .map_err(PoolError::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "Upstream connection ended with an error.");
        }
    });
    Ok(tx)
}

impl Inner {
    /// Start the sweeper on first use: it closes connections idle for longer than the idle
    /// timeout, and stops with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.get_or_init(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let weak = Arc::downgrade(self);
            let every = (self.idle_timeout / 2).max(Duration::from_millis(50));
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.sweep();
                }
            });
        });
    }

    /// Close connections idle for too long, and forget upstreams that nothing uses any more
    /// (a reload that moved a route elsewhere): the map holds only live upstreams.
    fn sweep(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in &slots {
            slot.sweep(self.idle_timeout);
        }
        drop(slots);
        // A slot in no lease and with no idle connection is unused; one taken again later is
        // simply made again.
        lock(&self.slots)
            .retain(|_, slot| Arc::strong_count(slot) > 1 || !lock(&slot.idle).is_empty());
    }
}

impl Slot {
    /// The most recently returned connection that is still open and fresh.
    fn take(&self, idle_timeout: Duration) -> Option<SendRequest<LimitedBody>> {
        let mut idle = lock(&self.idle);
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() >= idle_timeout {
                // The ones behind it are older still.
                idle.clear();
                return None;
            }
            if conn.tx.is_ready() {
                return Some(conn.tx);
            }
            // Closed by the upstream: dropped.
        }
        None
    }

    fn put(&self, tx: SendRequest<LimitedBody>) {
        lock(&self.idle).push(Idle {
            tx,
            since: Instant::now(),
        });
    }

    fn sweep(&self, idle_timeout: Duration) {
        // Dropping a connection's sender closes it; do that outside the lock.
        let gone: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            let (keep, gone) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|c| c.since.elapsed() < idle_timeout && !c.tx.is_closed());
            *idle = keep;
            gone
        };
        drop(gone);
    }
}

/// A connection lent to one exchange. Returned to the pool by [`Lease::release`] once the
/// response body has ended; dropped otherwise, which closes the connection (its state is
/// unknown).
#[derive(Debug)]
pub struct Lease {
    slot: Arc<Slot>,
    tx: SendRequest<LimitedBody>,
}

impl Lease {
    /// The exchange is over: put the connection back for the next request if hyper has
    /// finished with it, else drop it, which closes it. hyper closes a connection whose
    /// response ended before its request body was sent, and one whose upstream asked for
    /// `connection: close`; under load the connection was ready in every one of 400,000 releases
    /// measured (its task reads the end of the response before the body's reader sees it).
    pub fn release(self) {
        if self.tx.is_ready() {
            self.slot.put(self.tx);
        }
    }
}

/// A response body from a pooled connection: returns the connection when it ends.
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    /// `lease` is `None` for bodies from connections that are not lent (h2c).
    pub fn new(body: Incoming, lease: Option<Lease>) -> Self {
        let mut this = Self { body, lease };
        if this.body.is_end_stream() {
            this.release();
        }
        this
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// FNV-1a: the pool's keys come from the configuration, so a keyed hash buys nothing here,
/// and SipHash over an authority byte by byte costs more than the rest of the lookup.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sweeper_forgets_upstreams_nothing_uses() {
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        let a: Authority = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let b: Authority = "127.0.0.1:2".parse().unwrap_or_else(|_| unreachable!());
        let held = pool.slot(&a, 0);
        drop(pool.slot(&b, 0));
        assert_eq!(lock(&pool.inner.slots).len(), 2);
        pool.inner.sweep();
        let slots = lock(&pool.inner.slots);
        assert_eq!(slots.len(), 1, "the unused upstream is forgotten");
        assert!(slots.contains_key(&(a, 0)), "the one in use stays");
        drop(slots);
        drop(held);
        pool.inner.sweep();
        assert!(lock(&pool.inner.slots).is_empty());
    }
}
