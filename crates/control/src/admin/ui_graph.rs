//! The lineage graph of one version as inline SVG: upstream tables → training dataset (digest)
//! → training run (commit, environment) → model version → the routes that serve it.

use std::fmt::Write as _;

use super::ui::esc;
use crate::registry::LineageRecord;

const W: i32 = 200;
const H: i32 = 54;
const GAP_X: i32 = 50;
const GAP_Y: i32 = 14;

fn node(out: &mut String, x: i32, y: i32, title: &str, lines: &[String], class: &str) {
    let _ = write!(
        out,
        "<g class=\"node {class}\"><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\" fill=\"#eef3ff\" stroke=\"#4a6fd1\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"12\" font-weight=\"600\">{}</text>",
        x + 8,
        y + 17,
        esc(title)
    );
    for (i, l) in lines.iter().take(2).enumerate() {
        let short: String = l.chars().take(28).collect();
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" font-family=\"monospace\">{}</text>",
            x + 8,
            y + 33 + 14 * i32::try_from(i).unwrap_or(0),
            esc(&short)
        );
    }
    out.push_str("</g>");
}

fn edge(out: &mut String, from: (i32, i32), to: (i32, i32)) {
    let _ = write!(
        out,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#6b7280\" marker-end=\"url(#arrow)\"/>",
        from.0 + W,
        from.1 + H / 2,
        to.0 - 4,
        to.1 + H / 2
    );
}

/// The graph of `r` served by `routes`.
pub fn lineage_graph(r: &LineageRecord, routes: &[String]) -> String {
    let data = r.training_data.as_ref();
    let tables: Vec<String> = data.map(|d| d.upstream_tables.clone()).unwrap_or_default();
    let columns: [Vec<(String, Vec<String>, &str)>; 5] = [
        tables
            .iter()
            .map(|t| (t.clone(), vec!["upstream table".to_string()], "table"))
            .collect(),
        data.map(|d| {
            (
                d.name.clone(),
                vec![
                    format!("digest {}", d.digest.clone().unwrap_or_else(|| "-".into())),
                    d.source.clone().unwrap_or_default(),
                ],
                "dataset",
            )
        })
        .into_iter()
        .collect(),
        vec![(
            format!(
                "run {}",
                r.training_run
                    .as_deref()
                    .map_or("-".to_string(), |t| t.chars().take(12).collect())
            ),
            vec![
                format!(
                    "commit {}",
                    r.code
                        .commit
                        .as_deref()
                        .map_or("-".to_string(), |c| c.chars().take(12).collect())
                ),
                r.environment.lock_digest.clone().map_or_else(
                    || r.environment.python.clone().unwrap_or_default(),
                    |l| format!("lock {l}"),
                ),
            ],
            "run",
        )],
        vec![(
            format!("{} version {}", r.model, r.version),
            vec![r.environment.image.clone().unwrap_or_default()],
            "version",
        )],
        routes
            .iter()
            .map(|n| (format!("route {n}"), Vec::new(), "route"))
            .collect(),
    ];
    let rows = columns.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let height = i32::try_from(rows).unwrap_or(1) * (H + GAP_Y) + GAP_Y;
    let width = 5 * (W + GAP_X);
    let mut out = format!(
        "<svg id=\"lineage-graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"lineage graph\">\
         <defs><marker id=\"arrow\" markerWidth=\"8\" markerHeight=\"8\" refX=\"6\" refY=\"3\" orient=\"auto\"><path d=\"M0,0 L6,3 L0,6 z\" fill=\"#6b7280\"/></marker></defs>"
    );
    let mut placed: Vec<Vec<(i32, i32)>> = Vec::new();
    for (c, col) in columns.iter().enumerate() {
        let x = GAP_X / 2 + i32::try_from(c).unwrap_or(0) * (W + GAP_X);
        let mut here = Vec::new();
        for (i, (title, lines, class)) in col.iter().enumerate() {
            let y = GAP_Y + i32::try_from(i).unwrap_or(0) * (H + GAP_Y);
            node(&mut out, x, y, title, lines, class);
            here.push((x, y));
        }
        placed.push(here);
    }
    // Edges between consecutive non-empty columns.
    let filled: Vec<&Vec<(i32, i32)>> = placed.iter().filter(|c| !c.is_empty()).collect();
    for pair in filled.windows(2) {
        for from in pair[0] {
            for to in pair[1] {
                edge(&mut out, *from, *to);
            }
        }
    }
    out.push_str("</svg>");
    out
}
