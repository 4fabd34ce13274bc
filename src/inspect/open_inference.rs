//! Open Inference Protocol v2 REST: the version the model server reports in its response, the
//! input features of a request and the predictions of a response (tensors in `inputs` /
//! `outputs`: `name`, `shape`, `datatype`, `data` flat or nested row-major).
//!
//! The tensors are decoded in one pass straight from the bytes into [`Value`]s (no intermediate
//! JSON tree): the other members are skipped, names are borrowed when they need no unescaping.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::table::{CodecError, Columns, MAX_VALUES, Value, positional};

#[derive(Deserialize)]
struct Reported {
    model_version: Option<serde_json::Value>,
}

/// The response's `model_version` (a string, or a number some servers send). `Err` when the
/// body is not JSON; `Ok(None)` when it carries no version.
pub fn reported_version(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    let r: Reported = serde_json::from_slice(body)?;
    Ok(match r.model_version {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// One tensor as read: its name (when a string), its row width (`shape[1]`, else 1) and its
/// values, flattened row-major.
struct Tensor<'a> {
    name: Option<Cow<'a, str>>,
    width: usize,
    values: Vec<Value>,
}

/// What the body's `inputs` / `outputs` member held.
enum Tensors<'a> {
    Missing,
    NotAList,
    List(Vec<Tensor<'a>>),
}

/// Any JSON value, reduced to what a tensor's `name` and `shape` need; arrays keep their
/// second element when it is a non-negative integer (`shape[1]`).
enum Any<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    Seq(Option<u64>),
    Other,
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Any<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Any<'de>, E> {
        Ok(Any::U64(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_unit<E>(self) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Any<'de>, A::Error> {
        let _first = seq.next_element::<IgnoredAny>()?;
        let second = match seq.next_element::<AnyValue>()? {
            Some(AnyValue(Any::U64(n))) => Some(n),
            _ => None,
        };
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Any::Seq(second))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Any<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Any::Other)
    }
}

struct AnyValue<'a>(Any<'a>);

impl<'de> Deserialize<'de> for AnyValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor).map(AnyValue)
    }
}

/// A tensor's `data`, flat or nested, appended as scalars to `out` up to [`MAX_VALUES`] (the
/// rest is parsed and skipped).
struct Data<'v>(&'v mut Vec<Value>);

impl<'de> DeserializeSeed<'de> for Data<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Data<'_> {
    fn push(self, v: Value) {
        if self.0.len() < MAX_VALUES {
            self.0.push(v);
        }
    }
}

impl<'de> Visitor<'de> for Data<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.push(Value::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.push(Value::Number(v as f64));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.push(Value::Number(v as f64));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.push(Value::Number(v));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        if self.0.len() < MAX_VALUES {
            self.0.push(Value::Text(v.to_owned()));
        }
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.push(Value::Null);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            if self.0.len() >= MAX_VALUES {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(());
            }
            if seq.next_element_seed(Data(&mut *self.0))?.is_none() {
                return Ok(());
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.push(Value::Nested);
        Ok(())
    }
}

/// Whether an object key is `want` (compared without allocating).
struct KeyIs(&'static str);

impl<'de> DeserializeSeed<'de> for KeyIs {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// Which member of a tensor object a key names.
enum TensorKey {
    Name,
    Shape,
    Data,
    Other,
}

impl<'de> Deserialize<'de> for TensorKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TensorKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, v: &str) -> Result<TensorKey, E> {
                Ok(match v {
                    "name" => TensorKey::Name,
                    "shape" => TensorKey::Shape,
                    "data" => TensorKey::Data,
                    _ => TensorKey::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Tensor<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tensor<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tensor object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tensor<'de>, A::Error> {
                let mut t = Tensor {
                    name: None,
                    width: 1,
                    values: Vec::new(),
                };
                while let Some(key) = map.next_key::<TensorKey>()? {
                    match key {
                        TensorKey::Name => {
                            t.name = match map.next_value::<AnyValue>()?.0 {
                                Any::Str(s) => Some(s),
                                _ => None,
                            };
                        }
                        TensorKey::Shape => {
                            t.width = match map.next_value::<AnyValue>()?.0 {
                                Any::Seq(Some(w)) => usize::try_from(w).unwrap_or(1).max(1),
                                _ => 1,
                            };
                        }
                        TensorKey::Data => {
                            t.values.clear();
                            map.next_value_seed(Data(&mut t.values))?;
                        }
                        TensorKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Tensors<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tensors<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of tensors")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tensors<'de>, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
                while let Some(t) = seq.next_element::<Tensor>()? {
                    list.push(t);
                }
                Ok(Tensors::List(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tensors<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Tensors::NotAList)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Tensors<'de>, E> {
                Ok(Tensors::NotAList)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Tensors<'de>, E> {
                Ok(Tensors::NotAList)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Tensors<'de>, E> {
                Ok(Tensors::NotAList)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Tensors<'de>, E> {
                Ok(Tensors::NotAList)
            }
            fn visit_str<E>(self, _: &str) -> Result<Tensors<'de>, E> {
                Ok(Tensors::NotAList)
            }
            fn visit_unit<E>(self) -> Result<Tensors<'de>, E> {
                Ok(Tensors::NotAList)
            }
        }
        d.deserialize_any(V)
    }
}

/// The `member` of a JSON object body (the last one, when repeated), every other member skipped.
struct Member(&'static str);

impl<'de> Visitor<'de> for Member {
    type Value = Tensors<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tensors<'de>, A::Error> {
        let mut found = Tensors::Missing;
        while let Some(is) = map.next_key_seed(KeyIs(self.0))? {
            if is {
                found = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn read_tensors<'a>(body: &'a [u8], member: &'static str) -> Result<Vec<Tensor<'a>>, CodecError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let tensors = de.deserialize_map(Member(member))?;
    de.end()?;
    match tensors {
        Tensors::List(list) => Ok(list),
        Tensors::Missing | Tensors::NotAList => {
            Err(CodecError::Shape("expected a list of tensors"))
        }
    }
}

/// Tensors as columns: shape `[N]` or `[N, 1]` is one column named after the tensor; `[N, F]`
/// gives F columns, named from `names` when a request carries a single tensor (a whole row of
/// features, as many clients send), else `name[i]` (e.g. class probabilities of an output).
fn tensors(list: Vec<Tensor<'_>>, names: Option<&[String]>) -> Result<Columns, CodecError> {
    let row_names = names.filter(|_| list.len() == 1);
    let mut out = Columns::default();
    for t in list {
        let name = t.name.ok_or(CodecError::Shape("tensor without a name"))?;
        if t.width == 1 {
            out.extend(&name, t.values);
            continue;
        }
        let width = t.width.min(t.values.len().max(1));
        let col_names: Vec<String> = (0..width)
            .map(|col| match row_names {
                Some(n) => positional(n, col),
                None => format!("{name}[{col}]"),
            })
            .collect();
        for (i, v) in t.values.into_iter().enumerate() {
            out.push(&col_names[i % t.width], v);
        }
    }
    Ok(out)
}

/// The input features of an inference request.
pub fn request_features(body: &[u8], names: &[String]) -> Result<Columns, CodecError> {
    tensors(read_tensors(body, "inputs")?, Some(names))
}

/// The predictions of an inference response, one column per output (or output position).
pub fn response_predictions(body: &[u8]) -> Result<Columns, CodecError> {
    tensors(read_tensors(body, "outputs")?, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLSERVER_REQUEST: &[u8] = br#"{"id":"req-1","parameters":{"content_type":"pd"},"inputs":[{"name":"tenure","datatype":"FP64","shape":[2,1],"data":[-0.67,-1.8]},{"name":"monthly_charges","datatype":"FP64","shape":[2,1],"data":[1.04,-1.7]},{"name":"support_calls","datatype":"FP64","shape":[2,1],"data":[0.06,2.2]},{"name":"usage_gb","datatype":"FP64","shape":[2,1],"data":[0.65,0.6]}]}"#;
    const MLSERVER_RESPONSE: &[u8] = br#"{"model_name":"churn","model_version":"2","id":"req-1","parameters":{"content_type":"np"},"outputs":[{"name":"output-1","shape":[2,1],"datatype":"INT64","parameters":{"content_type":"np"},"data":[0,0]}]}"#;

    #[test]
    fn golden_mlserver_pair() {
        // shared/reference/mlserver-1.7.1: a pandas-content request and its response.
        let f = request_features(MLSERVER_REQUEST, &[]).unwrap_or_default();
        assert_eq!(
            f.columns()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["tenure", "monthly_charges", "support_calls", "usage_gb"]
        );
        assert_eq!(
            f.get("support_calls"),
            Some(&[Value::Number(0.06), Value::Number(2.2)][..])
        );
        let p = response_predictions(MLSERVER_RESPONSE).unwrap_or_default();
        assert_eq!(
            p.get("output-1"),
            Some(&[Value::Number(0.0), Value::Number(0.0)][..])
        );
    }

    #[test]
    fn a_single_row_tensor_takes_schema_names_and_nested_data_flattens() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let req = br#"{"inputs":[{"name":"input-0","datatype":"FP32","shape":[2,3],"data":[[1,2,3],[4,null,6]]}]}"#;
        let f = request_features(req, &names).unwrap_or_default();
        assert_eq!(f.get("b"), Some(&[Value::Number(2.0), Value::Null][..]));
        let probs =
            br#"{"outputs":[{"name":"proba","datatype":"FP64","shape":[1,2],"data":[0.3,0.7]}]}"#;
        assert_eq!(
            response_predictions(probs)
                .unwrap_or_default()
                .get("proba[1]"),
            Some(&[Value::Number(0.7)][..])
        );
        let bytes =
            br#"{"outputs":[{"name":"label","datatype":"BYTES","shape":[1],"data":["churn"]}]}"#;
        assert_eq!(
            response_predictions(bytes).unwrap_or_default().get("label"),
            Some(&[Value::Text("churn".into())][..])
        );
        assert!(matches!(
            request_features(br#"{"inputs": 3}"#, &[]),
            Err(CodecError::Shape(_))
        ));
    }

    /// The decoder before the one-pass rewrite: a `serde_json::Value` tree, then the tensors.
    /// Kept as the oracle the one-pass decoder must agree with.
    fn oracle(body: &[u8], member: &str, names: Option<&[String]>) -> Option<Columns> {
        use serde_json::Value as Json;
        fn flatten(data: &Json, out: &mut Vec<Value>) {
            match data {
                Json::Array(items) => {
                    for item in items {
                        if out.len() >= MAX_VALUES {
                            return;
                        }
                        flatten(item, out);
                    }
                }
                scalar => out.push(Value::from_json(scalar)),
            }
        }
        let v: Json = serde_json::from_slice(body).ok()?;
        let list = v[member].as_array()?;
        let row_names = names.filter(|_| list.len() == 1);
        let mut out = Columns::default();
        for t in list {
            let name = t["name"].as_str()?;
            let mut values = Vec::new();
            flatten(&t["data"], &mut values);
            let width = t["shape"]
                .as_array()
                .and_then(|s| s.get(1))
                .and_then(Json::as_u64)
                .map_or(1, |w| usize::try_from(w).unwrap_or(1).max(1));
            for (i, v) in values.into_iter().enumerate() {
                let col_name = match (width, row_names) {
                    (1, _) => name.to_string(),
                    (_, Some(n)) => positional(n, i % width),
                    (_, None) => format!("{name}[{}]", i % width),
                };
                out.push(&col_name, v);
            }
        }
        Some(out)
    }

    fn agree(body: &[u8], names: &[String]) {
        assert_eq!(
            request_features(body, names).ok(),
            oracle(body, "inputs", Some(names)),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            response_predictions(body).ok(),
            oracle(body, "outputs", None),
            "{}",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn the_one_pass_decoder_agrees_with_the_json_tree_on_every_corpus_input() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        for body in [
            MLSERVER_REQUEST,
            MLSERVER_RESPONSE,
            br#"{"inputs":[{"name":"x","shape":[2,3],"data":[[1,2,3],[4,null,6]]}]}"#,
            br#"{"inputs":[{"data":[1,{"a":1},[true,"s\u00e9"]],"shape":[3,"2"],"name":"n\"q"}],"inputs":[{"name":"last","data":[7]}]}"#,
            br#"{"outputs":[{"name":"p","shape":[1,2],"data":[0.3,0.7]},{"name":"p","shape":[2],"data":[1,2]}]}"#,
            br#"{"outputs":[{"name":"wide","shape":[1,1000000000000],"data":[1,2]}]}"#,
        ] {
            assert!(
                request_features(body, &names).is_ok() || response_predictions(body).is_ok()
            );
            agree(body, &names);
        }
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/codecs");
        let mut n = 0;
        for entry in std::fs::read_dir(corpus).into_iter().flatten().flatten() {
            if let Ok(body) = std::fs::read(entry.path()) {
                agree(&body, &names);
                n += 1;
            }
        }
        assert!(n > 1000, "the committed codecs corpus ({n} files) was read");
    }

    #[test]
    fn reads_mlserver_responses() {
        // MLServer 1.7.1, mlserver-mlflow runtime (shared/reference/mlserver-1.7.1).
        let body = br#"{"model_name":"churn","model_version":"2","id":"req-1","parameters":{"content_type":"np"},
            "outputs":[{"name":"output-1","shape":[2,1],"datatype":"INT64","parameters":{"content_type":"np"},"data":[0,0]}]}"#;
        assert_eq!(reported_version(body).ok().flatten().as_deref(), Some("2"));
        assert_eq!(
            reported_version(br#"{"model_version":3}"#)
                .ok()
                .flatten()
                .as_deref(),
            Some("3")
        );
        assert_eq!(
            reported_version(br#"{"model_name":"churn"}"#)
                .ok()
                .flatten(),
            None
        );
        assert!(reported_version(b"not json").is_err());
    }
}
