//! Config: TOML text → [`raw::RawConfig`] (serde, unknown fields rejected) → [`validate`] →
//! [`Config`]. Validation collects every error with its path before failing. This module knows
//! nothing of routing or HTTP serving.

mod canary;
mod inspect;
pub mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;

pub use canary::{Backend, Canary, Cidr, Shadow, Sticky, Thresholds};
pub use inspect::{CodecChoice, Inspect, RouteInspect};
pub use validate::{is_token, parse_duration, validate};

/// One problem found in a config or registry, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is, such as `routes[1].upstream`.
    pub path: String,
    /// What is wrong, such as `invalid address "x:y"`.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} error(s):\n{}", .0.len(), join_errors(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn join_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parse TOML text into the raw structs; syntax errors carry line and column.
pub fn parse(text: &str, origin: &str) -> Result<raw::RawConfig, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let span = e
            .span()
            .map(|s| {
                let (line, col) = line_col(text, s.start);
                format!(":{line}:{col}")
            })
            .unwrap_or_default();
        ConfigErrors(vec![ConfigError::new(
            format!("{origin}{span}"),
            e.message().to_string(),
        )])
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// A validated, immutable config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data-plane listen address.
    pub listen: SocketAddr,
    /// Admin listen address (loopback by default).
    pub admin_listen: SocketAddr,
    /// TLS on the data-plane listener, when set.
    pub server_tls: Option<crate::tls::TlsServer>,
    /// TLS on the admin listener, when set (with client certificates required, optionally).
    pub admin_tls: Option<crate::tls::TlsServer>,
    /// Bearer token required by mutating admin calls, when set.
    pub admin_token: Option<Secret>,
    /// Host names (beyond IP literals and `localhost`) the admin API answers to: a page that
    /// rebinds its own name to the sidecar's address cannot reach it (`*`: any).
    pub admin_allowed_hosts: Vec<String>,
    /// How long SIGTERM waits for in-flight requests and streams.
    pub drain_grace: Duration,
    /// Stamp header names.
    pub headers: HeaderNames,
    /// Upstream defaults.
    pub upstream: UpstreamSettings,
    /// Size limits.
    pub limits: Limits,
    /// Access log target.
    pub access_log: AccessLogTarget,
    /// Access log queue capacity (lines); beyond it lines are dropped and counted.
    pub access_log_queue: usize,
    /// Registry source.
    pub registry: RegistrySource,
    /// Most model versions a registry may hold; a larger one is refused (every version has
    /// its own metric series and records in memory).
    pub registry_max_versions: usize,
    /// Largest registry file accepted, in bytes; a larger one is refused before parsing.
    pub registry_max_bytes: u64,
    /// How often config and registry files are checked for changes.
    pub reload_poll_interval: Duration,
    /// Spans and the trace → lineage index.
    pub traces: Traces,
    /// Payload inspection.
    pub inspect: Inspect,
    /// Audit log file (weight changes, promotions, rollbacks); `None`: kept in memory only.
    pub audit_path: Option<PathBuf>,
    /// The durable event store, when configured.
    pub history: Option<History>,
    /// Lineage event dataset names (an OpenLineage `namespace/name` or plain name) → the name
    /// the registry's records use for that dataset or table (`[openlineage] aliases`).
    pub openlineage_aliases: std::collections::BTreeMap<String, String>,
    /// Routes, matched in order.
    pub routes: Vec<Route>,
}

/// `[history]`: where the journal's events are kept for good.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Where events are kept.
    pub store: HistoryStore,
    /// Events older than this are pruned.
    pub retention: Duration,
    /// Events queued for the writer at most; beyond, they are dropped and counted.
    pub queue: usize,
    /// This sidecar's name on every event: `POD_NAME` (the downward API), else host:pid.
    pub instance: String,
}

/// The history store's backend.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryStore {
    /// One SQLite file (created, WAL mode): a single sidecar.
    Sqlite(PathBuf),
    /// PostgreSQL, shared by a fleet.
    Postgres {
        /// `postgres://user@host:port/db` (a secret: it may hold a password).
        url: Secret,
        /// From `history.password_file` or `MODELSTAMP_HISTORY_PASSWORD` (wins over the URL's).
        password: Option<Secret>,
        /// The schema the tables live in.
        schema: String,
    },
}

/// How spans are sampled and exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Traces {
    /// `service.name` of the spans.
    pub service_name: String,
    /// Sampling decision for new and continued traces.
    pub sampler: Sampler,
    /// Where spans go; `None` keeps trace context and IDs but exports nothing.
    pub export: Option<OtlpExport>,
    /// Spans buffered for export; more are dropped and counted.
    pub queue: usize,
    /// Spans per export call.
    pub batch: usize,
    /// `ml.lineage.url` template; `{lineage_id}` is replaced.
    pub lineage_url: String,
    /// How many recent requests the trace → lineage index keeps.
    pub recent_requests: usize,
}

/// Sampler, named as in `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`.
    Ratio(f64),
    /// `parentbased_always_on`.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` (the default, ratio 1.0).
    ParentBasedRatio(f64),
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// gRPC (port 4317 by convention).
    Grpc,
    /// HTTP with protobuf bodies (port 4318, `/v1/traces`).
    HttpProtobuf,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpExport {
    /// Collector URL (for HTTP, the full `/v1/traces` URL).
    pub endpoint: String,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Per-export timeout.
    pub timeout: Duration,
    /// How an https:// collector's certificate is checked, and the client certificate.
    pub tls: crate::tls::TlsClient,
    /// Bodies compressed with gzip (`grpc-encoding` / `content-encoding`).
    pub gzip: bool,
}

/// Names of the headers modelstamp writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    /// Model name header (`x-model-name`).
    pub model: HeaderName,
    /// Model version header (`x-model-version`).
    pub version: HeaderName,
    /// Lineage ID header (`x-lineage-id`).
    pub lineage: HeaderName,
    /// Request ID header (`x-request-id`).
    pub request_id: HeaderName,
    /// Set to `true` on responses from a version whose lineage is stale (`x-lineage-stale`).
    pub stale: HeaderName,
    /// Forwarding headers a client on an untrusted route may not pass to the model server:
    /// they claim a client address, host, port, prefix or original URL that only a trusted
    /// proxy may vouch for (`x-forwarded-for` and `-proto` are rewritten, not dropped).
    pub drop_untrusted: Vec<HeaderName>,
}

/// The default of `headers.drop_untrusted`.
pub const DROP_UNTRUSTED: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-original-url",
    "x-rewrite-url",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
];

impl HeaderNames {
    /// Whether `name` is one of these.
    pub fn contains(&self, name: &HeaderName) -> bool {
        [
            &self.model,
            &self.version,
            &self.lineage,
            &self.request_id,
            &self.stale,
        ]
        .contains(&name)
    }
}

/// Upstream connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
}

/// Size, time and count limits that protect the sidecar from its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted (413 beyond it).
    pub max_request_body_bytes: u64,
    /// Most response bytes copied per message to read the reported version.
    pub max_inspect_bytes: usize,
    /// Largest HTTP/1 request head (start line and headers) in bytes, and largest HTTP/2 header
    /// list (431 / stream refused beyond it).
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1 request (431 beyond it).
    pub max_headers: usize,
    /// Time a client has to send a complete HTTP/1 request head, counted from the moment the
    /// connection is ready for one: it also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// A client connection with no bytes in either direction for this long is closed (also a
    /// silent stream on it: an SSE stream that sends nothing for this long is cut).
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a request body once it has started (nginx's
    /// `client_body_timeout`): a client that stalls longer gets 408, counted as its own error
    /// (`modelstamp_request_errors_total{kind="body_timeout"}`), never the version's.
    pub body_read_timeout: Duration,
    /// Most client connections open at once per listener; further ones are closed at accept.
    pub max_connections: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// Most bytes of answers held for clients that have not read them yet, all connections
    /// together; above it new requests get 503 (`overloaded`) until clients drain or leave.
    pub max_held_response_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 64 * 1024 * 1024,
            max_inspect_bytes: 64 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_concurrent_streams: 256,
            max_held_response_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// One JSON line per request on stdout.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Not written.
    Off,
}

/// Where registry records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySource {
    /// A YAML file (path resolved against the config file's folder).
    File(PathBuf),
    /// An MLflow tracking server.
    Mlflow(Box<MlflowSettings>),
}

/// How the MLflow registry is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlflowSettings {
    /// Tracking server URL, without a trailing slash.
    pub uri: String,
    /// How often records and aliases are refreshed.
    pub poll_interval: Duration,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Retries per call (transport errors, 5xx, 429), with exponential back-off.
    pub retries: u32,
    /// Refuse to start while MLflow is unreachable (default: start with lineage `unknown`).
    pub fail_fast: bool,
    /// `/readyz` answers 503 while no record has been read (default: ready, serving with
    /// lineage `unknown`, and saying so).
    pub ready_needs_lineage: bool,
    /// Registered models to read (default: the models the routes name).
    pub models: Vec<String>,
    /// Shared secret of MLflow webhooks (`X-MLflow-Signature`), when set.
    pub webhook_secret: Option<Secret>,
    /// How calls to MLflow authenticate, when it asks.
    pub credentials: Option<Credentials>,
    /// How an https:// MLflow's certificate is checked, and the client certificate.
    pub tls: crate::tls::TlsClient,
    /// The files these settings were read from (password, token, TLS): the reloader watches
    /// them with the config, so a rotated Secret or certificate is used without a restart.
    pub files: Vec<std::path::PathBuf>,
    /// A hash of the TLS files' bytes: settings from rotated certificates differ, so the
    /// client is rebuilt.
    pub tls_fingerprint: u64,
}

/// Credentials for MLflow, taken as MLflow's own clients take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic (`mlflow server --app-name basic-auth`).
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A bearer token (hosted MLflow services).
    Bearer(Secret),
}

/// A secret from config or environment: compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl RegistrySource {
    /// `ml.registry.uri` and log form.
    pub fn uri(&self) -> String {
        match self {
            Self::File(p) => format!("file://{}", p.display()),
            Self::Mlflow(m) => m.uri.clone(),
        }
    }
}

/// Which HTTP version is spoken to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// gRPC (`content-type: application/grpc*`) over h2c, everything else over HTTP/1.1.
    Auto,
    /// Always HTTP/1.1.
    Http1,
    /// Always HTTP/2 cleartext with prior knowledge.
    Http2,
}

/// What version a route's upstream serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serves {
    /// A fixed registry version.
    Version(String),
    /// A registry alias, resolved when the snapshot is built.
    Alias(String),
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name (used as a metric label and in `/versions`).
    pub name: String,
    /// When the route applies.
    pub matcher: RouteMatch,
    /// The model; `None` takes it from the Open Inference path.
    pub model: Option<String>,
    /// The model server, `host:port`.
    pub upstream: Authority,
    /// The version the upstream serves when the path names none.
    pub serves: Option<Serves>,
    /// Whether callers may send their own stamp headers.
    pub trusted: bool,
    /// A response header in which the model server reports its version.
    pub version_header: Option<HeaderName>,
    /// HTTP version towards the upstream.
    pub upstream_protocol: UpstreamProtocol,
    /// Response timeout for this route.
    pub response_timeout: Duration,
    /// How payloads are inspected.
    pub inspect: RouteInspect,
    /// Version backends with weights (empty: the route serves `serves`).
    pub backends: Vec<Backend>,
    /// Canary settings (meaningful with two or more backends).
    pub canary: Canary,
    /// Shadow version.
    pub shadow: Option<Shadow>,
    /// Its model servers (the route's, its backends' and its shadow's) are reached over HTTPS.
    pub upstream_tls: Option<std::sync::Arc<crate::tls::UpstreamTls>>,
}

impl Route {
    /// The `url.full` scheme of its upstream calls.
    pub fn upstream_scheme(&self) -> &'static str {
        if self.upstream_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// A route's conditions; all given ones must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// The path starts with this.
    pub path_prefix: Option<String>,
    /// The path is an Open Inference model path (for the route's model, if it names one).
    pub open_inference: bool,
    /// The header is present (and equals the value, if given).
    pub header: Option<(HeaderName, Option<String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TOML has no aliases; what it must bound is nesting and repeated keys.
    #[test]
    fn deep_nesting_and_repeated_keys_are_refused_with_a_location() {
        for deep in [
            format!("x = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!("x = {}1{}", "{a = ".repeat(100_000), "}".repeat(100_000)),
        ] {
            let e = parse(&deep, "c.toml").err().map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("c.toml:1:")));
        }
        let twice = "[server]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n";
        let e = parse(twice, "c.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("c.toml:3:") && e.contains("duplicate key"),
            "{e}"
        );
    }
}
