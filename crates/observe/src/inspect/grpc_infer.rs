//! Open Inference over gRPC (`inference.GRPCInferenceService`, KServe's `grpc_predict_v2.proto`,
//! which Triton and MLServer serve): the model name and version a `ModelInfer` message carries.
//! Both messages begin with them (tags 1 and 2 of `ModelInferRequest` and `ModelInferResponse`),
//! and every protobuf library writes fields in number order: they are read from the first bytes
//! of a body, never its tensors (prost, which needs a whole message, checks this in the tests).

/// The `:path` of a `ModelInfer` call.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Bytes before each gRPC message: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// Why a gRPC body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    /// Fewer bytes than needed (a copy cut before the fields, or before the message's end).
    #[error("the first gRPC message is incomplete")]
    Incomplete,
    /// The message is compressed (`grpc-encoding`), which is not read.
    #[error("the first gRPC message is compressed")]
    Compressed,
    /// Not the protobuf of a `ModelInfer` message.
    #[error("not a ModelInfer message")]
    Unreadable,
}

/// The first message of a gRPC body.
pub fn first_message(body: &[u8]) -> Result<&[u8], GrpcError> {
    let (&flag, rest) = body.split_first().ok_or(GrpcError::Incomplete)?;
    let len = rest.get(..4).ok_or(GrpcError::Incomplete)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if flag != 0 {
        return Err(GrpcError::Compressed);
    }
    let end = PREFIX.checked_add(len).ok_or(GrpcError::Incomplete)?;
    body.get(PREFIX..end).ok_or(GrpcError::Incomplete)
}

/// The version a `ModelInferResponse` reports (`None` when it names none), from its leading
/// fields: a prefix of the answer is enough, the tensors are never read.
pub fn reported_version(body: &[u8]) -> Result<Option<String>, GrpcError> {
    match leading(body) {
        Leading::Read(lead) => Ok(lead.model_version),
        Leading::NeedMore => Err(GrpcError::Incomplete),
        Leading::Unreadable if body.first() != Some(&0) => Err(GrpcError::Compressed),
        Leading::Unreadable => Err(GrpcError::Unreadable),
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
    /// It cannot be read (compressed, not protobuf, fields over [`MAX_LEADING`]): forwarded as is.
    Unreadable,
}

/// `model_name` and `model_version` of the first message, where they lie.
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
}

/// Read the leading fields 1 and 2 of the first message of a request body's first bytes. Every
/// protobuf library writes a message's fields in field-number order, so both come before the
/// tensors: a few dozen bytes are enough, never the whole message.
pub fn leading(buf: &[u8]) -> Leading {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Leading::NeedMore;
    };
    if prefix[0] != 0 {
        return Leading::Unreadable;
    }
    let message_len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let end = PREFIX.saturating_add(message_len);
    let mut lead = LeadingFields {
        model_name: None,
        model_version: None,
        name_field: None,
        version_field: None,
        message_len,
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

/// The body's first bytes with the first message's `model_version` set to `version`: the field
/// is replaced (or added after `model_name`) and the message's length prefix updated. `buf`
/// holds the bytes [`leading`] read; the rest of the message follows unchanged.
pub fn with_version(buf: &[u8], lead: &LeadingFields, version: &str) -> Option<Vec<u8>> {
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

    /// `ModelInferResponse` as the proto declares it, tensors included.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Response {
        #[prost(string, tag = "1")]
        model_name: String,
        #[prost(string, tag = "2")]
        model_version: String,
        #[prost(string, tag = "3")]
        id: String,
        #[prost(message, repeated, tag = "5")]
        outputs: Vec<Output>,
        #[prost(bytes = "vec", repeated, tag = "6")]
        raw_output_contents: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Output {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        datatype: String,
        #[prost(int64, repeated, tag = "3")]
        shape: Vec<i64>,
        #[prost(message, optional, tag = "5")]
        contents: Option<Contents>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Contents {
        #[prost(double, repeated, tag = "7")]
        fp64_contents: Vec<f64>,
    }

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
            outputs: vec![Output {
                name: "predict".into(),
                datatype: "FP64".into(),
                shape: vec![2, 1],
                contents: Some(Contents {
                    fp64_contents: vec![0.1, 0.9],
                }),
            }],
            raw_output_contents: vec![vec![0; 64]],
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
        let decoded = <Response as prost::Message>::decode(first_message(&body).unwrap());
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
            first_message(&body[..body.len() - 1]),
            Err(GrpcError::Incomplete)
        );
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(reported_version(&compressed), Err(GrpcError::Compressed));
        assert_eq!(first_message(&compressed), Err(GrpcError::Compressed));
        // Field 1 as a varint: not a string.
        let foreign = [0, 0, 0, 0, 2, 0x08, 0x01];
        assert_eq!(reported_version(&foreign), Err(GrpcError::Unreadable));
    }

    /// `ModelInferRequest` as the proto declares it, tensors included.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Request {
        #[prost(string, tag = "1")]
        model_name: String,
        #[prost(string, tag = "2")]
        model_version: String,
        #[prost(string, tag = "3")]
        id: String,
        #[prost(bytes = "vec", repeated, tag = "7")]
        raw_input_contents: Vec<Vec<u8>>,
    }

    fn request(name: &str, version: &str) -> Request {
        Request {
            model_name: name.into(),
            model_version: version.into(),
            id: "req-1".into(),
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
                let mut rewritten = with_version(&body[..head_len], &lead, new).unwrap();
                rewritten.extend_from_slice(&body[head_len..]);
                let message = first_message(&rewritten).unwrap();
                assert_eq!(message.len() + 5, rewritten.len(), "the prefix is updated");
                let decoded = <Request as prost::Message>::decode(message).unwrap();
                let want = Request {
                    model_version: new.into(),
                    ..original.clone()
                };
                assert_eq!(decoded, want, "{name} {version} -> {new}");
            }
        }
    }
}
