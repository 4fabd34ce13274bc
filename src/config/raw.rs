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
    pub routes: Vec<RawRoute>,
}

/// `[server]`: the data-plane listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub drain_grace: Option<String>,
}

/// `[admin]`: the admin listener (metrics, health, lineage).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

/// `[headers]`: names of the stamp headers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub model: Option<String>,
    pub version: Option<String>,
    pub lineage: Option<String>,
    pub request_id: Option<String>,
}

/// `[upstream]`: defaults for every route's upstream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
}

/// `[limits]`: request size limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_body_bytes: Option<u64>,
    pub max_inspect_bytes: Option<u64>,
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
