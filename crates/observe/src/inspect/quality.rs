//! Data quality: each input value checked against the training schema of the version that
//! served it. Pure: features in, issue counts per schema feature out.

use std::collections::HashSet;

use serde::Serialize;

use super::table::{Columns, Value};
use crate::registry::Feature;

/// What can be wrong with a feature value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Issue {
    /// The payload does not carry the feature.
    Missing,
    /// The value is null and the schema does not allow it.
    Null,
    /// The value is not of the schema's type.
    WrongType,
    /// A number outside the range seen in training.
    OutOfRange,
    /// A category training never saw.
    UnseenCategory,
}

impl Issue {
    /// Every issue, in label order.
    pub const ALL: [Self; 5] = [
        Self::Missing,
        Self::Null,
        Self::WrongType,
        Self::OutOfRange,
        Self::UnseenCategory,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Null => "null",
            Self::WrongType => "wrong_type",
            Self::OutOfRange => "out_of_range",
            Self::UnseenCategory => "unseen_category",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The type a schema feature expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number {
        integer: bool,
    },
    Text,
    Bool,
    /// Types the sidecar does not check (binary, datetime, tensors): any scalar is accepted.
    Any,
}

impl Kind {
    /// MLflow column types and the usual aliases.
    fn of(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "double" | "float" | "number" | "fp16" | "fp32" | "fp64" => {
                Self::Number { integer: false }
            }
            "long" | "integer" | "int" | "int8" | "int16" | "int32" | "int64" | "uint8"
            | "uint16" | "uint32" | "uint64" => Self::Number { integer: true },
            "string" | "str" | "category" | "categorical" => Self::Text,
            "boolean" | "bool" => Self::Bool,
            _ => Self::Any,
        }
    }
}

/// One schema feature, ready to check values against.
#[derive(Debug, Clone)]
pub struct FeatureCheck {
    /// Feature name (a metric label value; comes from the registry).
    pub name: String,
    kind: Kind,
    nullable: bool,
    min: Option<f64>,
    max: Option<f64>,
    categories: HashSet<String>,
}

impl FeatureCheck {
    /// From the registry's schema.
    pub fn new(f: &Feature) -> Self {
        Self {
            name: f.name.clone(),
            kind: Kind::of(&f.kind),
            nullable: f.nullable,
            min: f.min,
            max: f.max,
            categories: f.categories.iter().cloned().collect(),
        }
    }

    /// The issue of one value, if any.
    pub fn check(&self, v: &Value) -> Option<Issue> {
        let number = match (v, self.kind) {
            (Value::Null, _) => return (!self.nullable).then_some(Issue::Null),
            (Value::Nested, _) => return Some(Issue::WrongType),
            (Value::Number(n), Kind::Number { integer }) => {
                if integer && n.fract() != 0.0 {
                    return Some(Issue::WrongType);
                }
                Some(*n)
            }
            (Value::Number(n), Kind::Any) => Some(*n),
            (Value::Text(_), Kind::Text | Kind::Any) | (Value::Bool(_), Kind::Bool | Kind::Any) => {
                None
            }
            _ => return Some(Issue::WrongType),
        };
        if let Some(n) = number
            && (self.min.is_some_and(|lo| n < lo) || self.max.is_some_and(|hi| n > hi))
        {
            return Some(Issue::OutOfRange);
        }
        if !self.categories.is_empty() && !self.categories.contains(&category(v)) {
            return Some(Issue::UnseenCategory);
        }
        None
    }
}

/// A value as a category label (numbers as written: `3`, `2.5`).
pub fn category(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Nested => "nested".into(),
    }
}

/// Issue counts of one message: per schema feature (in schema order), per [`Issue`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows checked.
    pub rows: u64,
    /// `counts[feature][issue]`.
    pub counts: Vec<[u64; 5]>,
}

impl Report {
    /// Non-zero `(feature index, issue, count)`.
    pub fn issues(&self) -> impl Iterator<Item = (usize, Issue, u64)> + '_ {
        self.counts.iter().enumerate().flat_map(|(f, c)| {
            Issue::ALL
                .into_iter()
                .filter(move |i| c[i.index()] > 0)
                .map(move |i| (f, i, c[i.index()]))
        })
    }

    /// Whether any value broke the schema.
    pub fn is_clean(&self) -> bool {
        self.counts.iter().all(|c| c.iter().all(|n| *n == 0))
    }
}

/// Check every row of `columns` against `schema`. Columns the schema does not list are ignored
/// (they cannot be labelled); a schema feature the payload lacks counts as `missing` per row.
pub fn check(schema: &[FeatureCheck], columns: &Columns) -> Report {
    let rows = columns.rows();
    let mut counts = vec![[0u64; 5]; schema.len()];
    for (f, c) in schema.iter().zip(counts.iter_mut()) {
        let values = columns.get(&f.name).unwrap_or(&[]);
        c[Issue::Missing.index()] += rows.saturating_sub(values.len()) as u64;
        for v in values {
            if let Some(issue) = f.check(v) {
                c[issue.index()] += 1;
            }
        }
    }
    Report {
        rows: rows as u64,
        counts,
    }
}

/// One value that breaks the schema (what an `enforce` route answers with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Row index in the payload.
    pub row: usize,
    /// Schema feature.
    pub feature: String,
    /// What is wrong.
    pub issue: Issue,
}

/// Every violation of `columns` against `schema`, the first `limit` listed; returns them and
/// the total count.
pub fn violations(
    schema: &[FeatureCheck],
    columns: &Columns,
    limit: usize,
) -> (Vec<Violation>, usize) {
    let rows = columns.rows();
    let mut listed = Vec::new();
    let mut total = 0;
    let mut note = |row: usize, f: &FeatureCheck, issue: Issue| {
        total += 1;
        if listed.len() < limit {
            listed.push(Violation {
                row,
                feature: f.name.clone(),
                issue,
            });
        }
    };
    for f in schema {
        let values = columns.get(&f.name).unwrap_or(&[]);
        for (row, v) in values.iter().enumerate() {
            if let Some(issue) = f.check(v) {
                note(row, f, issue);
            }
        }
        for row in values.len()..rows.max(usize::from(values.is_empty())) {
            note(row, f, Issue::Missing);
        }
    }
    listed.sort_by_key(|v| v.row);
    (listed, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(name: &str, kind: &str) -> Feature {
        Feature {
            name: name.into(),
            kind: kind.into(),
            ..Feature::default()
        }
    }

    fn schema() -> Vec<FeatureCheck> {
        vec![
            FeatureCheck::new(&Feature {
                min: Some(0.0),
                max: Some(100.0),
                ..feature("tenure", "double")
            }),
            FeatureCheck::new(&Feature {
                categories: vec!["basic".into(), "pro".into()],
                ..feature("plan", "string")
            }),
            FeatureCheck::new(&feature("calls", "long")),
            FeatureCheck::new(&Feature {
                nullable: true,
                ..feature("note", "string")
            }),
        ]
    }

    #[test]
    fn each_issue_is_found_and_counted_per_feature() {
        let body = br#"{"dataframe_records": [
            {"tenure": 12, "plan": "basic", "calls": 2, "note": null},
            {"tenure": -1, "plan": "gold", "calls": 2.5, "note": "x"},
            {"tenure": null, "plan": 3, "calls": "many"},
            {"tenure": "12", "plan": null, "calls": [1]}]}"#;
        let cols = super::super::rest::mlflow_features(body, &[]).unwrap_or_default();
        let r = check(&schema(), &cols);
        assert_eq!(r.rows, 4);
        let got: Vec<(String, &str, u64)> = r
            .issues()
            .map(|(f, i, n)| (schema()[f].name.clone(), i.as_str(), n))
            .collect();
        let want = [
            ("tenure", "null", 1),
            ("tenure", "wrong_type", 1),
            ("tenure", "out_of_range", 1),
            ("plan", "null", 1),
            ("plan", "wrong_type", 1),
            ("plan", "unseen_category", 1),
            ("calls", "wrong_type", 3),
            ("note", "missing", 2),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(f, i, n)| (f.to_string(), *i, *n))
                .collect::<Vec<_>>()
        );
        assert!(!r.is_clean());
    }

    #[test]
    fn clean_rows_have_no_issues_and_absent_columns_are_missing() {
        let body =
            br#"{"dataframe_split": {"columns": ["tenure", "plan", "calls", "extra"], "data": [[1, "pro", 3, "z"]]}}"#;
        let cols = super::super::rest::mlflow_features(body, &[]).unwrap_or_default();
        let r = check(&schema(), &cols);
        assert_eq!(r.issues().count(), 1, "only `note` is missing: {r:?}");
        assert_eq!(r.counts[3][Issue::Missing.index()], 1);
        assert_eq!(category(&Value::Number(3.0)), "3");
        let (listed, total) = violations(&schema(), &cols, 10);
        assert_eq!(total, 1);
        assert_eq!(listed[0].feature, "note");
        let (listed, total) = violations(&schema(), &Columns::default(), 2);
        assert_eq!(
            (listed.len(), total),
            (2, 4),
            "an empty payload misses every feature"
        );
        assert!(
            FeatureCheck::new(&feature("t", "datetime"))
                .check(&Value::Text("x".into()))
                .is_none()
        );
    }
}
