//! One file's decoded bytes, across any number of broken transfers: the byte source.
//!
//! A transfer that breaks off (reset, truncated body, timeout, 5xx, 429) is retried under the
//! client's retry policy, in one [`RetryContext`] for the whole file: attempts that reach
//! further into the file than any before earn one more attempt (up to four times the policy's
//! count), never more time, so a server that keeps cutting the body ends in an error that says
//! where and how often. When the server advertised `Accept-Ranges: bytes`, the retry asks for
//! `Range: bytes=N-` (with `If-Range` pinned to the strong `ETag` or `Last-Modified`), where N
//! counts the bytes of the representation already received and decoded; a `206` whose
//! `Content-Range` starts at N continues the same byte stream (the gzip decoder keeps its
//! state, so gzip resumes too). Any other success means the file is read again from its start:
//! the stream then yields [`BodyEvent::Restart`] and the reader skips what it already
//! delivered.
//!
//! The stream is a small state machine ([`State`]) driven by `futures::stream::unfold`. It
//! ends (`None`) only after the body ended cleanly per its framing (the `Content-Length`
//! reached, the last chunk of a chunked body, or the connection closed on a body without
//! either) and, for gzip, after the gzip trailer was read and checked; any other end is an
//! `Err` item. That is the "ended cleanly" signal for the line checks.

use super::decode::BodyDecoder;
use super::expiry::is_expired;
use crate::client::Inner;
use crate::error::{Error, Result, TransportErrorKind};
use crate::secret::redact_url;
use crate::transport::retry::is_transient_transport;
use crate::transport::{
    Call, ClientKind, RetryContext, ServerWait, TokenUse, Verdict, header_str, transport_error,
};
use bytes::Bytes;
use futures::Stream;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, HeaderMap, HeaderValue, IF_RANGE, RANGE};
use reqwest::{Method, Response};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::Instrument;
use url::Url;

const CONTEXT: &str = "downloading a file";

/// What to download.
#[derive(Debug, Clone)]
pub(crate) struct FileRequest {
    pub(crate) url: Url,
    pub(crate) token: TokenUse,
    pub(crate) expires: Option<SystemTime>,
    /// Continue a representation an earlier process read up to `offset` (decoded identity
    /// bytes), pinned by `validator`: the first request asks `Range: bytes=offset-` with
    /// `If-Range` and `Accept-Encoding: identity`; a `200` instead is announced by a
    /// [`BodyEvent::Restart`].
    pub(crate) resume: Option<ResumeFrom>,
    /// The `Accept` header, when not `application/fhir+ndjson` (attachments).
    pub(crate) accept: Option<HeaderValue>,
}

/// Where an earlier process stopped reading a file.
#[derive(Debug, Clone)]
pub(crate) struct ResumeFrom {
    /// Decoded (identity) bytes already read.
    pub(crate) offset: u64,
    /// The `ETag` or `Last-Modified` of the representation read then.
    pub(crate) validator: HeaderValue,
}

/// What the byte source yields.
#[derive(Debug, PartialEq)]
pub(crate) enum BodyEvent {
    /// Decoded bytes, continuing the previous ones.
    Data(Bytes),
    /// The file is read again from its first byte: drop partial state and skip what was
    /// already delivered.
    Restart,
    /// The body is complete (the last event before the stream ends). `framed`: its end was
    /// proven by the transfer's framing (a `Content-Length` reached, a chunked terminator,
    /// HTTP/2's end of stream, or the end of a gzip stream); false for a close-delimited
    /// identity body, whose end cannot be told from a cut connection.
    End {
        /// Whether the framing proved the end.
        framed: bool,
    },
    /// A `200` started a (new) representation: its validator for `If-Range`, when the server
    /// offers byte ranges over identity bytes (the only kind a later process can resume), or,
    /// for a gzip-coded body, its `Last-Modified` (see [`identity_validator`]).
    Representation {
        /// A strong `ETag` or `Last-Modified`, when ranges over identity bytes are offered.
        resumable: Option<HeaderValue>,
    },
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

/// The validator a later process can put in `If-Range` when it asks for the identity
/// representation of a file read gzip-coded: `Last-Modified`, which dates the resource in any
/// coding. The coded representation's `ETag` cannot pin the identity one (a strong `ETag`
/// differs between codings, a weak one is not allowed in `If-Range`), so without
/// `Last-Modified` there is none and the resume re-reads the file, skipping whole lines.
/// `Accept-Ranges` is not required: servers that compress on the fly drop it from the coded
/// answer while serving ranges of the identity one, and a `200` answer is skipped anyway.
fn identity_validator(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get("last-modified").cloned()
}

/// Where the byte source is.
enum State {
    /// Send the next request.
    Connect,
    /// A `200` or continuing `206` is being read.
    Reading(Response),
    /// The attempt failed: retry (after the context's wait) or give up.
    Failed {
        error: Error,
        server: Option<ServerWait>,
        transient: bool,
    },
    /// Finished (cleanly or with an error already queued).
    Done,
}

/// The byte source of one file.
struct Source {
    inner: Arc<Inner>,
    request: FileRequest,
    state: State,
    /// Events ready to hand out, in order.
    queue: VecDeque<Result<BodyEvent>>,
    ctx: RetryContext,
    decoder: Option<BodyDecoder>,
    /// Bytes of the current representation received and fed to the decoder.
    received: u64,
    /// The furthest `received` of any attempt: reaching past it is progress.
    furthest: u64,
    if_range: Option<HeaderValue>,
    ranges: bool,
    /// Whether decoded data went out since the last (re)start.
    emitted: bool,
    /// Whether this attempt asked for a range.
    resuming: bool,
    /// Whether this attempt asked for a range over identity bytes (which must not come back
    /// encoded).
    identity_range: bool,
    /// Whether the end of the body being read will be proven by its framing.
    framed: bool,
    /// The rest of the last chunk read, not yet given to the decoder: gzip is decoded one
    /// slice per step, each step's output handed out before the next, so a chunk of a
    /// highly compressed body never sits decoded in memory all at once.
    undecoded: bytes::Bytes,
}

impl Source {
    /// The source of one file, before its first request.
    fn new(inner: Arc<Inner>, request: FileRequest) -> Source {
        let resume = request.resume.clone();
        let mut source = Source {
            ctx: inner.retry_context().with_progress_allowance(),
            inner,
            request,
            state: State::Connect,
            queue: VecDeque::new(),
            decoder: None,
            received: 0,
            furthest: 0,
            if_range: None,
            ranges: false,
            emitted: false,
            resuming: false,
            identity_range: false,
            framed: false,
            undecoded: bytes::Bytes::new(),
        };
        // An earlier process read the identity bytes up to `offset`.
        if let Some(from) = resume {
            source.received = from.offset;
            source.furthest = from.offset;
            source.decoder = Some(BodyDecoder::Identity);
            source.if_range = Some(from.validator);
            source.ranges = true;
            source.emitted = true;
        }
        source
    }

    fn body_failure(&self, message: String) -> State {
        State::Failed {
            error: Error::Transport {
                context: CONTEXT,
                kind: TransportErrorKind::Body,
                url: redact_url(&self.request.url),
                message,
                source: None,
            },
            server: None,
            transient: true,
        }
    }

    fn call(&mut self) -> Call {
        let url = self.request.url.clone();
        let mut call = Call::new(CONTEXT, Method::GET, url)
            .what("download")
            .header(ACCEPT, "application/fhir+ndjson")
            .header(ACCEPT_ENCODING, "gzip");
        if let Some(accept) = &self.request.accept {
            call.headers.insert(ACCEPT, accept.clone());
        }
        call.token = self.request.token;
        call.client = ClientKind::Download;
        self.resuming = self.received > 0 && self.ranges && self.decoder.is_some();
        self.identity_range = self.resuming && matches!(self.decoder, Some(BodyDecoder::Identity));
        if self.identity_range {
            call.headers
                .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        if self.resuming {
            if let Ok(range) = HeaderValue::from_str(&format!("bytes={}-", self.received)) {
                call.headers.insert(RANGE, range);
            }
            if let Some(v) = &self.if_range {
                call.headers.insert(IF_RANGE, v.clone());
            }
        }
        call
    }

    /// One request; what its answer leads to.
    async fn connect(&mut self) -> State {
        // Input of the previous attempt not decoded yet is not counted in `received`: the
        // new attempt reads it again.
        self.undecoded = bytes::Bytes::new();
        let call = self.call();
        if self.resuming || self.emitted {
            tracing::info!(
                target: "fhir_bulk::download",
                file = %redact_url(&self.request.url),
                offset = self.received,
                mode = if self.resuming { "range" } else { "skip" },
                "resuming"
            );
        }
        let response = match self.inner.send(&call).await {
            Ok(response) => response,
            Err(error) => {
                let transient = match &error {
                    Error::Transport { kind, .. } => is_transient_transport(*kind, true),
                    _ => false,
                };
                return State::Failed {
                    error,
                    server: None,
                    transient,
                };
            }
        };
        let status = response.status().as_u16();
        // A range over identity bytes must come back as identity bytes.
        let coded = header_str(response.headers(), "content-encoding")
            .is_some_and(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("identity"));
        let continuing = status == 206
            && self.resuming
            && content_range_start(response.headers()) == Some(self.received)
            && !(self.identity_range && coded);
        if status == 206 && !continuing {
            // A range that does not start where the transfer broke off: start over.
            self.ranges = false;
            self.decoder = None;
            return self.body_failure(
                "the server answered a range that does not continue the transfer".into(),
            );
        }
        if status == 200 {
            if self.emitted {
                self.queue.push_back(Ok(BodyEvent::Restart));
                self.emitted = false;
            }
            self.received = 0;
            let headers = response.headers();
            // A Cloud Storage read continues the generation it started on (storage/gcs.rs).
            if let Some(pinned) = crate::storage::gcs::pin_generation(
                &self.request.url,
                header_str(headers, "x-goog-generation"),
            ) {
                self.request.url = pinned;
            }
            self.ranges = header_str(headers, "accept-ranges")
                .is_some_and(|v| v.to_ascii_lowercase().contains("bytes"))
                // Cloud Storage serves ranges of every object (storage/gcs.rs).
                || headers.contains_key("x-goog-generation");
            self.if_range = validator(headers);
            match BodyDecoder::for_encoding(header_str(headers, "content-encoding")) {
                Ok(d) => {
                    let resumable = match d {
                        BodyDecoder::Identity => self.if_range.clone().filter(|_| self.ranges),
                        BodyDecoder::Gzip(_) => identity_validator(headers),
                    };
                    self.queue
                        .push_back(Ok(BodyEvent::Representation { resumable }));
                    self.decoder = Some(d);
                }
                Err(e) => {
                    self.queue.push_back(Err(Error::Transport {
                        context: CONTEXT,
                        kind: TransportErrorKind::Body,
                        url: redact_url(&self.request.url),
                        message: e.0,
                        source: None,
                    }));
                    return State::Done;
                }
            }
        }
        if status == 200 || continuing {
            // hyper fails a body shorter than its Content-Length or without its chunked
            // terminator, and the gzip decoder fails an unfinished stream: those ends are proven.
            self.framed = response.version() >= reqwest::Version::HTTP_2
                || response
                    .headers()
                    .contains_key(reqwest::header::CONTENT_LENGTH)
                || header_str(response.headers(), "transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
                || matches!(self.decoder, Some(BodyDecoder::Gzip(_)));
            return State::Reading(response);
        }
        self.error_answer(&call, response).await
    }

    /// A non-success answer: expired, transient, or the end.
    async fn error_answer(&mut self, call: &Call, response: Response) -> State {
        let inner = self.inner.clone();
        let answer = match inner.read(call, response).await {
            Ok(answer) => answer,
            Err(error) => {
                let transient = matches!(
                    &error,
                    Error::Transport { kind, .. } if is_transient_transport(*kind, true)
                );
                return State::Failed {
                    error,
                    server: None,
                    transient,
                };
            }
        };
        // A pinned Cloud Storage generation that is gone: the object was replaced.
        if answer.status == 404
            && let Some(message) = crate::storage::gcs::replaced_message(&self.request.url)
        {
            self.queue.push_back(Err(Error::Transport {
                context: CONTEXT,
                kind: TransportErrorKind::Body,
                url: redact_url(&self.request.url),
                message,
                source: None,
            }));
            return State::Done;
        }
        let report = answer.error_response(&inner);
        let now = (inner.clock)();
        if is_expired(
            answer.status,
            self.request.expires,
            now,
            report.outcome.as_ref(),
            report.body.as_deref(),
        ) {
            self.queue.push_back(Err(Error::FileExpired {
                response: Box::new(report),
            }));
            return State::Done;
        }
        match inner.judge(call, answer.clone()) {
            Verdict::Retry { error, server } => State::Failed {
                error,
                server,
                transient: true,
            },
            _ => {
                self.queue
                    .push_back(Err(inner.unexpected(CONTEXT, &answer)));
                State::Done
            }
        }
    }

    /// Reads one chunk of the body.
    async fn read(&mut self, mut response: Response) -> State {
        if !self.undecoded.is_empty() {
            let rest = std::mem::take(&mut self.undecoded);
            return self.decode(response, rest);
        }
        let chunk = match response.chunk().await {
            Ok(chunk) => chunk,
            Err(e) => {
                let mut error = transport_error(CONTEXT, &self.request.url, e);
                if let Error::Transport { message, .. } = &mut error {
                    *message = format!(
                        "the server cut the body at byte {} of the transfer ({message})",
                        self.received
                    );
                }
                return State::Failed {
                    error,
                    server: None,
                    transient: true,
                };
            }
        };
        let Some(d) = self.decoder.as_mut() else {
            return self.body_failure("no decoder for the body".into());
        };
        let Some(rest) = chunk else {
            return match d.finish() {
                Ok(data) => {
                    if !data.is_empty() {
                        self.queue.push_back(Ok(BodyEvent::Data(data)));
                    }
                    self.queue.push_back(Ok(BodyEvent::End {
                        framed: self.framed,
                    }));
                    State::Done
                }
                Err(e) => {
                    self.decoder = None;
                    let at = self.received;
                    self.body_failure(format!("the body ended at byte {at} but: {}", e.0))
                }
            };
        };
        self.decode(response, rest)
    }

    /// Decodes one slice of `rest` (all of it for identity) and keeps the remainder for the
    /// next step.
    fn decode(&mut self, response: Response, mut rest: bytes::Bytes) -> State {
        let Some(d) = self.decoder.as_mut() else {
            return self.body_failure("no decoder for the body".into());
        };
        let piece = rest.split_to(rest.len().min(d.input_slice()));
        self.received += piece.len() as u64;
        match d.push(piece) {
            Ok(data) => {
                if !data.is_empty() {
                    self.emitted = true;
                    self.queue.push_back(Ok(BodyEvent::Data(data)));
                }
            }
            Err(e) => {
                // The decoder's state is lost: read the file again.
                self.decoder = None;
                let at = self.received;
                return self
                    .body_failure(format!("the body does not decode at byte {at}: {}", e.0));
            }
        }
        self.undecoded = rest;
        State::Reading(response)
    }

    /// After a failed attempt: wait and go on, or end with the error.
    async fn failed(&mut self, error: Error, server: Option<ServerWait>, transient: bool) -> State {
        if !transient {
            self.queue.push_back(Err(error));
            return State::Done;
        }
        if self.received > self.furthest {
            self.furthest = self.received;
            self.ctx.progressed();
        }
        let inner = self.inner.clone();
        match inner
            .retry_wait("download", &self.request.url, &mut self.ctx, server, error)
            .await
        {
            Ok(()) => State::Connect,
            Err(end) => {
                self.queue.push_back(Err(end));
                State::Done
            }
        }
    }

    /// The next event, or `None` at the end.
    async fn next(&mut self) -> Option<Result<BodyEvent>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            self.state = match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return None,
                State::Connect => self.connect().await,
                State::Reading(response) => self.read(response).await,
                State::Failed {
                    error,
                    server,
                    transient,
                } => self.failed(error, server, transient).await,
            };
        }
    }
}

/// The decoded bytes of one file, resumed across failures.
pub(crate) fn body_stream(
    inner: Arc<Inner>,
    request: FileRequest,
) -> impl Stream<Item = Result<BodyEvent>> + Send + 'static {
    let span = tracing::info_span!("file", url = %redact_url(&request.url));
    let source = Source::new(inner, request);
    futures::stream::unfold(source, move |mut source| {
        let span = span.clone();
        async move {
            let event = source.next().await?;
            Some((event, source))
        }
        .instrument(span)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// A body that compresses about 1,000 to 1 arrives in one large chunk: the source
    /// decodes one slice per step, so what waits decoded is one slice's output, never the
    /// chunk's (which would be tens of MiB).
    #[tokio::test]
    async fn a_highly_compressed_chunk_is_decoded_a_slice_at_a_time() {
        let line = format!(
            "{{\"resourceType\":\"Basic\",\"text\":\"{}\"}}\n",
            "a".repeat(4000)
        );
        let total = 32 * 1024 * 1024;
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        for _ in 0..total / line.len() {
            encoder.write_all(line.as_bytes()).unwrap();
        }
        let packed = encoder.finish().unwrap();
        assert!(packed.len() * 300 < total, "{} bytes packed", packed.len());
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-encoding", "gzip")
                    .set_body_raw(packed, "application/fhir+ndjson"),
            )
            .mount(&server)
            .await;
        let client = crate::BulkClient::builder(server.uri().as_str())
            .build()
            .unwrap();
        let request = FileRequest {
            url: Url::parse(&format!("{}/f.ndjson", server.uri())).unwrap(),
            token: TokenUse::Never,
            expires: None,
            resume: None,
            accept: None,
        };
        let mut source = Source::new(client.inner.clone(), request);
        let (mut decoded, mut most_waiting) = (0usize, 0usize);
        while let Some(event) = source.next().await {
            let waiting: usize = source
                .queue
                .iter()
                .map(|e| match e {
                    Ok(BodyEvent::Data(d)) => d.len(),
                    _ => 0,
                })
                .sum();
            most_waiting = most_waiting.max(waiting);
            if let BodyEvent::Data(data) = event.unwrap() {
                assert!(data.len() <= 4 * 1024 * 1024 + 64 * 1024, "{}", data.len());
                decoded += data.len();
            }
        }
        assert_eq!(decoded, total / line.len() * line.len());
        assert!(
            most_waiting <= 4 * 1024 * 1024,
            "{most_waiting} bytes waited decoded"
        );
    }
}
