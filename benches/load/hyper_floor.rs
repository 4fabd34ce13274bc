//! The floor of the stack modelstamp is built on: the smallest reverse proxy hyper 1.x and
//! hyper-util can make (the same server builder and multi-threaded tokio runtime, and
//! hyper-util's pooled legacy client with TCP_NODELAY, which modelstamp used on the HTTP/1 path
//! until its own leaner pool), with no routing, stamping, telemetry or logging. The
//! load comparison runs it as the `hyper-floor` target, so the table separates what modelstamp's
//! features cost from what the HTTP stack itself costs next to nginx and haproxy.
//!
//! Usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use http::Uri;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR");
    let upstream = args[2].clone();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    loop {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: http::Request<Incoming>| {
                let client = client.clone();
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let uri: Uri = format!("http://{upstream}{path}").parse().expect("uri");
                *req.uri_mut() = uri;
                async move {
                    Ok::<_, Infallible>(match client.request(req).await {
                        Ok(resp) => resp.map(http_body_util::Either::Left),
                        Err(_) => http::Response::builder()
                            .status(502)
                            .body(http_body_util::Either::Right(http_body_util::Empty::new()))
                            .expect("response"),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
