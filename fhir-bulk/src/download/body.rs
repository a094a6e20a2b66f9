//! One file's decoded bytes, across any number of broken transfers.
//!
//! A transfer that breaks off (reset, truncated body, timeout, 5xx, 429) is retried under the
//! client's retry policy. When the server advertised `Accept-Ranges: bytes`, the retry asks
//! for `Range: bytes=N-` (with `If-Range` pinned to the strong `ETag` or `Last-Modified`), where
//! N counts the bytes of the representation already received and decoded; a `206` whose
//! `Content-Range` starts at N continues the same byte stream (the gzip decoder keeps its
//! state, so gzip resumes too). Any other success means the file is read again from its start:
//! the stream then yields [`BodyEvent::Restart`] and the reader skips what it already
//! delivered.

use super::decode::BodyDecoder;
use super::expiry::is_expired;
use crate::client::Inner;
use crate::error::{Error, Result, TransportErrorKind};
use crate::http::{Call, TokenUse, header_str, transport_error};
use crate::retry::RetryBudget;
use crate::secret::redact_url;
use bytes::Bytes;
use futures::Stream;
use reqwest::Method;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, HeaderMap, HeaderValue, IF_RANGE, RANGE};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

const CONTEXT: &str = "downloading a file";

/// What to download.
#[derive(Debug, Clone)]
pub(crate) struct FileRequest {
    pub(crate) url: Url,
    pub(crate) token: TokenUse,
    pub(crate) expires: Option<SystemTime>,
}

/// What the byte source yields.
#[derive(Debug, PartialEq)]
pub(crate) enum BodyEvent {
    /// Decoded bytes, continuing the previous ones.
    Data(Bytes),
    /// The file is read again from its first byte: drop partial state and skip what was
    /// already delivered.
    Restart,
}

struct Failure {
    error: Error,
    transient: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn transient(error: Error) -> Failure {
        Failure {
            error,
            transient: true,
            retry_after: None,
        }
    }
}

/// The start of a `Content-Range: bytes START-END/TOTAL` header.
pub(crate) fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let value = header_str(headers, "content-range")?;
    let range = value.strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// The validator for `If-Range`: a strong `ETag`, else `Last-Modified`.
fn validator(headers: &HeaderMap) -> Option<HeaderValue> {
    let etag = headers
        .get("etag")
        .filter(|v| !v.as_bytes().starts_with(b"W/"));
    etag.or_else(|| headers.get("last-modified")).cloned()
}

fn body_failure(url: &Url, message: String) -> Failure {
    Failure::transient(Error::Transport {
        context: CONTEXT,
        kind: TransportErrorKind::Body,
        url: redact_url(url),
        message,
    })
}

/// The decoded bytes of one file, resumed across failures.
pub(crate) fn body_stream(
    inner: Arc<Inner>,
    request: FileRequest,
) -> impl Stream<Item = Result<BodyEvent>> + Send + 'static {
    async_stream::stream! {
        let url = request.url.clone();
        // Bytes of the current representation received and fed to the decoder.
        let mut received: u64 = 0;
        let mut decoder: Option<BodyDecoder> = None;
        let mut if_range: Option<HeaderValue> = None;
        let mut ranges = false;
        // Whether decoded data went out since the last (re)start.
        let mut emitted = false;
        let mut budget = RetryBudget::new(&inner.retry);
        loop {
            let mut progressed = false;
            let resume = received > 0 && ranges && decoder.is_some();
            let mut call = Call::new(CONTEXT, Method::GET, url.clone())
                .header(ACCEPT, "application/fhir+ndjson")
                .header(ACCEPT_ENCODING, "gzip");
            call.token = request.token;
            call.download = true;
            if resume {
                if let Ok(range) = HeaderValue::from_str(&format!("bytes={received}-")) {
                    call.headers.insert(RANGE, range);
                }
                if let Some(v) = &if_range {
                    call.headers.insert(IF_RANGE, v.clone());
                }
            }
            let failure: Failure = 'attempt: {
                let response = match inner.send(&call).await {
                    Ok(response) => response,
                    Err(error) => {
                        let transient = matches!(
                            &error,
                            Error::Transport { kind, .. } if *kind != TransportErrorKind::Redirect
                        );
                        break 'attempt Failure { error, transient, retry_after: None };
                    }
                };
                let status = response.status().as_u16();
                let continuing =
                    status == 206 && resume && content_range_start(response.headers()) == Some(received);
                if status == 206 && !continuing {
                    // A range that does not start where the transfer broke off: start over.
                    ranges = false;
                    decoder = None;
                    break 'attempt body_failure(
                        &url,
                        "the server answered a range that does not continue the transfer".into(),
                    );
                }
                if status == 200 {
                    if emitted {
                        yield Ok(BodyEvent::Restart);
                        emitted = false;
                    }
                    received = 0;
                    let headers = response.headers();
                    ranges = header_str(headers, "accept-ranges")
                        .is_some_and(|v| v.to_ascii_lowercase().contains("bytes"))
                        // Cloud Storage serves ranges of every object (storage/gcs.rs).
                        || headers.contains_key("x-goog-generation");
                    if_range = validator(headers);
                    match BodyDecoder::for_encoding(header_str(headers, "content-encoding")) {
                        Ok(d) => decoder = Some(d),
                        Err(e) => {
                            yield Err(Error::Transport {
                                context: CONTEXT,
                                kind: TransportErrorKind::Body,
                                url: redact_url(&url),
                                message: e.0,
                            });
                            return;
                        }
                    }
                }
                if status == 200 || continuing {
                    let mut response = response;
                    loop {
                        let chunk = match response.chunk().await {
                            Ok(chunk) => chunk,
                            Err(e) => break 'attempt Failure::transient(transport_error(CONTEXT, &url, e)),
                        };
                        let Some(d) = decoder.as_mut() else {
                            break 'attempt body_failure(&url, "no decoder for the body".into());
                        };
                        let Some(mut rest) = chunk else {
                            match d.finish() {
                                Ok(data) => {
                                    if !data.is_empty() {
                                        yield Ok(BodyEvent::Data(data));
                                    }
                                    return;
                                }
                                Err(e) => {
                                    decoder = None;
                                    break 'attempt body_failure(&url, e.0);
                                }
                            }
                        };
                        progressed = true;
                        let slice = d.input_slice();
                        while !rest.is_empty() {
                            let piece = rest.split_to(rest.len().min(slice));
                            received += piece.len() as u64;
                            match d.push(piece) {
                                Ok(data) => {
                                    if !data.is_empty() {
                                        emitted = true;
                                        yield Ok(BodyEvent::Data(data));
                                    }
                                }
                                Err(e) => {
                                    // The decoder's state is lost: read the file again.
                                    decoder = None;
                                    break 'attempt body_failure(&url, e.0);
                                }
                            }
                        }
                    }
                }
                // An error answer.
                let answer = match inner.read(&call, response).await {
                    Ok(answer) => answer,
                    Err(error) => break 'attempt Failure::transient(error),
                };
                let report = answer.error_response(&inner);
                let now = (inner.clock)();
                if is_expired(status, request.expires, now, report.outcome.as_ref(), report.body.as_deref()) {
                    yield Err(Error::FileExpired { response: Box::new(report) });
                    return;
                }
                if report.is_transient() {
                    break 'attempt Failure {
                        retry_after: report.retry_after,
                        error: Error::UnexpectedResponse { context: CONTEXT, response: Box::new(report) },
                        transient: true,
                    };
                }
                yield Err(inner.unexpected(CONTEXT, &answer));
                return;
            };
            if !failure.transient {
                yield Err(failure.error);
                return;
            }
            if progressed {
                budget.renew();
            }
            match budget.next_wait(failure.retry_after, failure.error) {
                Ok(wait) => (inner.sleep)(wait).await,
                Err(exhausted) => {
                    yield Err(exhausted);
                    return;
                }
            }
        }
    }
}
