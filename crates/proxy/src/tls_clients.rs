//! hyper-util clients for model servers reached over HTTPS (`upstream_tls`): the h2 path of
//! `upstream_peer` and shadow calls. One client (its own connection pool) per TLS setting, made
//! the first time a route with that setting sends, and forgotten once no snapshot holds that
//! setting (a reload replaced it).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use tower::Service;

use http_body::Body;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Builder, Client};

use super::body::BoxError;
use crate::config::UpstreamSettings;
use crate::tls::UpstreamTls;

/// A client that speaks TLS to its upstreams.
pub type HttpsClient<B> = Client<Timed<HttpsConnector<HttpConnector>>, B>;

/// A connector whose connect and TLS handshake together take at most `timeout`, as the HTTP/1
/// pool's do (hyper-util's timeout covers the TCP connect only): a server that accepts and
/// never answers the handshake is a connect failure, not a wait for the response timeout.
#[derive(Clone, Debug)]
pub struct Timed<C> {
    inner: C,
    timeout: Duration,
}

impl<C> Service<Uri> for Timed<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect and TLS handshake timed out",
                )) as BoxError),
            }
        })
    }
}

/// Which HTTP version a client speaks over TLS (its ALPN offer).
#[derive(Debug, Clone, Copy)]
pub enum Alpn {
    /// `http/1.1`.
    Http1,
    /// `h2`.
    Http2,
}

/// A client and the setting it was made for.
type Made<B> = (Arc<UpstreamTls>, HttpsClient<B>);

/// Clients per TLS setting.
pub struct TlsClients<B> {
    builder: Builder,
    alpn: Alpn,
    connect_timeout: Duration,
    /// By [`UpstreamTls::id`], with the setting it was made for.
    clients: Mutex<HashMap<u64, Made<B>>>,
}

impl<B> std::fmt::Debug for TlsClients<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClients")
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl<B> TlsClients<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Clients built by `builder` (timeouts, windows), offering `alpn`.
    pub fn new(builder: Builder, alpn: Alpn, settings: &UpstreamSettings) -> Self {
        Self {
            builder,
            alpn,
            connect_timeout: settings.connect_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `tls`: a reference count, or a new client the first time.
    pub fn get(&self, tls: &Arc<UpstreamTls>) -> HttpsClient<B> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((held, client)) = clients.get_mut(&tls.id) {
            // The current snapshot's setting: a reload makes a new one with the same id, and
            // the old one must not make this client look unused.
            if !Arc::ptr_eq(held, tls) {
                *held = tls.clone();
            }
            return client.clone();
        }
        // Settings no snapshot holds any more (only this map does): their clients go, and
        // with them their idle connections.
        clients.retain(|_, (held, _)| Arc::strong_count(held) > 1);
        let client = self.build(tls);
        clients.insert(tls.id, (tls.clone(), client.clone()));
        client
    }

    fn build(&self, tls: &UpstreamTls) -> HttpsClient<B> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls.config).clone())
            .https_only();
        let builder = match &tls.server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        let connector = match self.alpn {
            Alpn::Http1 => builder.enable_http1().wrap_connector(http),
            Alpn::Http2 => builder.enable_http2().wrap_connector(http),
        };
        self.builder.build(Timed {
            inner: connector,
            timeout: self.connect_timeout,
        })
    }
}
