//! The immutable snapshot every request reads: routes, registry, per-version stamp values and
//! metric handles, all resolved when the snapshot is built so the hot path only looks things up.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use opentelemetry::{KeyValue, StringValue};
use prometheus_client::metrics::counter::Counter;

use crate::config::{Config, ConfigError, ConfigErrors, Inspect, RegistrySource, Route, Serves};
use crate::inspect::Profile;
use crate::observe::metrics::{InfoLabels, Metrics, VersionMetrics};
use crate::observe::spans::SharedAttributes;
pub use crate::registry::Stale;
use crate::registry::{DatasetVersions, LineageRecord, RegistryData, staleness};
use crate::routing::split;

/// The label and header value for anything the registry does not know.
pub const UNKNOWN: &str = "unknown";

/// One model version as it is stamped and counted.
#[derive(Debug)]
pub struct Served {
    /// Model name (or `unknown`).
    pub model: Arc<str>,
    /// Version (or `unknown`).
    pub version: Arc<str>,
    /// Lineage ID (or `unknown`).
    pub lineage_id: Arc<str>,
    /// Pre-built header values: model, version, lineage ID.
    pub header_values: [HeaderValue; 3],
    /// Metric handles.
    pub metrics: VersionMetrics,
    /// The lineage record, when known.
    pub record: Option<Arc<LineageRecord>>,
    /// Set when the dataset the version was trained on has a newer digest.
    pub stale: Option<Stale>,
    /// The server span's `ml.*` attributes and `ml.registry.uri`, encoded once per snapshot.
    pub span_attrs: Arc<SharedAttributes>,
    /// What the inspector checks and counts for this version.
    pub profile: Arc<Profile>,
}

impl Served {
    fn new(
        model: &str,
        version: &str,
        lineage_id: &str,
        ctx: &BuildCtx<'_>,
        record: Option<Arc<LineageRecord>>,
        stale: Option<Stale>,
    ) -> Self {
        let (metrics, lineage_url) = (ctx.metrics, ctx.lineage_url);
        // Registry values are validated as visible ASCII at load, so these never fail; fall
        // back to `unknown` rather than panic if that invariant is ever broken.
        let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(UNKNOWN));
        let (model, version, lineage_id): (Arc<str>, Arc<str>, Arc<str>) =
            (model.into(), version.into(), lineage_id.into());
        let mut span_attrs = vec![
            KeyValue::new("ml.model.name", StringValue::from(model.clone())),
            KeyValue::new("ml.model.version", StringValue::from(version.clone())),
            KeyValue::new("ml.lineage.id", StringValue::from(lineage_id.clone())),
        ];
        if record.is_some() {
            span_attrs.push(KeyValue::new(
                "ml.lineage.url",
                lineage_url.replace("{lineage_id}", &lineage_id),
            ));
        }
        span_attrs.push(KeyValue::new(
            "ml.registry.uri",
            StringValue::from(ctx.registry_uri.clone()),
        ));
        let profile = Arc::new(Profile::new(
            model.clone(),
            version.clone(),
            lineage_id.clone(),
            record.as_deref(),
            ctx.inspect,
        ));
        Self {
            profile,
            span_attrs: Arc::new(SharedAttributes::new(span_attrs)),
            header_values: [hv(&model), hv(&version), hv(&lineage_id)],
            metrics: metrics.version(&model, &version),
            model,
            version,
            lineage_id,
            record,
            stale,
        }
    }

    /// What a model (or an unknown model) is stamped and counted as when its version is unknown.
    fn unknown(model: &str, ctx: &BuildCtx<'_>) -> Self {
        // No record, so no lineage URL is ever built from the template.
        Self::new(model, UNKNOWN, UNKNOWN, ctx, None, None)
    }

    /// Whether the registry knows this version.
    pub fn is_known(&self) -> bool {
        self.record.is_some()
    }
}

/// What every `Served` of one snapshot is built with.
struct BuildCtx<'a> {
    metrics: &'a Metrics,
    lineage_url: &'a str,
    inspect: &'a Inspect,
    registry_uri: Arc<str>,
}

/// A model's versions plus its `unknown` version.
#[derive(Debug)]
pub struct ModelState {
    /// Version → served.
    pub versions: HashMap<String, Arc<Served>>,
    /// Used for versions the registry does not know.
    pub unknown_version: Arc<Served>,
}

/// A route with what was resolved for it.
#[derive(Debug)]
pub struct RouteState {
    /// The configured route.
    pub route: Route,
    /// The version its upstream serves when the path names none (route with a fixed model).
    pub default_version: Option<String>,
    /// Counts requests for models the registry does not know.
    pub unknown_model: Counter,
    /// Counts requests for versions the registry does not know.
    pub unknown_version: Counter,
    /// The `ml.route` span attribute.
    pub span_route: KeyValue,
    /// The route's name, shared by every access-log line.
    pub name: Arc<str>,
    /// Version backends, their aliases resolved (empty: no split).
    pub backends: Vec<BackendState>,
    /// The backends' weights, in order (what the split reads).
    pub weights: Vec<u32>,
    /// The backends' identities, in order: the split hashes these, not positions.
    pub split_ids: Vec<u64>,
    /// The shadow version, its alias resolved.
    pub shadow_version: Option<String>,
    /// The client span's `server.*` attributes for the route's upstream.
    pub upstream_attrs: Arc<SharedAttributes>,
}

impl RouteState {
    /// The client span's `server.*` attributes for `upstream`: the route's own model server or
    /// a backend's (built here when neither matches, which resolution never produces).
    pub fn upstream_attrs(&self, upstream: &http::uri::Authority) -> Arc<SharedAttributes> {
        if *upstream == self.route.upstream {
            return self.upstream_attrs.clone();
        }
        self.backends
            .iter()
            .find_map(|b| {
                b.upstream_attrs
                    .as_ref()
                    .filter(|_| b.upstream.as_ref() == Some(upstream))
            })
            .cloned()
            .unwrap_or_else(|| Arc::new(SharedAttributes::upstream(upstream)))
    }
}

/// One version backend as a request sees it.
#[derive(Debug, Clone)]
pub struct BackendState {
    /// The version (`None`: the alias or version is not in the registry yet).
    pub version: Option<String>,
    /// Its own model server, if any.
    pub upstream: Option<http::uri::Authority>,
    /// The client span's `server.*` attributes for that model server.
    pub upstream_attrs: Option<Arc<SharedAttributes>>,
}

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every swap.
    pub generation: u64,
    /// The config.
    pub config: Arc<Config>,
    /// The registry data.
    pub registry: Arc<RegistryData>,
    /// Routes in match order.
    pub routes: Vec<RouteState>,
    /// Models by name.
    pub models: HashMap<String, ModelState>,
    /// Used for models the registry does not know.
    pub unknown_model: Arc<Served>,
    /// Counts requests no route matched.
    pub no_route: Counter,
    /// `ml.registry.uri`: where the records came from (the same string every version's span
    /// attributes hold).
    pub registry_uri: Arc<str>,
    /// Dataset versions announced by lineage events (OpenLineage, `dataset-changed`).
    pub lineage_events: Arc<DatasetVersions>,
}

impl Snapshot {
    /// Build a snapshot. With a file registry, a route naming a model or alias the registry
    /// lacks is an error (a config mistake); with a remote registry it resolves to `unknown`
    /// (the record may not be there yet). `events` are the dataset versions lineage events
    /// announced (OpenLineage, `POST /events/dataset-changed`), which flag versions trained on an
    /// older one as stale.
    pub fn build(
        generation: u64,
        config: Config,
        registry: RegistryData,
        events: Arc<DatasetVersions>,
        metrics: &Metrics,
    ) -> Result<Self, ConfigErrors> {
        Self::rebuild(generation, config, registry, events, metrics, None)
    }

    /// [`Self::build`], keeping from `previous` every version whose record, staleness and
    /// stamping settings are unchanged (its header values, metric handles, span attributes and
    /// inspection profile are the same): a reload that changed one record of a thousand builds
    /// one.
    pub fn rebuild(
        generation: u64,
        config: Config,
        registry: RegistryData,
        events: Arc<DatasetVersions>,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigErrors> {
        let held: usize = registry.models.values().map(|m| m.versions.len()).sum();
        if held > config.registry_max_versions {
            return Err(ConfigErrors(vec![ConfigError::new(
                "registry",
                format!(
                    "{held} model versions, more than registry.max_versions ({}) allows",
                    config.registry_max_versions
                ),
            )]));
        }
        let strict = matches!(config.registry, RegistrySource::File(_));
        let registry_uri: Arc<str> = config.registry.uri().into();
        let build = BuildCtx {
            metrics,
            lineage_url: &config.traces.lineage_url,
            inspect: &config.inspect,
            registry_uri: registry_uri.clone(),
        };
        // What a version's `Served` is built from besides its record: while these are the
        // same, the previous snapshot's is the one this build would make.
        let previous = previous.filter(|p| {
            p.config.traces.lineage_url == config.traces.lineage_url
                && p.config.inspect == config.inspect
                && p.registry_uri == registry_uri
        });
        let mut errs = Vec::new();
        let mut models = HashMap::new();
        for (name, m) in &registry.models {
            let before = previous.and_then(|p| p.models.get(name));
            let versions = m
                .versions
                .iter()
                .map(|(v, rec)| {
                    let stale = staleness(&rec.record, &[&registry.datasets, &events]);
                    // The lineage ID is a hash of the whole record, model and version included.
                    if let Some(kept) = before.and_then(|b| b.versions.get(v)).filter(|s| {
                        *s.lineage_id == *rec.lineage_id && s.record.is_some() && s.stale == stale
                    }) {
                        return (v.clone(), kept.clone());
                    }
                    let served = Served::new(
                        name,
                        v,
                        &rec.lineage_id,
                        &build,
                        Some(rec.record.clone()),
                        stale,
                    );
                    (v.clone(), Arc::new(served))
                })
                .collect();
            let unknown_version = Arc::new(Served::unknown(name, &build));
            models.insert(
                name.clone(),
                ModelState {
                    versions,
                    unknown_version,
                },
            );
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            let mut route_errs = Vec::new();
            let default_version = route_default(&mut route_errs, i, route, &registry);
            if strict {
                errs.extend(route_errs);
            } else {
                for e in route_errs {
                    tracing::debug!(path = %e.path, error = %e.message, "Not in the registry (yet); resolving to unknown.");
                }
            }
            let backends: Vec<BackendState> = route
                .backends
                .iter()
                .enumerate()
                .map(|(b, backend)| BackendState {
                    version: serves_version(
                        &mut route_errs_for(strict, &mut errs),
                        &format!("routes[{i}].backends[{b}].version"),
                        route,
                        &backend.version,
                        &registry,
                    ),
                    upstream: backend.upstream.clone(),
                    upstream_attrs: (backend.upstream.as_ref())
                        .map(|a| Arc::new(SharedAttributes::upstream(a))),
                })
                .collect();
            let shadow_version = route.shadow.as_ref().and_then(|s| {
                serves_version(
                    &mut route_errs_for(strict, &mut errs),
                    &format!("routes[{i}].shadow.version"),
                    route,
                    &s.version,
                    &registry,
                )
            });
            let name: Arc<str> = route.name.as_str().into();
            routes.push(RouteState {
                weights: route.backends.iter().map(|b| b.weight).collect(),
                split_ids: (route.backends.iter())
                    .map(|b| match &b.version {
                        Serves::Version(v) => split::backend_id(v),
                        Serves::Alias(a) => split::backend_id(&format!("@{a}")),
                    })
                    .collect(),
                backends,
                shadow_version,
                route: route.clone(),
                default_version,
                unknown_model: metrics.unresolved(&route.name, "unknown_model"),
                unknown_version: metrics.unresolved(&route.name, "unknown_version"),
                span_route: KeyValue::new("ml.route", StringValue::from(name.clone())),
                upstream_attrs: Arc::new(SharedAttributes::upstream(&route.upstream)),
                name,
            });
        }
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        let unknown_model = Arc::new(Served::unknown(UNKNOWN, &build));
        Ok(Self {
            generation,
            config: Arc::new(config),
            registry: Arc::new(registry),
            routes,
            models,
            unknown_model,
            no_route: metrics.unresolved("none", "no_route"),
            registry_uri,
            lineage_events: events,
        })
    }

    /// The `model_version_info` series for this snapshot.
    pub fn info_labels(&self) -> Vec<InfoLabels> {
        self.registry
            .models
            .iter()
            .flat_map(|(model, m)| {
                m.versions.iter().map(move |(version, v)| InfoLabels {
                    model: model.clone(),
                    version: version.clone(),
                    lineage_id: v.lineage_id.clone(),
                    git_commit: v.record.code.commit.clone().unwrap_or_default(),
                    dataset_digest: v.record.dataset_digest().unwrap_or_default().to_string(),
                })
            })
            .collect()
    }

    /// Every known version with stale lineage, and why.
    pub fn stale_versions(&self) -> impl Iterator<Item = (&Arc<Served>, &Stale)> {
        self.models
            .values()
            .flat_map(|m| m.versions.values())
            .filter_map(|s| s.stale.as_ref().map(|st| (s, st)))
    }

    /// The served version for a model and version, or the matching `unknown`.
    pub fn served(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> (Arc<Served>, Option<&'static str>) {
        let Some(m) = self.models.get(model) else {
            return (self.unknown_model.clone(), Some("unknown_model"));
        };
        match version.and_then(|v| m.versions.get(v)) {
            Some(s) => (s.clone(), None),
            None => (m.unknown_version.clone(), Some("unknown_version")),
        }
    }
}

/// Where a backend's unresolvable version is reported: an error with a file registry, a debug
/// line with a remote one (the version may not be there yet).
fn route_errs_for(strict: bool, errs: &mut Vec<ConfigError>) -> ErrSink<'_> {
    ErrSink { strict, errs }
}

struct ErrSink<'a> {
    strict: bool,
    errs: &'a mut Vec<ConfigError>,
}

impl ErrSink<'_> {
    fn push(&mut self, e: ConfigError) {
        if self.strict {
            self.errs.push(e);
        } else {
            tracing::debug!(path = %e.path, error = %e.message, "Not in the registry (yet); resolving to unknown.");
        }
    }
}

/// A backend's (or shadow's) version, its alias resolved through the registry.
fn serves_version(
    errs: &mut ErrSink<'_>,
    at: &str,
    route: &Route,
    serves: &Serves,
    registry: &RegistryData,
) -> Option<String> {
    let model = route.model.as_deref()?;
    let m = registry.models.get(model);
    let found = match serves {
        Serves::Version(v) => m
            .and_then(|m| m.versions.get_key_value(v))
            .map(|(k, _)| k.clone()),
        Serves::Alias(a) => m.and_then(|m| m.aliases.get(a)).cloned(),
    };
    if found.is_none() {
        let what = match serves {
            Serves::Alias(a) => format!("alias \"{a}\""),
            Serves::Version(v) => format!("version \"{v}\""),
        };
        errs.push(ConfigError::new(
            at,
            format!("{what} of model \"{model}\" is not in the registry"),
        ));
    }
    found
}

fn route_default(
    errs: &mut Vec<ConfigError>,
    i: usize,
    route: &Route,
    registry: &RegistryData,
) -> Option<String> {
    let model = route.model.as_deref()?;
    let Some(m) = registry.models.get(model) else {
        errs.push(ConfigError::new(
            format!("routes[{i}].model"),
            format!("\"{model}\" is not in the registry"),
        ));
        return None;
    };
    let resolved = match route.serves.as_ref()? {
        Serves::Version(v) => m.versions.get_key_value(v).map(|(k, _)| k.clone()),
        Serves::Alias(a) => m.aliases.get(a).cloned(),
    };
    if resolved.is_none() {
        let what = match route.serves.as_ref() {
            Some(Serves::Alias(a)) => format!("alias \"{a}\""),
            Some(Serves::Version(v)) => format!("version \"{v}\""),
            None => String::new(),
        };
        errs.push(ConfigError::new(
            format!("routes[{i}].serves"),
            format!("{what} of model \"{model}\" is not in the registry"),
        ));
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, validate};
    use crate::registry::parse_registry;

    fn build(config: &str, registry: &str, previous: Option<&Snapshot>, m: &Metrics) -> Snapshot {
        let raw = parse(config, "t").unwrap_or_default();
        let config =
            validate(&raw, std::path::Path::new("/")).unwrap_or_else(|e| unreachable!("{e}"));
        let registry = parse_registry(registry, "r").unwrap_or_else(|e| unreachable!("{e}"));
        Snapshot::rebuild(2, config, registry, Default::default(), m, previous)
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn a_rebuild_keeps_what_did_not_change_and_remakes_what_did() {
        let route = "[[routes]]\nmodel = \"churn\"\nupstream = \"h:1\"\n";
        let with_url = |url: &str| format!("[traces]\nlineage_url = \"{url}\"\n{route}");
        let registry = |commit: &str| {
            format!(
                "models:\n  churn:\n    versions: {{ 1: {{}}, 2: {{ code: {{ commit: {commit} }} }} }}\n"
            )
        };
        let (m, _) = Metrics::new();
        let served = |s: &Snapshot, v: &str| s.models["churn"].versions[v].clone();
        let first = build(route, &registry("a1"), None, &m);

        // Version 2's record changed: only it is made again.
        let second = build(route, &registry("b2"), Some(&first), &m);
        assert!(Arc::ptr_eq(&served(&first, "1"), &served(&second, "1")));
        assert!(!Arc::ptr_eq(&served(&first, "2"), &served(&second, "2")));
        assert_ne!(
            served(&first, "2").lineage_id,
            served(&second, "2").lineage_id
        );

        // A setting that goes into every version's span attributes changed: all are made again,
        // with it.
        let third = build(
            &with_url("https://lineage.example/{lineage_id}"),
            &registry("b2"),
            Some(&second),
            &m,
        );
        for v in ["1", "2"] {
            assert!(!Arc::ptr_eq(&served(&second, v), &served(&third, v)));
            let attrs = format!("{:?}", served(&third, v).span_attrs);
            assert!(attrs.contains("lineage.example"), "{attrs}");
        }
    }
}
