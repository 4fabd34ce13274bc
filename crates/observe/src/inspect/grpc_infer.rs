//! Open Inference over gRPC (`inference.GRPCInferenceService`, KServe's `grpc_predict_v2.proto`,
//! which Triton and MLServer serve): the model name and version a `ModelInfer` message carries,
//! and its tensors.
//!
//! Both messages begin with the name and version (tags 1 and 2 of `ModelInferRequest` and
//! `ModelInferResponse`), and every protobuf library writes fields in number order: on the
//! proxy's path they are read from the first bytes of a body, never its tensors. The tensors
//! are decoded with prost on the inspection worker, from `contents` (by datatype) and from
//! `raw_*_contents`. A message compressed with gzip or deflate (`grpc-encoding`) is inflated to
//! read it, as far as a limit the caller gives (`limits.max_inspect_bytes`); other encodings are
//! not read.

use std::borrow::Cow;
use std::io::Read as _;

use super::table::{CodecError, Columns, MAX_VALUES, Value};
use super::tensor::{Tensor, raw, tensors, width};

/// The `:path` of a `ModelInfer` call.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Bytes before each gRPC message: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// How far a compressed message is inflated when the caller names no limit (the default of
/// `limits.max_inspect_bytes`).
pub const DEFAULT_MAX_INFLATED: usize = 64 << 10;

/// The most tensors (or raw contents) a message may declare to be decoded: prost holds each in
/// a few hundred bytes however little it took in the message.
pub const MAX_TENSORS: usize = 4096;

/// The most compressed bytes read ahead for a compressed request's leading fields.
pub const MAX_COMPRESSED_LEADING: usize = 16 << 10;

/// Why a gRPC body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    /// Fewer bytes than needed (a copy cut before the fields, or before the message's end).
    #[error("the first gRPC message is incomplete")]
    Incomplete,
    /// The message is compressed with an encoding that is not read (not gzip or deflate).
    #[error("the first gRPC message is compressed with an encoding that is not read")]
    Compressed,
    /// The message inflates to more than the limit it is read within.
    #[error("the first gRPC message inflates to more than the inspection limit")]
    TooLarge,
    /// Not the protobuf of a `ModelInfer` message (or a compressed stream that is corrupt).
    #[error("not a ModelInfer message")]
    Unreadable,
}

/// The first message of a gRPC body, inflated (at most `max_inflated` bytes) when it is
/// compressed.
pub fn first_message(body: &[u8], max_inflated: usize) -> Result<Cow<'_, [u8]>, GrpcError> {
    let end = framed_len(body).ok_or(GrpcError::Incomplete)?;
    let payload = body.get(PREFIX..end).ok_or(GrpcError::Incomplete)?;
    match body[0] {
        0 => Ok(Cow::Borrowed(payload)),
        1 => match inflate(payload, max_inflated)? {
            (inflated, Stop::End) => Ok(Cow::Owned(inflated)),
            (_, Stop::Limit) => Err(GrpcError::TooLarge),
            // The whole message is there, but its stream is not: it is corrupt.
            (_, Stop::Cut) => Err(GrpcError::Unreadable),
        },
        _ => Err(GrpcError::Unreadable),
    }
}

/// Where an inflation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The compressed stream ended (checksum verified), and no bytes follow it.
    End,
    /// The input ended first (a prefix of the message).
    Cut,
    /// The output reached the limit.
    Limit,
}

/// Inflate a compressed message (gzip, every member, or zlib as gRPC's `deflate` is, told apart
/// by their headers), up to `limit` bytes. Short of the end, what was inflated so far is still
/// returned (a prefix is enough to read the leading fields). A corrupt stream, or bytes after
/// it, are an error.
fn inflate(payload: &[u8], limit: usize) -> Result<(Vec<u8>, Stop), GrpcError> {
    match sniff(payload)? {
        Deflated::Gzip => gunzip(payload, limit),
        Deflated::Zlib => unzlib(payload, limit),
    }
}

fn gunzip(payload: &[u8], limit: usize) -> Result<(Vec<u8>, Stop), GrpcError> {
    // A cut member is an unexpected end (its trailer is missing); a whole one has its CRC
    // checked; anything but another member after one is an error.
    let mut decoder = flate2::bufread::MultiGzDecoder::new(payload);
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match decoder.read(&mut chunk) {
            Ok(0) => return Ok((out, Stop::End)),
            Ok(n) if out.len() + n > limit => {
                out.extend_from_slice(&chunk[..limit - out.len()]);
                return Ok((out, Stop::Limit));
            }
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok((out, Stop::Cut)),
            Err(_) => return Err(GrpcError::Unreadable),
        }
    }
}

fn unzlib(payload: &[u8], limit: usize) -> Result<(Vec<u8>, Stop), GrpcError> {
    // The low-level API tells a stream's end (its Adler-32 checked) from input running out.
    let mut decoder = flate2::Decompress::new(true);
    let mut out = Vec::new();
    loop {
        let (before_in, before_out) = (decoder.total_in(), decoder.total_out());
        out.reserve((limit + 1 - out.len()).min(8192));
        let consumed = usize::try_from(before_in).unwrap_or(usize::MAX);
        let input = payload.get(consumed..).unwrap_or_default();
        let status = decoder
            .decompress_vec(input, &mut out, flate2::FlushDecompress::None)
            .map_err(|_| GrpcError::Unreadable)?;
        if out.len() > limit {
            out.truncate(limit);
            return Ok((out, Stop::Limit));
        }
        let consumed = usize::try_from(decoder.total_in()).unwrap_or(usize::MAX);
        match status {
            flate2::Status::StreamEnd if consumed < payload.len() => {
                return Err(GrpcError::Unreadable);
            }
            flate2::Status::StreamEnd => return Ok((out, Stop::End)),
            _ if (decoder.total_in(), decoder.total_out()) == (before_in, before_out) => {
                return Ok((out, Stop::Cut));
            }
            _ => {}
        }
    }
}

/// The two compressed formats that are read.
enum Deflated {
    Gzip,
    Zlib,
}

/// Which format a compressed message is in, from its first two bytes.
fn sniff(payload: &[u8]) -> Result<Deflated, GrpcError> {
    let [a, b, ..] = *payload else {
        return Err(GrpcError::Incomplete);
    };
    if [a, b] == [0x1f, 0x8b] {
        Ok(Deflated::Gzip)
    } else if a & 0x0f == 8 && (u16::from(a) << 8 | u16::from(b)) % 31 == 0 {
        Ok(Deflated::Zlib)
    } else {
        Err(GrpcError::Compressed)
    }
}

/// The version a `ModelInferResponse` reports (`None` when it names none), from its leading
/// fields: a prefix of the answer is enough, the tensors are never read.
pub fn reported_version(body: &[u8]) -> Result<Option<String>, GrpcError> {
    match leading(body) {
        Leading::Read(lead) => Ok(lead.model_version),
        Leading::NeedMore => Err(GrpcError::Incomplete),
        Leading::Unreadable => match body.first() {
            Some(1) => Err(sniff(body.get(PREFIX..).unwrap_or_default())
                .err()
                .unwrap_or(GrpcError::Unreadable)),
            _ => Err(GrpcError::Unreadable),
        },
    }
}

/// The most of a request read ahead for its leading fields: a model name and version longer
/// than this are not read (the call is forwarded as it came).
pub const MAX_LEADING: usize = 4096;

/// What the start of a `ModelInferRequest` body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leading {
    /// More bytes are needed.
    NeedMore,
    /// The leading fields were read.
    Read(LeadingFields),
    /// It cannot be read (compressed in an encoding that is not read, not protobuf, fields over
    /// [`MAX_LEADING`], or not inflated from the first [`MAX_COMPRESSED_LEADING`] compressed
    /// bytes): forwarded as is.
    Unreadable,
}

/// `model_name` and `model_version` of the first message, where they lie (in the body's bytes;
/// in its inflated bytes when it is compressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadingFields {
    /// `model_name`, when given.
    pub model_name: Option<String>,
    /// `model_version`, when given and not empty.
    pub model_version: Option<String>,
    /// Where field 1 lies (tag to end), in the body's bytes.
    name_field: Option<std::ops::Range<usize>>,
    /// Where field 2 lies.
    version_field: Option<std::ops::Range<usize>>,
    /// The first message's length, from its prefix.
    message_len: usize,
    /// The message is compressed: the ranges are in its inflated bytes.
    compressed: bool,
}

/// Read the leading fields 1 and 2 of the first message of a request body's first bytes. Every
/// protobuf library writes a message's fields in field-number order, so both come before the
/// tensors: a few dozen bytes are enough, never the whole message. A compressed message is
/// inflated as far as the fields (its fields are read, but cannot be rewritten in place); the
/// answer never waits on more than [`MAX_LEADING`] bytes of fields or [`MAX_COMPRESSED_LEADING`]
/// compressed bytes.
pub fn leading(buf: &[u8]) -> Leading {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Leading::NeedMore;
    };
    let message_len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    match prefix[0] {
        0 => fields(buf, message_len, false),
        1 => {
            let available = &buf[PREFIX..buf.len().min(PREFIX.saturating_add(message_len))];
            let whole = available.len() == message_len;
            // Past this, a stream that still has not given the fields is not waited on.
            let given_up = whole || available.len() >= MAX_COMPRESSED_LEADING;
            match inflate(available, MAX_LEADING) {
                Err(GrpcError::Incomplete) if !whole => Leading::NeedMore,
                Err(_) => Leading::Unreadable,
                Ok((inflated, stop)) => {
                    // Its length is known once all of it is inflated (a gzip message may hold
                    // more members than have arrived).
                    let len = match (stop, whole) {
                        (Stop::End, true) => inflated.len(),
                        _ => usize::MAX - PREFIX,
                    };
                    let mut framed = vec![0; PREFIX];
                    framed.extend_from_slice(&inflated);
                    match fields(&framed, len, true) {
                        Leading::NeedMore if given_up || stop == Stop::Limit => Leading::Unreadable,
                        read => read,
                    }
                }
            }
        }
        _ => Leading::Unreadable,
    }
}

/// The leading fields of an uncompressed message of `message_len` bytes framed in `buf`.
fn fields(buf: &[u8], message_len: usize, compressed: bool) -> Leading {
    let end = PREFIX.saturating_add(message_len);
    let mut lead = LeadingFields {
        model_name: None,
        model_version: None,
        name_field: None,
        version_field: None,
        message_len,
        compressed,
    };
    let mut pos = PREFIX;
    while pos < end {
        if pos > MAX_LEADING {
            return Leading::Unreadable;
        }
        let start = pos;
        let Some(tag) = varint(buf, &mut pos) else {
            return if buf.len() < end.min(start + 10) {
                Leading::NeedMore
            } else {
                Leading::Unreadable
            };
        };
        let (field, wire) = (tag >> 3, tag & 7);
        if field > 2 {
            break;
        }
        if wire != 2 || field == 0 {
            return Leading::Unreadable;
        }
        let Some(len) = varint(buf, &mut pos) else {
            return if buf.len() < end.min(pos + 10) {
                Leading::NeedMore
            } else {
                Leading::Unreadable
            };
        };
        let Some(value_end) = usize::try_from(len).ok().and_then(|l| pos.checked_add(l)) else {
            return Leading::Unreadable;
        };
        if value_end > end || value_end > MAX_LEADING + PREFIX {
            return Leading::Unreadable;
        }
        let Some(value) = buf.get(pos..value_end) else {
            return Leading::NeedMore;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return Leading::Unreadable;
        };
        // The last occurrence of a field wins, as every protobuf parser reads it.
        if field == 1 {
            lead.model_name = Some(value.to_string()).filter(|v| !v.is_empty());
            lead.name_field = Some(start..value_end);
        } else {
            lead.model_version = Some(value.to_string()).filter(|v| !v.is_empty());
            lead.version_field = Some(start..value_end);
        }
        pos = value_end;
    }
    Leading::Read(lead)
}

impl LeadingFields {
    /// The message is compressed: setting its version needs all of it ([`framed_len`]).
    pub fn compressed(&self) -> bool {
        self.compressed
    }
}

/// The length of a body's first message with its prefix, once the prefix is there.
pub fn framed_len(buf: &[u8]) -> Option<usize> {
    let len = buf.get(1..PREFIX)?;
    PREFIX.checked_add(u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
}

/// The body's first bytes with the first message's `model_version` set to `version`: the field
/// is replaced (or added after `model_name`) and the message's length prefix updated. `buf`
/// holds the bytes [`leading`] read; the rest of the message follows unchanged. A compressed
/// message is rewritten whole: `buf` must hold all of it, inflating to at most `max_inflated`
/// bytes, and it is sent inflated (then what followed it in `buf`); `None` when it does not.
pub fn with_version(
    buf: &[u8],
    lead: &LeadingFields,
    version: &str,
    max_inflated: usize,
) -> Option<Vec<u8>> {
    if lead.compressed {
        let end = framed_len(buf)?;
        let mut out = set_version(buf.get(..end)?, version, max_inflated)?;
        out.extend_from_slice(&buf[end..]);
        return Some(out);
    }
    let (cut, resume) = match (&lead.version_field, &lead.name_field) {
        (Some(v), _) => (v.start, v.end),
        (None, Some(n)) => (n.end, n.end),
        (None, None) => (PREFIX, PREFIX),
    };
    let mut field = vec![0x12];
    put_varint(&mut field, version.len() as u64);
    field.extend_from_slice(version.as_bytes());
    let len = (lead.message_len + field.len()).checked_sub(resume - cut)?;
    let len = u32::try_from(len).ok()?;
    let mut out = Vec::with_capacity(buf.len() + field.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(buf.get(PREFIX..cut)?);
    out.extend_from_slice(&field);
    out.extend_from_slice(buf.get(resume..)?);
    Some(out)
}

/// A whole request body (one message) with its `model_version` set to `version`: a
/// compressed message is inflated (at most `max_inflated` bytes) and sent uncompressed (the
/// per-message flag allows it under any `grpc-encoding`). `None` when the body cannot be read.
pub fn set_version(body: &[u8], version: &str, max_inflated: usize) -> Option<Vec<u8>> {
    let message = first_message(body, max_inflated).ok()?;
    let len = u32::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(PREFIX + message.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&message);
    let Leading::Read(lead) = leading(&framed) else {
        return None;
    };
    with_version(&framed, &lead, version, max_inflated)
}

/// The Open Inference gRPC messages, as far as they are read (prost skips the other fields:
/// `parameters`, requested `outputs`).
pub mod pb {
    /// `inference.ModelInferRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferRequest {
        /// `model_name`.
        #[prost(string, tag = "1")]
        pub model_name: String,
        /// `model_version`.
        #[prost(string, tag = "2")]
        pub model_version: String,
        /// `id`.
        #[prost(string, tag = "3")]
        pub id: String,
        /// `inputs`.
        #[prost(message, repeated, tag = "5")]
        pub inputs: Vec<InferTensor>,
        /// `raw_input_contents`, one per input when used.
        #[prost(bytes = "vec", repeated, tag = "7")]
        pub raw_input_contents: Vec<Vec<u8>>,
    }

    /// `inference.ModelInferResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferResponse {
        /// `model_name`.
        #[prost(string, tag = "1")]
        pub model_name: String,
        /// `model_version`.
        #[prost(string, tag = "2")]
        pub model_version: String,
        /// `id`.
        #[prost(string, tag = "3")]
        pub id: String,
        /// `outputs`.
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<InferTensor>,
        /// `raw_output_contents`, one per output when used.
        #[prost(bytes = "vec", repeated, tag = "6")]
        pub raw_output_contents: Vec<Vec<u8>>,
    }

    /// `InferInputTensor` and `InferOutputTensor`, which share their fields.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensor {
        /// `name`.
        #[prost(string, tag = "1")]
        pub name: String,
        /// `datatype`.
        #[prost(string, tag = "2")]
        pub datatype: String,
        /// `shape`.
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        /// `contents`, when not raw.
        #[prost(message, optional, tag = "5")]
        pub contents: Option<InferTensorContents>,
    }

    /// `inference.InferTensorContents`: one field per datatype family.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensorContents {
        /// `BOOL`.
        #[prost(bool, repeated, tag = "1")]
        pub bool_contents: Vec<bool>,
        /// `INT8`, `INT16`, `INT32`.
        #[prost(int32, repeated, tag = "2")]
        pub int_contents: Vec<i32>,
        /// `INT64`.
        #[prost(int64, repeated, tag = "3")]
        pub int64_contents: Vec<i64>,
        /// `UINT8`, `UINT16`, `UINT32`.
        #[prost(uint32, repeated, tag = "4")]
        pub uint_contents: Vec<u32>,
        /// `UINT64`.
        #[prost(uint64, repeated, tag = "5")]
        pub uint64_contents: Vec<u64>,
        /// `FP32`.
        #[prost(float, repeated, tag = "6")]
        pub fp32_contents: Vec<f32>,
        /// `FP64`.
        #[prost(double, repeated, tag = "7")]
        pub fp64_contents: Vec<f64>,
        /// `BYTES`.
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub bytes_contents: Vec<Vec<u8>>,
    }
}

/// Tensors from their declarations and, when the message uses them, their raw contents (one per
/// tensor, in order); at most [`MAX_VALUES`] values in all.
fn infer_tensors(
    list: Vec<pb::InferTensor>,
    raw_contents: &[Vec<u8>],
) -> Result<Vec<Tensor<'static>>, CodecError> {
    if !raw_contents.is_empty() && raw_contents.len() != list.len() {
        return Err(CodecError::Shape(
            "raw contents do not match the tensors one to one",
        ));
    }
    let mut room = MAX_VALUES;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.into_iter().enumerate() {
        let mut values = Vec::new();
        match raw_contents.get(i) {
            Some(bytes) => raw(&t.datatype, bytes, &mut values, room)?,
            None => contents(
                &t.datatype,
                t.contents.unwrap_or_default(),
                &mut values,
                room,
            )?,
        }
        room -= values.len();
        out.push(Tensor {
            name: Some(t.name).filter(|n| !n.is_empty()).map(Into::into),
            width: width(&t.shape),
            values,
        });
    }
    Ok(out)
}

/// The values of a tensor's typed `contents`, from the field its datatype uses, until `out`
/// holds `max_len`.
fn contents(
    datatype: &str,
    c: pb::InferTensorContents,
    out: &mut Vec<Value>,
    max_len: usize,
) -> Result<(), CodecError> {
    let room = max_len.saturating_sub(out.len());
    let mut put = |values: &mut dyn Iterator<Item = Value>| out.extend(values.take(room));
    let number = |v: f64| Value::Number(v);
    match datatype {
        "BOOL" => put(&mut c.bool_contents.into_iter().map(Value::Bool)),
        "INT8" | "INT16" | "INT32" => {
            put(&mut c.int_contents.into_iter().map(|v| number(f64::from(v))));
        }
        "INT64" => put(&mut c.int64_contents.into_iter().map(|v| number(v as f64))),
        "UINT8" | "UINT16" | "UINT32" => {
            put(&mut c.uint_contents.into_iter().map(|v| number(f64::from(v))));
        }
        "UINT64" => put(&mut c.uint64_contents.into_iter().map(|v| number(v as f64))),
        "FP32" => put(&mut c.fp32_contents.into_iter().map(|v| number(f64::from(v)))),
        "FP64" => put(&mut c.fp64_contents.into_iter().map(number)),
        "BYTES" => put(&mut c
            .bytes_contents
            .into_iter()
            .map(|v| Value::Text(String::from_utf8_lossy(&v).into_owned()))),
        _ => return Err(CodecError::Shape("tensor contents of an unknown datatype")),
    }
    Ok(())
}

/// Refuse a message that declares more than [`MAX_TENSORS`] tensors (field 5) or raw contents
/// (fields 6 and 7) before prost allocates a few hundred bytes for each of them, however few
/// bytes each took. A message this walk cannot follow is left to prost to refuse.
fn few_tensors(message: &[u8]) -> Result<(), CodecError> {
    let mut counts = [0usize; 8];
    let mut pos = 0;
    while pos < message.len() {
        let Some(tag) = varint(message, &mut pos) else {
            return Ok(());
        };
        let skip = match tag & 7 {
            0 => varint(message, &mut pos).map(|_| 0),
            1 => Some(8),
            2 => varint(message, &mut pos).and_then(|n| usize::try_from(n).ok()),
            5 => Some(4),
            _ => None,
        };
        let Some(next) = skip.and_then(|n| pos.checked_add(n)) else {
            return Ok(());
        };
        pos = next;
        if let Some(count) = usize::try_from(tag >> 3)
            .ok()
            .filter(|f| (5..=7).contains(f))
        {
            counts[count] += 1;
            if counts[count] > MAX_TENSORS {
                return Err(CodecError::Shape("more tensors than are read (4096)"));
            }
        }
    }
    Ok(())
}

/// The input features of a `ModelInfer` request body, inflated to at most `max_inflated` bytes
/// when it is compressed.
pub fn request_features(
    body: &[u8],
    names: &[String],
    max_inflated: usize,
) -> Result<Columns, CodecError> {
    let message = first_message(body, max_inflated)?;
    few_tensors(&message)?;
    let m = <pb::ModelInferRequest as prost::Message>::decode(&*message)?;
    tensors(infer_tensors(m.inputs, &m.raw_input_contents)?, Some(names))
}

/// The predictions of a `ModelInfer` response body, one column per output (or output
/// position), inflated to at most `max_inflated` bytes when it is compressed.
pub fn response_predictions(body: &[u8], max_inflated: usize) -> Result<Columns, CodecError> {
    let message = first_message(body, max_inflated)?;
    few_tensors(&message)?;
    let m = <pb::ModelInferResponse as prost::Message>::decode(&*message)?;
    tensors(infer_tensors(m.outputs, &m.raw_output_contents)?, None)
}

/// A protobuf varint at `pos`, advancing it; `None` when cut or over ten bytes.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos + i)?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    use pb::ModelInferResponse as Response;
    use pb::{InferTensor, InferTensorContents, ModelInferRequest as Request};

    fn framed(message: &impl prost::Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    fn response(version: &str) -> Response {
        Response {
            model_name: "churn".into(),
            model_version: version.into(),
            id: "req-1".into(),
            outputs: vec![InferTensor {
                name: "predict".into(),
                datatype: "FP64".into(),
                shape: vec![2, 1],
                contents: None,
            }],
            raw_output_contents: vec![[0.1f64, 0.9].iter().flat_map(|x| x.to_le_bytes()).collect()],
        }
    }

    #[test]
    fn the_reported_version_is_read_from_a_prefix_of_the_answer() {
        let body = framed(&response("2"));
        // The whole answer, and a prefix cut inside the tensors, as a capped copy holds it.
        assert_eq!(reported_version(&body), Ok(Some("2".into())));
        assert_eq!(reported_version(&body[..40]), Ok(Some("2".into())));
        assert_eq!(reported_version(&framed(&response(""))), Ok(None));
        // What prost reads from the whole message.
        let decoded = <Response as prost::Message>::decode(
            &*first_message(&body, DEFAULT_MAX_INFLATED).unwrap(),
        );
        assert_eq!(decoded.map(|r| r.model_version), Ok("2".to_string()));
        // A second message after the first is not read.
        let mut two = body.clone();
        two.extend_from_slice(&framed(&response("3")));
        assert_eq!(reported_version(&two), Ok(Some("2".into())));
    }

    #[test]
    fn cut_compressed_or_foreign_bodies_are_errors() {
        let body = framed(&response("2"));
        // Cut before the version's field ends.
        for cut in [0, 3, 5, 12, 14] {
            assert_eq!(
                reported_version(&body[..cut]),
                Err(GrpcError::Incomplete),
                "{cut}"
            );
        }
        assert_eq!(
            first_message(&body[..body.len() - 1], DEFAULT_MAX_INFLATED),
            Err(GrpcError::Incomplete)
        );
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(reported_version(&compressed), Err(GrpcError::Compressed));
        assert_eq!(
            first_message(&compressed, DEFAULT_MAX_INFLATED),
            Err(GrpcError::Compressed)
        );
        // Field 1 as a varint: not a string.
        let foreign = [0, 0, 0, 0, 2, 0x08, 0x01];
        assert_eq!(reported_version(&foreign), Err(GrpcError::Unreadable));
    }

    fn request(name: &str, version: &str) -> Request {
        Request {
            model_name: name.into(),
            model_version: version.into(),
            id: "req-1".into(),
            inputs: vec![InferTensor {
                name: "x".into(),
                datatype: "UINT8".into(),
                shape: vec![300],
                contents: None,
            }],
            raw_input_contents: vec![vec![9; 300]],
        }
    }

    #[test]
    fn the_leading_fields_are_read_from_the_first_bytes_alone() {
        let body = framed(&request("churn", "2"));
        // Every prefix short of the fields asks for more; one that holds them is enough.
        let enough = 5 + 2 + 5 + 2 + 1;
        for cut in 0..enough {
            assert_eq!(leading(&body[..cut]), Leading::NeedMore, "{cut}");
        }
        let Leading::Read(lead) = leading(&body[..enough + 3]) else {
            panic!("{:?}", leading(&body[..enough + 3]));
        };
        assert_eq!(lead.model_name.as_deref(), Some("churn"));
        assert_eq!(lead.model_version.as_deref(), Some("2"));
        let Leading::Read(none) = leading(&framed(&request("churn", ""))) else {
            panic!()
        };
        assert_eq!(none.model_version, None);
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(leading(&compressed), Leading::Unreadable);
        let long = framed(&request(&"m".repeat(MAX_LEADING + 1), "2"));
        assert_eq!(leading(&long), Leading::Unreadable);
    }

    #[test]
    fn a_version_set_by_rewriting_decodes_as_the_whole_message_did_but_for_it() {
        for (name, version) in [("churn", "2"), ("churn", ""), ("", "7"), ("", "")] {
            let original = request(name, version);
            let body = framed(&original);
            // The bytes read ahead, as the proxy has them; the rest streams after.
            let head_len = (5 + 40).min(body.len());
            let Leading::Read(lead) = leading(&body[..head_len]) else {
                panic!("{name} {version}")
            };
            for new in ["3", "", "a-much-longer-version-name-than-before"] {
                let mut rewritten =
                    with_version(&body[..head_len], &lead, new, DEFAULT_MAX_INFLATED).unwrap();
                rewritten.extend_from_slice(&body[head_len..]);
                let message = first_message(&rewritten, DEFAULT_MAX_INFLATED).unwrap();
                assert_eq!(message.len() + 5, rewritten.len(), "the prefix is updated");
                let decoded = <Request as prost::Message>::decode(&*message).unwrap();
                let want = Request {
                    model_version: new.into(),
                    ..original.clone()
                };
                assert_eq!(decoded, want, "{name} {version} -> {new}");
            }
        }
    }

    fn compressed(message: &[u8], zlib: bool) -> Vec<u8> {
        use std::io::Write as _;
        let deflated = if zlib {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(message).unwrap();
            z.finish().unwrap()
        } else {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(message).unwrap();
            z.finish().unwrap()
        };
        let mut out = vec![1];
        out.extend_from_slice(&(deflated.len() as u32).to_be_bytes());
        out.extend_from_slice(&deflated);
        out
    }

    #[test]
    fn compressed_messages_are_read_from_their_inflated_prefix() {
        let message = prost::Message::encode_to_vec(&request("churn", "7"));
        for zlib in [false, true] {
            let body = compressed(&message, zlib);
            let Leading::Read(lead) = leading(&body) else {
                panic!("{:?}", leading(&body))
            };
            assert_eq!(lead.model_version.as_deref(), Some("7"));
            // Cut before the fields inflate: more is needed, never a wrong answer.
            assert_eq!(leading(&body[..7]), Leading::NeedMore, "zlib {zlib}");
            // A compressed message is rewritten whole, and sent inflated; cut, it is not.
            assert!(lead.compressed());
            assert_eq!(
                with_version(&body[..body.len() - 1], &lead, "3", DEFAULT_MAX_INFLATED),
                None
            );
            let mut next = body.clone();
            next.extend_from_slice(b"next");
            let rewritten = with_version(&next, &lead, "3", DEFAULT_MAX_INFLATED).unwrap();
            assert!(rewritten.ends_with(b"next"));
            let end = framed_len(&rewritten).unwrap();
            let decoded = <Request as prost::Message>::decode(&rewritten[5..end]).unwrap();
            assert_eq!(
                decoded,
                Request {
                    model_version: "3".into(),
                    ..request("churn", "7")
                }
            );
            assert_eq!(
                &*first_message(&body, DEFAULT_MAX_INFLATED).unwrap(),
                &message[..]
            );
        }
        let answer = prost::Message::encode_to_vec(&response("4"));
        assert_eq!(
            reported_version(&compressed(&answer, false)),
            Ok(Some("4".into()))
        );
        // zstd's magic number: an encoding that is not read.
        let zstd = [1, 0, 0, 0, 6, 0x28, 0xb5, 0x2f, 0xfd, 0, 0];
        assert_eq!(leading(&zstd), Leading::Unreadable);
        assert_eq!(reported_version(&zstd), Err(GrpcError::Compressed));
        assert_eq!(
            first_message(&zstd, DEFAULT_MAX_INFLATED),
            Err(GrpcError::Compressed)
        );
        // A gzip header over garbage.
        let corrupt = [
            1, 0, 0, 0, 12, 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff,
        ];
        assert!(first_message(&corrupt, DEFAULT_MAX_INFLATED).is_err());
        assert_eq!(leading(&corrupt), Leading::Unreadable);
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound() {
        let bomb = compressed(&vec![0; 64 << 20], false);
        assert!(bomb.len() < 1 << 20, "a small body");
        assert_eq!(first_message(&bomb, 1 << 16), Err(GrpcError::TooLarge));
        assert!(matches!(
            request_features(&bomb, &[], 1 << 16),
            Err(CodecError::Grpc(GrpcError::TooLarge))
        ));
        // Zeros read as field 0: not a message, found from the first inflated bytes alone.
        assert_eq!(leading(&bomb), Leading::Unreadable);
        // Many empty tensors, two bytes each: refused before prost allocates them all.
        let empties = [0x2a, 0].repeat(MAX_TENSORS + 1);
        let body = compressed(&empties, true);
        let too_many = "more tensors than are read (4096)";
        assert!(matches!(
            request_features(&body, &[], DEFAULT_MAX_INFLATED),
            Err(CodecError::Shape(m)) if m == too_many
        ));
        // As many as are read: decoded (and refused for what they are, tensors of no type).
        let few = compressed(&[0x2a, 0].repeat(MAX_TENSORS), true);
        assert!(matches!(
            request_features(&few, &[], DEFAULT_MAX_INFLATED),
            Err(CodecError::Shape(m)) if m != too_many
        ));
    }

    #[test]
    fn a_compressed_stream_that_gives_nothing_is_not_waited_on() {
        // A zlib header, then empty stored blocks: valid deflate that never yields a byte.
        let mut stream = vec![0x78, 0x01];
        for _ in 0..(MAX_COMPRESSED_LEADING / 5 + 10) {
            stream.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        }
        let mut body = vec![1];
        body.extend_from_slice(&(1u32 << 20).to_be_bytes());
        body.extend_from_slice(&stream);
        assert_eq!(leading(&body[..PREFIX + 4000]), Leading::NeedMore);
        assert_eq!(leading(&body), Leading::Unreadable);
        // A complete compressed message of one byte, and a cut or trailing stream.
        assert_eq!(leading(&[1, 0, 0, 0, 1, 0x78]), Leading::Unreadable);
        let message = prost::Message::encode_to_vec(&request("churn", "7"));
        let mut trailing = compressed(&message, true);
        trailing.push(0);
        let len = (trailing.len() - PREFIX) as u32;
        trailing[1..PREFIX].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            first_message(&trailing, DEFAULT_MAX_INFLATED),
            Err(GrpcError::Unreadable)
        );
        let whole = compressed(&message, false);
        // A gzip stream whose last byte (of its length trailer) is lost, declared as whole.
        let mut cut = whole[..whole.len() - 1].to_vec();
        let len = (cut.len() - PREFIX) as u32;
        cut[1..PREFIX].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            first_message(&cut, DEFAULT_MAX_INFLATED),
            Err(GrpcError::Unreadable)
        );
    }

    #[test]
    fn typed_contents_are_read_by_datatype_and_raw_contents_by_position() {
        let tensor = |name: &str, datatype: &str, shape: Vec<i64>, contents| InferTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            contents,
        };
        let typed = Request {
            model_name: "churn".into(),
            inputs: vec![
                tensor(
                    "a",
                    "INT32",
                    vec![2],
                    Some(InferTensorContents {
                        int_contents: vec![1, -2],
                        // A field the datatype does not use is not read.
                        fp64_contents: vec![9.0],
                        ..Default::default()
                    }),
                ),
                tensor(
                    "b",
                    "BYTES",
                    vec![2],
                    Some(InferTensorContents {
                        bytes_contents: vec![b"x".to_vec(), b"y".to_vec()],
                        ..Default::default()
                    }),
                ),
                tensor(
                    "c",
                    "FP32",
                    vec![1, 2],
                    Some(InferTensorContents {
                        fp32_contents: vec![0.5, 1.5],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        };
        let f = request_features(
            &framed(&typed),
            &["p".into(), "q".into()],
            DEFAULT_MAX_INFLATED,
        )
        .unwrap();
        assert_eq!(
            f.get("a"),
            Some(&[Value::Number(1.0), Value::Number(-2.0)][..])
        );
        assert_eq!(
            f.get("b"),
            Some(&[Value::Text("x".into()), Value::Text("y".into())][..])
        );
        assert_eq!(f.get("c[1]"), Some(&[Value::Number(1.5)][..]));
        // One tensor holding whole rows takes the schema's names.
        let rows = Request {
            inputs: vec![tensor("x", "FP64", vec![1, 2], None)],
            raw_input_contents: vec![[3.0f64, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        };
        let f = request_features(
            &framed(&rows),
            &["p".into(), "q".into()],
            DEFAULT_MAX_INFLATED,
        )
        .unwrap();
        assert_eq!(f.get("q"), Some(&[Value::Number(4.0)][..]));
        // Raw contents that do not pair with the tensors, or an unknown datatype: errors.
        let unpaired = Request {
            raw_input_contents: vec![vec![0; 8], vec![0; 8]],
            ..rows.clone()
        };
        assert!(request_features(&framed(&unpaired), &[], DEFAULT_MAX_INFLATED).is_err());
        let unknown = Request {
            inputs: vec![tensor(
                "x",
                "FP8",
                vec![1],
                Some(InferTensorContents::default()),
            )],
            ..Default::default()
        };
        assert!(request_features(&framed(&unknown), &[], DEFAULT_MAX_INFLATED).is_err());
        // Not protobuf at all.
        assert!(matches!(
            response_predictions(&[0, 0, 0, 0, 2, 0xff, 0xff], DEFAULT_MAX_INFLATED),
            Err(CodecError::Protobuf(_))
        ));
    }
}
