//! What differs between two lineage records: the first thing a responder asks of a canary.

use serde::{Deserialize, Serialize};

use crate::registry::LineageRecord;

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Dotted field path (`training_data.digest`, `input_schema.plan_type`, `params.C`).
    pub field: String,
    /// The baseline's value (`None`: absent).
    pub baseline: Option<String>,
    /// The candidate's value.
    pub candidate: Option<String>,
}

fn push(out: &mut Vec<Change>, field: &str, a: Option<String>, b: Option<String>) {
    if a != b {
        out.push(Change {
            field: field.to_string(),
            baseline: a,
            candidate: b,
        });
    }
}

/// Every difference, in a stable order: code, data, environment, run, schema, params, metrics.
pub fn lineage_diff(a: &LineageRecord, b: &LineageRecord) -> Vec<Change> {
    let mut out = Vec::new();
    let s = |v: &Option<String>| v.clone();
    push(&mut out, "code.repo", s(&a.code.repo), s(&b.code.repo));
    push(
        &mut out,
        "code.commit",
        s(&a.code.commit),
        s(&b.code.commit),
    );
    push(
        &mut out,
        "code.branch",
        s(&a.code.branch),
        s(&b.code.branch),
    );
    let (da, db) = (a.training_data.as_ref(), b.training_data.as_ref());
    let name = |d: Option<&crate::registry::TrainingData>| d.map(|d| d.name.clone());
    push(&mut out, "training_data.name", name(da), name(db));
    let src = |d: Option<&crate::registry::TrainingData>| d.and_then(|d| d.source.clone());
    push(&mut out, "training_data.source", src(da), src(db));
    push(
        &mut out,
        "training_data.digest",
        a.dataset_digest().map(str::to_string),
        b.dataset_digest().map(str::to_string),
    );
    let tables = |d: Option<&crate::registry::TrainingData>| {
        d.filter(|d| !d.upstream_tables.is_empty())
            .map(|d| d.upstream_tables.join(","))
    };
    push(
        &mut out,
        "training_data.upstream_tables",
        tables(da),
        tables(db),
    );
    let (ea, eb) = (&a.environment, &b.environment);
    push(&mut out, "environment.python", s(&ea.python), s(&eb.python));
    push(
        &mut out,
        "environment.runtime",
        s(&ea.runtime),
        s(&eb.runtime),
    );
    push(
        &mut out,
        "environment.lock_digest",
        s(&ea.lock_digest),
        s(&eb.lock_digest),
    );
    push(&mut out, "environment.image", s(&ea.image), s(&eb.image));
    push(
        &mut out,
        "training_run",
        s(&a.training_run),
        s(&b.training_run),
    );
    let feature = |r: &LineageRecord, name: &str| {
        r.input_schema.iter().find(|f| f.name == name).map(|f| {
            let mut d = f.kind.clone();
            if f.nullable {
                d.push_str(" nullable");
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max) {
                d.push_str(&format!(" [{lo}, {hi}]"));
            }
            if !f.categories.is_empty() {
                d.push_str(&format!(" {{{}}}", f.categories.join(",")));
            }
            d
        })
    };
    let mut names: Vec<&str> = a.input_schema.iter().map(|f| f.name.as_str()).collect();
    for f in &b.input_schema {
        if !names.contains(&f.name.as_str()) {
            names.push(&f.name);
        }
    }
    for n in names {
        push(
            &mut out,
            &format!("input_schema.{n}"),
            feature(a, n),
            feature(b, n),
        );
    }
    let keys: std::collections::BTreeSet<&String> =
        a.params.keys().chain(b.params.keys()).collect();
    for k in keys {
        push(
            &mut out,
            &format!("params.{k}"),
            a.params.get(k).cloned(),
            b.params.get(k).cloned(),
        );
    }
    let keys: std::collections::BTreeSet<&String> =
        a.metrics.keys().chain(b.metrics.keys()).collect();
    for k in keys {
        let v = |r: &LineageRecord| r.metrics.get(k).map(|m| format!("{m}"));
        push(&mut out, &format!("metrics.{k}"), v(a), v(b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Code, Feature, TrainingData};

    #[test]
    fn reports_code_data_schema_and_param_changes_only() {
        let a = LineageRecord {
            code: Code {
                commit: Some("97f4".into()),
                ..Code::default()
            },
            training_data: Some(TrainingData {
                name: "churn-train".into(),
                digest: Some("e5d3".into()),
                ..TrainingData::default()
            }),
            input_schema: vec![
                Feature {
                    name: "tenure".into(),
                    kind: "double".into(),
                    ..Feature::default()
                },
                Feature {
                    name: "plan".into(),
                    kind: "string".into(),
                    ..Feature::default()
                },
            ],
            params: [("C".to_string(), "1.0".to_string())].into(),
            ..LineageRecord::default()
        };
        let mut b = a.clone();
        b.version = "2".into();
        b.code.commit = Some("1c2b".into());
        if let Some(d) = b.training_data.as_mut() {
            d.digest = Some("9a41".into());
        }
        b.input_schema[1].nullable = true;
        b.input_schema.push(Feature {
            name: "usage".into(),
            kind: "double".into(),
            ..Feature::default()
        });
        b.params.insert("C".into(), "0.1".into());
        let d = lineage_diff(&a, &b);
        let fields: Vec<&str> = d.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "code.commit",
                "training_data.digest",
                "input_schema.plan",
                "input_schema.usage",
                "params.C"
            ]
        );
        assert_eq!(d[1].baseline.as_deref(), Some("e5d3"));
        assert_eq!(d[1].candidate.as_deref(), Some("9a41"));
        assert_eq!(d[2].candidate.as_deref(), Some("string nullable"));
        assert_eq!(d[3].baseline, None);
        assert!(lineage_diff(&a, &a).is_empty());
    }
}
