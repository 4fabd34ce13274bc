//! The explanation for people (`modelstamp explain`).

use std::fmt::Write as _;

use super::rules::{Cause, Explanation};

/// Render an explanation: the window and where its numbers come from, causes, risks, health,
/// then the timeline.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "explain  {}  from {} to {}", e.model, e.from, e.to);
    if !e.health_source.is_empty() {
        let _ = writeln!(out, "health from {}", e.health_source);
    }
    if !e.events_source.is_empty() {
        let _ = writeln!(out, "events from {}", e.events_source);
    }
    if let Some(s) = &e.symptom_onset {
        let _ = writeln!(out, "symptom began {s}");
    }
    if let Some(n) = &e.note {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(out);
    if e.causes.is_empty() {
        let _ = writeln!(
            out,
            "likely causes: none found in this window (no rule fired)"
        );
    } else {
        let _ = writeln!(out, "likely causes, most likely first:");
        for (i, c) in e.causes.iter().enumerate() {
            cause(&mut out, i, c);
        }
    }
    if !e.risks.is_empty() {
        let _ = writeln!(out, "\nrisks (no symptom moves with them):");
        for (i, c) in e.risks.iter().enumerate() {
            cause(&mut out, i, c);
        }
    }
    let _ = writeln!(out, "\nversions:");
    let _ = writeln!(
        out,
        "  {:<8} {:<20} {:>8} {:>8} {:>10} {:>7}  flags",
        "version", "lineage_id", "requests", "errors", "p99_ms", "weight"
    );
    for v in e
        .health
        .iter()
        .filter(|v| v.requests > 0 || v.weight.is_some_and(|w| w > 0))
    {
        let mut flags = Vec::new();
        if !v.aliases.is_empty() {
            flags.push(format!("@{}", v.aliases.join(",@")));
        }
        if v.stale.is_some() {
            flags.push("stale".into());
        }
        for (f, i, r) in &v.issue_rates {
            flags.push(format!("{f} {i} {:.0}%", 100.0 * r));
        }
        let _ = writeln!(
            out,
            "  {:<8} {:<20} {:>8} {:>8} {:>10} {:>7}  {}",
            v.version,
            v.lineage_id,
            v.requests,
            v.errors,
            v.p99
                .map_or_else(|| "-".into(), |p| format!("{:.2}", p * 1e3)),
            v.weight.map_or_else(|| "-".into(), |w| w.to_string()),
            flags.join("; ")
        );
    }
    let _ = writeln!(out, "\ntimeline:");
    if e.timeline.is_empty() {
        let _ = writeln!(out, "  (no changes recorded in the window)");
    }
    for ev in &e.timeline {
        let at = crate::codec::time::rfc3339_ms(ev.at_ms);
        let kind = serde_json::to_value(ev.kind)
            .ok()
            .and_then(|k| k.as_str().map(str::to_string))
            .unwrap_or_default();
        let version = ev
            .version
            .as_deref()
            .map_or("-".to_string(), |v| format!("v{v}"));
        let _ = writeln!(out, "  {at}  {kind:<16} {version:<6} {}", ev.summary);
    }
    out
}

fn cause(out: &mut String, i: usize, c: &Cause) {
    let _ = writeln!(out, "{:>2}. [{:.2} {}] {}", i + 1, c.score, c.rule, c.title);
    let mut facts = Vec::new();
    if let Some(v) = &c.version {
        facts.push(format!("version {v}"));
    }
    if let Some(id) = &c.lineage_id {
        facts.push(format!("lineage {id}"));
    }
    if let Some(o) = &c.onset {
        facts.push(format!("since {o}"));
    }
    if let Some(j) = &c.job {
        facts.push(format!("job {j}"));
    }
    if !facts.is_empty() {
        let _ = writeln!(out, "      {}", facts.join(" · "));
    }
    for ev in &c.evidence {
        let _ = writeln!(out, "      {ev}");
    }
    for d in &c.lineage {
        let v = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".into());
        let _ = writeln!(
            out,
            "      lineage {}: {} -> {}",
            d.field,
            v(&d.baseline),
            v(&d.candidate)
        );
    }
    if let Some(a) = &c.action {
        let _ = writeln!(out, "      → {a}");
    }
    let who: Vec<String> = [
        c.owner.as_ref().map(|o| format!("promoted by {o}")),
        c.ticket.as_ref().map(|t| format!("ticket {t}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !who.is_empty() {
        let _ = writeln!(out, "      {}", who.join(", "));
    }
}
