//! Push-style decoding of a file body: identity or gzip, fed chunk by chunk, so the decoder's
//! state survives a resumed (`Range`) transfer of the same compressed bytes.

use bytes::buf::Writer;
use bytes::{BufMut, BytesMut};
use flate2::write::MultiGzDecoder;
use std::io::Write;

/// The gzip decoder's output buffer: decoded chunks are split off it, and once the lines of
/// earlier chunks are written (their bytes dropped) the same allocation is reused, instead of
/// a new one, growing from nothing, for every slice of input.
const GZIP_OUTPUT_CAPACITY: usize = 64 * 1024;

/// Decodes the body of one representation of a file.
#[derive(Debug)]
pub(crate) enum BodyDecoder {
    /// No content coding.
    Identity,
    /// `Content-Encoding: gzip` (several members allowed).
    Gzip(Box<MultiGzDecoder<Writer<BytesMut>>>),
}

/// The body is not valid for its content coding.
#[derive(Debug)]
pub(crate) struct DecodeError(pub(crate) String);

impl BodyDecoder {
    /// The decoder for a `Content-Encoding` header value; `Err` names an unsupported coding.
    pub(crate) fn for_encoding(encoding: Option<&str>) -> Result<BodyDecoder, DecodeError> {
        match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(BodyDecoder::Identity),
            Some("gzip") | Some("x-gzip") => Ok(BodyDecoder::Gzip(Box::new(MultiGzDecoder::new(
                BytesMut::with_capacity(GZIP_OUTPUT_CAPACITY).writer(),
            )))),
            Some(other) => Err(DecodeError(format!(
                "unsupported Content-Encoding `{other}` (the client asked for gzip or identity)"
            ))),
        }
    }

    /// The most input to decode at once: gzip output can be a thousand times its input
    /// (deflate's limit is about 1,032 to 1), so it is fed in small slices, each one's output
    /// handed on before the next is decoded: typical NDJSON (10-100x) makes 40-400 KiB a
    /// slice, the worst case 4 MiB. Identity output is its input.
    pub(crate) fn input_slice(&self) -> usize {
        match self {
            BodyDecoder::Identity => usize::MAX,
            BodyDecoder::Gzip(_) => 4 * 1024,
        }
    }

    /// Decodes one chunk; returns what it produced (possibly nothing yet).
    pub(crate) fn push(&mut self, chunk: bytes::Bytes) -> Result<bytes::Bytes, DecodeError> {
        match self {
            BodyDecoder::Identity => Ok(chunk),
            BodyDecoder::Gzip(decoder) => {
                decoder
                    .write_all(&chunk)
                    .map_err(|e| DecodeError(format!("corrupt gzip data: {e}")))?;
                Ok(decoder.get_mut().get_mut().split().freeze())
            }
        }
    }

    /// The end of the body: flushes the decoder; an unfinished gzip stream is an error.
    pub(crate) fn finish(&mut self) -> Result<bytes::Bytes, DecodeError> {
        match self {
            BodyDecoder::Identity => Ok(bytes::Bytes::new()),
            BodyDecoder::Gzip(decoder) => {
                decoder
                    .try_finish()
                    .map_err(|e| DecodeError(format!("truncated gzip data: {e}")))?;
                Ok(decoder.get_mut().get_mut().split().freeze())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_in_small_chunks() {
        let text: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"n\":{i}}}\n").into_bytes())
            .collect();
        let packed = gzip(&text);
        let mut d = BodyDecoder::for_encoding(Some("gzip")).unwrap();
        let mut out = Vec::new();
        for chunk in packed.chunks(7) {
            out.extend_from_slice(&d.push(Bytes::copy_from_slice(chunk)).unwrap());
        }
        out.extend_from_slice(&d.finish().unwrap());
        assert_eq!(out, text);
    }

    #[test]
    fn multi_member_gzip() {
        let mut packed = gzip(b"a\n");
        packed.extend(gzip(b"b\n"));
        let mut d = BodyDecoder::for_encoding(Some("GZIP")).unwrap();
        let mut out = d.push(Bytes::from(packed)).unwrap().to_vec();
        out.extend_from_slice(&d.finish().unwrap());
        assert_eq!(out, b"a\nb\n");
    }

    #[test]
    fn truncated_and_corrupt_gzip_are_errors() {
        let packed = gzip(&[b'x'; 10_000]);
        let mut d = BodyDecoder::for_encoding(Some("gzip")).unwrap();
        d.push(Bytes::copy_from_slice(&packed[..packed.len() / 2]))
            .unwrap();
        assert!(d.finish().is_err());
        let mut d = BodyDecoder::for_encoding(Some("gzip")).unwrap();
        assert!(
            d.push(Bytes::from_static(b"this is not gzip at all"))
                .is_err()
        );
    }

    #[test]
    fn identity_and_unsupported() {
        let mut d = BodyDecoder::for_encoding(None).unwrap();
        assert_eq!(
            d.push(Bytes::from_static(b"abc")).unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(BodyDecoder::for_encoding(Some("identity")).is_ok());
        assert!(BodyDecoder::for_encoding(Some("br")).is_err());
    }
}
