//! Which route, model and version a request is for: pure functions of the snapshot, the path and
//! the headers. An explicit Open Inference `/versions/{v}` wins over what the route serves.

use std::sync::Arc;

use http::HeaderMap;

use std::net::IpAddr;

use super::snapshot::{RouteState, Served, Snapshot};
use super::split;
use crate::config::{RouteMatch, Serves, Sticky};

/// A parsed Open Inference model path: `/v2/models/{name}[/versions/{version}][/...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenInferencePath<'a> {
    /// Model name.
    pub name: &'a str,
    /// Version, when the path names one.
    pub version: Option<&'a str>,
    /// Whether this is an `/infer` call (whose response reports `model_version`).
    pub infer: bool,
}

/// Parse an Open Inference model path.
pub fn parse_open_inference(path: &str) -> Option<OpenInferencePath<'_>> {
    let rest = path.strip_prefix("/v2/models/")?;
    let mut parts = rest.split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let mut version = None;
    let mut next = parts.next();
    if next == Some("versions") {
        version = Some(parts.next().filter(|v| !v.is_empty())?);
        next = parts.next();
    }
    let infer = next == Some("infer") && parts.next().is_none();
    Some(OpenInferencePath {
        name,
        version,
        infer,
    })
}

/// The outcome of resolution.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Index of the matched route; `None` when no route matched.
    pub route: Option<usize>,
    /// What to stamp and count.
    pub served: Arc<Served>,
    /// Why the registry did not know it, when it did not.
    pub unresolved: Option<&'static str>,
    /// Whether the path is an Open Inference `/infer` call.
    pub open_inference_infer: bool,
    /// The OpenAI-compatible operation (`chat`, `text_completion`, `embeddings`), if any.
    pub openai: Option<&'static str>,
    /// How a split route chose the version.
    pub split: Option<SplitChoice>,
}

/// What a split route decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitChoice {
    /// The backend chosen by weight (`None` when the version was pinned).
    pub backend: Option<usize>,
    /// The model server to send to instead of the route's.
    pub upstream: Option<http::uri::Authority>,
    /// Insert `/versions/{version}` into the Open Inference path (the backend shares the
    /// route's model server with other versions).
    pub version_path: bool,
}

fn matches(
    m: &RouteMatch,
    model: Option<&str>,
    path: &str,
    oi: Option<&OpenInferencePath<'_>>,
    headers: &HeaderMap,
) -> bool {
    if let Some(prefix) = &m.path_prefix
        && !path.starts_with(prefix.as_str())
    {
        return false;
    }
    if m.open_inference {
        match (oi, model) {
            (None, _) => return false,
            (Some(p), Some(model)) if p.name != model => return false,
            _ => {}
        }
    }
    if let Some((name, value)) = &m.header {
        match (headers.get(name), value) {
            (None, _) => return false,
            (Some(got), Some(want)) if got.as_bytes() != want.as_bytes() => return false,
            _ => {}
        }
    }
    true
}

/// The version a split route sends this request to: a pin from a trusted network, else the
/// weighted choice for the sticky key (or a random key).
fn split(
    state: &RouteState,
    model: &str,
    snap: &Snapshot,
    headers: &HeaderMap,
    client: IpAddr,
) -> (Option<String>, SplitChoice) {
    let canary = &state.route.canary;
    let pinned = canary
        .pin_header
        .as_ref()
        .filter(|_| canary.pin_sources.iter().any(|n| n.contains(client)))
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            snap.models
                .get(model)
                .is_some_and(|m| m.versions.contains_key(*v))
        });
    if let Some(v) = pinned {
        let backend = state
            .backends
            .iter()
            .find(|b| b.version.as_deref() == Some(v));
        let upstream = backend.and_then(|b| b.upstream.clone());
        let choice = SplitChoice {
            backend: None,
            version_path: upstream.is_none(),
            upstream,
        };
        return (Some(v.to_string()), choice);
    }
    let key = match &canary.sticky {
        Some(Sticky::Header(h)) => headers.get(h).map(|v| split::key_hash(v.as_bytes())),
        Some(Sticky::Cookie(c)) => split::cookie(headers, c).map(split::key_hash),
        None => None,
    }
    .unwrap_or_else(split::random_key);
    let index = split::choose(&state.split_ids, &state.weights, key);
    let backend = index.and_then(|i| state.backends.get(i));
    let upstream = backend.and_then(|b| b.upstream.clone());
    let choice = SplitChoice {
        backend: index,
        version_path: upstream.is_none(),
        upstream,
    };
    (backend.and_then(|b| b.version.clone()), choice)
}

/// Resolve a request against a snapshot, counting what the registry does not know.
pub fn resolve(snap: &Snapshot, path: &str, headers: &HeaderMap, client: IpAddr) -> Resolved {
    resolve_as(snap, path, parse_open_inference(path), headers, client)
}

/// [`resolve`] for a request whose model and version are not in its path: a gRPC `ModelInfer`
/// names them in its message, which routes and resolves as the Open Inference REST path with
/// the same model and version would.
pub fn resolve_as(
    snap: &Snapshot,
    path: &str,
    oi: Option<OpenInferencePath<'_>>,
    headers: &HeaderMap,
    client: IpAddr,
) -> Resolved {
    let open_inference_infer = oi.is_some_and(|p| p.infer);
    let openai = crate::inspect::openai::operation(path);
    let found = snap.routes.iter().enumerate().find(|(_, r)| {
        matches(
            &r.route.matcher,
            r.route.model.as_deref(),
            path,
            oi.as_ref(),
            headers,
        )
    });
    let Some((index, state)) = found else {
        snap.no_route.inc();
        return Resolved {
            route: None,
            served: snap.unknown_model.clone(),
            unresolved: Some("no_route"),
            open_inference_infer,
            openai,
            split: None,
        };
    };
    let model = match (&state.route.model, &oi) {
        (Some(m), _) => m.as_str(),
        (None, Some(p)) => p.name,
        (None, None) => "",
    };
    let path_version = oi.filter(|p| p.name == model).and_then(|p| p.version);
    let mut split_choice = None;
    let served = match path_version {
        Some(v) => snap.served(model, Some(v)),
        None if !state.backends.is_empty() => {
            let (version, choice) = split(state, model, snap, headers, client);
            split_choice = Some(choice);
            snap.served(model, version.as_deref())
        }
        None => match (&state.default_version, &state.route.serves) {
            (Some(v), _) => snap.served(model, Some(v)),
            // A route taking its model from the path resolves its alias per model.
            (None, Some(Serves::Alias(a))) => {
                snap.served(model, snap.registry.resolve(model, a, true))
            }
            (None, Some(Serves::Version(v))) => snap.served(model, Some(v)),
            (None, None) => snap.served(model, None),
        },
    };
    let (served, unresolved) = served;
    match unresolved {
        Some("unknown_model") => state.unknown_model.inc(),
        Some(_) => state.unknown_version.inc(),
        None => 0,
    };
    Resolved {
        route: Some(index),
        served,
        unresolved,
        open_inference_infer,
        openai,
        split: split_choice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, validate};
    use crate::observe::metrics::Metrics;
    use crate::registry::parse_registry;

    #[test]
    fn parses_open_inference_paths() {
        let p = parse_open_inference("/v2/models/churn/versions/2/infer");
        assert_eq!(
            p,
            Some(OpenInferencePath {
                name: "churn",
                version: Some("2"),
                infer: true
            })
        );
        let p = parse_open_inference("/v2/models/churn/infer");
        assert_eq!(
            p,
            Some(OpenInferencePath {
                name: "churn",
                version: None,
                infer: true
            })
        );
        let p = parse_open_inference("/v2/models/churn/ready");
        assert_eq!(
            p,
            Some(OpenInferencePath {
                name: "churn",
                version: None,
                infer: false
            })
        );
        assert_eq!(
            parse_open_inference("/v2/models/churn"),
            Some(OpenInferencePath {
                name: "churn",
                version: None,
                infer: false
            })
        );
        assert_eq!(parse_open_inference("/v2/models/"), None);
        assert_eq!(parse_open_inference("/v2/models/churn/versions/"), None);
        assert_eq!(parse_open_inference("/v1/models/churn:predict"), None);
    }

    fn snapshot() -> Snapshot {
        let cfg = r#"
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:1"
serves = "@champion"
match = { open_inference = true }
[[routes]]
name = "by-header"
model = "fraud"
upstream = "127.0.0.1:2"
serves = "7"
match = { header = "x-tenant", header_value = "acme" }
[[routes]]
name = "any"
upstream = "127.0.0.1:3"
serves = "@champion"
match = { open_inference = true }
"#;
        let reg = "models:\n  churn:\n    aliases: { champion: 1 }\n    versions: { 1: {}, 2: {} }\n  fraud:\n    versions: { 7: {} }\n  iris:\n    aliases: { champion: 3 }\n    versions: { 3: {} }\n";
        let raw = parse(cfg, "t").unwrap_or_default();
        let config =
            validate(&raw, std::path::Path::new("/")).unwrap_or_else(|e| unreachable!("{e}"));
        let registry = parse_registry(reg, "r").unwrap_or_else(|e| unreachable!("{e}"));
        let (metrics, _) = Metrics::new();
        Snapshot::build(1, config, registry, Default::default(), &metrics)
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn at(
        snap: &Snapshot,
        path: &str,
        headers: &HeaderMap,
    ) -> (Option<usize>, String, String, Option<&'static str>) {
        let r = resolve(snap, path, headers, IpAddr::from([127, 0, 0, 1]));
        (
            r.route,
            r.served.model.to_string(),
            r.served.version.to_string(),
            r.unresolved,
        )
    }

    #[test]
    fn explicit_path_version_wins_over_route() {
        let s = snapshot();
        let h = HeaderMap::new();
        assert_eq!(
            at(&s, "/v2/models/churn/versions/2/infer", &h),
            (Some(0), "churn".into(), "2".into(), None)
        );
        assert_eq!(
            at(&s, "/v2/models/churn/infer", &h),
            (Some(0), "churn".into(), "1".into(), None)
        );
    }

    #[test]
    fn unknown_versions_and_models_are_stamped_unknown() {
        let s = snapshot();
        let h = HeaderMap::new();
        assert_eq!(
            at(&s, "/v2/models/churn/versions/9/infer", &h),
            (
                Some(0),
                "churn".into(),
                "unknown".into(),
                Some("unknown_version")
            )
        );
        assert_eq!(
            at(&s, "/v2/models/nope/infer", &h),
            (
                Some(2),
                "unknown".into(),
                "unknown".into(),
                Some("unknown_model")
            )
        );
        assert_eq!(
            at(&s, "/healthz", &h),
            (None, "unknown".into(), "unknown".into(), Some("no_route"))
        );
        assert_eq!(s.routes[0].unknown_version.get(), 1);
        assert_eq!(s.routes[2].unknown_model.get(), 1);
        assert_eq!(s.no_route.get(), 1);
    }

    #[test]
    fn header_routes_and_per_model_alias() {
        let s = snapshot();
        let mut h = HeaderMap::new();
        h.insert("x-tenant", http::HeaderValue::from_static("acme"));
        assert_eq!(
            at(&s, "/predict", &h),
            (Some(1), "fraud".into(), "7".into(), None)
        );
        h.insert("x-tenant", http::HeaderValue::from_static("other"));
        assert_eq!(at(&s, "/predict", &h).0, None);
        assert_eq!(
            at(&s, "/v2/models/iris/infer", &HeaderMap::new()),
            (Some(2), "iris".into(), "3".into(), None)
        );
    }

    #[test]
    fn routes_naming_unknown_models_or_aliases_are_rejected() {
        let raw = parse("[[routes]]\nmodel = \"x\"\nupstream = \"h:1\"\n[[routes]]\nmodel = \"churn\"\nupstream = \"h:1\"\nserves = \"@gone\"\n", "t").unwrap_or_default();
        let config =
            validate(&raw, std::path::Path::new("/")).unwrap_or_else(|e| unreachable!("{e}"));
        let registry = parse_registry("models:\n  churn:\n    versions: { 1: {} }\n", "r")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let errs = Snapshot::build(1, config, registry, Default::default(), &Metrics::new().0)
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "routes[0].model: \"x\" is not in the registry".to_string(),
                "routes[1].serves: alias \"gone\" of model \"churn\" is not in the registry".into(),
            ]
        );
    }
}
