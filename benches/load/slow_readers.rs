//! Clients that ask for large answers and never read them, for `slow_readers.py`: what the
//! sidecar holds for them is the measure of its backpressure.
//!
//! Usage: slow_readers URL h2|h2-open|h1 N SECONDS
//!        slow_readers serve PORT SIZE   (the model server: HTTP/1.1 and h2c, SIZE bytes each)
//! - `h2`: one connection, N concurrent streams, windows never opened past the default 64 KiB
//!   (no WINDOW_UPDATE is ever sent: the bodies are never read).
//! - `h2-open`: the same with windows of 2 GiB, and the socket no longer read once the response
//!   heads arrived: the sidecar may send, but its writes never drain.
//! - `h1`: N connections, each sends one request with a 4 KiB receive buffer and never reads.
//!
//! Prints `ready` once every response head arrived (h2) or every request is sent (h1), holds
//! the clients for SECONDS, then closes them all and prints `closed`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "serve" {
        return serve(
            args[2].parse().expect("PORT"),
            args[3].parse().expect("SIZE"),
        );
    }
    if args.len() != 5 {
        eprintln!("usage: slow_readers URL h2|h1 N SECONDS");
        std::process::exit(2);
    }
    let url: http::Uri = args[1].parse().expect("URL");
    let n: usize = args[3].parse().expect("N");
    let hold = Duration::from_secs_f64(args[4].parse().expect("SECONDS"));
    let addr = format!(
        "{}:{}",
        url.host().expect("host"),
        url.port_u16().expect("port")
    );
    let path = url.path().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        match args[2].as_str() {
            "h2" => h2_streams(&addr, &path, n, hold, false).await,
            "h2-open" => h2_streams(&addr, &path, n, hold, true).await,
            "h1" => h1_connections(&addr, &path, n, hold).await,
            other => {
                eprintln!("unknown mode {other}: h2, h2-open or h1");
                std::process::exit(2);
            }
        }
    });
}

/// A socket whose reads stop (stay pending, never woken) once `paused` is set.
struct Pausable {
    tcp: tokio::net::TcpStream,
    paused: Arc<AtomicBool>,
}

impl AsyncRead for Pausable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.paused.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pausable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

async fn h2_streams(addr: &str, path: &str, n: usize, hold: Duration, open: bool) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let paused = Arc::new(AtomicBool::new(false));
    let io = Pausable {
        tcp,
        paused: paused.clone(),
    };
    let window = if open { (1 << 31) - 1 } else { 65_535 };
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .expect("handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        pending.push(resp);
        client = client.ready().await.expect("ready");
    }
    // Response heads only; the bodies stay unread and their windows closed.
    let mut held = Vec::with_capacity(n);
    for resp in pending {
        held.push(resp.await.expect("response head"));
    }
    if open {
        paused.store(true, Ordering::Relaxed);
    }
    println!("ready");
    tokio::time::sleep(hold).await;
    drop(held);
    drop(client);
    driver.abort();
    println!("closed");
}

async fn h1_connections(addr: &str, path: &str, n: usize, hold: Duration) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut tcp = socket
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write");
        held.push(tcp);
    }
    println!("ready");
    tokio::time::sleep(hold).await;
    drop(held);
    println!("closed");
}

/// Answer every request with `size` bytes, over HTTP/1.1 or h2c.
fn serve(port: u16, size: usize) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = http_body_util::Full::new(body.clone());
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}
