//! A FHIR `Binary` JSON answer (`{"resourceType":"Binary","contentType":..,"data":base64}`)
//! turned into its content, streaming: the base64 `data` is decoded as it is read, so memory
//! stays bounded whatever the attachment's size. And the SHA-1 of a file, for
//! `Attachment.hash`. Blocking I/O: run on the blocking pool.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use std::io::{self, Read, Write};

/// Why a body could not be unwrapped.
#[derive(Debug)]
pub(crate) enum UnwrapError {
    Io(io::Error),
    /// It is a `Binary`, but not a usable one.
    Bad(String),
}

impl From<io::Error> for UnwrapError {
    fn from(e: io::Error) -> Self {
        UnwrapError::Io(e)
    }
}

/// What the body turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unwrapped {
    /// A `Binary`: its content was written out.
    Binary {
        /// Its `contentType`.
        content_type: Option<String>,
    },
    /// Not a `Binary` resource (whatever was written out is to be discarded).
    NotBinary,
}

/// Base64 with or without padding (servers differ), standard alphabet.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64 characters decoded at once.
const DECODE_CHUNK: usize = 64 * 1024;

/// A byte reader with one byte of look-ahead.
struct Bytes<R> {
    inner: R,
    peeked: Option<u8>,
}

/// A reason the text is not (well-formed) JSON.
struct Malformed(&'static str);

type Step<T> = Result<std::result::Result<T, Malformed>, io::Error>;

impl<R: Read> Bytes<R> {
    fn next(&mut self) -> io::Result<Option<u8>> {
        if let Some(b) = self.peeked.take() {
            return Ok(Some(b));
        }
        let mut one = [0u8; 1];
        loop {
            return match self.inner.read(&mut one) {
                Ok(0) => Ok(None),
                Ok(_) => Ok(Some(one[0])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked)
    }

    /// The next byte that is not JSON whitespace (consumed).
    fn next_token(&mut self) -> io::Result<Option<u8>> {
        loop {
            match self.next()? {
                Some(b' ' | b'\t' | b'\n' | b'\r') => continue,
                other => return Ok(other),
            }
        }
    }

    /// The rest of a string (the opening quote read), at most `keep` bytes kept.
    fn string(&mut self, keep: usize) -> Step<String> {
        let mut out = Vec::new();
        loop {
            let Some(b) = self.next()? else {
                return Ok(Err(Malformed("unterminated string")));
            };
            let byte = match b {
                b'"' => break,
                b'\\' => match self.next()? {
                    Some(b'n') => b'\n',
                    Some(b't') => b'\t',
                    Some(b'r') => b'\r',
                    Some(b'b' | b'f') => b' ',
                    Some(b'u') => {
                        let mut code = 0u32;
                        for _ in 0..4 {
                            let digit = self.next()?.and_then(|d| (d as char).to_digit(16));
                            let Some(digit) = digit else {
                                return Ok(Err(Malformed("bad \\u escape")));
                            };
                            code = code * 16 + digit;
                        }
                        let c = char::from_u32(code).unwrap_or('\u{fffd}');
                        if out.len() < keep {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        continue;
                    }
                    Some(other) => other,
                    None => return Ok(Err(Malformed("unterminated string"))),
                },
                other => other,
            };
            if out.len() < keep {
                out.push(byte);
            }
        }
        Ok(Ok(String::from_utf8_lossy(&out).into_owned()))
    }

    /// Skips one JSON value (its first byte not read yet).
    fn skip_value(&mut self) -> Step<()> {
        let Some(first) = self.next_token()? else {
            return Ok(Err(Malformed("a value is missing")));
        };
        match first {
            b'"' => return self.string(0).map(|r| r.map(|_| ())),
            b'{' | b'[' => {
                let mut depth = 1usize;
                while depth > 0 {
                    match self.next()? {
                        None => return Ok(Err(Malformed("unterminated object or array"))),
                        Some(b'"') => {
                            if let Err(m) = self.string(0)? {
                                return Ok(Err(m));
                            }
                        }
                        Some(b'{' | b'[') => depth += 1,
                        Some(b'}' | b']') => depth -= 1,
                        Some(_) => {}
                    }
                }
            }
            _ => {
                // A number or a literal: up to the next delimiter.
                while let Some(b) = self.peek()? {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.next()?;
                }
            }
        }
        Ok(Ok(()))
    }

    /// Decodes a base64 string value into `out`; returns the bytes written.
    fn base64_into(&mut self, out: &mut impl Write) -> Result<u64, UnwrapError> {
        if self.next_token()? != Some(b'"') {
            return Err(UnwrapError::Bad("`data` is not a string".into()));
        }
        let mut chars: Vec<u8> = Vec::with_capacity(DECODE_CHUNK + 4);
        let mut decoded: Vec<u8> = Vec::with_capacity(DECODE_CHUNK);
        let mut written = 0u64;
        let mut flush = |chars: &mut Vec<u8>, all: bool, written: &mut u64| {
            let take = if all {
                chars.len()
            } else {
                chars.len() / 4 * 4
            };
            decoded.clear();
            BASE64
                .decode_vec(&chars[..take], &mut decoded)
                .map_err(|e| UnwrapError::Bad(format!("`data` is not base64: {e}")))?;
            out.write_all(&decoded)?;
            *written += decoded.len() as u64;
            chars.drain(..take);
            Ok::<(), UnwrapError>(())
        };
        loop {
            let Some(b) = self.next()? else {
                return Err(UnwrapError::Bad("`data` is cut off".into()));
            };
            match b {
                b'"' => break,
                b'\\' => match self.next()? {
                    Some(b'/') => chars.push(b'/'),
                    Some(b'n' | b'r' | b't') => {}
                    Some(b'u') => {
                        let mut code = 0u32;
                        for _ in 0..4 {
                            let digit = self.next()?.and_then(|d| (d as char).to_digit(16));
                            code = code * 16 + digit.unwrap_or(0);
                        }
                        match u8::try_from(code) {
                            Ok(c) if c.is_ascii_graphic() => chars.push(c),
                            _ => {}
                        }
                    }
                    _ => return Err(UnwrapError::Bad("`data` holds a bad escape".into())),
                },
                b' ' | b'\t' | b'\n' | b'\r' => {}
                other => chars.push(other),
            }
            if chars.len() >= DECODE_CHUNK {
                flush(&mut chars, false, &mut written)?;
            }
        }
        flush(&mut chars, true, &mut written)?;
        Ok(written)
    }
}

/// Reads a JSON body and, when it is a FHIR `Binary`, writes its decoded `data` to `out`.
/// Text that is not a JSON object, or an object whose `resourceType` is not `Binary`, is
/// [`Unwrapped::NotBinary`]; a `Binary` without `data`, or with `data` that is not base64, is
/// an error.
pub(crate) fn unwrap_binary(
    input: impl Read,
    out: &mut impl Write,
) -> Result<Unwrapped, UnwrapError> {
    let mut r = Bytes {
        inner: io::BufReader::with_capacity(64 * 1024, input),
        peeked: None,
    };
    if r.next_token()? != Some(b'{') {
        return Ok(Unwrapped::NotBinary);
    }
    let mut resource_type: Option<String> = None;
    let mut content_type: Option<String> = None;
    let mut data = false;
    let not_binary = |resource_type: &Option<String>, why: &'static str| {
        if resource_type.as_deref() == Some("Binary") {
            Err(UnwrapError::Bad(format!(
                "the Binary is not valid JSON: {why}"
            )))
        } else {
            Ok(Unwrapped::NotBinary)
        }
    };
    loop {
        match r.next_token()? {
            Some(b'}') => break,
            Some(b'"') => {}
            _ => return not_binary(&resource_type, "a member name is missing"),
        }
        let key = match r.string(64)? {
            Ok(key) => key,
            Err(Malformed(why)) => return not_binary(&resource_type, why),
        };
        if r.next_token()? != Some(b':') {
            return not_binary(&resource_type, "a `:` is missing");
        }
        let small_string = |r: &mut Bytes<_>| -> Step<Option<String>> {
            if r.peek_token()? == Some(b'"') {
                r.next()?;
                Ok(r.string(256)?.map(Some))
            } else {
                Ok(r.skip_value()?.map(|()| None))
            }
        };
        let step = match key.as_str() {
            "resourceType" => small_string(&mut r)?.map(|v| resource_type = v),
            "contentType" => small_string(&mut r)?.map(|v| content_type = v),
            "data" => {
                if resource_type.as_deref().is_some_and(|t| t != "Binary") {
                    r.skip_value()?
                } else {
                    r.base64_into(out)?;
                    data = true;
                    Ok(())
                }
            }
            _ => r.skip_value()?,
        };
        if let Err(Malformed(why)) = step {
            return not_binary(&resource_type, why);
        }
        match r.next_token()? {
            Some(b',') => continue,
            Some(b'}') => break,
            _ => return not_binary(&resource_type, "a `,` or `}` is missing"),
        }
    }
    if resource_type.as_deref() != Some("Binary") {
        return Ok(Unwrapped::NotBinary);
    }
    if r.next_token()?.is_some() {
        return Err(UnwrapError::Bad("text follows the Binary".into()));
    }
    if !data {
        return Err(UnwrapError::Bad(
            "the Binary has no `data` (it may only be readable as raw content: try another \
             Accept)"
                .into(),
        ));
    }
    Ok(Unwrapped::Binary { content_type })
}

impl<R: Read> Bytes<R> {
    fn peek_token(&mut self) -> io::Result<Option<u8>> {
        loop {
            match self.peek()? {
                Some(b' ' | b'\t' | b'\n' | b'\r') => {
                    self.next()?;
                }
                other => return Ok(other),
            }
        }
    }
}

/// The length and SHA-1 of everything `input` holds.
pub(crate) fn sha1_of(mut input: impl Read) -> io::Result<(u64, [u8; 20])> {
    use sha1::Digest;
    let mut hasher = sha1::Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.finalize().into()))
}

/// `Attachment.hash` as bytes: base64 of a SHA-1 (40 hex digits accepted too). `None` when it
/// is neither.
pub(crate) fn parse_hash(hash: &str) -> Option<[u8; 20]> {
    let hash = hash.trim();
    if let Ok(bytes) = BASE64.decode(hash)
        && let Ok(digest) = <[u8; 20]>::try_from(bytes.as_slice())
    {
        return Some(digest);
    }
    if hash.len() == 40 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 20];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(out);
    }
    None
}

/// A digest as FHIR writes it (base64).
pub(crate) fn hash_text(digest: &[u8; 20]) -> String {
    general_purpose::STANDARD.encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unwrap(text: &str) -> (Result<Unwrapped, String>, Vec<u8>) {
        let mut out = Vec::new();
        let result = unwrap_binary(text.as_bytes(), &mut out).map_err(|e| match e {
            UnwrapError::Io(e) => e.to_string(),
            UnwrapError::Bad(m) => m,
        });
        (result, out)
    }

    #[test]
    fn a_binary_is_unwrapped_whatever_its_member_order() {
        let content: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
        let data = general_purpose::STANDARD.encode(&content);
        let text = format!(
            r#" {{"meta":{{"tag":[{{"code":"a\"}}"}}]}},"data":"{data}","id":"b1","contentType":"application/pdf","resourceType":"Binary"}} "#
        );
        let (result, out) = unwrap(&text);
        assert_eq!(
            result.unwrap(),
            Unwrapped::Binary {
                content_type: Some("application/pdf".into())
            }
        );
        assert_eq!(out, content);
        // JSON escapes of `/` and no padding.
        let (result, out) = unwrap(r#"{"resourceType":"Binary","data":"aGk\/\/w"}"#);
        assert!(result.is_ok());
        assert_eq!(
            out,
            general_purpose::STANDARD_NO_PAD.decode("aGk//w").unwrap()
        );
    }

    #[test]
    fn other_json_is_not_a_binary_and_bad_binaries_are_errors() {
        for text in [
            r#"{"resourceType":"Bundle","data":"aGk="}"#,
            r#"{"a":1}"#,
            "[1,2]",
            "%PDF-1.4",
            r#"{"resourceType":"Patient""#,
        ] {
            assert_eq!(unwrap(text).0.unwrap(), Unwrapped::NotBinary, "{text}");
        }
        assert!(
            unwrap(r#"{"resourceType":"Binary","contentType":"text/plain"}"#)
                .0
                .unwrap_err()
                .contains("no `data`")
        );
        assert!(
            unwrap(r#"{"resourceType":"Binary","data":"!!!!"}"#)
                .0
                .unwrap_err()
                .contains("base64")
        );
        assert!(
            unwrap(r#"{"resourceType":"Binary","data":"aGk="#)
                .0
                .is_err()
        );
        assert!(unwrap(r#"{"resourceType":"Binary","data":5}"#).0.is_err());
    }

    #[test]
    fn hashes() {
        let (len, digest) = sha1_of(&b""[..]).unwrap();
        assert_eq!(len, 0);
        assert_eq!(hash_text(&digest), "2jmj7l5rSw0yVb/vlWAYkK/YBwk=");
        assert_eq!(parse_hash(" 2jmj7l5rSw0yVb/vlWAYkK/YBwk= "), Some(digest));
        assert_eq!(
            parse_hash("da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            Some(digest)
        );
        assert_eq!(parse_hash("abc"), None);
    }
}
