//! The incident responder's pages, server-rendered from the admin listener (no JavaScript, a
//! little embedded CSS): `/ui/` (models, live versions, weights, flags), `/ui/lineage/{id}` (the
//! record, its lineage graph as inline SVG, live stats, the previous version and what changed),
//! `/ui/lookup?q=` (a trace ID, request ID or lineage ID → the right page), `/ui/canary/{model}`
//! and `/ui/audit`. Every value from the registry or a request is HTML-escaped.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::Admin;
use super::ui_graph::lineage_graph;
use crate::canary::audit::Chain;
use crate::canary::diff::lineage_diff;
use crate::canary::verdict::Verdict;
use crate::codec::percent::query_param;
use crate::routing::{Reloader, Served, Snapshot, route_weights};

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

use crate::codec::percent::component as seg;

/// A path segment, percent-decoded.
fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&crate::codec::percent::decode(s)).into_owned()
}

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}main{padding:16px 24px;max-width:1200px}\
table{border-collapse:collapse;background:#fff;margin:8px 0 18px;min-width:50%}\
th,td{border:1px solid #d8dce3;padding:5px 9px;text-align:left;vertical-align:top}th{background:#eef0f4}\
code{font:12px ui-monospace,monospace}.flag{display:inline-block;border-radius:3px;padding:0 6px;margin-right:4px;font-size:12px}\
.bad{background:#fde2e1;color:#8a1c16}.warn{background:#fff3cd;color:#6b4e00}.ok{background:#def7e5;color:#135c2a}\
form.lookup input{width:340px;padding:4px}h1{font-size:20px}h2{font-size:16px;margin-top:22px}\
svg{background:#fff;border:1px solid #d8dce3}";

fn page(title: &str, body: &str) -> Response<Full<Bytes>> {
    html(StatusCode::OK, title, body)
}

fn html(status: StatusCode, title: &str, body: &str) -> Response<Full<Bytes>> {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · modelstamp</title>\
         <style>{CSS}</style></head><body><header><a href=\"/ui/\">modelstamp</a><a href=\"/ui/audit\">audit</a>\
         <form class=\"lookup\" method=\"get\" action=\"/ui/lookup\"><input name=\"q\" id=\"lookup\" \
         placeholder=\"trace ID, request ID or lineage ID\" aria-label=\"lookup\"> <button>Go</button></form>\
         </header><main>{body}</main></body></html>",
        esc(title)
    );
    let mut r = Response::new(Full::new(Bytes::from(doc)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'",
        ),
    );
    r
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.2} ms", s * 1e3))
}

fn lineage_link(id: &str) -> String {
    format!(
        "<a href=\"/ui/lineage/{}\"><code>{}</code></a>",
        seg(id),
        esc(id)
    )
}

/// Versions of a model, ordered numerically when they are numbers.
fn ordered(snap: &Snapshot, model: &str) -> Vec<String> {
    let mut v: Vec<String> = snap
        .models
        .get(model)
        .map(|m| m.versions.keys().cloned().collect())
        .unwrap_or_default();
    v.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
    v
}

impl Admin {
    /// `GET /ui/...`.
    pub(super) fn ui(&self, path: &str, query: Option<&str>) -> Response<Full<Bytes>> {
        let rest = path.strip_prefix("/ui").unwrap_or(path);
        match rest {
            "" | "/" => self.ui_home(),
            "/audit" => self.ui_audit(),
            "/lookup" => self.ui_lookup(query),
            _ => {
                if let Some(id) = rest.strip_prefix("/lineage/") {
                    self.ui_lineage(&unescape(id))
                } else if let Some(model) = rest.strip_prefix("/canary/") {
                    self.ui_canary(&unescape(model))
                } else {
                    html(StatusCode::NOT_FOUND, "not found", "<h1>No such page</h1>")
                }
            }
        }
    }

    fn flags(&self, snap: &Snapshot, served: &Served) -> String {
        let mut f = String::new();
        if let Some(s) = &served.stale {
            let _ = write!(
                f,
                "<span class=\"flag warn\" title=\"{}\">stale lineage</span>",
                esc(&s.describe())
            );
        }
        let mismatches = self.state.explainer.journal().mismatches(&served.model, 0);
        for (_, reported, n) in mismatches.iter().filter(|m| *m.0 == *served.version) {
            let _ = write!(
                f,
                "<span class=\"flag bad\">version mismatch: server reports {} ({n}×)</span>",
                esc(reported)
            );
        }
        if let Some(i) = Reloader::find_split(snap, &served.model)
            && let Ok(c) = self
                .state
                .canary
                .compare(&snap.routes[i].route.name, None, None)
            && c.candidate.version == *served.version
        {
            let (class, label) = match c.verdict {
                Verdict::Rollback => ("bad", "failing canary"),
                Verdict::Hold => ("warn", "canary: hold"),
                Verdict::Promote => ("ok", "canary: promote"),
            };
            let _ = write!(
                f,
                "<a class=\"flag {class}\" href=\"/ui/canary/{}\">{label}</a>",
                seg(&served.model)
            );
        }
        f
    }

    fn ui_home(&self) -> Response<Full<Bytes>> {
        let snap = self.snapshot();
        let mut body = String::from("<h1>Models and live versions</h1>");
        let mut models: Vec<&String> = snap.models.keys().collect();
        models.sort();
        for model in models {
            let split = Reloader::find_split(&snap, model);
            let weights = split.map(|i| route_weights(&snap, i)).unwrap_or_default();
            let aliases = snap
                .registry
                .models
                .get(model)
                .map(|m| m.aliases.clone())
                .unwrap_or_default();
            let _ = write!(body, "<h2>{}</h2>", esc(model));
            if split.is_some() {
                let _ = write!(
                    body,
                    "<p><a href=\"/ui/canary/{}\">canary comparison</a></p>",
                    seg(model)
                );
            }
            body.push_str("<table><tr><th>version</th><th>lineage</th><th>aliases</th><th>weight</th><th>requests</th><th>error rate</th><th>p99</th><th>flags</th></tr>");
            for v in ordered(&snap, model) {
                let Some(served) = snap.models.get(model).and_then(|m| m.versions.get(&v)) else {
                    continue;
                };
                let t = served.metrics.window.totals();
                let mut its: Vec<&String> = aliases
                    .iter()
                    .filter(|(_, to)| **to == v)
                    .map(|(a, _)| a)
                    .collect();
                its.sort();
                let live =
                    t.requests > 0 || weights.get(&v).is_some_and(|w| *w > 0) || !its.is_empty();
                if !live {
                    continue;
                }
                let rate = if t.requests == 0 {
                    0.0
                } else {
                    100.0 * t.errors as f64 / t.requests as f64
                };
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{rate:.2}%</td><td>{}</td><td>{}</td></tr>",
                    esc(&v),
                    lineage_link(&served.lineage_id),
                    esc(&its
                        .iter()
                        .map(|a| format!("@{a}"))
                        .collect::<Vec<_>>()
                        .join(" ")),
                    weights
                        .get(&v)
                        .map_or_else(|| "-".into(), ToString::to_string),
                    t.requests,
                    ms(t.quantile(0.99)),
                    self.flags(&snap, served)
                );
            }
            body.push_str("</table>");
        }
        page("models", &body)
    }

    fn ui_lookup(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let q = query_param(query, "q")
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        if q.starts_with("ln_") {
            return redirect(&format!("/ui/lineage/{}", seg(&q)));
        }
        if let Some(hit) = self.state.recent.lookup(&q).into_iter().next() {
            return redirect(&format!(
                "/ui/lineage/{}?from={}",
                seg(&hit.lineage_id),
                seg(&q)
            ));
        }
        html(
            StatusCode::NOT_FOUND,
            "not found",
            &format!(
                "<h1>Nothing found</h1><p>No lineage ID, recent trace ID or request ID <code>{}</code>.</p>",
                esc(&q)
            ),
        )
    }

    fn ui_lineage(&self, id: &str) -> Response<Full<Bytes>> {
        let snap = self.snapshot();
        let Some(v) = snap.registry.by_lineage_id(id) else {
            return html(
                StatusCode::NOT_FOUND,
                "unknown lineage",
                &format!(
                    "<h1>Unknown lineage ID</h1><p><code>{}</code> is not in the registry.</p>",
                    esc(id)
                ),
            );
        };
        let r = &v.record;
        let (model, version) = (r.model.as_str(), r.version.as_str());
        let served = snap.models.get(model).and_then(|m| m.versions.get(version));
        let mut b = format!(
            "<h1>{} version {} <small><code>{}</code></small></h1>",
            esc(model),
            esc(version),
            esc(id)
        );
        if let Some(s) = served {
            b.push_str(&self.flags(&snap, s));
            let t = s.metrics.window.totals();
            let rate = if t.requests == 0 {
                0.0
            } else {
                100.0 * t.errors as f64 / t.requests as f64
            };
            let _ = write!(
                b,
                "<h2>Live (rolling window)</h2><table><tr><th>requests</th><th>error rate</th><th>p50</th><th>p99</th></tr>\
                 <tr><td id=\"requests\">{}</td><td>{rate:.2}%</td><td>{}</td><td>{}</td></tr></table>",
                t.requests,
                ms(t.quantile(0.5)),
                ms(t.quantile(0.99))
            );
        }
        let routes: Vec<String> = snap
            .routes
            .iter()
            .filter(|rs| rs.route.model.as_deref() == Some(model))
            .filter(|rs| {
                rs.default_version.as_deref() == Some(version)
                    || rs
                        .backends
                        .iter()
                        .any(|bk| bk.version.as_deref() == Some(version))
            })
            .map(|rs| rs.route.name.clone())
            .collect();
        b.push_str("<h2>Lineage</h2>");
        b.push_str(&lineage_graph(r, &routes));
        b.push_str("<h2>Record</h2><table>");
        let mut row = |k: &str, v: Option<String>, cls: &str| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                let _ = write!(
                    b,
                    "<tr><th>{}</th><td id=\"{cls}\">{}</td></tr>",
                    esc(k),
                    esc(&v)
                );
            }
        };
        row("code repo", r.code.repo.clone(), "repo");
        row("code commit", r.code.commit.clone(), "commit");
        row("branch", r.code.branch.clone(), "branch");
        if let Some(d) = &r.training_data {
            row("dataset", Some(d.name.clone()), "dataset");
            row("dataset digest", d.digest.clone(), "digest");
            row("dataset source", d.source.clone(), "source");
            row(
                "upstream tables",
                Some(d.upstream_tables.join(", ")),
                "tables",
            );
        }
        let e = &r.environment;
        row("python", e.python.clone(), "python");
        row("runtime", e.runtime.clone(), "runtime");
        row("lock digest", e.lock_digest.clone(), "lock");
        row("image", e.image.clone(), "image");
        row("training run", r.training_run.clone(), "run");
        row(
            "created",
            r.created_by
                .as_ref()
                .map(|by| format!("{by} at {}", r.created_at.clone().unwrap_or_default())),
            "created",
        );
        let p = &r.promotion;
        row(
            "promoted",
            p.by.as_ref().map(|by| {
                format!(
                    "{by} at {}: {} ({})",
                    p.at.clone().unwrap_or_default(),
                    p.reason.clone().unwrap_or_default(),
                    p.ticket.clone().unwrap_or_default()
                )
            }),
            "promoted",
        );
        row(
            "schema",
            Some(
                r.input_schema
                    .iter()
                    .map(|f| format!("{} {}", f.name, f.kind))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            "schema",
        );
        row(
            "metrics",
            Some(
                r.metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            "metrics",
        );
        b.push_str("</table>");
        if let Some(url) = &r.training_run_url {
            let _ = write!(
                b,
                "<p><a href=\"{}\" rel=\"noreferrer\">training run in the registry</a></p>",
                esc(url)
            );
        }
        let versions = ordered(&snap, model);
        let prev = versions
            .iter()
            .position(|x| x == version)
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| versions.get(i))
            .and_then(|pv| snap.registry.models.get(model)?.versions.get(pv));
        if let Some(prev) = prev {
            let _ = write!(
                b,
                "<h2>Changed since version {}</h2><p><a id=\"previous\" href=\"/ui/lineage/{}\">previous version {} ({})</a></p>\
                 <table id=\"diff\"><tr><th>field</th><th>version {}</th><th>version {}</th></tr>",
                esc(&prev.record.version),
                seg(&prev.lineage_id),
                esc(&prev.record.version),
                esc(&prev.lineage_id),
                esc(&prev.record.version),
                esc(version)
            );
            for c in lineage_diff(&prev.record, r) {
                let v = |s: &Option<String>| esc(s.as_deref().unwrap_or("(none)"));
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&c.field),
                    v(&c.baseline),
                    v(&c.candidate)
                );
            }
            b.push_str("</table>");
        } else {
            b.push_str("<p>No previous version in the registry.</p>");
        }
        page(&format!("{model} {version}"), &b)
    }

    fn ui_canary(&self, model: &str) -> Response<Full<Bytes>> {
        let c = match self.state.canary.compare(model, None, None) {
            Ok(c) => c,
            Err(e) => {
                return html(
                    StatusCode::NOT_FOUND,
                    "canary",
                    &format!("<h1>No comparison</h1><p>{}</p>", esc(&e.to_string())),
                );
            }
        };
        let (bs, cs) = (&c.baseline, &c.candidate);
        let mut b = format!(
            "<h1>Canary {}: candidate {} vs baseline {}</h1><table><tr><th></th><th>baseline</th><th>candidate</th><th></th></tr>",
            esc(&c.model),
            esc(&cs.version),
            esc(&bs.version)
        );
        let mut row = |k: &str, x: String, y: String, note: String| {
            let _ = write!(
                b,
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(k),
                x,
                y,
                esc(&note)
            );
        };
        row("version", esc(&bs.version), esc(&cs.version), String::new());
        row(
            "lineage",
            lineage_link(&bs.lineage_id),
            lineage_link(&cs.lineage_id),
            String::new(),
        );
        row(
            "requests",
            bs.requests.to_string(),
            cs.requests.to_string(),
            String::new(),
        );
        row(
            "error rate",
            format!("{:.2}%", 100.0 * bs.error_rate()),
            format!("{:.2}%", 100.0 * cs.error_rate()),
            format!("p = {:.3}", c.error_rate_p_value),
        );
        row(
            "p99",
            ms(bs.p99),
            ms(cs.p99),
            c.latency_ratio
                .p99
                .map_or_else(String::new, |r| format!("{r:.2}x")),
        );
        b.push_str("</table>");
        let cls = match c.verdict {
            Verdict::Rollback => "bad",
            Verdict::Hold => "warn",
            Verdict::Promote => "ok",
        };
        let _ = write!(
            b,
            "<h2>Verdict: <span id=\"verdict\" class=\"flag {cls}\">{}</span></h2><ul>",
            c.verdict.as_str()
        );
        for r in &c.reasons {
            let _ = write!(b, "<li>{}</li>", esc(r));
        }
        b.push_str("</ul><h2>Lineage diff</h2><table><tr><th>field</th><th>baseline</th><th>candidate</th></tr>");
        for d in &c.lineage_diff {
            let v = |s: &Option<String>| esc(s.as_deref().unwrap_or("(none)"));
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.field),
                v(&d.baseline),
                v(&d.candidate)
            );
        }
        b.push_str("</table>");
        page(&format!("canary {model}"), &b)
    }

    fn ui_audit(&self) -> Response<Full<Bytes>> {
        let log = self.state.canary.audit();
        let (entries, seq, head) = log.recent();
        let path = log
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let chain = match log.chain(seq) {
            Chain::Memory => "kept in memory only (audit.path is not set)".to_string(),
            Chain::Intact(n) => format!("intact: {n} entries in {path}"),
            Chain::Truncated(_) => "BROKEN: entries were removed from the end of the file".into(),
            Chain::Broken(e) => format!("BROKEN: {e}"),
            Chain::Unreadable(e) => format!("unreadable: {e}"),
        };
        let mut b = format!(
            "<h1>Audit trail</h1><p>Chain: <span id=\"chain\">{}</span>; head #{seq} <code>{}</code></p>\
             <table><tr><th>#</th><th>time</th><th>action</th><th>route</th><th>weights</th><th>who</th><th>why</th><th>ticket</th></tr>",
            esc(&chain),
            esc(&head)
        );
        for e in entries.iter().rev() {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.seq,
                esc(&e.time),
                esc(&e.action),
                esc(&e.route),
                esc(&serde_json::to_string(&e.before).unwrap_or_default()),
                esc(&serde_json::to_string(&e.after).unwrap_or_default()),
                esc(&e.actor),
                esc(e.reason.as_deref().unwrap_or("")),
                esc(e.ticket.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</table>");
        page("audit", &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_query_decoding() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(unescape("ln_ab%20cd+e%zz"), "ln_ab cd+e%zz");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
