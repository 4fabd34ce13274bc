//! Shared fixtures: fake model servers on 127.0.0.1:0, an in-process sidecar over temp config
//! files, clients for HTTP/1.1 and h2c, metric scraping, and polling with a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use modelstamp::Sidecar;
use modelstamp::routing::Source;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub mod h2raw;
pub mod tls;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body fed frame by frame from a channel (SSE events, trailers, slow drips).
pub struct ChannelBody(pub mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

pub fn channel_body(cap: usize) -> (mpsc::Sender<Frame<Bytes>>, TestBody) {
    let (tx, rx) = mpsc::channel(cap);
    (tx, ChannelBody(rx).boxed())
}

/// What a fake upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// A fake model server (HTTP/1.1 and h2c on one port).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(handler: Handler) -> Self {
        Self::start_with(handler, true).await
    }

    /// An upstream that does not keep what it saw (for long runs that measure memory).
    pub async fn start_quiet(handler: Handler) -> Self {
        Self::start_with(handler, false).await
    }

    async fn start_with(handler: Handler, record: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (s, h, a, o) = (seen.clone(), hits.clone(), accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, hits, open) =
                    (handler.clone(), s.clone(), h.clone(), o.clone());
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        if record {
                            seen.lock().unwrap().push(Seen {
                                method: req.method().clone(),
                                path: req.uri().path().to_string(),
                                query: req.uri().query().map(str::to_string),
                                version: req.version(),
                                headers: req.headers().clone(),
                            });
                        }
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            seen,
            hits,
            accepted,
            open,
        }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }
}

/// An Open Inference server answering every infer with `model_version` = `version`.
pub fn oi_handler(version: &'static str) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let _ = req.into_body().collect().await;
            let body = format!(
                r#"{{"model_name":"churn","model_version":"{version}","id":"1","outputs":[{{"name":"p","shape":[1,1],"datatype":"FP64","data":[0.5]}}],"served_path":"{path}"}}"#
            );
            Response::builder()
                .header("content-type", "application/json")
                .header("x-served-by", version)
                .body(full(body))
                .unwrap()
        })
    })
}

/// How [`versioned_server`] behaves.
#[derive(Clone, Copy, Debug)]
pub struct Versions {
    /// The version of paths without `/versions/{v}`.
    pub default: &'static str,
    /// The version that fails...
    pub fail: &'static str,
    /// ...on every `fail_every`-th of its calls, with 500 (0: never).
    pub fail_every: usize,
    /// The version that sleeps...
    pub slow: &'static str,
    /// ...this long before answering.
    pub delay: Duration,
    /// The `model_version` reported instead of the path's (a silently wrong server).
    pub reported: Option<&'static str>,
    /// The prediction every version answers (`None`: the version number / 10, so versions
    /// differ).
    pub prediction: Option<f64>,
}

impl Default for Versions {
    fn default() -> Self {
        Self {
            default: "1",
            fail: "",
            fail_every: 0,
            slow: "",
            delay: Duration::ZERO,
            reported: None,
            prediction: None,
        }
    }
}

/// An Open Inference server hosting every version on one port: it answers as the version the
/// path names (or `default`) and predicts `version / 10`.
pub fn versioned_server(cfg: Versions) -> Handler {
    let calls = Arc::new(AtomicUsize::new(0));
    Arc::new(move |req: Request<Incoming>| {
        let calls = calls.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let _ = req.into_body().collect().await;
            let version = path
                .split("/versions/")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or(cfg.default)
                .to_string();
            if version == cfg.slow {
                tokio::time::sleep(cfg.delay).await;
            }
            if version == cfg.fail
                && cfg.fail_every > 0
                && calls
                    .fetch_add(1, Ordering::SeqCst)
                    .is_multiple_of(cfg.fail_every)
            {
                return Response::builder()
                    .status(500)
                    .body(full("model error"))
                    .unwrap();
            }
            let p: f64 = cfg
                .prediction
                .unwrap_or(version.parse::<f64>().unwrap_or(0.0) / 10.0);
            let reported = cfg.reported.unwrap_or(&version);
            let body = format!(
                r#"{{"model_name":"churn","model_version":"{reported}","outputs":[{{"name":"p","shape":[1,1],"datatype":"FP64","data":[{p}]}}]}}"#
            );
            Response::builder()
                .header("content-type", "application/json")
                .body(full(body))
                .unwrap()
        })
    })
}

/// An SSE body: `data: 0` ... `data: {n-1}`, one event every `every`.
pub fn sse_events(n: usize, every: Duration) -> TestBody {
    let (tx, body) = channel_body(1);
    tokio::spawn(async move {
        for i in 0..n {
            let event = format!("data: {i}\n\n");
            if tx.send(Frame::data(event.into())).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    body
}

/// Unique temp directory under the system temp dir. The first call in a test process removes
/// the directories of test processes that are gone, so repeated runs do not fill the disk (a
/// directory is kept while its process runs, for a look at a failing test).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("modelstamp-test-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
    let dir = std::env::temp_dir().join(format!(
        "modelstamp-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub const REGISTRY: &str = r#"
models:
  churn:
    aliases: { champion: "1", challenger: "2" }
    versions:
      "1":
        code: { repo: "https://git.example/churn", commit: "97f447d" }
        training_data: { name: churn-train, digest: e5d39153, upstream_tables: [crm.accounts] }
      "2":
        code: { commit: "1c2b8e0" }
        training_data: { name: churn-train, digest: 9a41c07e }
"#;

/// A route block for `churn` pointing at `upstream`.
pub fn churn_route(upstream: SocketAddr, serves: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{upstream}\"\nserves = \"{serves}\"\nmatch = {{ open_inference = true }}\n{extra}\n"
    )
}

/// A test config: ephemeral ports, access log to a file in `dir`, fast reload polling.
pub fn config_text(dir: &Path, routes: &str, extra: &str) -> String {
    config_text_polling(dir, routes, extra, "100ms")
}

/// As [`config_text`] with another reload poll interval ("1h" to rely on explicit reloads).
pub fn config_text_polling(dir: &Path, routes: &str, extra: &str, poll: &str) -> String {
    config_text_on(dir, routes, extra, poll, 0, 0)
}

/// As [`config_text_polling`] on fixed ports (for the real binary, whose ports a test must know).
pub fn config_text_on(
    dir: &Path,
    routes: &str,
    extra: &str,
    poll: &str,
    port: u16,
    admin: u16,
) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [access_log]\ntarget = \"{}\"\n[reload]\npoll_interval = \"{poll}\"\n{extra}\n{routes}",
        dir.join("access.log").display()
    )
}

pub struct Harness {
    pub sidecar: Sidecar,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Harness {
    pub async fn start(routes: &str, extra: &str) -> Self {
        Self::start_with_registry(routes, extra, REGISTRY).await
    }

    /// Reloads only when the test asks (no file polling).
    pub async fn start_manual(routes: &str) -> Self {
        Self::start_full(routes, "", REGISTRY, "1h").await
    }

    pub async fn start_with_registry(routes: &str, extra: &str, registry: &str) -> Self {
        Self::start_full(routes, extra, registry, "100ms").await
    }

    async fn start_full(routes: &str, extra: &str, registry: &str, poll: &str) -> Self {
        Self::start_edited(routes, extra, registry, poll, |t| t).await
    }

    /// As [`Harness::start_with_registry`] after `edit` rewrites the generated config text (for
    /// keys of the sections it always writes, such as `[admin]` or `[access_log]`).
    pub async fn start_edited(
        routes: &str,
        extra: &str,
        registry: &str,
        poll: &str,
        edit: impl Fn(String) -> String,
    ) -> Self {
        let dir = temp_dir("h");
        std::fs::write(dir.join("registry.yaml"), registry).unwrap();
        let config = dir.join("modelstamp.toml");
        let text = edit(config_text_polling(&dir, routes, extra, poll));
        std::fs::write(&config, text).unwrap();
        let sidecar = Sidecar::start(Source::File(config.clone())).await.unwrap();
        Self {
            sidecar,
            dir,
            config,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.proxy_addr)
    }

    pub async fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.sidecar.admin_addr)).await
    }

    /// The value of one exact series line (name plus labels as printed), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Poll until one exact series holds `value` (5 s at most).
    pub async fn metric_reaches(&self, series: &str, value: f64) -> bool {
        eventually(Duration::from_secs(5), || async {
            self.metric(series).await == value
        })
        .await
    }

    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.sidecar
            .telemetry
            .access_log
            .flush(Duration::from_secs(5));
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn lineage_id(&self, version: &str) -> String {
        let snap = self.sidecar.reloader.current().load_full();
        snap.registry.models["churn"].versions[version]
            .lineage_id
            .clone()
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Test clients disable Nagle like real ones: otherwise an HTTP/2 request's HEADERS and DATA
/// frames wait out the peer's delayed ACK (40 ms per request).
fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c
}

pub fn h1_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(connector())
}

/// A client that drops pooled connections idle for `idle`: below the server's keep-alive
/// deadline, so a request never races the server closing its connection.
pub fn client_idle(h2: bool, idle: Duration) -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .pool_idle_timeout(idle)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector())
}

pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector())
}

pub async fn send(req: Request<TestBody>) -> (Response<()>, Bytes) {
    let resp = h1_client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), bytes)
}

pub async fn get_text(url: &str) -> String {
    let (_, body) = send(Request::get(url).body(full(Bytes::new())).unwrap()).await;
    String::from_utf8(body.to_vec()).unwrap()
}

pub fn post(url: &str, body: &str) -> Request<TestBody> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// Start the real binary with `run --config cfg`, its output discarded.
pub fn spawn_run(cfg: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_modelstamp"))
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A free TCP port on 127.0.0.1 (for the real binary, whose ports a test must know).
/// `full` when `MODELSTAMP_FULL_SCALE` is set (CI's long step, as `SOAK_SECONDS` is for the
/// soak), else `quick`: the slowest tests keep their bar in CI and stay fast under
/// `cargo test`.
pub fn scale(quick: u64, full: u64) -> u64 {
    if std::env::var_os("MODELSTAMP_FULL_SCALE").is_some() {
        full
    } else {
        quick
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until the admin listener on `admin` answers `/readyz` with 200 (10 s at most).
pub async fn wait_ready(admin: u16) -> bool {
    let url = format!("http://127.0.0.1:{admin}/readyz");
    eventually(Duration::from_secs(10), || {
        let req = Request::get(url.as_str()).body(full("")).unwrap();
        async move {
            h1_client()
                .request(req)
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An in-process OTLP receiver (gRPC and HTTP/protobuf on one port) that decodes the real
/// protobuf and keeps every span with its resource's service name.
pub mod otlp {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    pub use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    /// What the receiver answers to the next export (`Ok` once the script is used up).
    #[derive(Clone, Debug)]
    pub enum Reply {
        Ok,
        /// A partial success: this many spans rejected, with this message.
        Partial(i64, &'static str),
        /// An HTTP error status, with a `Retry-After` value.
        Http(u16, Option<&'static str>),
        /// A gRPC error status (trailers-only).
        Grpc(&'static str),
        /// A gRPC error status with a `google.rpc.RetryInfo` of this many milliseconds in
        /// `grpc-status-details-bin`.
        GrpcRetryInfo(&'static str, u64),
    }

    /// When an export arrived, and its `grpc-encoding` or `content-encoding`.
    pub type Attempt = (Instant, Option<String>);

    #[derive(Clone, Default)]
    pub struct Received {
        pub spans: Arc<Mutex<Vec<(String, Span)>>>,
        pub requests: Arc<AtomicUsize>,
        pub script: Arc<Mutex<std::collections::VecDeque<Reply>>>,
        /// When each export arrived, and its `grpc-encoding` or `content-encoding`.
        pub attempts: Arc<Mutex<Vec<Attempt>>>,
    }

    impl Received {
        pub fn spans(&self) -> Vec<(String, Span)> {
            self.spans.lock().unwrap().clone()
        }

        pub fn answer(&self, replies: impl IntoIterator<Item = Reply>) {
            self.script.lock().unwrap().extend(replies);
        }

        pub fn attempts(&self) -> Vec<Attempt> {
            self.attempts.lock().unwrap().clone()
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    pub fn attr(span: &Span, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                AnyValue::IntValue(i) => Some(i.to_string()),
                AnyValue::BoolValue(b) => Some(b.to_string()),
                AnyValue::DoubleValue(d) => Some(d.to_string()),
                _ => None,
            })
    }

    /// A `google.rpc.Status` holding a `google.rpc.RetryInfo`, base64 without padding as gRPC
    /// libraries send binary metadata.
    fn retry_info(millis: u64) -> String {
        use base64::Engine as _;
        #[derive(Clone, PartialEq, prost::Message)]
        struct Status {
            #[prost(int32, tag = "1")]
            code: i32,
            #[prost(message, repeated, tag = "3")]
            details: Vec<Any>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Any {
            #[prost(string, tag = "1")]
            type_url: String,
            #[prost(bytes = "vec", tag = "2")]
            value: Vec<u8>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct RetryInfo {
            #[prost(message, optional, tag = "1")]
            retry_delay: Option<Duration>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Duration {
            #[prost(int64, tag = "1")]
            seconds: i64,
            #[prost(int32, tag = "2")]
            nanos: i32,
        }
        let info = RetryInfo {
            retry_delay: Some(Duration {
                seconds: (millis / 1000) as i64,
                nanos: ((millis % 1000) * 1_000_000) as i32,
            }),
        };
        let status = Status {
            code: 8,
            details: vec![Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        };
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec())
    }

    pub fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn store(received: &Received, req: ExportTraceServiceRequest) {
        received.requests.fetch_add(1, Ordering::SeqCst);
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    received.spans.lock().unwrap().push((service.clone(), span));
                }
            }
        }
    }

    pub async fn start() -> (Upstream, Received) {
        let received = Received::default();
        let r = received.clone();
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let r = r.clone();
            Box::pin(async move {
                let grpc = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let encoding = req
                    .headers()
                    .get(if grpc {
                        "grpc-encoding"
                    } else {
                        "content-encoding"
                    })
                    .map(|v| v.to_str().unwrap().to_string());
                r.attempts
                    .lock()
                    .unwrap()
                    .push((Instant::now(), encoding.clone()));
                let reply = r.script.lock().unwrap().pop_front().unwrap_or(Reply::Ok);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let rejected = match reply {
                    Reply::Ok => None,
                    Reply::Partial(n, message) => Some((n, message)),
                    Reply::Http(status, after) => {
                        let mut resp = Response::builder().status(status);
                        if let Some(after) = after {
                            resp = resp.header("retry-after", after);
                        }
                        return resp.body(full("")).unwrap();
                    }
                    Reply::Grpc(code) => {
                        return Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", code)
                            .header("grpc-message", "scripted")
                            .body(full(""))
                            .unwrap();
                    }
                    Reply::GrpcRetryInfo(code, millis) => {
                        return Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", code)
                            .header("grpc-status-details-bin", retry_info(millis))
                            .body(full(""))
                            .unwrap();
                    }
                };
                let reply = ExportTraceServiceResponse {
                    partial_success: rejected.map(|(n, message)| ExportTracePartialSuccess {
                        rejected_spans: n,
                        error_message: message.into(),
                    }),
                }
                .encode_to_vec();
                let gzipped = encoding.as_deref() == Some("gzip");
                if grpc {
                    // gRPC framing: 1 byte compression flag, 4 bytes big-endian length, message.
                    assert_eq!(
                        body[0] == 1,
                        gzipped,
                        "the flag says what grpc-encoding says"
                    );
                    let message = if gzipped {
                        gunzip(&body[5..])
                    } else {
                        body[5..].to_vec()
                    };
                    store(&r, ExportTraceServiceRequest::decode(&message[..]).unwrap());
                    // Answered compressed as the request was, as grpc-go does.
                    let reply = if gzipped { gzip(&reply) } else { reply };
                    let mut framed = vec![u8::from(gzipped)];
                    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                    framed.extend_from_slice(&reply);
                    let (tx, body) = channel_body(2);
                    tokio::spawn(async move {
                        tx.send(Frame::data(Bytes::from(framed))).await.unwrap();
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        tx.send(Frame::trailers(trailers)).await.unwrap();
                    });
                    let mut resp = Response::builder().header("content-type", "application/grpc");
                    if gzipped {
                        resp = resp.header("grpc-encoding", "gzip");
                    }
                    resp.body(body).unwrap()
                } else {
                    let message = if gzipped {
                        gunzip(&body)
                    } else {
                        body.to_vec()
                    };
                    store(&r, ExportTraceServiceRequest::decode(&message[..]).unwrap());
                    let mut resp =
                        Response::builder().header("content-type", "application/x-protobuf");
                    if gzipped {
                        resp = resp.header("content-encoding", "gzip");
                    }
                    resp.body(full(if gzipped { gzip(&reply) } else { reply }))
                        .unwrap()
                }
            })
        });
        (Upstream::start(handler).await, received)
    }
}
