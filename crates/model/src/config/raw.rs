//! Raw config as written in TOML: every field optional where a default exists, unknown fields
//! rejected. Nothing here is trusted; `validate` turns it into a `Config`.

use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub registry: RawRegistry,
    #[serde(default)]
    pub reload: RawReload,
    #[serde(default)]
    pub traces: RawTraces,
    #[serde(default)]
    pub inspect: RawInspect,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub openlineage: RawOpenLineage,
    #[serde(default)]
    pub history: RawHistory,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[history]`: the durable event store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    pub path: Option<String>,
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub schema: Option<String>,
    pub retention: Option<String>,
    pub queue: Option<usize>,
    pub instance: Option<String>,
}

/// `[openlineage]`: how lineage events' dataset names map to the registry's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenLineage {
    pub aliases: Option<std::collections::BTreeMap<String, String>>,
}

/// `[audit]`: where weight changes, promotions and rollbacks are recorded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Option<String>,
}

/// `[inspect]`: payload inspection shared by every route (queue, memory, windows, thresholds).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInspect {
    pub queue: Option<usize>,
    pub memory_budget_bytes: Option<u64>,
    pub window: Option<String>,
    pub min_samples: Option<u64>,
    pub issue_rate_threshold: Option<f64>,
    pub psi_warn: Option<f64>,
    pub psi_alert: Option<f64>,
    pub js_warn: Option<f64>,
}

/// `[routes.inspect]`: how one route's payloads are read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteInspect {
    pub codec: Option<String>,
    pub sample: Option<f64>,
    pub enforce: Option<bool>,
}

/// `[traces]`: OpenTelemetry spans and the trace → lineage index. Unset fields fall back to the
/// standard `OTEL_*` environment variables (see [`RawTraces::apply_env`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraces {
    pub service_name: Option<String>,
    pub sampler: Option<String>,
    pub sampler_ratio: Option<f64>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub otlp_compression: Option<String>,
    pub export_timeout: Option<String>,
    pub queue: Option<usize>,
    pub batch: Option<usize>,
    pub lineage_url: Option<String>,
    pub recent_requests: Option<usize>,
    /// For an https:// collector: a CA bundle, and the client certificate and key (mTLS).
    pub otlp_certificate: Option<String>,
    pub otlp_client_certificate: Option<String>,
    pub otlp_client_key: Option<String>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, `_CLIENT_CERTIFICATE` and `_CLIENT_KEY`.
    #[serde(skip)]
    pub env_tls: RawTlsClient,
}

impl RawConfig {
    /// Fill secrets left out of the file from `MODELSTAMP_ADMIN_TOKEN`,
    /// `MODELSTAMP_WEBHOOK_SECRET` and MLflow's `MLFLOW_TRACKING_USERNAME`, `_PASSWORD`,
    /// `_TOKEN`, `_SERVER_CERT_PATH` and `_CLIENT_CERT_PATH`, and `[traces]` from the `OTEL_*`
    /// variables.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if self.admin.token.is_none() {
            self.admin.token = env("MODELSTAMP_ADMIN_TOKEN");
        }
        if self.registry.webhook_secret.is_none() {
            self.registry.webhook_secret = env("MODELSTAMP_WEBHOOK_SECRET");
        }
        // MLflow's own client variables; the config file's keys win.
        if self.registry.username.is_none() {
            self.registry.username = env("MLFLOW_TRACKING_USERNAME");
        }
        self.registry.env_password = env("MLFLOW_TRACKING_PASSWORD");
        self.registry.env_token = env("MLFLOW_TRACKING_TOKEN");
        self.registry.env_ca_file = env("MLFLOW_TRACKING_SERVER_CERT_PATH");
        self.registry.env_client_cert = env("MLFLOW_TRACKING_CLIENT_CERT_PATH");
        self.traces.apply_env(env);
    }
}

impl RawTraces {
    /// Fill unset fields from `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER(_ARG)`,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, `_PROTOCOL`, `_COMPRESSION`, `_TIMEOUT` and the
    /// certificate files `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, `_CLIENT_CERTIFICATE`,
    /// `_CLIENT_KEY`.
    /// The config file wins, as programmatic settings do in the OpenTelemetry SDKs.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if self.service_name.is_none() {
            self.service_name = env("OTEL_SERVICE_NAME");
        }
        if self.sampler.is_none() {
            self.sampler = env("OTEL_TRACES_SAMPLER");
        }
        if self.sampler_ratio.is_none() {
            self.sampler_ratio = env("OTEL_TRACES_SAMPLER_ARG").and_then(|v| v.trim().parse().ok());
        }
        if self.otlp_compression.is_none() {
            self.otlp_compression = env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                .or_else(|| env("OTEL_EXPORTER_OTLP_COMPRESSION"));
        }
        if self.export_timeout.is_none() {
            // Milliseconds, as the specification has it.
            self.export_timeout = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
                .map(|ms| format!("{}ms", ms.trim()));
        }
        if self.otlp_protocol.is_none() {
            self.otlp_protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        }
        if self.otlp_endpoint.is_none() {
            // The signal-specific variable is used as is; the generic one gets `/v1/traces`
            // appended for HTTP (the spec's rule), which validation applies.
            self.otlp_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        }
        let otel = |name: &str| {
            env(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{name}")))
        };
        self.env_tls = RawTlsClient {
            ca_file: otel("CERTIFICATE"),
            cert_file: otel("CLIENT_CERTIFICATE"),
            key_file: otel("CLIENT_KEY"),
        };
    }
}

/// `[server]`: the data-plane listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub drain_grace: Option<String>,
    pub tls: Option<RawTlsServer>,
}

/// A listener's TLS (`[server.tls]`, `[admin.tls]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsServer {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub client_ca_file: Option<String>,
}

/// `[admin]`: the admin listener (metrics, health, lineage).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub tls: Option<RawTlsServer>,
}

/// `[headers]`: names of the stamp headers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub model: Option<String>,
    pub version: Option<String>,
    pub lineage: Option<String>,
    pub request_id: Option<String>,
    pub stale: Option<String>,
    pub drop_untrusted: Option<Vec<String>>,
}

/// `[upstream]`: defaults for every route's upstream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
}

/// `[limits]`: what one client may ask of the sidecar.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_body_bytes: Option<u64>,
    pub max_inspect_bytes: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub h2_max_concurrent_streams: Option<u64>,
    pub max_held_response_bytes: Option<u64>,
}

/// `[access_log]`: where the per-request JSON lines go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `stdout`, `off`, or a file path.
    pub target: Option<String>,
    pub queue: Option<usize>,
}

/// `[registry]`: where lineage records come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub backend: Option<String>,
    pub path: Option<String>,
    pub uri: Option<String>,
    pub poll_interval: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub fail_fast: Option<bool>,
    pub ready_needs_lineage: Option<bool>,
    pub models: Option<Vec<String>>,
    pub webhook_secret: Option<String>,
    pub max_versions: Option<usize>,
    pub max_bytes: Option<u64>,
    /// MLflow basic auth: the user, and a file holding the password (a Secret mount).
    pub username: Option<String>,
    pub password_file: Option<String>,
    /// MLflow bearer auth: a file holding the token.
    pub token_file: Option<String>,
    /// `MLFLOW_TRACKING_PASSWORD` and `MLFLOW_TRACKING_TOKEN`: from the environment only,
    /// never from the file.
    #[serde(skip)]
    pub env_password: Option<String>,
    #[serde(skip)]
    pub env_token: Option<String>,
    /// `[registry.tls]`: how an https:// MLflow is checked, and the client certificate.
    pub tls: Option<RawTlsClient>,
    /// `MLFLOW_TRACKING_SERVER_CERT_PATH` and `MLFLOW_TRACKING_CLIENT_CERT_PATH`: the defaults
    /// of `tls.ca_file` and of `tls.cert_file` (a file holding the key too).
    #[serde(skip)]
    pub env_ca_file: Option<String>,
    #[serde(skip)]
    pub env_client_cert: Option<String>,
}

/// A TLS client's files (`[registry.tls]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsClient {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `[reload]`: how config and registry files are watched.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    pub poll_interval: Option<String>,
}

/// `[[routes]]`: one way requests reach a model server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub model: Option<String>,
    pub upstream: Option<String>,
    /// A registry version (`"2"`) or alias (`"@champion"`).
    pub serves: Option<String>,
    pub trusted: Option<bool>,
    pub version_header: Option<String>,
    pub upstream_protocol: Option<String>,
    pub response_timeout: Option<String>,
    #[serde(default)]
    pub inspect: RawRouteInspect,
    /// Version backends with weights (a canary split).
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    pub canary: Option<RawCanary>,
    pub shadow: Option<RawShadow>,
    pub upstream_tls: Option<RawUpstreamTls>,
}

/// `[routes.upstream_tls]`: the route's model servers are reached over HTTPS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub server_name: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `[[routes.backends]]`: one version of the route's model and its share of traffic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub version: Option<String>,
    pub weight: Option<u32>,
    pub upstream: Option<String>,
}

/// `[routes.canary]`: stickiness, pinning, the comparison and automatic rollback.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub baseline: Option<String>,
    pub candidate: Option<String>,
    pub sticky_header: Option<String>,
    pub sticky_cookie: Option<String>,
    pub pin_header: Option<String>,
    pub pin_sources: Option<Vec<String>>,
    pub min_requests: Option<u64>,
    pub alpha: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_latency_ratio: Option<f64>,
    pub max_prediction_psi: Option<f64>,
    pub min_shadow_agreement: Option<f64>,
    pub max_issue_rate: Option<f64>,
    pub auto_rollback_after: Option<u32>,
    pub check_interval: Option<String>,
}

/// `[routes.shadow]`: a share of requests also sent to a shadow version.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub version: Option<String>,
    pub upstream: Option<String>,
    pub sample: Option<f64>,
    pub timeout: Option<String>,
    pub abs_tolerance: Option<f64>,
    pub rel_tolerance: Option<f64>,
    pub max_in_flight: Option<usize>,
}

/// `[routes.match]`: every given condition must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path_prefix: Option<String>,
    pub open_inference: Option<bool>,
    pub header: Option<String>,
    pub header_value: Option<String>,
}
