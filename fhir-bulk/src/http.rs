//! The one place requests are sent: the token is attached here and nowhere else, after the
//! destination's origin is checked; redirects are followed by hand so every hop gets the same
//! check; a 401 triggers one token refresh; transient failures are retried under the
//! [`RetryPolicy`](crate::RetryPolicy).

use crate::client::Inner;
use crate::error::{Error, ErrorResponse, RequestIds, Result, TransportErrorKind};
use crate::outcome::OperationOutcome;
use crate::secret::{AccessToken, redact_url};
use backon::Retryable;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use url::Url;

/// The most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;
/// The largest API answer (manifest, OperationOutcome) read into memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// How much of a non-FHIR error body is kept for the error message.
const BODY_EXCERPT: usize = 2048;

/// Whether a request carries the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenUse {
    /// Attach the token (kick-off, status, DELETE, files with `requiresAccessToken: true`).
    /// The first hop must be on a trusted origin; redirect hops elsewhere go without it.
    Required,
    /// Never attach it (capability URLs: `requiresAccessToken: false`).
    Never,
}

/// One logical request.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// The protocol step, for error messages.
    pub(crate) context: &'static str,
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Bytes>,
    pub(crate) token: TokenUse,
    /// Whether a retry may repeat a request the server may have received. Kick-offs are not
    /// idempotent: they are retried only when the connection was never made, or when the
    /// server said the failure was transient.
    pub(crate) idempotent: bool,
    /// Whether a 429 answer is retried (status polls) or returned (kick-off: its own error).
    pub(crate) retry_throttled: bool,
    /// A file download: sent with the client that does not decompress.
    pub(crate) download: bool,
}

impl Call {
    pub(crate) fn new(context: &'static str, method: Method, url: Url) -> Call {
        Call {
            context,
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            token: TokenUse::Required,
            idempotent: true,
            retry_throttled: true,
            download: false,
        }
    }

    pub(crate) fn header(mut self, name: HeaderName, value: &'static str) -> Call {
        self.headers.insert(name, HeaderValue::from_static(value));
        self
    }
}

/// A complete HTTP answer, body read.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// The URL that answered (after redirects).
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header_str(&self.headers, name)
    }

    /// The answer as an error report.
    pub(crate) fn error_response(&self, inner: &Inner) -> ErrorResponse {
        error_response(self.status, &self.url, &self.headers, &self.body, inner)
    }
}

pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub(crate) fn request_ids(headers: &HeaderMap) -> RequestIds {
    RequestIds {
        x_request_id: header_str(headers, "x-request-id").map(str::to_owned),
        opc_request_id: header_str(headers, "opc-request-id").map(str::to_owned),
    }
}

/// Builds the support-desk report of an answer.
pub(crate) fn error_response(
    status: u16,
    url: &Url,
    headers: &HeaderMap,
    body: &[u8],
    inner: &Inner,
) -> ErrorResponse {
    report(status, url, headers, body, inner.retry_after(headers))
}

/// The support-desk report of an answer: status, URL without its query, the
/// OperationOutcome or the start of any other body, the request ids, the Retry-After.
pub(crate) fn report(
    status: u16,
    url: &Url,
    headers: &HeaderMap,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ErrorResponse {
    let outcome = OperationOutcome::parse(body);
    let text = String::from_utf8_lossy(body);
    let body = if outcome.is_none() && !text.trim().is_empty() {
        let text = text.trim();
        let mut end = text.len().min(BODY_EXCERPT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Some(text[..end].to_owned())
    } else {
        None
    };
    ErrorResponse {
        status,
        url: redact_url(url),
        outcome,
        body,
        request_ids: request_ids(headers),
        retry_after,
    }
}

/// Turns a transport failure into the public error, with the URL's query string removed
/// (reqwest's own message would print it, and a pre-signed URL's query is a credential).
pub(crate) fn transport_error(context: &'static str, url: &Url, err: reqwest::Error) -> Error {
    let kind = if err.is_timeout() || chain_has_timeout(&err) {
        TransportErrorKind::Timeout
    } else if err.is_connect() {
        TransportErrorKind::Connect
    } else if err.is_body() || err.is_decode() {
        TransportErrorKind::Body
    } else if err.is_redirect() {
        TransportErrorKind::Redirect
    } else {
        TransportErrorKind::Other
    };
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Error::Transport {
        context,
        kind,
        url: redact_url(url),
        message,
    }
}

fn chain_has_timeout(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A failed attempt, and whether the retry loop may try again.
struct Failure {
    error: Error,
    transient: bool,
    retry_after: Option<Duration>,
}

impl Inner {
    /// The parsed `Retry-After` of an answer, from the header the server profile says.
    pub(crate) fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        self.profile
            .retry_after(
                |name| header_str(headers, name),
                self.poll.retry_after_unit,
                (self.clock)(),
            )
            .map(|hint| hint.delay)
    }

    /// Whether `url` may receive the token: the FHIR base's origin, or a trusted one.
    pub(crate) fn is_trusted(&self, url: &Url) -> bool {
        let origin = url.origin();
        origin == self.base.origin() || self.trusted_origins.contains(&origin)
    }

    async fn token(&self) -> Result<AccessToken> {
        let auth = self.auth.as_ref().ok_or_else(|| Error::Auth {
            message: "no auth provider is configured".into(),
            response: None,
        })?;
        auth.token(self.auth_context()).await
    }

    /// Sends one request: origin-checked token, redirects followed by hand, one token refresh
    /// on a 401. The answer may be any status; the body is not read.
    pub(crate) async fn send(&self, call: &Call) -> Result<Response> {
        let wants_token = call.token == TokenUse::Required && self.auth.is_some();
        if wants_token && !self.is_trusted(&call.url) {
            return Err(Error::UntrustedOrigin {
                origin: call.url.origin().ascii_serialization(),
                url: redact_url(&call.url),
            });
        }
        let mut url = call.url.clone();
        let mut method = call.method.clone();
        let mut body = call.body.clone();
        let mut hops = 0;
        let mut refreshed = false;
        loop {
            let trusted = self.is_trusted(&url);
            let token = if wants_token && trusted {
                Some(self.token().await?)
            } else {
                None
            };
            let http = if call.download {
                &self.download_http
            } else {
                &self.http
            };
            let mut request = http
                .request(method.clone(), url.clone())
                .headers(call.headers.clone())
                .header(header::USER_AGENT, self.user_agent.clone());
            if trusted {
                // Extra headers (e.g. Epic-Client-ID) may be credentials too: same rule.
                request = request.headers(self.extra_headers.clone());
            }
            if let Some(token) = &token {
                request = request.bearer_auth(token.secret());
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| transport_error(call.context, &url, e))?;
            let status = response.status().as_u16();
            let location = header_str(response.headers(), "location").map(str::to_owned);
            if matches!(status, 301 | 302 | 303 | 307 | 308)
                && let Some(location) = location
            {
                hops += 1;
                let next = url.join(&location).ok().filter(|_| hops <= MAX_REDIRECTS);
                let Some(next) = next.filter(|u| matches!(u.scheme(), "http" | "https")) else {
                    return Err(Error::Transport {
                        context: call.context,
                        kind: TransportErrorKind::Redirect,
                        url: redact_url(&url),
                        message: format!(
                            "too many redirects (more than {MAX_REDIRECTS}) or a redirect \
                                 to an unusable location"
                        ),
                    });
                };
                if status == 303 || (matches!(status, 301 | 302) && method == Method::POST) {
                    method = Method::GET;
                    body = None;
                }
                url = next;
                continue;
            }
            if status == 401
                && !refreshed
                && let (Some(token), Some(auth)) = (&token, &self.auth)
            {
                refreshed = true;
                auth.token_rejected(token);
                continue;
            }
            return Ok(response);
        }
    }

    /// Reads a whole (small) answer body.
    pub(crate) async fn read(&self, call: &Call, response: Response) -> Result<Answer> {
        let status = response.status().as_u16();
        let url = response.url().clone();
        let headers = response.headers().clone();
        if let Some(len) = response.content_length()
            && len > MAX_ANSWER_BYTES as u64
        {
            return Err(too_large(call, &url));
        }
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(call.context, &url, e))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large(call, &url));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            url,
            headers,
            body: Bytes::from(body),
        })
    }

    async fn attempt(&self, call: &Call) -> std::result::Result<Answer, Failure> {
        let answer = match self.send(call).await {
            Ok(response) => self.read(call, response).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(answer) => {
                if answer.status < 400 || (answer.status == 429 && !call.retry_throttled) {
                    return Ok(answer);
                }
                let report = answer.error_response(self);
                if report.is_transient() {
                    Err(Failure {
                        retry_after: report.retry_after,
                        error: Error::UnexpectedResponse {
                            context: call.context,
                            response: Box::new(report),
                        },
                        transient: true,
                    })
                } else {
                    Ok(answer)
                }
            }
            Err(error) => {
                let transient = match &error {
                    Error::Transport { kind, .. } => match kind {
                        TransportErrorKind::Connect => true,
                        TransportErrorKind::Redirect => false,
                        _ => call.idempotent,
                    },
                    _ => false,
                };
                Err(Failure {
                    error,
                    transient,
                    retry_after: None,
                })
            }
        }
    }

    /// Sends a request and reads its answer, retrying transient failures under the retry
    /// policy. Returns the first answer that is not transient, whatever its status.
    pub(crate) async fn request(&self, call: &Call) -> Result<Answer> {
        let attempts = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let sleep = self.sleep.clone();
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(call).await
        })
        .retry(self.retry.backoff())
        .sleep(move |d| sleep(d))
        .when(|f: &Failure| f.transient)
        .adjust(|f: &Failure, scheduled| self.retry.adjust(scheduled, f.retry_after))
        .await;
        result.map_err(|failure| {
            let attempts = attempts.load(Ordering::Relaxed);
            if failure.transient && attempts > 1 {
                Error::RetriesExhausted {
                    attempts,
                    elapsed: started.elapsed(),
                    last: Box::new(failure.error),
                }
            } else {
                failure.error
            }
        })
    }

    /// The error for an answer no protocol step expected: 401/403 are authorization
    /// failures, anything else an unexpected response.
    pub(crate) fn unexpected(&self, context: &'static str, answer: &Answer) -> Error {
        let response = Box::new(answer.error_response(self));
        match answer.status {
            401 => Error::Auth {
                message: format!(
                    "the server rejected the access token for {context} (HTTP 401), also after \
                     a fresh token: check the client's registration and scopes"
                ),
                response: Some(response),
            },
            403 => Error::Auth {
                message: format!(
                    "the server refused {context} (HTTP 403): the token's scopes or the \
                     client's permissions do not cover it"
                ),
                response: Some(response),
            },
            _ => Error::UnexpectedResponse { context, response },
        }
    }
}

fn too_large(call: &Call, url: &Url) -> Error {
    Error::Transport {
        context: call.context,
        kind: TransportErrorKind::Body,
        url: redact_url(url),
        message: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
    }
}
