//! `upstream_request_filter` / `response_filter` phase: replace spoofed stamp headers; stamp
//! model, version, lineage ID and request ID on the upstream request and on the response.

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Response};
use tower::{Layer, Service};

use super::ctx::ProxyRequest;
use super::resolve::BoxFuture;
use crate::config::HeaderNames;
use crate::routing::Served;

/// Write the stamp headers. `insert` replaces every copy already present, whatever its case
/// (header names are normalised to lowercase on parse), so spoofed copies never survive.
pub fn stamp(
    headers: &mut HeaderMap,
    names: &HeaderNames,
    served: &Served,
    request_id: &HeaderValue,
) {
    let [model, version, lineage] = &served.header_values;
    headers.insert(names.model.clone(), model.clone());
    headers.insert(names.version.clone(), version.clone());
    headers.insert(names.lineage.clone(), lineage.clone());
    headers.insert(names.request_id.clone(), request_id.clone());
}

/// Remove every stamp header (and `x-lineage-stale`): from trailers, where no stamp belongs
/// in either direction.
pub fn strip_stamps(headers: &mut HeaderMap, names: &HeaderNames) {
    for name in [
        &names.model,
        &names.version,
        &names.lineage,
        &names.request_id,
        &names.stale,
    ] {
        headers.remove(name);
    }
}

/// Write the stamp headers only where the (trusted) caller did not send them.
fn stamp_missing(
    headers: &mut HeaderMap,
    names: &HeaderNames,
    served: &Served,
    request_id: &HeaderValue,
) {
    let [model, version, lineage] = &served.header_values;
    for (name, value) in [
        (&names.model, model),
        (&names.version, version),
        (&names.lineage, lineage),
        (&names.request_id, request_id),
    ] {
        headers.entry(name.clone()).or_insert_with(|| value.clone());
    }
}

/// Adds [`Stamp`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StampLayer;

impl<S> Layer<S> for StampLayer {
    type Service = Stamp<S>;
    fn layer(&self, inner: S) -> Stamp<S> {
        Stamp { inner }
    }
}

/// Stamps requests and responses.
#[derive(Clone, Debug)]
pub struct Stamp<S> {
    inner: S,
}

impl<S, B> Service<ProxyRequest> for Stamp<S>
where
    S: Service<ProxyRequest, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<B>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut pr: ProxyRequest) -> Self::Future {
        let ctx = pr.ctx.clone();
        let names = &ctx.snapshot.config.headers;
        let served = &ctx.resolved.served;
        let headers = pr.req.headers_mut();
        // Only the sidecar says whether lineage is stale, to the model server too.
        headers.remove(&names.stale);
        if ctx.route().is_some_and(|r| r.route.trusted) {
            stamp_missing(headers, names, served, &ctx.request_id);
        } else {
            for name in &names.drop_untrusted {
                headers.remove(name);
            }
            stamp(headers, names, served, &ctx.request_id);
        }
        let fut = self.inner.call(pr);
        Box::pin(async move {
            let mut resp = fut.await?;
            // The model server's own copies are replaced: the sidecar is the authority.
            let names = &ctx.snapshot.config.headers;
            stamp(
                resp.headers_mut(),
                names,
                &ctx.resolved.served,
                &ctx.request_id,
            );
            // Only the sidecar says whether lineage is stale; an upstream's copy never passes.
            resp.headers_mut().remove(&names.stale);
            if ctx.resolved.served.stale.is_some() {
                resp.headers_mut()
                    .insert(names.stale.clone(), HeaderValue::from_static("true"));
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use crate::registry::parse_registry;
    use crate::routing::Snapshot;

    fn names() -> HeaderNames {
        HeaderNames {
            model: http::HeaderName::from_static("x-model-name"),
            version: http::HeaderName::from_static("x-model-version"),
            lineage: http::HeaderName::from_static("x-lineage-id"),
            request_id: http::HeaderName::from_static("x-request-id"),
            stale: http::HeaderName::from_static("x-lineage-stale"),
            drop_untrusted: Vec::new(),
        }
    }

    #[test]
    fn spoofed_copies_are_all_replaced_by_one_stamp() {
        let reg =
            parse_registry("models:\n  churn:\n    versions: { 2: {} }\n", "r").unwrap_or_default();
        let raw = crate::config::parse(
            "[[routes]]\nmodel=\"churn\"\nupstream=\"h:1\"\nserves=\"2\"\n",
            "c",
        )
        .unwrap_or_default();
        let cfg = crate::config::validate(&raw, std::path::Path::new("/"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let snap = Snapshot::build(1, cfg, reg, Default::default(), &Metrics::new().0)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let served = snap.served("churn", Some("2")).0;
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("X-Model-Version", "666"),
            ("x-model-version", "667"),
            ("X-LINEAGE-ID", "ln_fake"),
            ("x-request-id", "spoof"),
        ] {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|_| unreachable!()),
                HeaderValue::from_static(v),
            );
        }
        stamp(&mut h, &names(), &served, &HeaderValue::from_static("rid"));
        assert_eq!(
            h.get_all("x-model-version").iter().collect::<Vec<_>>(),
            vec!["2"]
        );
        assert_eq!(h["x-model-name"], "churn");
        assert_eq!(h["x-lineage-id"], served.lineage_id.as_ref());
        assert_eq!(h["x-request-id"], "rid");
        let mut trusted = HeaderMap::new();
        trusted.insert("x-model-version", HeaderValue::from_static("9"));
        stamp_missing(
            &mut trusted,
            &names(),
            &served,
            &HeaderValue::from_static("rid"),
        );
        assert_eq!(trusted["x-model-version"], "9");
        assert_eq!(trusted["x-model-name"], "churn");
    }
}
