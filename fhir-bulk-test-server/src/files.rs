//! File downloads: streamed generation, gzip, byte ranges and body faults.
//!
//! Bodies are produced chunk by chunk while hyper sends them, so memory use
//! does not depend on file size. For byte ranges:
//!
//! * identity: the server knows every line's length without generating it,
//!   so it jumps straight to the line containing the first requested byte;
//! * gzip: the compressed stream is deterministic, so the server regenerates
//!   it from the start and discards the bytes before the range. The total
//!   length of the gzip representation (needed for `Content-Range`) is found
//!   by compressing the file once into a byte counter, then cached.

use std::io::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, IF_RANGE, RANGE, VARY,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;

use super::config::{FaultKind, FaultSite};
use super::data::{Dataset, Lines};
use super::jobs::FileSpec;
use super::server::{ConnKill, Shared, fault_response, outcome, set_header};

/// Bytes of NDJSON generated per body chunk.
const CHUNK: usize = 64 * 1024;

/// A body as a sequence of chunks.
pub(crate) type Chunks = Box<dyn Iterator<Item = io::Result<Bytes>> + Send>;

/// The identity bytes of a file from a byte offset on, in ~64 KiB chunks.
struct IdentityChunks {
    lines: Lines,
    /// Bytes still to drop from the start of the next chunk.
    skip: usize,
}

impl IdentityChunks {
    fn new(mut lines: Lines, offset: u64) -> Self {
        let skip = lines.skip_bytes(offset);
        IdentityChunks {
            lines,
            // Less than one line.
            skip: usize::try_from(skip).unwrap_or(usize::MAX),
        }
    }
}

impl Iterator for IdentityChunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = String::with_capacity(CHUNK + 2048);
        while buf.len() < CHUNK && self.lines.write_next(&mut buf) {
            buf.push('\n');
        }
        if buf.is_empty() {
            return None;
        }
        let bytes = Bytes::from(buf.into_bytes());
        let skip = std::mem::take(&mut self.skip).min(bytes.len());
        Some(Ok(bytes.slice(skip..)))
    }
}

/// Gzip-compresses a chunk sequence on the fly. Fed the same chunks, it
/// always produces the same bytes.
struct GzipChunks<I> {
    source: I,
    encoder: Option<GzEncoder<Vec<u8>>>,
}

impl<I> GzipChunks<I> {
    fn new(source: I) -> Self {
        GzipChunks {
            source,
            encoder: Some(GzEncoder::new(Vec::new(), Compression::fast())),
        }
    }
}

impl<I: Iterator<Item = io::Result<Bytes>>> Iterator for GzipChunks<I> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let encoder = self.encoder.as_mut()?;
            match self.source.next() {
                Some(Ok(chunk)) => {
                    if let Err(e) = encoder.write_all(&chunk) {
                        self.encoder = None;
                        return Some(Err(e));
                    }
                    let out = std::mem::take(encoder.get_mut());
                    if !out.is_empty() {
                        return Some(Ok(Bytes::from(out)));
                    }
                }
                Some(Err(e)) => {
                    self.encoder = None;
                    return Some(Err(e));
                }
                None => {
                    let encoder = self.encoder.take()?;
                    return Some(encoder.finish().map(Bytes::from));
                }
            }
        }
    }
}

/// Drops the first `skip` bytes of a chunk sequence and stops after `take`.
struct Window<I> {
    inner: I,
    skip: u64,
    take: u64,
}

impl<I: Iterator<Item = io::Result<Bytes>>> Iterator for Window<I> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.take > 0 {
            let mut chunk = match self.inner.next()? {
                Ok(chunk) => chunk,
                Err(e) => return Some(Err(e)),
            };
            let len = chunk.len() as u64;
            if self.skip >= len {
                self.skip -= len;
                continue;
            }
            chunk = chunk.slice(self.skip as usize..);
            self.skip = 0;
            if chunk.len() as u64 > self.take {
                chunk.truncate(self.take as usize);
            }
            self.take -= chunk.len() as u64;
            return Some(Ok(chunk));
        }
        None
    }
}

fn gzip_chunks(ds: &Dataset, spec: &FileSpec) -> GzipChunks<IdentityChunks> {
    GzipChunks::new(IdentityChunks::new(ds.lines(&spec.content), 0))
}

/// Length of the gzip representation of a file (computed once, off the
/// async runtime, then cached).
async fn gzip_len(shared: &Shared, spec: &Arc<FileSpec>) -> io::Result<u64> {
    if let Some(len) = spec.gzip_len.get() {
        return Ok(*len);
    }
    let ds = shared.dataset.clone();
    let task_spec = spec.clone();
    let len = tokio::task::spawn_blocking(move || {
        gzip_chunks(&ds, &task_spec).try_fold(0u64, |total, chunk| {
            Ok::<u64, io::Error>(total + chunk?.len() as u64)
        })
    })
    .await
    .map_err(io::Error::other)??;
    let _ = spec.gzip_len.set(len);
    Ok(len)
}

/// Wraps chunks into a streaming body, applying a body fault if any.
pub(crate) fn stream_body(
    chunks: Chunks,
    fault: Option<FaultKind>,
    kill: Option<ConnKill>,
) -> Body {
    let stream = async_stream::try_stream! {
        if let Some(FaultKind::Stall(duration)) = &fault {
            tokio::time::sleep(*duration).await;
        }
        let mut sent = 0u64;
        for chunk in chunks {
            let mut chunk = chunk?;
            match &fault {
                Some(FaultKind::DropAfter(limit)) => {
                    let room = limit.saturating_sub(sent);
                    if chunk.len() as u64 > room {
                        if room > 0 {
                            yield chunk.slice(..room as usize);
                        }
                        Err(drop_connection(kill.as_ref()).await)?;
                    }
                    sent += chunk.len() as u64;
                    yield chunk;
                }
                Some(FaultKind::Trickle { chunk_size, delay }) => {
                    while !chunk.is_empty() {
                        let piece = chunk.split_to((*chunk_size).clamp(1, chunk.len()));
                        yield piece;
                        tokio::time::sleep(*delay).await;
                    }
                }
                _ => yield chunk,
            }
        }
    };
    Body::from_stream(io_stream(stream))
}

/// Pins down the error type of a `try_stream!`.
fn io_stream<S: futures::Stream<Item = io::Result<Bytes>>>(stream: S) -> S {
    stream
}

/// Makes hyper abort the connection once the bytes already produced have
/// been written to the socket, and returns the error that ends the body.
async fn drop_connection(kill: Option<&ConnKill>) -> io::Error {
    match kill {
        // The connection's flush fails after hyper has written everything
        // out, which ends the connection (and this body) well before the
        // sleep elapses.
        Some(kill) => {
            kill.trigger();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // Not served by our connection loop: give hyper a moment to flush.
        None => tokio::time::sleep(Duration::from_millis(100)).await,
    }
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "fault injection: connection dropped",
    )
}

/// Whether `Accept-Encoding` allows gzip.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")) && q > 0.0
        })
}

/// A single byte range from a `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// `bytes=N-` or `bytes=N-M`.
    From(u64, Option<u64>),
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

/// Parses `bytes=N-`, `bytes=N-M` or `bytes=-N`. Anything else (other units,
/// several ranges, bad syntax) is ignored, i.e. the whole file is sent.
pub(crate) fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return last.parse().ok().map(ByteRange::Suffix);
    }
    let first: u64 = first.parse().ok()?;
    if last.is_empty() {
        return Some(ByteRange::From(first, None));
    }
    let last: u64 = last.parse().ok()?;
    (last >= first).then_some(ByteRange::From(first, Some(last)))
}

/// The inclusive byte span of `range` in a representation of `total` bytes,
/// or `None` if it is unsatisfiable.
pub(crate) fn resolve(range: ByteRange, total: u64) -> Option<(u64, u64)> {
    match range {
        ByteRange::From(first, last) if first < total => {
            Some((first, last.unwrap_or(u64::MAX).min(total - 1)))
        }
        ByteRange::Suffix(n) if n > 0 && total > 0 => Some((total - n.min(total), total - 1)),
        _ => None,
    }
}

/// `GET [base]/files/{job}/{name}`.
pub(crate) async fn download(
    State(shared): State<Arc<Shared>>,
    Path((job_id, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let kill = ConnKill::from_extensions(&parts.extensions);
    let Some(job) = shared.live_job(&job_id) else {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("Export job '{job_id}' does not exist or was deleted"),
        );
    };
    let generation = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "gen")
                .map_or(Some(0), |(_, v)| v.parse::<u64>().ok())
        })
        .unwrap_or(Some(0));
    if generation
        != Some(
            shared
                .url_generation
                .load(std::sync::atomic::Ordering::SeqCst),
        )
    {
        return outcome(
            StatusCode::GONE,
            "expired",
            "This file link has expired; poll the status URL for fresh links",
        );
    }
    let Some(spec) = job.file(&name) else {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("Export job '{job_id}' has no file '{name}'"),
        );
    };
    let fault = shared.take_fault(&FaultSite::File {
        name: &spec.name,
        output_index: spec.output_index,
    });
    if let Some(response) = fault.as_ref().and_then(fault_response) {
        return response;
    }

    let config = &shared.config;
    let gzip = config.gzip && accepts_gzip(&parts.headers);
    let etag = if gzip {
        spec.gzip_etag()
    } else {
        spec.etag.clone()
    };
    let range = if config.accept_ranges {
        let if_range_ok = parts
            .headers
            .get(IF_RANGE)
            .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag));
        parts
            .headers
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_range)
            .filter(|_| if_range_ok)
    } else {
        None
    };
    let total = match (gzip, range) {
        (false, _) => Some(spec.len),
        (true, Some(_)) => match gzip_len(&shared, &spec).await {
            Ok(len) => Some(len),
            Err(e) => {
                return outcome(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    &format!("Could not compress the file: {e}"),
                );
            }
        },
        (true, None) => None,
    };

    let span = match (range, total) {
        (Some(range), Some(total)) => match resolve(range, total) {
            Some(span) => Some(span),
            None => {
                let mut response = outcome(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid",
                    &format!("The requested range is outside the {total}-byte representation"),
                );
                set_header(&mut response, CONTENT_RANGE, &format!("bytes */{total}"));
                return response;
            }
        },
        _ => None,
    };

    let ds = &shared.dataset;
    let chunks: Chunks = match (gzip, span) {
        (false, None) => Box::new(IdentityChunks::new(ds.lines(&spec.content), 0)),
        (false, Some((first, last))) => Box::new(Window {
            inner: IdentityChunks::new(ds.lines(&spec.content), first),
            skip: 0,
            take: last - first + 1,
        }),
        (true, None) => Box::new(gzip_chunks(ds, &spec)),
        (true, Some((first, last))) => Box::new(Window {
            inner: gzip_chunks(ds, &spec),
            skip: first,
            take: last - first + 1,
        }),
    };

    let mut response = Response::new(stream_body(chunks, fault, kill));
    set_header(&mut response, CONTENT_TYPE, "application/fhir+ndjson");
    if config.gzip {
        set_header(&mut response, VARY, "Accept-Encoding");
    }
    if gzip {
        set_header(&mut response, CONTENT_ENCODING, "gzip");
    }
    if config.accept_ranges {
        set_header(&mut response, ACCEPT_RANGES, "bytes");
        set_header(&mut response, ETAG, &etag);
    }
    match (span, total) {
        (Some((first, last)), Some(total)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            set_header(
                &mut response,
                CONTENT_RANGE,
                &format!("bytes {first}-{last}/{total}"),
            );
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, (last - first + 1).into());
        }
        (None, Some(total)) => {
            response.headers_mut().insert(CONTENT_LENGTH, total.into());
        }
        // Full gzip representation: length unknown up front, sent chunked.
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=10-"), Some(ByteRange::From(10, None)));
        assert_eq!(
            parse_range("bytes=10-19"),
            Some(ByteRange::From(10, Some(19)))
        );
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range("bytes=5-1"), None);
        assert_eq!(parse_range("bytes=0-1,5-"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(resolve(ByteRange::From(10, None), 100), Some((10, 99)));
        assert_eq!(resolve(ByteRange::From(10, Some(500)), 100), Some((10, 99)));
        assert_eq!(resolve(ByteRange::From(100, None), 100), None);
        assert_eq!(resolve(ByteRange::Suffix(500), 100), Some((0, 99)));
        assert_eq!(resolve(ByteRange::Suffix(0), 100), None);
    }

    #[test]
    fn gzip_accept() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(ACCEPT_ENCODING, "br, gzip;q=0.5".parse().unwrap());
        assert!(accepts_gzip(&h));
        h.insert(ACCEPT_ENCODING, "gzip;q=0".parse().unwrap());
        assert!(!accepts_gzip(&h));
        h.insert(ACCEPT_ENCODING, "identity".parse().unwrap());
        assert!(!accepts_gzip(&h));
    }
}
