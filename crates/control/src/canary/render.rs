//! The comparison as a table for people (`modelstamp compare`).

use std::fmt::Write as _;

use super::verdict::Comparison;

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.2} ms", s * 1e3))
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

/// Render a comparison.
pub fn render(c: &Comparison) -> String {
    let (b, k) = (&c.baseline, &c.candidate);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "canary  {}: candidate {} vs baseline {} over {:.0}s ({})\n",
        c.model, k.version, b.version, c.window_seconds, c.source
    );
    let _ = writeln!(
        out,
        "{:<22} {:>22} {:>22} {:>12}",
        "", "baseline", "candidate", ""
    );
    let row = |out: &mut String, name: &str, a: String, b: String, note: String| {
        let _ = writeln!(out, "{name:<22} {a:>22} {b:>22} {note:>12}");
    };
    row(
        &mut out,
        "version",
        b.version.clone(),
        k.version.clone(),
        String::new(),
    );
    row(
        &mut out,
        "lineage",
        b.lineage_id.clone(),
        k.lineage_id.clone(),
        String::new(),
    );
    if b.weight.is_some() || k.weight.is_some() {
        let w = |w: Option<u32>| w.map_or_else(|| "-".into(), |w| w.to_string());
        row(&mut out, "weight", w(b.weight), w(k.weight), String::new());
    }
    row(
        &mut out,
        "requests",
        b.requests.to_string(),
        k.requests.to_string(),
        String::new(),
    );
    row(
        &mut out,
        "error rate",
        format!("{:.2}%", 100.0 * b.error_rate()),
        format!("{:.2}%", 100.0 * k.error_rate()),
        format!("p={:.3}", c.error_rate_p_value),
    );
    row(
        &mut out,
        "latency p50",
        ms(b.p50),
        ms(k.p50),
        ratio(c.latency_ratio.p50),
    );
    row(
        &mut out,
        "latency p95",
        ms(b.p95),
        ms(k.p95),
        ratio(c.latency_ratio.p95),
    );
    row(
        &mut out,
        "latency p99",
        ms(b.p99),
        ms(k.p99),
        ratio(c.latency_ratio.p99),
    );
    if let (Some(psi), js) = (c.prediction_psi, c.prediction_js) {
        let js = js.map_or_else(String::new, |j| format!(", JS {j:.3}"));
        let _ = writeln!(
            out,
            "{:<22} PSI {psi:.3}{js} (candidate vs baseline)",
            "prediction drift"
        );
    }
    if let Some(a) = c.shadow {
        let _ = writeln!(
            out,
            "{:<22} {:.1}% of {} comparisons",
            "shadow agreement",
            100.0 * a.ratio,
            a.compared
        );
    }
    for i in &c.issue_rates {
        row(
            &mut out,
            &format!("{} {}", i.feature, i.issue),
            format!("{:.1}%", 100.0 * i.baseline),
            format!("{:.1}%", 100.0 * i.candidate),
            String::new(),
        );
    }
    if c.lineage_diff.is_empty() {
        let _ = writeln!(out, "\nlineage diff: none (same record)");
    } else {
        let _ = writeln!(out, "\nlineage diff (baseline -> candidate):");
        for d in &c.lineage_diff {
            let v = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".into());
            let _ = writeln!(
                out,
                "  {:<28} {} -> {}",
                d.field,
                v(&d.baseline),
                v(&d.candidate)
            );
        }
    }
    let _ = writeln!(out, "\nverdict: {}", c.verdict.as_str().to_uppercase());
    for r in &c.reasons {
        let _ = writeln!(out, "  - {r}");
    }
    out
}
