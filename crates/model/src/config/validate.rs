//! Raw → validated config. Every check pushes onto one error list so that a user sees all
//! problems at once, each with its path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;

use super::raw::{RawConfig, RawRoute};
use super::{
    AccessLogTarget, Config, ConfigError, ConfigErrors, Credentials, HeaderNames, Limits,
    MlflowSettings, OtlpExport, OtlpProtocol, RegistrySource, Route, RouteMatch, Sampler, Secret,
    Serves, Traces, UpstreamProtocol, UpstreamSettings,
};

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const MAX_NAME_LEN: usize = 128;

/// Validate a raw config. `base_dir` resolves relative file paths (the config file's folder).
pub fn validate(raw: &RawConfig, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut errs = Vec::new();
    let listen = addr(
        &mut errs,
        "server.listen",
        raw.server.listen.as_deref(),
        DEFAULT_LISTEN,
    );
    let admin_listen = addr(
        &mut errs,
        "admin.listen",
        raw.admin.listen.as_deref(),
        DEFAULT_ADMIN_LISTEN,
    );
    if listen.port() != 0 && listen == admin_listen {
        errs.push(ConfigError::new(
            "admin.listen",
            "must differ from server.listen",
        ));
    }
    let drain_grace = dur(
        &mut errs,
        "server.drain_grace",
        &raw.server.drain_grace,
        30_000,
    );
    let h = &raw.headers;
    let headers = HeaderNames {
        model: header(
            &mut errs,
            "headers.model",
            h.model.as_deref(),
            "x-model-name",
        ),
        version: header(
            &mut errs,
            "headers.version",
            h.version.as_deref(),
            "x-model-version",
        ),
        lineage: header(
            &mut errs,
            "headers.lineage",
            h.lineage.as_deref(),
            "x-lineage-id",
        ),
        request_id: header(
            &mut errs,
            "headers.request_id",
            h.request_id.as_deref(),
            "x-request-id",
        ),
        stale: header(
            &mut errs,
            "headers.stale",
            h.stale.as_deref(),
            "x-lineage-stale",
        ),
        drop_untrusted: match &h.drop_untrusted {
            None => (super::DROP_UNTRUSTED.iter())
                .map(|n| HeaderName::from_static(n))
                .collect(),
            Some(names) => (names.iter().enumerate())
                .filter_map(|(i, n)| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| {
                            errs.push(ConfigError::new(
                                format!("headers.drop_untrusted[{i}]"),
                                format!("invalid header name \"{n}\""),
                            ))
                        })
                        .ok()
                })
                .collect(),
        },
    };
    let stamp_names = [
        &headers.model,
        &headers.version,
        &headers.lineage,
        &headers.request_id,
        &headers.stale,
    ];
    if stamp_names.iter().collect::<HashSet<_>>().len() != stamp_names.len() {
        errs.push(ConfigError::new(
            "headers",
            "stamp header names must be distinct",
        ));
    }
    let u = &raw.upstream;
    let upstream = UpstreamSettings {
        connect_timeout: dur(
            &mut errs,
            "upstream.connect_timeout",
            &u.connect_timeout,
            1_000,
        ),
        response_timeout: dur(
            &mut errs,
            "upstream.response_timeout",
            &u.response_timeout,
            60_000,
        ),
        pool_idle_timeout: dur(
            &mut errs,
            "upstream.pool_idle_timeout",
            &u.pool_idle_timeout,
            90_000,
        ),
    };
    let limits = limits(&mut errs, raw);
    let access_log = match raw.access_log.target.as_deref().unwrap_or("stdout") {
        "stdout" => AccessLogTarget::Stdout,
        "off" => AccessLogTarget::Off,
        "" => {
            errs.push(ConfigError::new(
                "access_log.target",
                "must be stdout, off or a file path",
            ));
            AccessLogTarget::Off
        }
        path => AccessLogTarget::File(base_dir.join(path)),
    };
    let access_log_queue = raw.access_log.queue.unwrap_or(16_384);
    if access_log_queue == 0 {
        errs.push(ConfigError::new("access_log.queue", "must be at least 1"));
    }
    let registry = registry(&mut errs, raw, base_dir);
    let registry_max_versions = raw.registry.max_versions.unwrap_or(10_000);
    if registry_max_versions == 0 {
        errs.push(ConfigError::new(
            "registry.max_versions",
            "must be greater than 0",
        ));
    }
    let registry_max_bytes = raw.registry.max_bytes.unwrap_or(64 << 20);
    if registry_max_bytes == 0 {
        errs.push(ConfigError::new(
            "registry.max_bytes",
            "must be greater than 0",
        ));
    }
    let reload_poll_interval = dur(
        &mut errs,
        "reload.poll_interval",
        &raw.reload.poll_interval,
        2_000,
    );
    if reload_poll_interval.is_zero() {
        errs.push(ConfigError::new(
            "reload.poll_interval",
            "must be greater than 0",
        ));
    }
    let traces = traces(&mut errs, raw, admin_listen, base_dir);
    let server_tls = tls_server(&mut errs, "server.tls", raw.server.tls.as_ref(), base_dir);
    let admin_tls = tls_server(&mut errs, "admin.tls", raw.admin.tls.as_ref(), base_dir);
    let inspect = super::inspect::inspect(&mut errs, &raw.inspect);
    let routes = routes(
        &mut errs,
        raw,
        upstream.response_timeout,
        &headers,
        base_dir,
    );
    let admin_token = secret(&mut errs, "admin.token", raw.admin.token.as_deref());
    let history = history(&mut errs, raw, base_dir);
    let openlineage_aliases = raw.openlineage.aliases.clone().unwrap_or_default();
    for (from, to) in &openlineage_aliases {
        if from.trim().is_empty() || to.trim().is_empty() {
            errs.push(ConfigError::new(
                format!("openlineage.aliases.\"{from}\""),
                "names must not be empty",
            ));
        }
    }
    if errs.is_empty() {
        Ok(Config {
            listen,
            admin_listen,
            server_tls,
            admin_tls,
            admin_token,
            admin_allowed_hosts: (raw.admin.allowed_hosts.clone().unwrap_or_default())
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            drain_grace,
            headers,
            upstream,
            limits,
            access_log,
            access_log_queue,
            registry,
            registry_max_versions,
            registry_max_bytes,
            reload_poll_interval,
            traces,
            inspect,
            audit_path: super::canary::audit_path(raw.audit.path.as_deref(), base_dir),
            history,
            openlineage_aliases,
            routes,
        })
    } else {
        Err(ConfigErrors(errs))
    }
}

fn limits(errs: &mut Vec<ConfigError>, raw: &RawConfig) -> Limits {
    let l = &raw.limits;
    let d = Limits::default();
    // Each count must lie in [min, max]; out of range is an error, not a silent clamp.
    let mut count = |path: &str, value: Option<u64>, default: u64, min: u64, max: u64| -> u64 {
        let v = value.unwrap_or(default);
        if !(min..=max).contains(&v) {
            errs.push(ConfigError::new(
                path,
                format!("must be between {min} and {max}, got {v}"),
            ));
            return default;
        }
        v
    };
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let max_request_body_bytes = count(
        "limits.max_request_body_bytes",
        l.max_request_body_bytes,
        d.max_request_body_bytes,
        1,
        u64::MAX,
    );
    let max_inspect_bytes = size(count(
        "limits.max_inspect_bytes",
        l.max_inspect_bytes,
        d.max_inspect_bytes as u64,
        0,
        16 * 1024 * 1024,
    ));
    // hyper's read buffer, which bounds the request head, is at least 8 KiB.
    let max_header_bytes = size(count(
        "limits.max_header_bytes",
        l.max_header_bytes,
        d.max_header_bytes as u64,
        8192,
        16 * 1024 * 1024,
    ));
    let max_headers = size(count(
        "limits.max_headers",
        l.max_headers,
        d.max_headers as u64,
        1,
        10_000,
    ));
    let max_connections = size(count(
        "limits.max_connections",
        l.max_connections,
        d.max_connections as u64,
        1,
        1_000_000,
    ));
    let h2_max_concurrent_streams = count(
        "limits.h2_max_concurrent_streams",
        l.h2_max_concurrent_streams,
        u64::from(d.h2_max_concurrent_streams),
        1,
        65_536,
    ) as u32;
    let max_held_response_bytes = count(
        "limits.max_held_response_bytes",
        l.max_held_response_bytes,
        d.max_held_response_bytes,
        1,
        u64::MAX,
    );
    let header_read_timeout = dur(
        errs,
        "limits.header_read_timeout",
        &l.header_read_timeout,
        d.header_read_timeout.as_millis() as u64,
    );
    let idle_timeout = dur(
        errs,
        "limits.idle_timeout",
        &l.idle_timeout,
        d.idle_timeout.as_millis() as u64,
    );
    let body_read_timeout = dur(
        errs,
        "limits.body_read_timeout",
        &l.body_read_timeout,
        d.body_read_timeout.as_millis() as u64,
    );
    for (path, value) in [
        ("limits.header_read_timeout", header_read_timeout),
        ("limits.idle_timeout", idle_timeout),
        ("limits.body_read_timeout", body_read_timeout),
    ] {
        if value.is_zero() {
            errs.push(ConfigError::new(path, "must be greater than 0"));
        }
    }
    Limits {
        max_request_body_bytes,
        max_inspect_bytes,
        max_header_bytes,
        max_headers,
        header_read_timeout,
        idle_timeout,
        body_read_timeout,
        max_connections,
        h2_max_concurrent_streams,
        max_held_response_bytes,
    }
}

fn traces(
    errs: &mut Vec<ConfigError>,
    raw: &RawConfig,
    admin: SocketAddr,
    base_dir: &Path,
) -> Traces {
    let t = &raw.traces;
    let ratio = t.sampler_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&ratio) {
        errs.push(ConfigError::new(
            "traces.sampler_ratio",
            format!("must be within 0..=1, got {ratio}"),
        ));
    }
    let sampler = match t.sampler.as_deref().unwrap_or("parentbased_traceidratio") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::Ratio(ratio),
        "parentbased_always_on" => Sampler::ParentBasedAlwaysOn,
        "parentbased_always_off" => Sampler::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => Sampler::ParentBasedRatio(ratio),
        other => {
            errs.push(ConfigError::new("traces.sampler", format!("unknown sampler \"{other}\" (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")));
            Sampler::ParentBasedRatio(ratio)
        }
    };
    let protocol = match t.otlp_protocol.as_deref().unwrap_or("grpc") {
        "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            errs.push(ConfigError::new(
                "traces.otlp_protocol",
                format!("unsupported \"{other}\" (grpc or http/protobuf)"),
            ));
            OtlpProtocol::Grpc
        }
    };
    let timeout = dur(errs, "traces.export_timeout", &t.export_timeout, 5_000);
    let gzip = match t.otlp_compression.as_deref().unwrap_or("none") {
        "gzip" => true,
        "none" => false,
        other => {
            errs.push(ConfigError::new(
                "traces.otlp_compression",
                format!("unsupported \"{other}\" (gzip or none)"),
            ));
            false
        }
    };
    let export = t.otlp_endpoint.as_deref().map(|e| {
        let uri = e.parse::<http::Uri>();
        let https = matches!(&uri, Ok(u) if u.scheme_str() == Some("https") && u.host().is_some());
        if !https && !matches!(&uri, Ok(u) if u.scheme_str() == Some("http") && u.host().is_some())
        {
            errs.push(ConfigError::new(
                "traces.otlp_endpoint",
                format!("invalid URL \"{e}\" (expected http://host:port or https://host:port)"),
            ));
        }
        let given = [
            &t.otlp_certificate,
            &t.otlp_client_certificate,
            &t.otlp_client_key,
        ]
        .iter()
        .any(|k| k.is_some())
        .then(|| super::raw::RawTlsClient {
            ca_file: t.otlp_certificate.clone(),
            cert_file: t.otlp_client_certificate.clone(),
            key_file: t.otlp_client_key.clone(),
        });
        let keys = TlsKeys {
            ca: "traces.otlp_certificate",
            ca_env: "OTEL_EXPORTER_OTLP_CERTIFICATE",
            identity: "traces.otlp_client_certificate",
            set: "traces.otlp_certificate",
            uri: "traces.otlp_endpoint",
        };
        let tls = tls_files(errs, &keys, given.as_ref(), &t.env_tls, https, base_dir);
        let mut endpoint = e.trim_end_matches('/').to_string();
        if protocol == OtlpProtocol::HttpProtobuf && !endpoint.ends_with("/v1/traces") {
            endpoint.push_str("/v1/traces");
        }
        OtlpExport {
            endpoint,
            protocol,
            timeout,
            tls,
            gzip,
        }
    });
    let queue = t.queue.unwrap_or(4096);
    let batch = t.batch.unwrap_or(512);
    if queue == 0 || batch == 0 || batch > queue {
        errs.push(ConfigError::new(
            "traces.batch",
            format!("need 1 <= batch ({batch}) <= queue ({queue})"),
        ));
    }
    let lineage_url = t
        .lineage_url
        .clone()
        .unwrap_or_else(|| format!("http://{admin}/lineage/{{lineage_id}}"));
    if !lineage_url.contains("{lineage_id}") {
        errs.push(ConfigError::new(
            "traces.lineage_url",
            "must contain {lineage_id}",
        ));
    }
    Traces {
        service_name: t
            .service_name
            .clone()
            .unwrap_or_else(|| "modelstamp".to_string()),
        sampler,
        export,
        queue,
        batch,
        lineage_url,
        recent_requests: t.recent_requests.unwrap_or(10_000),
    }
}

fn registry(errs: &mut Vec<ConfigError>, raw: &RawConfig, base_dir: &Path) -> RegistrySource {
    let r = &raw.registry;
    match r.backend.as_deref().unwrap_or("file") {
        "file" => {
            for (set, field) in [
                (r.uri.is_some(), "uri"),
                (r.models.is_some(), "models"),
                (r.fail_fast.is_some(), "fail_fast"),
                (r.ready_needs_lineage.is_some(), "ready_needs_lineage"),
                (r.password_file.is_some(), "password_file"),
                (r.token_file.is_some(), "token_file"),
                (r.tls.is_some(), "tls"),
            ] {
                if set {
                    errs.push(ConfigError::new(
                        format!("registry.{field}"),
                        "only for backend = \"mlflow\"",
                    ));
                }
            }
            RegistrySource::File(base_dir.join(r.path.as_deref().unwrap_or("registry.yaml")))
        }
        "mlflow" => {
            let (uri, userinfo) = split_userinfo(r.uri.as_deref().unwrap_or_default());
            let uri = uri.trim_end_matches('/').to_string();
            let credentials = credentials(errs, r, userinfo, base_dir);
            let scheme = uri
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.host().is_some())
                .and_then(|u| u.scheme_str().map(str::to_string));
            let https = scheme.as_deref() == Some("https");
            if !matches!(scheme.as_deref(), Some("http" | "https")) {
                errs.push(ConfigError::new(
                    "registry.uri",
                    format!(
                        "invalid MLflow URL \"{uri}\" (expected http://host:port or https://host)"
                    ),
                ));
            }
            // MLflow's variables: a CA bundle, and one file holding a certificate and its key.
            let env = super::raw::RawTlsClient {
                ca_file: r.env_ca_file.clone(),
                cert_file: r.env_client_cert.clone(),
                key_file: None,
            };
            let keys = TlsKeys {
                ca: "registry.tls.ca_file",
                ca_env: "MLFLOW_TRACKING_SERVER_CERT_PATH",
                identity: "registry.tls",
                set: "registry.tls",
                uri: "registry.uri",
            };
            let tls = tls_files(errs, &keys, r.tls.as_ref(), &env, https, base_dir);
            let tls_paths: Vec<_> = [&tls.ca_file, &tls.cert_file, &tls.key_file]
                .into_iter()
                .flatten()
                .filter(|_| https)
                .cloned()
                .collect();
            let files = [&r.password_file, &r.token_file]
                .into_iter()
                .flatten()
                .map(|f| base_dir.join(f))
                .chain(tls_paths.iter().cloned())
                .collect();
            let tls_fingerprint = {
                use std::hash::{Hash as _, Hasher as _};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for path in &tls_paths {
                    std::fs::read(path).ok().hash(&mut h);
                }
                h.finish()
            };
            let mut models: Vec<String> = r.models.clone().unwrap_or_else(|| {
                raw.routes
                    .iter()
                    .filter_map(|rt| rt.model.clone())
                    .collect()
            });
            models.sort();
            models.dedup();
            if models.is_empty() {
                errs.push(ConfigError::new(
                    "registry.models",
                    "no models to read (name them here or in routes)",
                ));
            }
            RegistrySource::Mlflow(Box::new(MlflowSettings {
                uri,
                poll_interval: dur(errs, "registry.poll_interval", &r.poll_interval, 10_000),
                timeout: dur(errs, "registry.timeout", &r.timeout, 5_000),
                retries: r.retries.unwrap_or(2),
                fail_fast: r.fail_fast.unwrap_or(false),
                ready_needs_lineage: r.ready_needs_lineage.unwrap_or(false),
                models,
                webhook_secret: secret(
                    errs,
                    "registry.webhook_secret",
                    r.webhook_secret.as_deref(),
                ),
                credentials,
                tls,
                files,
                tls_fingerprint,
            }))
        }
        other => {
            errs.push(ConfigError::new(
                "registry.backend",
                format!("unknown backend \"{other}\" (file or mlflow)"),
            ));
            RegistrySource::File(base_dir.join("registry.yaml"))
        }
    }
}

fn routes(
    errs: &mut Vec<ConfigError>,
    raw: &RawConfig,
    default_timeout: Duration,
    headers: &HeaderNames,
    base_dir: &Path,
) -> Vec<Route> {
    if raw.routes.is_empty() {
        errs.push(ConfigError::new("routes", "at least one route is required"));
    }
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let at = |field: &str| format!("routes[{i}].{field}");
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        if !is_token(&name) {
            errs.push(ConfigError::new(at("name"), format!("invalid name \"{name}\" (visible ASCII, no spaces, at most {MAX_NAME_LEN} chars)")));
        } else if !names.insert(name.clone()) {
            errs.push(ConfigError::new(
                at("name"),
                format!("duplicate route name \"{name}\""),
            ));
        }
        if let Some(route) = route(errs, r, &at, name, default_timeout, headers, base_dir) {
            out.push(route);
        }
    }
    out
}

fn route(
    errs: &mut Vec<ConfigError>,
    r: &RawRoute,
    at: &dyn Fn(&str) -> String,
    name: String,
    default_timeout: Duration,
    headers: &HeaderNames,
    base_dir: &Path,
) -> Option<Route> {
    let before = errs.len();
    let upstream = match r.upstream.as_deref() {
        None => {
            errs.push(ConfigError::new(
                at("upstream"),
                "missing (host:port of the model server)",
            ));
            None
        }
        Some(s) => match s.parse::<Authority>() {
            Ok(a) if a.port_u16().is_some() && !s.contains('@') => Some(a),
            _ => {
                errs.push(ConfigError::new(
                    at("upstream"),
                    format!("invalid address \"{s}\" (expected host:port)"),
                ));
                None
            }
        },
    };
    if let Some(m) = &r.model
        && !is_token(m)
    {
        errs.push(ConfigError::new(
            at("model"),
            format!("invalid model name \"{m}\""),
        ));
    }
    let open_inference = r.matcher.open_inference.unwrap_or(false);
    if r.model.is_none() && !open_inference {
        errs.push(ConfigError::new(
            at("model"),
            "required unless match.open_inference = true",
        ));
    }
    let serves = r.serves.as_deref().map(|s| match s.strip_prefix('@') {
        Some(alias) => Serves::Alias(alias.to_string()),
        None => Serves::Version(s.to_string()),
    });
    if let Some(Serves::Version(v) | Serves::Alias(v)) = &serves
        && !is_token(v)
    {
        errs.push(ConfigError::new(
            at("serves"),
            format!("invalid version or alias \"{v}\""),
        ));
    }
    let path_prefix = r.matcher.path_prefix.clone();
    if let Some(p) = &path_prefix
        && !p.starts_with('/')
    {
        errs.push(ConfigError::new(
            at("match.path_prefix"),
            format!("must start with '/': \"{p}\""),
        ));
    }
    let header = match (&r.matcher.header, &r.matcher.header_value) {
        (None, None) => None,
        (None, Some(_)) => {
            errs.push(ConfigError::new(
                at("match.header_value"),
                "needs match.header",
            ));
            None
        }
        (Some(h), v) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some((n, v.clone())),
            Err(_) => {
                errs.push(ConfigError::new(
                    at("match.header"),
                    format!("invalid header name \"{h}\""),
                ));
                None
            }
        },
    };
    let version_header = r.version_header.as_deref().and_then(|h| {
        let parsed = HeaderName::from_bytes(h.as_bytes()).ok();
        if parsed.is_none() {
            errs.push(ConfigError::new(
                at("version_header"),
                format!("invalid header name \"{h}\""),
            ));
        }
        parsed
    });
    if version_header.as_ref() == Some(&headers.version) {
        errs.push(ConfigError::new(
            at("version_header"),
            "must differ from the stamp header (which is replaced)",
        ));
    }
    let upstream_protocol = match r.upstream_protocol.as_deref().unwrap_or("auto") {
        "auto" => UpstreamProtocol::Auto,
        "http1" => UpstreamProtocol::Http1,
        "http2" => UpstreamProtocol::Http2,
        other => {
            errs.push(ConfigError::new(
                at("upstream_protocol"),
                format!("unknown \"{other}\" (auto, http1 or http2)"),
            ));
            UpstreamProtocol::Auto
        }
    };
    let ms = u64::try_from(default_timeout.as_millis()).unwrap_or(u64::MAX);
    let response_timeout = dur(errs, &at("response_timeout"), &r.response_timeout, ms);
    let inspect = super::inspect::route_inspect(errs, &r.inspect, at);
    let backends = super::canary::backends(errs, r, at);
    let canary = super::canary::canary(errs, r.canary.as_ref(), &backends, at);
    let shadow = super::canary::shadow(errs, r.shadow.as_ref(), r.model.is_some(), at);
    let upstream_tls = r
        .upstream_tls
        .as_ref()
        .and_then(|t| upstream_tls(errs, t, at, base_dir));
    if errs.len() != before {
        return None;
    }
    Some(Route {
        name,
        matcher: RouteMatch {
            path_prefix,
            open_inference,
            header,
        },
        model: r.model.clone(),
        upstream: upstream?,
        serves,
        trusted: r.trusted.unwrap_or(false),
        version_header,
        upstream_protocol,
        response_timeout,
        inspect,
        backends,
        canary,
        shadow,
        upstream_tls,
    })
}

/// A URL without its `user:password@` part, and that part (percent-decoded): credentials never
/// stay in a URL that is printed, logged or exported.
fn split_userinfo(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_string(), None);
    };
    let decode = |s: &str| String::from_utf8_lossy(&crate::codec::percent::decode(s)).into_owned();
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    (
        format!("{scheme}://{}", &rest[at + 1..]),
        Some((decode(user), decode(password))),
    )
}

/// MLflow credentials, as MLflow's clients take them: a token (`registry.token_file`, else
/// `MLFLOW_TRACKING_TOKEN`) or a user and password (`registry.username` with
/// `registry.password_file`, else `MLFLOW_TRACKING_USERNAME` and `_PASSWORD`, else the URL's
/// `user:password@`).
fn credentials(
    errs: &mut Vec<ConfigError>,
    r: &super::raw::RawRegistry,
    userinfo: Option<(String, String)>,
    base_dir: &Path,
) -> Option<Credentials> {
    let mut read = |field: &str, file: &Option<String>| -> Option<String> {
        let path = base_dir.join(file.as_deref()?);
        match std::fs::read_to_string(&path) {
            // A Secret written with `echo` ends in a newline that is not part of it.
            Ok(text) if !text.trim_end().is_empty() => Some(text.trim_end().to_string()),
            Ok(_) => {
                errs.push(ConfigError::new(
                    format!("registry.{field}"),
                    format!("{} is empty", path.display()),
                ));
                None
            }
            Err(e) => {
                errs.push(ConfigError::new(
                    format!("registry.{field}"),
                    format!("cannot read {}: {e}", path.display()),
                ));
                None
            }
        }
    };
    let token = read("token_file", &r.token_file).or_else(|| r.env_token.clone());
    let mut password = read("password_file", &r.password_file).or_else(|| r.env_password.clone());
    let mut username = r.username.clone();
    if let Some((user, pass)) = userinfo.filter(|_| username.is_none() && password.is_none()) {
        (username, password) = (Some(user), Some(pass).filter(|p| !p.is_empty()));
    }
    match (token, username, password) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            errs.push(ConfigError::new(
                "registry.token_file",
                "a token (registry.token_file or MLFLOW_TRACKING_TOKEN) and a user or password are both set; give one",
            ));
            None
        }
        (Some(token), None, None) => Some(Credentials::Bearer(Secret(token))),
        (None, Some(username), Some(password)) => Some(Credentials::Basic {
            username,
            password: Secret(password),
        }),
        (None, Some(_), None) => {
            errs.push(ConfigError::new(
                "registry.password_file",
                "a user without a password (set registry.password_file or MLFLOW_TRACKING_PASSWORD)",
            ));
            None
        }
        (None, None, Some(_)) => {
            errs.push(ConfigError::new(
                "registry.username",
                "a password without a user (set registry.username or MLFLOW_TRACKING_USERNAME)",
            ));
            None
        }
        (None, None, None) => None,
    }
}

/// A listener's TLS: a certificate and its key (both required), and the CAs of required client
/// certificates; checked now by building the server configuration.
fn tls_server(
    errs: &mut Vec<ConfigError>,
    at: &str,
    raw: Option<&super::raw::RawTlsServer>,
    base_dir: &Path,
) -> Option<crate::tls::TlsServer> {
    let raw = raw?;
    let path = |p: &Option<String>| p.as_deref().map(|p| base_dir.join(p));
    let (Some(cert_file), Some(key_file)) = (path(&raw.cert_file), path(&raw.key_file)) else {
        errs.push(ConfigError::new(
            at,
            "needs cert_file and key_file (PEM: the certificate chain, leaf first, and its key)",
        ));
        return None;
    };
    let tls = crate::tls::TlsServer {
        cert_file,
        key_file,
        client_ca_file: path(&raw.client_ca_file),
    };
    if let Err(e) = tls.server_config() {
        errs.push(ConfigError::new(at, e.to_string()));
    }
    Some(tls)
}

/// `[routes.upstream_tls]`: the files are read now, so a missing CA or a certificate that does
/// not match its key is a config error.
fn upstream_tls(
    errs: &mut Vec<ConfigError>,
    t: &super::raw::RawUpstreamTls,
    at: &dyn Fn(&str) -> String,
    base_dir: &Path,
) -> Option<std::sync::Arc<crate::tls::UpstreamTls>> {
    let path = |p: &Option<String>| p.as_deref().map(|p| base_dir.join(p));
    let files = crate::tls::TlsClient {
        ca_file: path(&t.ca_file),
        cert_file: path(&t.cert_file),
        key_file: path(&t.key_file),
    };
    match files.roots() {
        Ok(roots) if roots.is_empty() => {
            errs.push(ConfigError::new(
                at("upstream_tls.ca_file"),
                "no certificate authority to check the model server's certificate with: the platform has none (SSL_CERT_FILE, /etc/ssl/certs) and this is not set",
            ));
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            errs.push(ConfigError::new(at("upstream_tls.ca_file"), e.to_string()));
            return None;
        }
    }
    match crate::tls::UpstreamTls::new(files, t.server_name.as_deref()) {
        Ok(tls) => Some(std::sync::Arc::new(tls)),
        Err(e) => {
            let key = match e {
                crate::tls::TlsError::ServerName(_) => "upstream_tls.server_name",
                _ => "upstream_tls",
            };
            errs.push(ConfigError::new(at(key), e.to_string()));
            None
        }
    }
}

/// Where a TLS client's settings live, for its errors.
struct TlsKeys {
    /// The CA bundle's key, and the variable that stands in for it.
    ca: &'static str,
    ca_env: &'static str,
    /// Where an error about the client certificate or key is reported.
    identity: &'static str,
    /// The keys as a whole (an error when set for a plain-http endpoint), and that endpoint.
    set: &'static str,
    uri: &'static str,
}

/// A TLS client's files: the config's, else the environment's (`env`; a certificate without a
/// key is one file holding both). Checked now when `https`, so a missing file or a key that
/// does not match is a config error, not a failed call later. Over plain http the variables are
/// ignored (set for another client) and the config's keys are an error.
fn tls_files(
    errs: &mut Vec<ConfigError>,
    keys: &TlsKeys,
    given: Option<&super::raw::RawTlsClient>,
    env: &super::raw::RawTlsClient,
    https: bool,
    base_dir: &Path,
) -> crate::tls::TlsClient {
    if !https && given.is_some() {
        errs.push(ConfigError::new(
            keys.set,
            format!("set, but {} is not https://", keys.uri),
        ));
    }
    let given = given.cloned().unwrap_or_default();
    // The config's paths are relative to its folder; the variables', to the working directory,
    // as MLflow's and the OpenTelemetry SDKs' clients read them.
    let path = |p: &Option<String>| p.as_deref().map(|p| base_dir.join(p));
    let env_path = |p: &Option<String>| p.as_deref().map(PathBuf::from);
    let mut tls = crate::tls::TlsClient {
        ca_file: path(&given.ca_file).or_else(|| env_path(&env.ca_file)),
        cert_file: path(&given.cert_file),
        key_file: path(&given.key_file),
    };
    if tls.cert_file.is_none() && tls.key_file.is_none() {
        tls.cert_file = env_path(&env.cert_file);
        tls.key_file = env_path(&env.key_file);
    }
    if !https {
        return tls;
    }
    match tls.roots() {
        Ok(roots) if roots.is_empty() => errs.push(ConfigError::new(
            keys.ca,
            format!(
                "no certificate authority to check the server's certificate with: the platform has none (SSL_CERT_FILE, /etc/ssl/certs) and neither {} nor {} is set",
                keys.ca, keys.ca_env
            ),
        )),
        Ok(_) => {
            if let Err(e) = tls.client_config() {
                errs.push(ConfigError::new(keys.identity, e.to_string()));
            }
        }
        Err(e) => errs.push(ConfigError::new(keys.ca, e.to_string())),
    }
    tls
}

fn secret(errs: &mut Vec<ConfigError>, path: &str, value: Option<&str>) -> Option<Secret> {
    let v = value?;
    if v.len() < 16 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        errs.push(ConfigError::new(
            path,
            "must be at least 16 visible ASCII characters",
        ));
    }
    Some(Secret(v.to_string()))
}

/// A name that may go into a header value and a metric label: visible ASCII, no spaces, bounded.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

fn addr(errs: &mut Vec<ConfigError>, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
    let s = value.unwrap_or(default);
    s.parse().unwrap_or_else(|_| {
        errs.push(ConfigError::new(
            path,
            format!("invalid address \"{s}\" (expected ip:port)"),
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn header(
    errs: &mut Vec<ConfigError>,
    path: &str,
    value: Option<&str>,
    default: &'static str,
) -> HeaderName {
    match value {
        None => HeaderName::from_static(default),
        Some(s) => HeaderName::from_bytes(s.as_bytes()).unwrap_or_else(|_| {
            errs.push(ConfigError::new(
                path,
                format!("invalid header name \"{s}\""),
            ));
            HeaderName::from_static(default)
        }),
    }
}

/// `[history]`: on when `path` is set.
fn history(
    errs: &mut Vec<ConfigError>,
    raw: &RawConfig,
    base_dir: &Path,
) -> Option<super::History> {
    let h = &raw.history;
    let store = match (&h.path, &h.url) {
        (Some(_), Some(_)) => {
            errs.push(ConfigError::new(
                "history",
                "path (SQLite) and url (PostgreSQL) are alternatives: set one",
            ));
            return None;
        }
        (Some(path), None) => super::HistoryStore::Sqlite(base_dir.join(path)),
        (None, Some(url)) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                errs.push(ConfigError::new("history.url", "must be a postgres:// URL"));
            }
            let password = match &h.password_file {
                Some(f) => match std::fs::read_to_string(base_dir.join(f)) {
                    Ok(p) => Some(Secret(p.trim_end_matches(['\n', '\r']).to_string())),
                    Err(e) => {
                        errs.push(ConfigError::new(
                            "history.password_file",
                            format!("cannot read {f}: {e}"),
                        ));
                        None
                    }
                },
                None => std::env::var("MODELSTAMP_HISTORY_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(Secret),
            };
            super::HistoryStore::Postgres {
                url: Secret(url.clone()),
                password,
                schema: h.schema.clone().unwrap_or_else(|| "modelstamp".into()),
            }
        }
        (None, None) => {
            let set = h.retention.is_some()
                || h.queue.is_some()
                || h.instance.is_some()
                || h.password_file.is_some()
                || h.schema.is_some();
            if set {
                errs.push(ConfigError::new(
                    "history.path",
                    "(or history.url) is required for the other history settings to mean anything",
                ));
            }
            return None;
        }
    };
    let retention = dur(errs, "history.retention", &h.retention, 30 * 86_400_000);
    if retention.is_zero() {
        errs.push(ConfigError::new(
            "history.retention",
            "must be greater than 0",
        ));
    }
    let queue = h.queue.unwrap_or(10_000);
    if queue == 0 {
        errs.push(ConfigError::new("history.queue", "must be at least 1"));
    }
    let instance = h.instance.clone().unwrap_or_else(|| {
        std::env::var("POD_NAME")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into());
                format!("{host}:{}", std::process::id())
            })
    });
    Some(super::History {
        store,
        retention,
        queue,
        instance,
    })
}

pub(super) fn dur(
    errs: &mut Vec<ConfigError>,
    path: &str,
    value: &Option<String>,
    default_ms: u64,
) -> Duration {
    match value {
        None => Duration::from_millis(default_ms),
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            errs.push(ConfigError::new(path, e));
            Duration::from_millis(default_ms)
        }),
    }
}

/// Parse `250ms`, `5s`, `2m`, `1h` or `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{s}\" (expected e.g. 250ms, 5s, 2m)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("invalid duration \"{s}\" (units: ms, s, m, h, d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration \"{s}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn check(text: &str) -> Result<Config, Vec<String>> {
        let raw = parse(text, "test.toml")
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        validate(&raw, Path::new("/etc/ms"))
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = check("[[routes]]\nmodel = \"churn\"\nupstream = \"127.0.0.1:8081\"\nserves = \"@champion\"\n")
            .unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.headers.version.as_str(), "x-model-version");
        assert_eq!(c.routes[0].serves, Some(Serves::Alias("champion".into())));
        assert_eq!(c.routes[0].name, "route0");
        assert_eq!(
            c.registry,
            RegistrySource::File("/etc/ms/registry.yaml".into())
        );
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = check(
            "[server]\nlisten = \"nope\"\n[upstream]\nconnect_timeout = \"3 parsecs\"\n\
             [[routes]]\nmodel = \"a\"\nupstream = \"127.0.0.1:1\"\n\
             [[routes]]\nmodel = \"b c\"\nupstream = \"x:y\"\n",
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            errs,
            vec![
                "server.listen: invalid address \"nope\" (expected ip:port)".to_string(),
                "upstream.connect_timeout: invalid duration \"3 parsecs\" (units: ms, s, m, h, d)"
                    .into(),
                "routes[1].upstream: invalid address \"x:y\" (expected host:port)".into(),
                "routes[1].model: invalid model name \"b c\"".into(),
            ]
        );
    }

    #[test]
    fn a_short_admin_token_is_refused() {
        let route = "[[routes]]\nmodel = \"a\"\nupstream = \"127.0.0.1:1\"\n";
        let errs = check(&format!("[admin]\ntoken = \"short\"\n{route}"))
            .err()
            .unwrap_or_default();
        assert_eq!(
            errs,
            ["admin.token: must be at least 16 visible ASCII characters"]
        );
        assert!(check(&format!("[admin]\ntoken = \"0123456789abcdef\"\n{route}")).is_ok());
    }

    #[test]
    fn unknown_fields_are_rejected_with_location() {
        let errs = check("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n")
            .err()
            .unwrap_or_default();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("test.toml:3:1: unknown field `listne`"),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicate_route_names_and_missing_routes() {
        let errs = check("").err().unwrap_or_default();
        assert_eq!(
            errs,
            vec!["routes: at least one route is required".to_string()]
        );
        let errs = check(
            "[[routes]]\nname=\"a\"\nmodel=\"m\"\nupstream=\"h:1\"\n[[routes]]\nname=\"a\"\nmodel=\"m\"\nupstream=\"h:2\"\n",
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            errs,
            vec!["routes[1].name: duplicate route name \"a\"".to_string()]
        );
    }

    #[test]
    fn traces_fall_back_to_otel_env_and_the_file_wins() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318/".to_string()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_string()),
            "OTEL_SERVICE_NAME" => Some("from-env".to_string()),
            "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_string()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".to_string()),
            _ => None,
        };
        let text = "[traces]\nservice_name = \"from-file\"\n[[routes]]\nmodel = \"m\"\nupstream = \"h:1\"\n";
        let mut raw = parse(text, "t").unwrap_or_default();
        raw.traces.apply_env(env);
        let c = validate(&raw, Path::new("/")).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.traces.service_name, "from-file");
        assert_eq!(c.traces.sampler, Sampler::Ratio(0.25));
        let export = c.traces.export.unwrap_or_else(|| unreachable!());
        assert_eq!(export.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(export.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            c.traces.lineage_url,
            "http://127.0.0.1:9901/lineage/{lineage_id}"
        );
    }

    #[test]
    fn bad_trace_settings_are_reported() {
        let errs = check("[traces]\nsampler = \"sometimes\"\nsampler_ratio = 2.0\notlp_endpoint = \"collector\"\notlp_protocol = \"http/json\"\n[[routes]]\nmodel = \"m\"\nupstream = \"h:1\"\n")
            .err()
            .unwrap_or_default();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[3].starts_with("traces.otlp_endpoint: invalid URL \"collector\""),
            "{errs:?}"
        );
        let route = "[[routes]]\nmodel = \"m\"\nupstream = \"h:1\"\n";
        assert!(
            check(&format!(
                "[traces]\notlp_endpoint = \"https://collector:4317\"\n{route}"
            ))
            .is_ok()
        );
        let errs = check(&format!("[traces]\notlp_endpoint = \"http://collector:4317\"\notlp_certificate = \"/ca.pem\"\n{route}"))
            .err()
            .unwrap_or_default();
        assert_eq!(
            errs,
            ["traces.otlp_certificate: set, but traces.otlp_endpoint is not https://"]
        );
        let errs = check(&format!("[traces]\notlp_endpoint = \"https://collector:4317\"\notlp_certificate = \"/no/such/ca.pem\"\n{route}"))
            .err()
            .unwrap_or_default();
        assert!(
            errs.len() == 1 && errs[0].starts_with("traces.otlp_certificate: /no/such/ca.pem"),
            "{errs:?}"
        );
        // The OpenTelemetry variables, the signal's own first; ignored for an http collector.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls");
        let tls_from = |endpoint: &str, env: &[(&str, &str)]| {
            let mut raw = parse(
                &format!("[traces]\notlp_endpoint = \"{endpoint}\"\n{route}"),
                "t",
            )
            .unwrap_or_else(|e| unreachable!("{e}"));
            raw.apply_env(|k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            });
            validate(&raw, &fixtures).map(|c| c.traces.export.map(|e| e.tls))
        };
        let file = |name: &str| fixtures.join(name).display().to_string();
        let names = ["server.pem", "ca.pem", "client.pem", "client.key"].map(file);
        let env = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", names[0].as_str()),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", names[1].as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", names[2].as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", names[3].as_str()),
        ];
        let tls = tls_from("https://collector:4317", &env)
            .unwrap_or_else(|e| unreachable!("{e}"))
            .unwrap_or_default();
        assert_eq!(tls.ca_file, Some(fixtures.join("ca.pem")));
        assert_eq!(tls.cert_file, Some(fixtures.join("client.pem")));
        assert_eq!(tls.key_file, Some(fixtures.join("client.key")));
        assert!(
            tls_from(
                "http://collector:4317",
                &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "absent.pem")]
            )
            .is_ok()
        );
    }

    #[test]
    fn open_inference_route_may_omit_model() {
        let c =
            check("[[routes]]\nupstream = \"localhost:8081\"\nmatch = { open_inference = true }\n");
        assert!(c.is_ok(), "{c:?}");
        let errs = check("[[routes]]\nupstream = \"localhost:8081\"\n")
            .err()
            .unwrap_or_default();
        assert_eq!(
            errs,
            vec!["routes[0].model: required unless match.open_inference = true".to_string()]
        );
    }

    /// The MLflow credentials a config gives with these environment variables, or its errors.
    fn mlflow_credentials(
        registry: &str,
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Result<(String, Option<Credentials>), Vec<String>> {
        let text = format!(
            "[registry]\nbackend = \"mlflow\"\n{registry}\n[[routes]]\nmodel = \"churn\"\nupstream = \"127.0.0.1:8081\"\n"
        );
        let mut raw = parse(&text, "t")
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        raw.apply_env(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        });
        match validate(&raw, dir)
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?
            .registry
        {
            RegistrySource::Mlflow(m) => Ok((m.uri, m.credentials)),
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn mlflow_tls_comes_from_the_config_else_from_mlflow_client_variables() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls");
        let tls = |registry: &str, env: &[(&str, &str)]| {
            let text = format!(
                "[registry]\nbackend = \"mlflow\"\n{registry}\n[[routes]]\nmodel = \"churn\"\nupstream = \"127.0.0.1:8081\"\n"
            );
            let mut raw = parse(&text, "t").unwrap_or_else(|e| panic!("{e}"));
            raw.apply_env(|k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            });
            match validate(&raw, &fixtures).map(|c| c.registry) {
                Ok(RegistrySource::Mlflow(m)) => Ok(m.tls),
                Ok(other) => unreachable!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        let https = "uri = \"https://mlflow.internal\"";
        // The variables' paths are the working directory's: absolute here.
        let (ca, combined) = (
            fixtures.join("ca.pem"),
            fixtures.join("client-combined.pem"),
        );
        let (ca, combined) = (ca.display().to_string(), combined.display().to_string());
        let env = [
            ("MLFLOW_TRACKING_SERVER_CERT_PATH", ca.as_str()),
            ("MLFLOW_TRACKING_CLIENT_CERT_PATH", combined.as_str()),
        ];
        // MLflow's variables: a CA bundle, and one file holding the certificate and its key.
        let from_env = tls(https, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_env.ca_file, Some(fixtures.join("ca.pem")));
        assert_eq!(
            from_env.cert_file,
            Some(fixtures.join("client-combined.pem"))
        );
        assert_eq!(from_env.key_file, None);
        // The config's keys win, each on its own.
        let keys =
            format!("{https}\ntls = {{ cert_file = \"client.pem\", key_file = \"client.key\" }}");
        let from_config = tls(&keys, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_config.ca_file, Some(fixtures.join("ca.pem")));
        assert_eq!(from_config.cert_file, Some(fixtures.join("client.pem")));
        assert_eq!(from_config.key_file, Some(fixtures.join("client.key")));
        // Over http the variables are ignored (set for another client); the keys are an error.
        assert!(tls("uri = \"http://127.0.0.1:5000\"", &env).is_ok());
        let err = tls(
            "uri = \"http://127.0.0.1:5000\"\ntls = { ca_file = \"ca.pem\" }",
            &[],
        )
        .err()
        .unwrap_or_default();
        assert!(
            err.contains("registry.tls: set, but registry.uri is not https://"),
            "{err}"
        );
        // The settings remember their files (watched for rotation) and differ once a
        // certificate's bytes do, so the client is rebuilt with it.
        let dir = std::env::temp_dir().join(format!("modelstamp-tls-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let ca = std::fs::read(fixtures.join("ca.pem")).unwrap_or_default();
        let settings = |text: &str| {
            let text = format!(
                "[registry]\nbackend = \"mlflow\"\n{https}\ntls = {{ ca_file = \"ca.pem\" }}\n{text}\n[[routes]]\nmodel = \"churn\"\nupstream = \"127.0.0.1:8081\"\n"
            );
            let raw = parse(&text, "t").unwrap_or_else(|e| panic!("{e}"));
            match validate(&raw, &dir).map(|c| c.registry) {
                Ok(RegistrySource::Mlflow(m)) => m,
                other => panic!("{other:?}"),
            }
        };
        let _ = std::fs::write(dir.join("ca.pem"), &ca);
        let _ = std::fs::write(dir.join("token"), "t0ken");
        let before = settings("token_file = \"token\"");
        assert_eq!(before.files, [dir.join("token"), dir.join("ca.pem")]);
        assert_eq!(settings("token_file = \"token\""), before);
        let _ = std::fs::write(dir.join("ca.pem"), [&ca[..], &ca[..]].concat());
        assert_ne!(settings("token_file = \"token\""), before);
        let ca_path = fixtures.join("ca.pem").display().to_string();
        let err = tls(
            https,
            &[("MLFLOW_TRACKING_CLIENT_CERT_PATH", ca_path.as_str())],
        )
        .err()
        .unwrap_or_default();
        assert!(
            err.contains("registry.tls: ") && err.contains("no private key"),
            "{err}"
        );
    }

    fn basic(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials::Basic {
            username: user.into(),
            password: Secret(password.into()),
        })
    }

    #[test]
    fn mlflow_credentials_come_as_mlflow_clients_take_them_and_never_stay_in_the_url() {
        let dir = std::env::temp_dir().join(format!("modelstamp-creds-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("password"), "from-file\n");
        let _ = std::fs::write(dir.join("token"), "tok-file");
        let uri = "uri = \"http://127.0.0.1:5000\"";
        let creds = |registry: &str, env: &[(&str, &str)]| mlflow_credentials(registry, env, &dir);

        // MLflow's own variables.
        let env = [
            ("MLFLOW_TRACKING_USERNAME", "alice"),
            ("MLFLOW_TRACKING_PASSWORD", "p@ss:word"),
        ];
        assert_eq!(
            creds(uri, &env),
            Ok(("http://127.0.0.1:5000".into(), basic("alice", "p@ss:word")))
        );
        assert_eq!(
            creds(uri, &[("MLFLOW_TRACKING_TOKEN", "tok-env")]),
            Ok((
                "http://127.0.0.1:5000".into(),
                Some(Credentials::Bearer(Secret("tok-env".into())))
            ))
        );
        // Files (Secret mounts) win over the environment; the trailing newline is not the secret.
        let from_files = format!("{uri}\nusername = \"bob\"\npassword_file = \"password\"");
        assert_eq!(
            creds(&from_files, &env).map(|c| c.1),
            Ok(basic("bob", "from-file"))
        );
        assert_eq!(
            creds(&format!("{uri}\ntoken_file = \"token\""), &[]).map(|c| c.1),
            Ok(Some(Credentials::Bearer(Secret("tok-file".into()))))
        );
        // In the URL: taken out of it (percent-decoded), so nothing prints or exports them.
        assert_eq!(
            creds("uri = \"http://carol:s%40cret@mlflow.internal:5000/\"", &[]),
            Ok((
                "http://mlflow.internal:5000".into(),
                basic("carol", "s@cret")
            ))
        );
        assert_eq!(creds(uri, &[]), Ok(("http://127.0.0.1:5000".into(), None)));

        // Half or twice given: an error naming the settings.
        let err = |registry: &str, env: &[(&str, &str)]| {
            creds(registry, env).err().unwrap_or_default().join("\n")
        };
        assert!(
            err(uri, &[("MLFLOW_TRACKING_USERNAME", "alice")])
                .contains("registry.password_file: a user without a password")
        );
        assert!(
            err(uri, &[("MLFLOW_TRACKING_PASSWORD", "x")])
                .contains("registry.username: a password without a user")
        );
        assert!(
            err(
                uri,
                &[
                    ("MLFLOW_TRACKING_TOKEN", "t"),
                    ("MLFLOW_TRACKING_USERNAME", "alice")
                ]
            )
            .contains("are both set; give one")
        );
        assert!(
            err(&format!("{uri}\ntoken_file = \"missing\""), &[])
                .contains("registry.token_file: cannot read")
        );
        // Only for MLflow.
        let file_backend = check(
            "[registry]\npassword_file = \"p\"\n[[routes]]\nmodel = \"churn\"\nupstream = \"127.0.0.1:8081\"\n",
        );
        assert!(
            file_backend
                .err()
                .unwrap_or_default()
                .join("\n")
                .contains("registry.password_file: only for backend")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let c = basic("alice", "hunter2hunter2");
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    }

    #[test]
    fn history_is_on_with_a_path_and_its_settings_are_checked() {
        let base = "[[routes]]\nmodel = \"a\"\nupstream = \"127.0.0.1:1\"\n";
        assert_eq!(check(base).map(|c| c.history).ok(), Some(None));
        let on = check(&format!(
            "[history]\npath = \"h.db\"\nretention = \"7d\"\ninstance = \"pod-7\"\n{base}"
        ))
        .ok()
        .and_then(|c| c.history);
        assert_eq!(
            on.map(|h| (h.store, h.retention, h.queue, h.instance)),
            Some((
                crate::config::HistoryStore::Sqlite(PathBuf::from("/etc/ms/h.db")),
                Duration::from_secs(7 * 86_400),
                10_000,
                "pod-7".to_string()
            ))
        );
        let errs = check(&format!("[history]\nretention = \"0s\"\nqueue = 0\n{base}")).err();
        assert_eq!(
            errs,
            Some(vec![
                "history.path: (or history.url) is required for the other history settings to mean anything"
                    .to_string()
            ])
        );
        let errs = check(&format!(
            "[history]\npath = \"h.db\"\nretention = \"0s\"\nqueue = 0\n{base}"
        ))
        .err();
        assert_eq!(
            errs,
            Some(vec![
                "history.retention: must be greater than 0".to_string(),
                "history.queue: must be at least 1".to_string()
            ])
        );
    }
}
