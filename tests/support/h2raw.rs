//! A raw HTTP/2 client for the tests that must send what no well-behaved client would: frames
//! written by hand (RFC 9113 §4) with HPACK literals (RFC 7541 §6.2.2, no Huffman, no table).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// One frame as read from the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    /// SETTINGS parameters as (id, value).
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// Encode one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// HPACK block of literal fields without indexing, names and values sent as given (so a test
/// can send bytes a real encoder would refuse).
pub fn hpack(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The pseudo-headers of a POST to `path`, followed by `extra`.
pub fn request_block(path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"sidecar"),
        (b":path", path.as_bytes()),
    ];
    fields.extend_from_slice(extra);
    hpack(&fields)
}

/// A connection that has sent the preface and an empty SETTINGS frame.
pub struct Conn {
    pub io: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: std::net::SocketAddr) -> Self {
        let mut io = TcpStream::connect(addr).await.unwrap();
        io.set_nodelay(true).unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        io.write_all(&hello).await.unwrap();
        Self {
            io,
            buf: Vec::new(),
        }
    }

    /// Write bytes; false once the peer has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.io.write_all(bytes).await.is_ok()
    }

    /// The next frame, or None on EOF, reset or `wait` without one.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(wait, self.io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Read frames until one of `kind` arrives (answering nothing), or None.
    pub async fn until(&mut self, kind: u8, wait: Duration) -> Option<Frame> {
        while let Some(f) = self.next(wait).await {
            if f.kind == kind {
                return Some(f);
            }
        }
        None
    }

    /// Read frames until one of `kind` on `stream`; also stops at a GOAWAY, which it returns.
    pub async fn until_on(&mut self, kind: u8, stream: u32, wait: Duration) -> Option<Frame> {
        while let Some(f) = self.next(wait).await {
            if (f.kind == kind && f.stream == stream) || f.kind == GOAWAY {
                return Some(f);
            }
        }
        None
    }

    /// Collect a response on `stream`: its HPACK-encoded header block is returned raw (tests
    /// only look for the `:status` byte) plus the DATA payload, up to END_STREAM, RST or GOAWAY.
    pub async fn response(&mut self, stream: u32, wait: Duration) -> Response {
        self.responses(&[stream], wait).await.remove(0)
    }

    /// Read the server's SETTINGS, acknowledge them, and return them as (id, value).
    pub async fn handshake(&mut self, wait: Duration) -> Vec<(u16, u32)> {
        let settings = self.until(SETTINGS, wait).await.unwrap().settings();
        self.send(&frame(SETTINGS, ACK, 0, &[])).await;
        settings
    }
}

impl Conn {
    /// Collect the responses of several streams, however their frames interleave.
    pub async fn responses(&mut self, streams: &[u32], wait: Duration) -> Vec<Response> {
        let mut out: Vec<Response> = streams.iter().map(|_| Response::default()).collect();
        let open = |out: &Vec<Response>| out.iter().any(|r| !r.ended && r.reset.is_none());
        while open(&out) {
            let Some(f) = self.next(wait).await else {
                break;
            };
            if f.kind == GOAWAY {
                for r in &mut out {
                    r.goaway = Some(f.error_code());
                }
                break;
            }
            let Some(i) = streams.iter().position(|s| *s == f.stream) else {
                continue;
            };
            let r = &mut out[i];
            match f.kind {
                HEADERS => r.headers.extend(f.payload.iter()),
                DATA => r.data.extend(f.payload.iter()),
                RST_STREAM => r.reset = Some(f.error_code()),
                _ => {}
            }
            if matches!(f.kind, HEADERS | DATA) && f.flags & END_STREAM != 0 {
                r.ended = true;
            }
        }
        out
    }
}

/// What came back on one stream.
#[derive(Debug, Default)]
pub struct Response {
    pub headers: Vec<u8>,
    pub data: Vec<u8>,
    pub ended: bool,
    pub reset: Option<u32>,
    pub goaway: Option<u32>,
}

impl Response {
    /// The status from the first header field, which hyper's encoder sends as a static-table
    /// index (0x88 = 200 ... 0x8e = 500) or a literal with an indexed `:status` name.
    pub fn status(&self) -> Option<u16> {
        let b = *self.headers.first()?;
        let indexed = [
            (0x88, 200),
            (0x89, 204),
            (0x8a, 206),
            (0x8b, 304),
            (0x8c, 400),
            (0x8d, 404),
            (0x8e, 500),
        ];
        if let Some((_, s)) = indexed.iter().find(|(i, _)| *i == b) {
            return Some(*s);
        }
        // Literal with name index 8 (:status): h2 Huffman-encodes the 3-digit value.
        let len = *self.headers.get(1)?;
        let v = self.headers.get(2..2 + usize::from(len & 0x7f))?;
        if len & 0x80 == 0 {
            return std::str::from_utf8(v).ok()?.parse().ok();
        }
        huffman_digits(v, 3)
    }
}

/// Decode `n` digits of a Huffman string (RFC 7541 Appendix B: '0'..'2' are the 5-bit codes
/// 0..2, '3'..'9' the 6-bit codes 0x19..0x1f).
fn huffman_digits(bytes: &[u8], n: usize) -> Option<u16> {
    let bit = |i: usize| -> Option<u16> { Some(u16::from(bytes.get(i / 8)? >> (7 - i % 8) & 1)) };
    let take = |at: usize, k: usize| -> Option<u16> {
        (0..k).try_fold(0u16, |acc, j| Some(acc << 1 | bit(at + j)?))
    };
    let (mut at, mut value) = (0, 0u16);
    for _ in 0..n {
        let five = take(at, 5)?;
        let digit = if five <= 2 {
            at += 5;
            five
        } else {
            let six = take(at, 6)?;
            if !(0x19..=0x1f).contains(&six) {
                return None;
            }
            at += 6;
            six - 0x19 + 3
        };
        value = value * 10 + digit;
    }
    Some(value)
}
