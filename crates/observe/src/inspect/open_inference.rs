//! Open Inference Protocol v2 REST: the version the model server reports in its response, the
//! input features of a request and the predictions of a response (tensors in `inputs` /
//! `outputs`: `name`, `shape`, `datatype`, `data` flat or nested row-major).
//!
//! The tensors are read in one pass straight from the bytes into [`Value`]s by a hand-written
//! reader (no JSON tree, no serde visitors): the other members are checked and skipped, names
//! are borrowed when they need no unescaping. It accepts and rejects exactly what serde_json
//! did (nesting limit, UTF-8 and escape checks, number values bit for bit); the serde decoder
//! it replaced is kept in the tests as its oracle.

use super::table::{CodecError, Columns, MAX_VALUES, Value};
use super::tensor::{Tensor, tensors};
use std::borrow::Cow;

/// Why a response body could not be read as JSON: what was wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson {
    /// What the reader expected or found.
    pub what: &'static str,
    /// Byte offset.
    pub at: usize,
}

impl std::error::Error for NotJson {}

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// The bytes of a little-endian word that end a run of plain JSON string content (`"`, `\`,
/// control characters), as their high bits. Never misses one; the lowest flag is exact (a
/// higher one can be a false alarm after a true one), so `trailing_zeros() / 8` is the index
/// of the first.
pub fn string_specials(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
        | zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
}

/// A validating one-pass JSON reader over a body's bytes: it answers the top-level
/// `model_version` on the request path (every response of an Open Inference route; serde_json's
/// derive took about 4,000 instructions for a 200-byte response, this a fraction of that) and
/// reads tensors for the inspector, decoding nothing it is not asked for.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    /// What stopped the reader, and where (set with [`Stop`]).
    failure: Option<NotJson>,
}

/// The reader's own error: what and where are kept in [`Scan::failure`], so a result carries no
/// error payload (a `Read<()>` is one byte) and the success path of every step stays small.
#[derive(Debug)]
struct Stop;

type Read<T> = Result<T, Stop>;

impl<'a> Scan<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self {
            b,
            i: 0,
            failure: None,
        }
    }

    fn err<T>(&mut self, what: &'static str) -> Read<T> {
        self.fail_at(what, self.i)
    }

    fn fail_at<T>(&mut self, what: &'static str, at: usize) -> Read<T> {
        self.failure = Some(NotJson { what, at });
        Err(Stop)
    }

    /// What stopped the reader.
    fn failure(&mut self) -> NotJson {
        self.failure.take().unwrap_or(NotJson {
            what: "invalid JSON",
            at: self.i,
        })
    }

    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            // Anything above a space ends it: one comparison for the usual case.
            if c > b' ' || !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return;
            }
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8, what: &'static str) -> Read<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// A string after any whitespace: its raw bytes between the quotes and whether it has
    /// escapes.
    fn string(&mut self) -> Read<(&'a [u8], bool)> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string");
        }
        self.quoted().map(|(raw, escaped, _)| (raw, escaped))
    }

    /// The string at `self.i`, which the caller has seen is `"`: its raw bytes, whether it has
    /// escapes and whether every byte is ASCII (then it is valid UTF-8). Runs of plain bytes
    /// are skipped eight at a time.
    fn quoted(&mut self) -> Read<(&'a [u8], bool, bool)> {
        const HIGH: u64 = 0x8080_8080_8080_8080;
        debug_assert_eq!(self.b.get(self.i), Some(&b'"'));
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        let mut high = 0u64;
        loop {
            if let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let w = u64::from_le_bytes(word);
                let special = string_specials(w);
                if special == 0 {
                    high |= w & HIGH;
                    self.i += 8;
                    continue;
                }
                let plain = special.trailing_zeros() / 8;
                high |= w & HIGH & ((1u64 << (plain * 8)) - 1);
                self.i += plain as usize;
            }
            match self.b.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    let raw = &self.b[start..self.i];
                    self.i += 1;
                    return Ok((raw, escaped, high == 0));
                }
                Some(b'\\') => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return self.err("invalid \\u escape");
                            }
                            self.i += 6;
                        }
                        _ => return self.err("invalid escape"),
                    }
                }
                Some(c) if *c < 0x20 => return self.err("control character in a string"),
                Some(c) => {
                    high |= u64::from(*c & 0x80);
                    self.i += 1;
                }
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// A number, by JSON's grammar: its raw bytes.
    fn number(&mut self) -> Read<&'a [u8]> {
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        if self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            return self.err("invalid number");
        }
        Ok(&self.b[start..self.i])
    }

    fn literal(&mut self, word: &'static [u8]) -> Read<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    /// Skip any value, checking its syntax. Iterative, so nesting depth costs no stack (as in
    /// serde_json, which does not limit the depth of values it ignores); the kinds of the open
    /// containers are kept as bits, in a word for the first 64 levels.
    fn skip(&mut self) -> Read<()> {
        let mut bits = 0u64;
        let mut deep: Vec<bool> = Vec::new();
        let mut depth = 0usize;
        let push = |bits: &mut u64, deep: &mut Vec<bool>, depth: &mut usize, object: bool| {
            if *depth < 64 {
                *bits = (*bits & !(1 << *depth)) | (u64::from(object) << *depth);
            } else {
                deep.push(object);
            }
            *depth += 1;
        };
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.quoted()?;
                }
                Some(b'{') => {
                    self.i += 1;
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        push(&mut bits, &mut deep, &mut depth, true);
                        self.key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        push(&mut bits, &mut deep, &mut depth, false);
                        continue;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                }
                _ => return self.err("expected a value"),
            }
            // A value ended: close what it ends, or move to the next element.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = if depth <= 64 {
                    bits & (1 << (depth - 1)) != 0
                } else {
                    deep.last().copied().unwrap_or(false)
                };
                match (self.peek(), object) {
                    (Some(b','), true) => {
                        self.i += 1;
                        self.key()?;
                        break;
                    }
                    (Some(b','), false) => {
                        self.i += 1;
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.i += 1;
                        depth -= 1;
                        if depth >= 64 {
                            deep.pop();
                        }
                    }
                    (_, true) => return self.err("expected , or }"),
                    (_, false) => return self.err("expected , or ]"),
                }
            }
        }
    }

    /// An object key and its colon; the key's raw bytes (escapes undecoded).
    fn key(&mut self) -> Read<(&'a [u8], bool)> {
        let key = self.string()?;
        self.eat(b':', "expected :")?;
        Ok(key)
    }
}

/// The response's `model_version` (a string, or a number some servers send). `Err` when the
/// body is not a JSON object; `Ok(None)` when it carries no version (or not as a string or
/// number).
pub fn reported_version(body: &[u8]) -> Result<Option<String>, NotJson> {
    let mut s = Scan::new(body);
    reported(&mut s).map_err(|Stop| s.failure())
}

fn reported(s: &mut Scan<'_>) -> Read<Option<String>> {
    s.eat(b'{', "expected a JSON object")?;
    let mut found: Option<Option<String>> = None;
    s.members(|s, key| {
        if key != b"model_version" {
            return s.skip();
        }
        if found.is_some() {
            return s.err("duplicate field model_version");
        }
        found = Some(match s.peek() {
            Some(b'"') => Some(s.text()?.into_owned()),
            Some(b'-' | b'0'..=b'9') => {
                let raw = s.number()?;
                serde_json::from_slice::<serde_json::Number>(raw)
                    .ok()
                    .map(|n| n.to_string())
            }
            _ => {
                s.skip()?;
                None
            }
        });
        Ok(())
    })?;
    if s.peek().is_some() {
        return s.err("trailing characters");
    }
    Ok(found.flatten())
}

/// serde_json's nesting limit for values it decodes (it does not limit values it skips): the
/// 128th open container is an error. Kept so bodies are accepted exactly as before.
const MAX_DEPTH: usize = 128;

/// What a tensor's `name` or `shape` (or `shape`'s second element) held.
enum Any<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    Seq(Option<u64>),
    Other,
}

impl<'a> Scan<'a> {
    /// Open a decoded container (one more than `open`), within serde_json's depth limit.
    fn enter(&mut self, open: usize) -> Read<usize> {
        self.i += 1;
        if open + 1 >= MAX_DEPTH {
            return self.err("recursion limit exceeded");
        }
        Ok(open + 1)
    }

    /// The string at `self.i` (the caller has seen its `"`), decoded and checked as
    /// serde_json checks strings it decodes (UTF-8, escapes and surrogates); borrowed when it
    /// has no escapes.
    fn text(&mut self) -> Read<Cow<'a, str>> {
        let at = self.i;
        let (raw, escaped, _) = self.quoted()?;
        self.decode(at, raw, escaped)
    }

    /// The text of a string whose contents `raw` (a slice of the body) were read at `at`.
    /// Escaped strings are decoded by serde_json from their quoted bytes, found from where
    /// `raw` lies in the body (the reader may have moved on, past a key's colon).
    fn decode(&mut self, at: usize, raw: &'a [u8], escaped: bool) -> Read<Cow<'a, str>> {
        if escaped {
            let start = (raw.as_ptr() as usize).wrapping_sub(self.b.as_ptr() as usize);
            let quoted = start
                .checked_sub(1)
                .and_then(|from| self.b.get(from..start + raw.len() + 1))
                .unwrap_or_default();
            match serde_json::from_slice::<String>(quoted) {
                Ok(text) => Ok(Cow::Owned(text)),
                Err(_) => self.fail_at("invalid string escape", at),
            }
        } else {
            match std::str::from_utf8(raw) {
                Ok(text) => Ok(Cow::Borrowed(text)),
                Err(_) => self.fail_at("invalid UTF-8", at),
            }
        }
    }

    /// After a member's value: `,` (true, another member follows) or `}` (false).
    fn next_member(&mut self) -> Read<bool> {
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(b'}') => {
                self.i += 1;
                Ok(false)
            }
            _ => self.err("expected , or }"),
        }
    }

    /// After an element: `,` (true) or `]` (false).
    fn next_element(&mut self) -> Read<bool> {
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(b']') => {
                self.i += 1;
                Ok(false)
            }
            _ => self.err("expected , or ]"),
        }
    }

    /// The members of an object whose `{` was just read, calling `member` with each key
    /// (decoded and checked; plain ASCII keys are their raw bytes); `member` reads the value.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Read<()>) -> Read<()> {
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.err("expected a key");
            }
            let at = self.i;
            let (raw, escaped, ascii) = self.quoted()?;
            self.eat(b':', "expected :")?;
            if ascii && !escaped {
                member(self, raw)?;
            } else {
                let key = self.decode(at, raw, escaped)?;
                member(self, key.as_bytes())?;
            }
            if !self.next_member()? {
                return Ok(());
            }
        }
    }

    /// The elements of an array whose `[` was just read, each read by `element`.
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            if !self.next_element()? {
                return Ok(());
            }
        }
    }

    /// An object whose keys are decoded and values skipped (a map serde visits entry by entry).
    fn keys_only(&mut self) -> Read<()> {
        self.members(|s, _| s.skip())
    }

    /// A number as serde_json gives it to a visitor, as `f64`; `u64` too when it is a
    /// non-negative integer that fits.
    fn number_value(&mut self) -> Read<(f64, Option<u64>)> {
        if let Some((end, v)) = plain_number(self.b, self.i) {
            self.i = end;
            return Ok(v);
        }
        let at = self.i;
        let raw = self.number()?;
        if let Some(v) = fast_number(raw) {
            return Ok(v);
        }
        // Long or extreme numbers: serde_json's own reading, so values match it bit for bit.
        match serde_json::from_slice::<serde_json::Number>(raw) {
            Ok(n) => Ok((n.as_f64().unwrap_or(f64::NAN), n.as_u64())),
            Err(_) => self.fail_at("number out of range", at),
        }
    }

    /// A `name` or `shape` value (or `shape`'s second element), in container `open`.
    fn any(&mut self, open: usize) -> Read<Any<'a>> {
        Ok(match self.peek() {
            Some(b'"') => Any::Str(self.text()?),
            Some(b'-' | b'0'..=b'9') => match self.number_value()? {
                (_, Some(u)) => Any::U64(u),
                _ => Any::Other,
            },
            Some(b'[') => {
                let depth = self.enter(open)?;
                let mut index = 0;
                let mut second = None;
                self.elements(|s| {
                    index += 1;
                    if index == 2 {
                        if let Any::U64(n) = s.any(depth)? {
                            second = Some(n);
                        }
                        Ok(())
                    } else {
                        s.skip()
                    }
                })?;
                Any::Seq(second)
            }
            Some(b'{') => {
                self.enter(open)?;
                self.keys_only()?;
                Any::Other
            }
            _ => {
                self.skip()?;
                Any::Other
            }
        })
    }

    /// A tensor's `data`, flat or nested, appended as scalars to `out` up to [`MAX_VALUES`]
    /// (the rest is checked and skipped).
    fn data(&mut self, open: usize, out: &mut Vec<Value>) -> Read<()> {
        let value = match self.peek() {
            Some(b'[') => {
                let depth = self.enter(open)?;
                return self.elements(|s| {
                    if out.len() >= MAX_VALUES {
                        s.skip()
                    } else {
                        s.data(depth, out)
                    }
                });
            }
            Some(b'{') => {
                self.enter(open)?;
                self.keys_only()?;
                Value::Nested
            }
            Some(b'"') => Value::Text(self.text()?.into_owned()),
            Some(b'-' | b'0'..=b'9') => Value::Number(self.number_value()?.0),
            Some(b't') => {
                self.literal(b"true")?;
                Value::Bool(true)
            }
            Some(b'f') => {
                self.literal(b"false")?;
                Value::Bool(false)
            }
            Some(b'n') => {
                self.literal(b"null")?;
                Value::Null
            }
            _ => return self.err("expected a value"),
        };
        if out.len() < MAX_VALUES {
            out.push(value);
        }
        Ok(())
    }

    /// One tensor object, in container `open`.
    fn tensor(&mut self, open: usize) -> Read<Tensor<'a>> {
        if self.peek() != Some(b'{') {
            return self.err("expected a tensor object");
        }
        let depth = self.enter(open)?;
        let mut t = Tensor {
            name: None,
            width: 1,
            // Most tensors hold a few values: allocated once, at that size.
            values: Vec::with_capacity(4),
        };
        self.members(|s, key| {
            match key {
                b"name" => {
                    t.name = match s.any(depth)? {
                        Any::Str(name) => Some(name),
                        _ => None,
                    }
                }
                b"shape" => {
                    t.width = match s.any(depth)? {
                        Any::Seq(Some(w)) => usize::try_from(w).unwrap_or(1).max(1),
                        _ => 1,
                    }
                }
                b"data" => {
                    t.values.clear();
                    s.data(depth, &mut t.values)?;
                }
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(t)
    }

    /// The `inputs` / `outputs` value: `None` when it is not a list.
    fn tensor_list(&mut self, open: usize) -> Read<Option<Vec<Tensor<'a>>>> {
        match self.peek() {
            Some(b'[') => {
                let depth = self.enter(open)?;
                let mut list = Vec::with_capacity(4);
                self.elements(|s| {
                    list.push(s.tensor(depth)?);
                    Ok(())
                })?;
                Ok(Some(list))
            }
            Some(b'{') => {
                self.enter(open)?;
                self.keys_only()?;
                Ok(None)
            }
            Some(b'"') => {
                self.text()?;
                Ok(None)
            }
            _ => {
                self.skip()?;
                Ok(None)
            }
        }
    }
}

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The commonest numbers in one pass over the bytes: `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at
/// most 18 digits, no exponent, and a value [`fast_number`] would compute the same way. Returns
/// where the number ends and its value; `None` hands anything else (including every invalid
/// number) to the validating path.
fn plain_number(b: &[u8], mut i: usize) -> Option<(usize, (f64, Option<u64>))> {
    let negative = b.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let first = *b.get(i).filter(|c| c.is_ascii_digit())?;
    let mut mantissa = u64::from(first - b'0');
    let mut count = 1usize;
    i += 1;
    let digit = |i: &mut usize, mantissa: &mut u64, count: &mut usize| match b.get(*i) {
        Some(&c) if c.is_ascii_digit() => {
            *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            *count += 1;
            *i += 1;
            true
        }
        _ => false,
    };
    if first != b'0' {
        while digit(&mut i, &mut mantissa, &mut count) {}
    }
    let mut scale = 0usize;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while digit(&mut i, &mut mantissa, &mut count) {}
        scale = i - start;
        if scale == 0 {
            return None;
        }
    }
    // An exponent, a digit after a leading zero, or too many digits: the general path.
    if count > 18 || matches!(b.get(i), Some(b'e' | b'E' | b'0'..=b'9')) {
        return None;
    }
    if scale == 0 {
        return Some((
            i,
            if negative {
                (-(mantissa as f64), None)
            } else {
                (mantissa as f64, Some(mantissa))
            },
        ));
    }
    if mantissa > 1 << 53 {
        return None;
    }
    let v = mantissa as f64 / POW10[scale];
    Some((i, (if negative { -v } else { v }, None)))
}

/// The common numbers without a general float parser: integers of up to 18 digits, and
/// decimals whose digits fit in 2^53 with a power-of-ten scale up to 22, where one
/// multiplication or division is correctly rounded (so the value equals serde_json's).
/// `None` for anything else. `raw` is a valid JSON number.
fn fast_number(raw: &[u8]) -> Option<(f64, Option<u64>)> {
    let (negative, digits) = match raw.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, raw),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0usize;
    let mut scale: i64 = 0;
    let mut i = 0;
    let mut fraction = false;
    while let Some(&c) = digits.get(i) {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                count += 1;
                if count > 18 {
                    return None;
                }
                if fraction {
                    scale -= 1;
                }
            }
            b'.' => fraction = true,
            _ => break,
        }
        i += 1;
    }
    let integer = !fraction && i == digits.len();
    if integer {
        return Some(if negative {
            // As serde_json: negative integers (and -0, as -0.0) carry no u64.
            (-(mantissa as f64), None)
        } else {
            (mantissa as f64, Some(mantissa))
        });
    }
    if i < digits.len() {
        // An exponent: `e`, optional sign, digits.
        let exp = &digits[i + 1..];
        let (sign, exp) = match exp.split_first() {
            Some((b'-', rest)) => (-1, rest),
            Some((b'+', rest)) => (1, rest),
            _ => (1, exp),
        };
        if exp.len() > 4 {
            return None;
        }
        let e = exp
            .iter()
            .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0'));
        scale += sign * e;
    }
    if mantissa > 1 << 53 {
        return None;
    }
    let pow = *POW10.get(usize::try_from(scale.unsigned_abs()).ok()?)?;
    let m = mantissa as f64;
    let v = if scale >= 0 { m * pow } else { m / pow };
    Some((if negative { -v } else { v }, None))
}

fn read_tensors<'a>(body: &'a [u8], member: &'static str) -> Result<Vec<Tensor<'a>>, CodecError> {
    let mut s = Scan::new(body);
    tensor_member(&mut s, member)
        .map_err(|Stop| CodecError::Syntax(s.failure()))?
        .ok_or(CodecError::Shape("expected a list of tensors"))
}

/// The tensors of the top-level `member`, when it is a list.
fn tensor_member<'a>(s: &mut Scan<'a>, member: &'static str) -> Read<Option<Vec<Tensor<'a>>>> {
    if s.peek() != Some(b'{') {
        return s.err("expected a JSON object");
    }
    let depth = s.enter(0)?;
    let mut found: Option<Option<Vec<Tensor<'a>>>> = None;
    s.members(|s, key| {
        if key == member.as_bytes() {
            found = Some(s.tensor_list(depth)?);
            Ok(())
        } else {
            s.skip()
        }
    })?;
    if s.peek().is_some() {
        return s.err("trailing characters");
    }
    Ok(found.flatten())
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
    use crate::inspect::table::positional;

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

    /// The decoder before the hand-written reader: serde visitors, one pass. Kept as the
    /// oracle the reader must agree with, value for value and in what it rejects.
    mod serde_visitors {
        use super::super::Tensor;
        use crate::inspect::table::{CodecError, MAX_VALUES, Value};
        use std::borrow::Cow;
        use std::fmt;

        use serde::Deserialize;
        use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Tensor<'de>, A::Error> {
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
                    fn visit_seq<A: SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<Tensors<'de>, A::Error> {
                        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
                        while let Some(t) = seq.next_element::<Tensor>()? {
                            list.push(t);
                        }
                        Ok(Tensors::List(list))
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Tensors<'de>, A::Error> {
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

        pub fn read_tensors<'a>(
            body: &'a [u8],
            member: &'static str,
        ) -> Result<Vec<Tensor<'a>>, CodecError> {
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
    }

    /// What the reader and the serde visitors make of a body, for both members (Debug
    /// strings, so floats compare bit for bit, -0 included).
    fn reader_matches_visitors(body: &[u8]) {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        for (member, names) in [("inputs", Some(&names[..])), ("outputs", None)] {
            let ours = read_tensors(body, member).and_then(|list| tensors(list, names));
            let theirs =
                serde_visitors::read_tensors(body, member).and_then(|list| tensors(list, names));
            assert_eq!(
                format!("{:?}", ours.as_ref().ok()),
                format!("{:?}", theirs.as_ref().ok()),
                "{member} of {}",
                String::from_utf8_lossy(body)
            );
            // Rejected for the same reason: not JSON, or JSON of the wrong shape.
            assert_eq!(
                matches!(ours, Err(CodecError::Shape(_))),
                matches!(theirs, Err(CodecError::Shape(_))),
                "{member} of {}: {ours:?} / {theirs:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_reader_agrees_with_the_serde_visitors_on_every_corpus_input_and_mutation() {
        let mut cases: Vec<Vec<u8>> = [
            &br#"{"inputs":[{"name":"x","shape":[2,3],"data":[[1,2,3],[4,null,6]]}]}"#[..],
            br#"{"inputs":[{"data":[1,{"a":1},[true,"s\u00e9"]],"shape":[3,"2"],"name":"n\"q"}],"inputs":[{"name":"last","data":[7]}]}"#,
            br#"{"outputs":[{"name":"p","shape":[1,2],"data":[0.3,0.7]},{"name":"p","shape":[2],"data":[1,2]}]}"#,
            br#"{"inputs":[{"name":"x","data":[-0,-0.0,0.1,4.35,1e22,1e23,1E5,1e+5,-1e-5,1.5e-7]}]}"#,
            br#"{"inputs":[{"name":"x","data":[9007199254740993,18446744073709551615,18446744073709551616,-9223372036854775808,-9223372036854775809]}]}"#,
            br#"{"inputs":[{"name":"x","data":[123456789012345678901234567890,0.30000000000000004,2.2250738585072014e-308,1e-400,4.9e-324]}]}"#,
            br#"{"inputs":[{"name":"x","data":[1e400]}]}"#,
            // The one-pass number path and its hand-offs to the general one.
            br#"{"inputs":[{"name":"x","data":[123456789012345678,1234567890123456789,0.000000000000000001,99999999999999999.9,-0.5,7,-7,0,10.25]}]}"#,
            br#"{"inputs":[{"name":"x","data":[9007199254740992.5,9007199254740993.0,0.1e1,5E-1,-0e0]}]}"#,
            br#"{"inputs":[{"name":"x","data":[01]}]}"#,
            br#"{"inputs":[{"name":"x","data":[-]}]}"#,
            br#"{"inputs":[{"name":"x","data":[1.]}]}"#,
            br#"{"inputs":[{"name":"x","data":[1.e5]}]}"#,
            br#"{"inputs":[{"name":"x","data":[-01.5]}]}"#,
            br#"{"inputs":[{"name":"x","shape":[1,0],"data":[1]},{"name":"y","shape":[1,-2],"data":[1]},{"name":"z","shape":[1,2.0],"data":[1]}]}"#,
            br#"{"inputs":[{"name":"x","shape":[1,[2]],"data":[1]},{"name":"y","shape":3,"data":[1]},{"name":"z","shape":{"a":1},"data":[1]}]}"#,
            br#"{"inputs":[{"name":1,"data":[1]}]}"#,
            br#"{"inputs":[{"name":["a"],"data":[1]}]}"#,
            br#"{"inputs":[{"data":[1]}]}"#,
            br#"{"inputs":[1]}"#,
            br#"{"inputs":{"a":1}}"#,
            br#"{"inputs":"x"}"#,
            br#"{"inputs":null}"#,
            br#"{"outputs":[]}"#,
            br#"{"inputs":[{"name":"x","data":"solo"}]}"#,
            br#"{"inputs":[{"name":"x","data":{"k":[1,2]}}]}"#,
            br#"{"inputs":[{"name":"x","data":[1,]}]}"#,
            br#"{"inputs":[{"name":"x",}]}"#,
            br#"{"inputs":[{"name":"\ud800","data":[1]}]}"#,
            br#"{"\ud800":1,"inputs":[{"name":"x","data":[1]}]}"#,
            br#"{"a":"\ud800","inputs":[{"name":"x","data":[1]}]}"#,
            br#"{"inputs":[{"name":"x","data":[{"\ud800":1}]}]}"#,
            br#"{"inputs":[{"name":"x","data":[{"k":"\ud800"}]}]}"#,
            br#"{"inputs":[{"name":"x\u0041\n","data":["\t"]}]} "#,
            br#"{"inputs":[{"name":"x","data":[1]}]} x"#,
            // Escaped keys, decoded after the reader has moved past their colon.
            br#"{"in\u0070uts" : [{"n\u0061me"  :  "x", "d\u0061ta":[1, {"k\u0065y" : 2}]}]}"#,
            br#"{"\u0069nputs":{"\u006b":1},"outputs":[{"name":"p","sh\u0061pe":[1,2],"data":[1,2]}]}"#,
            br#"[]"#,
            b"",
            b"  ",
        ]
        .iter()
        .map(|c| c.to_vec())
        .collect();
        let bad_utf8 = |prefix: &str, suffix: &str| {
            let mut v = prefix.as_bytes().to_vec();
            v.extend_from_slice(b"\xff\xfe");
            v.extend_from_slice(suffix.as_bytes());
            v
        };
        cases.push(bad_utf8(
            r#"{"a":""#,
            r#"","inputs":[{"name":"x","data":[1]}]}"#,
        ));
        cases.push(bad_utf8(r#"{"inputs":[{"name":""#, r#"","data":[1]}]}"#));
        cases.push(bad_utf8(r#"{"inputs":[{"name":"x","data":[""#, r#""]}]}"#));
        cases.push(bad_utf8(
            r#"{"inputs":[{"name":"x","data":[{""#,
            r#"":1}]}]}"#,
        ));
        cases.push(bad_utf8(
            r#"{"inputs":[{"name":"x","data":[{"k":""#,
            r#""}]}]}"#,
        ));
        cases.push(bad_utf8(r#"{""#, r#"":1,"inputs":[]}"#));
        // Nesting around serde_json's limit: in data, in shape, in name, and in skipped values.
        for depth in [120, 123, 124, 125, 126, 200] {
            let open = "[".repeat(depth);
            let close = "]".repeat(depth);
            for body in [
                format!(r#"{{"inputs":[{{"name":"x","data":{open}1{close}}}]}}"#),
                format!(r#"{{"inputs":[{{"name":"x","shape":[1,{open}2{close}],"data":[1]}}]}}"#),
                format!(r#"{{"inputs":[{{"name":{open}"x"{close},"data":[1]}}]}}"#),
                format!(
                    r#"{{"inputs":[{{"name":"x","shape":[1,[0,{open}2{close}]],"data":[1]}}]}}"#
                ),
                format!(r#"{{"skip":{open}1{close},"inputs":[{{"name":"x","data":[1]}}]}}"#),
                format!(
                    r#"{{"inputs":[{{"name":"x","p":{open}1{close},"data":[{{"k":{open}{close}}}]}}]}}"#
                ),
            ] {
                cases.push(body.into_bytes());
            }
        }
        for c in &cases {
            reader_matches_visitors(c);
        }
        let abyss = format!("{{\"a\":{}", "[{\"b\":".repeat(1_000_000));
        assert!(
            read_tensors(abyss.as_bytes(), "inputs").is_err(),
            "no stack to overflow"
        );
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/codecs");
        let mut seed: u64 = 0x7e57;
        let mut n = 0;
        for entry in std::fs::read_dir(corpus).into_iter().flatten().flatten() {
            let Ok(body) = std::fs::read(entry.path()) else {
                continue;
            };
            reader_matches_visitors(&body);
            for _ in 0..6 {
                if body.is_empty() {
                    break;
                }
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let i = usize::try_from(seed >> 33).unwrap_or(0) % body.len();
                let mut m = body.clone();
                let pool = b"[]{},:\"\\-.e0 x\xff";
                m[i] = pool[usize::from((seed >> 20) as u8) % pool.len()];
                reader_matches_visitors(&m);
                let mut flipped = body.clone();
                flipped[i] = (seed >> 17) as u8;
                reader_matches_visitors(&flipped);
                reader_matches_visitors(&body[..i]);
            }
            n += 1;
        }
        assert!(n > 1000, "the committed codecs corpus ({n} files) was read");
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
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/codecs");
        let mut n = 0;
        for entry in std::fs::read_dir(corpus).into_iter().flatten().flatten() {
            if let Ok(body) = std::fs::read(entry.path()) {
                agree(&body, &names);
                n += 1;
            }
        }
        assert!(n > 1000, "the committed codecs corpus ({n} files) was read");
    }

    /// The reader before the scanner: serde_json with a derived struct. The oracle the
    /// scanner must agree with, on what it answers and on whether the body is JSON.
    fn serde_reported(body: &[u8]) -> Result<Option<String>, ()> {
        #[derive(serde::Deserialize)]
        struct Reported {
            model_version: Option<serde_json::Value>,
        }
        let r: Reported = serde_json::from_slice(body).map_err(|_| ())?;
        Ok(match r.model_version {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
    }

    fn same_answer(body: &[u8]) {
        // serde's derive also reads a struct from a JSON array (its fields in order); the
        // scanner reads objects only.
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            assert!(reported_version(body).is_err());
            return;
        }
        assert_eq!(
            reported_version(body).map_err(|_| ()),
            serde_reported(body),
            "{}",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn the_scanner_agrees_with_serde_json_on_every_corpus_input_and_mutation() {
        let cases: &[&[u8]] = &[
            MLSERVER_RESPONSE,
            br#"{"model_version":3}"#,
            br#"{"model_version":-1.5e3}"#,
            br#"{"model_version":2.0}"#,
            br#"{"model_version":null}"#,
            br#"{"model_version":true}"#,
            br#"{"model_version":{"a":[1,2,{"b":null}]}}"#,
            br#" { "model_version" : "v\u00e9\n" } "#,
            br#"{"model\u005fversion":"7"}"#,
            br#"{"\ud800":"x","model_version":"1"}"#,
            br#"{"model_version" : "1" , "a\u0062" : 2}"#,
            br#"{"model_version":"1","model_version":"2"}"#,
            br#"{"model_version":"1"} x"#,
            br#"{"model_version":"1",}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":-}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            b"{\"a\":\"\x01\"}",
            br#"{"a":tru}"#,
            br#"{}"#,
            br#"[]"#,
            br#"["3"]"#,
            b"",
            b"not json",
        ];
        for c in cases {
            same_answer(c);
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        same_answer(deep.as_bytes());
        let abyss = format!("{{\"a\":{}", "[{\"b\":".repeat(1_000_000));
        assert!(
            reported_version(abyss.as_bytes()).is_err(),
            "no stack to overflow"
        );
        let ok_deep = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        same_answer(ok_deep.as_bytes());
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/codecs");
        let mut seed: u64 = 0x5eed;
        let mut n = 0;
        for entry in std::fs::read_dir(corpus).into_iter().flatten().flatten() {
            let Ok(body) = std::fs::read(entry.path()) else {
                continue;
            };
            same_answer(&body);
            for _ in 0..4 {
                let mut m = body.clone();
                if m.is_empty() {
                    break;
                }
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let i = usize::try_from(seed >> 33).unwrap_or(0) % m.len();
                m[i] = (seed >> 17) as u8;
                same_answer(&m);
                same_answer(&body[..i]);
            }
            n += 1;
        }
        assert!(n > 1000, "the committed codecs corpus ({n} files) was read");
    }

    #[test]
    fn a_rejected_body_says_what_stopped_the_reader_and_where() {
        let not_json = |what, at| Err(NotJson { what, at });
        assert_eq!(
            reported_version(b"not json"),
            not_json("expected a JSON object", 0)
        );
        assert_eq!(
            reported_version(br#"{"a":1} x"#),
            not_json("trailing characters", 8)
        );
        assert_eq!(
            reported_version(br#"{"model_version":"1","model_version":"2"}"#),
            not_json("duplicate field model_version", 37)
        );
        let syntax = |body: &[u8]| match read_tensors(body, "inputs") {
            Err(CodecError::Syntax(e)) => Some((e.what, e.at)),
            _ => None,
        };
        assert_eq!(
            syntax(b"{\"inputs\":[{\"name\":\"\xff\",\"data\":[1]}]}"),
            Some(("invalid UTF-8", 19))
        );
        assert_eq!(
            syntax(br#"{"inputs":[{"name":"x","data":[1e400]}]}"#),
            Some(("number out of range", 31))
        );
        assert_eq!(
            syntax(br#"{"inputs":[{"name":"x","data":[1,]}]}"#),
            Some(("expected a value", 33))
        );
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
