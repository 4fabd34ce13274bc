//! Tensors of the Open Inference Protocol in every form it carries them (JSON `data`, gRPC
//! `contents`, and the raw bytes of gRPC's `raw_*_contents` and Triton's binary extension), and
//! how they become columns: the same columns whatever form the model server was called in.

use std::borrow::Cow;

use serde_json::Value as Json;

use super::table::{CodecError, Columns, Value, positional};

/// One tensor as read: its name (when a string), its row width (`shape[1]`, else 1) and its
/// values, flattened row-major.
pub(super) struct Tensor<'a> {
    pub(super) name: Option<Cow<'a, str>>,
    pub(super) width: usize,
    pub(super) values: Vec<Value>,
}

/// A tensor's row width from its shape: the second dimension, else 1.
pub(super) fn width<T: Copy + TryInto<usize>>(shape: &[T]) -> usize {
    shape
        .get(1)
        .and_then(|&w| w.try_into().ok())
        .unwrap_or(1)
        .max(1)
}

/// Tensors as columns: shape `[N]` or `[N, 1]` is one column named after the tensor; `[N, F]`
/// gives F columns, named from `names` when a request carries a single tensor (a whole row of
/// features, as many clients send), else `name[i]` (e.g. class probabilities of an output).
pub(super) fn tensors(
    list: Vec<Tensor<'_>>,
    names: Option<&[String]>,
) -> Result<Columns, CodecError> {
    let row_names = names.filter(|_| list.len() == 1);
    let mut out = Columns::with_capacity(list.len());
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

/// Append the scalars of a JSON `data` value (flat or nested row-major) to `out`, until it
/// holds `max_len`.
pub(super) fn flatten_json(data: &Json, out: &mut Vec<Value>, max_len: usize) {
    match data {
        Json::Array(items) => {
            for item in items {
                if out.len() >= max_len {
                    return;
                }
                flatten_json(item, out, max_len);
            }
        }
        scalar if out.len() < max_len => out.push(Value::from_json(scalar)),
        _ => {}
    }
}

/// Append the elements of a raw tensor to `out`, until it holds `max_len` (the rest is checked,
/// not kept): little-endian, row-major, `BOOL` one byte each, `BYTES` each a 4-byte
/// little-endian length then its bytes (as the KServe gRPC protocol and Triton's binary
/// extension lay them out).
pub(super) fn raw(
    datatype: &str,
    bytes: &[u8],
    out: &mut Vec<Value>,
    max_len: usize,
) -> Result<(), CodecError> {
    if datatype == "BYTES" {
        let mut rest = bytes;
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let element = tail
                .get(..len)
                .ok_or(CodecError::Shape("a BYTES element runs past its tensor"))?;
            if out.len() < max_len {
                out.push(Value::Text(String::from_utf8_lossy(element).into_owned()));
            }
            rest = &tail[len..];
        }
        return if rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Shape("a BYTES element runs past its tensor"))
        };
    }
    let (size, read): (usize, fn(&[u8]) -> Value) = match datatype {
        "BOOL" => (1, |b| Value::Bool(b[0] != 0)),
        "UINT8" => (1, |b| Value::Number(f64::from(b[0]))),
        "INT8" => (1, |b| Value::Number(f64::from(b[0] as i8))),
        "UINT16" => (2, |b| {
            Value::Number(f64::from(u16::from_le_bytes([b[0], b[1]])))
        }),
        "INT16" => (2, |b| {
            Value::Number(f64::from(i16::from_le_bytes([b[0], b[1]])))
        }),
        "FP16" => (2, |b| {
            Value::Number(half::f16::from_le_bytes([b[0], b[1]]).to_f64())
        }),
        "BF16" => (2, |b| {
            Value::Number(half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
        }),
        "UINT32" => (4, |b| Value::Number(f64::from(u32::from_le_bytes(word(b))))),
        "INT32" => (4, |b| Value::Number(f64::from(i32::from_le_bytes(word(b))))),
        "FP32" => (4, |b| Value::Number(f64::from(f32::from_le_bytes(word(b))))),
        "UINT64" => (8, |b| Value::Number(u64::from_le_bytes(long(b)) as f64)),
        "INT64" => (8, |b| Value::Number(i64::from_le_bytes(long(b)) as f64)),
        "FP64" => (8, |b| Value::Number(f64::from_le_bytes(long(b)))),
        _ => return Err(CodecError::Shape("a raw tensor of an unknown datatype")),
    };
    if !bytes.len().is_multiple_of(size) {
        return Err(CodecError::Shape(
            "a raw tensor's size is not a whole number of elements",
        ));
    }
    let room = max_len.saturating_sub(out.len());
    out.extend(bytes.chunks_exact(size).take(room).map(read));
    Ok(())
}

fn word(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

fn long(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::table::MAX_VALUES;

    fn decoded(datatype: &str, bytes: &[u8]) -> Result<Vec<Value>, CodecError> {
        let mut out = Vec::new();
        raw(datatype, bytes, &mut out, MAX_VALUES).map(|()| out)
    }

    fn numbers(values: &[f64]) -> Vec<Value> {
        values.iter().map(|&v| Value::Number(v)).collect()
    }

    #[test]
    fn raw_tensors_decode_by_datatype_little_endian() {
        let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(
            decoded("INT32", &le(&[1, -2, 3])).unwrap(),
            numbers(&[1.0, -2.0, 3.0])
        );
        let fp64: Vec<u8> = [0.5f64, -1.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(decoded("FP64", &fp64).unwrap(), numbers(&[0.5, -1.25]));
        let fp32: Vec<u8> = [0.5f32, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(decoded("FP32", &fp32).unwrap(), numbers(&[0.5, 3.0]));
        assert_eq!(decoded("INT8", &[0xff, 7]).unwrap(), numbers(&[-1.0, 7.0]));
        assert_eq!(decoded("UINT8", &[0xff]).unwrap(), numbers(&[255.0]));
        assert_eq!(
            decoded("INT64", &(-5i64).to_le_bytes()).unwrap(),
            numbers(&[-5.0])
        );
        assert_eq!(
            decoded("BOOL", &[0, 1, 2]).unwrap(),
            [Value::Bool(false), Value::Bool(true), Value::Bool(true)]
        );
        // 1.0, -2.0, 65504 (the largest half), a subnormal, infinity.
        let halves: Vec<u8> = [0x3c00u16, 0xc000, 0x7bff, 0x0001, 0x7c00]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            decoded("FP16", &halves).unwrap(),
            numbers(&[1.0, -2.0, 65504.0, 2f64.powi(-24), f64::INFINITY])
        );
        // bfloat16 is the high half of an f32: 1.5 is 0x3fc0.
        assert_eq!(
            decoded("BF16", &0x3fc0u16.to_le_bytes()).unwrap(),
            numbers(&[1.5])
        );
    }

    #[test]
    fn bytes_elements_are_length_prefixed_and_checked() {
        let mut body = Vec::new();
        for s in ["churn", "", "stay"] {
            body.extend_from_slice(&(s.len() as u32).to_le_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        assert_eq!(
            decoded("BYTES", &body).unwrap(),
            ["churn", "", "stay"].map(|s| Value::Text(s.into()))
        );
        assert!(decoded("BYTES", &body[..body.len() - 1]).is_err());
        assert!(decoded("BYTES", &[1, 0, 0]).is_err(), "a cut length prefix");
        assert!(decoded("FP32", &[0; 7]).is_err(), "not whole elements");
        assert!(decoded("COMPLEX", &[0; 8]).is_err());
    }

    #[test]
    fn raw_work_is_bounded() {
        let mut out = Vec::new();
        raw("UINT8", &vec![1; MAX_VALUES + 10], &mut out, MAX_VALUES).unwrap();
        assert_eq!(out.len(), MAX_VALUES);
        let mut out = Vec::new();
        raw("BYTES", &[1, 0, 0, 0, b'a', 1, 0, 0, 0, b'b'], &mut out, 1).unwrap();
        assert_eq!(
            out,
            [Value::Text("a".into())],
            "checked to the end, kept to the room"
        );
        let mut out = Vec::new();
        flatten_json(
            &serde_json::json!([[1, 2], [3, [4, null]]]),
            &mut out,
            MAX_VALUES,
        );
        assert_eq!(out[4], Value::Null);
        assert_eq!(out.len(), 5);
        let mut out = Vec::new();
        flatten_json(&serde_json::json!([[1, 2], [3, [4, null]]]), &mut out, 3);
        assert_eq!(out.len(), 3);
    }
}
