//! What codecs produce: input features by name (one value per row) and predictions by output
//! (one value per row), independent of the protocol they came in.

use std::collections::HashMap;

use serde_json::Value as Json;

/// Most rows or values a codec reads from one message; the rest is ignored (bounded work).
pub const MAX_VALUES: usize = 100_000;

/// Columns looked up by a scan; wider payloads get a hash index.
const SCAN_COLUMNS: usize = 16;

/// One value as a payload carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// JSON `null` (or a missing cell).
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string (categorical features, class labels, BYTES tensors).
    Text(String),
    /// A nested array or object where a scalar was expected.
    Nested,
}

impl Value {
    /// The value of one JSON scalar.
    pub fn from_json(v: &Json) -> Self {
        match v {
            Json::Null => Self::Null,
            Json::Bool(b) => Self::Bool(*b),
            Json::Number(n) => n.as_f64().map_or(Self::Nested, Self::Number),
            Json::String(s) => Self::Text(s.clone()),
            Json::Array(_) | Json::Object(_) => Self::Nested,
        }
    }
}

/// Named columns of equal length, holding at most [`MAX_VALUES`] values in all.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    columns: Vec<(String, Vec<Value>)>,
    values: usize,
    index: HashMap<String, usize>,
}

/// Equal when they hold the same columns in the same order (the lookup index is a cache).
impl PartialEq for Columns {
    fn eq(&self, other: &Self) -> bool {
        self.columns == other.columns
    }
}

impl Columns {
    /// Empty, with room for `columns` columns.
    pub fn with_capacity(columns: usize) -> Self {
        Self {
            columns: Vec::with_capacity(columns),
            ..Self::default()
        }
    }

    /// `(name, values)` in payload order.
    pub fn columns(&self) -> &[(String, Vec<Value>)] {
        &self.columns
    }

    /// The values of one column.
    pub fn get(&self, name: &str) -> Option<&[Value]> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The position of a column: a scan while there are few (most payloads), the index beyond.
    fn position(&mut self, name: &str) -> Option<usize> {
        if self.columns.len() <= SCAN_COLUMNS {
            return self.columns.iter().position(|(n, _)| n == name);
        }
        if self.index.is_empty() {
            self.index = (self.columns.iter().enumerate())
                .map(|(i, (n, _))| (n.clone(), i))
                .collect();
        }
        self.index.get(name).copied()
    }

    fn add_column(&mut self, name: &str, values: Vec<Value>) {
        if !self.index.is_empty() {
            self.index.insert(name.to_string(), self.columns.len());
        }
        self.columns.push((name.to_string(), values));
    }

    /// Add (or extend) a column; past [`MAX_VALUES`] values in all, nothing more is kept.
    pub fn push(&mut self, name: &str, value: Value) {
        if self.values >= MAX_VALUES {
            return;
        }
        self.values += 1;
        match self.position(name) {
            Some(i) => self.columns[i].1.push(value),
            None => self.add_column(name, vec![value]),
        }
    }

    /// Add (or extend) a column with many values at once; past [`MAX_VALUES`] values in all,
    /// the rest is dropped.
    pub fn extend(&mut self, name: &str, mut values: Vec<Value>) {
        values.truncate(MAX_VALUES - self.values);
        if values.is_empty() {
            return;
        }
        self.values += values.len();
        match self.position(name) {
            Some(i) => self.columns[i].1.append(&mut values),
            None => self.add_column(name, values),
        }
    }

    /// Values held in all columns.
    pub fn len(&self) -> usize {
        self.values
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.values == 0
    }

    /// Rows: the longest column.
    pub fn rows(&self) -> usize {
        self.columns.iter().map(|(_, v)| v.len()).max().unwrap_or(0)
    }

    /// Build from rows that are arrays (positional: names from `names`, else `0`, `1`, ...) or
    /// objects (named), as KServe v1, TF Serving `instances` and MLflow `dataframe_records` send.
    pub fn from_rows(rows: &[Json], names: &[String], scalar_name: &str) -> Self {
        let mut out = Self::default();
        for row in rows.iter().take(MAX_VALUES) {
            match row {
                Json::Array(cells) => {
                    for (i, cell) in cells.iter().enumerate() {
                        out.push(&positional(names, i), Value::from_json(cell));
                    }
                }
                Json::Object(map) => {
                    for (k, v) in map {
                        out.push(k, Value::from_json(v));
                    }
                }
                scalar => out.push(scalar_name, Value::from_json(scalar)),
            }
        }
        out
    }

    /// Build from named columns (`{"a": [..], "b": [..]}`), as TF Serving and MLflow `inputs` send.
    pub fn from_object(map: &serde_json::Map<String, Json>) -> Self {
        let mut out = Self::default();
        for (k, v) in map {
            match v {
                Json::Array(values) => {
                    for cell in values.iter().take(MAX_VALUES) {
                        out.push(k, Value::from_json(cell));
                    }
                }
                scalar => out.push(k, Value::from_json(scalar)),
            }
        }
        out
    }
}

/// A positional column's name: the schema's, else its index.
pub fn positional(names: &[String], i: usize) -> String {
    names.get(i).cloned().unwrap_or_else(|| i.to_string())
}

/// Why a payload could not be read (the request itself is unaffected).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not JSON (or nested too deeply).
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Not JSON, as a hand-written reader found (what and where).
    #[error("not JSON: {0}")]
    Syntax(#[from] super::open_inference::NotJson),
    /// JSON (or protobuf), but not this protocol's shape.
    #[error("unexpected shape: {0}")]
    Shape(&'static str),
    /// Not a readable gRPC message (cut, or compressed in an encoding that is not read).
    #[error("{0}")]
    Grpc(#[from] super::grpc_infer::GrpcError),
    /// Not the protobuf of this protocol's message.
    #[error("not protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_stay_exact_across_the_scan_to_index_switch() {
        let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let mut pushed = Columns::default();
        let mut extended = Columns::default();
        for row in 0..3 {
            for n in &names {
                pushed.push(n, Value::Number(f64::from(row)));
            }
        }
        for n in &names {
            extended.extend(n, vec![Value::Number(0.0)]);
        }
        for n in names.iter().rev() {
            extended.extend(n, vec![Value::Number(1.0), Value::Number(2.0)]);
        }
        assert_eq!(pushed.columns().len(), 40);
        assert_eq!(pushed, extended);
        assert_eq!(pushed.rows(), 3);
        assert_eq!(
            pushed.get("f39"),
            Some(&[Value::Number(0.0), Value::Number(1.0), Value::Number(2.0)][..])
        );
        assert_eq!(pushed.len(), 120);
    }
}
