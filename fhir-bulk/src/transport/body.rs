//! The one bounded body reader, and the decoding of error bodies per their
//! `Content-Encoding` (the download client does not decompress by itself).

use super::report::transport_error;
use crate::error::{Error, Result, TransportErrorKind};
use crate::secret::redact_url;
use bytes::{Bytes, BytesMut};
use reqwest::Response;
use reqwest::header::HeaderMap;
use std::io::Read;
use url::Url;

/// The largest FHIR API answer (manifest page, status, OperationOutcome) read into memory.
pub(crate) const API_LIMIT: usize = 64 * 1024 * 1024;
/// The largest discovery document (smart-configuration, CapabilityStatement).
pub(crate) const DOCUMENT_LIMIT: usize = 16 * 1024 * 1024;
/// The largest token endpoint answer.
pub(crate) const TOKEN_LIMIT: usize = 256 * 1024;
/// The largest error body read (and decoded) for an error report.
pub(crate) const ERROR_LIMIT: usize = 1024 * 1024;

/// The error for a body over its limit: permanent (asking again brings the same body).
pub(crate) fn too_large(context: &'static str, url: &Url, limit: usize) -> Error {
    Error::Transport {
        context,
        kind: TransportErrorKind::TooLarge,
        url: redact_url(url),
        message: format!(
            "the answer is larger than {limit} bytes, more than such an answer can \
             reasonably be; not retried"
        ),
        source: None,
    }
}

/// Reads a whole body, at most `limit` bytes: a `Content-Length` over the limit fails before
/// anything is read, a body that grows past it fails as soon as it does.
pub(crate) async fn read_bounded(
    mut response: Response,
    limit: usize,
    context: &'static str,
    url: &Url,
) -> Result<Bytes> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large(context, url, limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(context, url, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large(context, url, limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An error body decoded per its `Content-Encoding` (gzip, deflate), at most `limit` bytes of
/// output. A body that does not decode is kept as it came (the report then shows what it is).
pub(crate) fn decode_error_body(headers: &HeaderMap, body: Bytes, limit: usize) -> Bytes {
    let encoding = headers
        .get(reqwest::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let take = limit as u64;
    let decoded = match encoding.as_deref() {
        Some("gzip" | "x-gzip") => flate2::read::MultiGzDecoder::new(&body[..])
            .take(take)
            .read_to_end(&mut out),
        Some("deflate") => {
            // HTTP's `deflate` is zlib-wrapped; some servers send raw deflate.
            let zlib = flate2::read::ZlibDecoder::new(&body[..])
                .take(take)
                .read_to_end(&mut out);
            if zlib.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(&body[..])
                    .take(take)
                    .read_to_end(&mut out)
            } else {
                zlib
            }
        }
        _ => return body,
    };
    match decoded {
        Ok(_) => Bytes::from(out),
        Err(_) => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use std::io::Write;

    fn headers(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-encoding", encoding.parse().unwrap());
        h
    }

    #[test]
    fn error_bodies_are_decoded_and_bounded() {
        let text = br#"{"resourceType":"OperationOutcome","issue":[]}"#;
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(text).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        assert_eq!(
            &decode_error_body(&headers("gzip"), gz.clone(), 1024)[..],
            text
        );
        assert_eq!(decode_error_body(&headers("gzip"), gz, 10).len(), 10);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(text).unwrap();
        let z = Bytes::from(z.finish().unwrap());
        assert_eq!(&decode_error_body(&headers("deflate"), z, 1024)[..], text);
        let plain = Bytes::from_static(b"not gzip");
        assert_eq!(
            decode_error_body(&headers("gzip"), plain.clone(), 1024),
            plain
        );
        assert_eq!(
            decode_error_body(&HeaderMap::new(), plain.clone(), 1024),
            plain
        );
    }
}
