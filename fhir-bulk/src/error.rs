//! The one public error type, and what a support desk needs from a failed response.

use crate::outcome::OperationOutcome;
use std::fmt;
use std::time::Duration;

/// Everything that can go wrong in `fhir-bulk`.
///
/// Variants are semantic (what went wrong in protocol terms), not transport types: no
/// `reqwest` or `serde` type appears here. Server answers carry an [`ErrorResponse`] with the
/// HTTP status, the parsed `OperationOutcome` and the request-id headers; use the accessors
/// ([`Error::status`], [`Error::operation_outcome`], [`Error::request_id`],
/// [`Error::is_retryable`], [`Error::retry_after`]) rather than matching when you only need
/// those facts.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client setting is invalid (base URL, header, timeout...). Fix the named setting.
    #[error("invalid setting `{setting}`: {message}")]
    InvalidConfig {
        /// The builder setting at fault.
        setting: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// An export request parameter is invalid; nothing was sent.
    #[error("invalid kick-off parameter `{parameter}`: {message}")]
    InvalidRequest {
        /// The `$export` parameter at fault (e.g. `_since`, `patient`).
        parameter: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The server refused the kick-off request.
    #[error("kick-off rejected: {0}")]
    KickoffRejected(Box<ErrorResponse>),

    /// The server answered the kick-off with 429: it allows one export at a time per client
    /// (Oracle Health, Epic). Wait for [`Error::retry_after`], or cancel the export you left
    /// running, then kick off again.
    #[error(
        "the server allows no further export now (HTTP 429): {0}. Finish or cancel (DELETE) \
         the export already running for this client, or retry later"
    )]
    ExportInProgress(Box<ErrorResponse>),

    /// The export job failed on the server; it will not recover by polling again.
    #[error("export job failed: {0}")]
    JobFailed(Box<ErrorResponse>),

    /// The job was cancelled (DELETE) and its status URL now answers with the manifest of
    /// the files written before the cancel (Microsoft's FHIR service): partial output, not a
    /// complete export. Download `partial` knowing it is incomplete, or start a new export.
    #[error(
        "the export job at {status_url} was cancelled; the server lists only the files \
         written before the cancel ({} output file(s)), which are not a complete export",
        partial.as_ref().map_or(0, |m| m.output.len())
    )]
    JobCancelled {
        /// The status URL, without its query string.
        status_url: String,
        /// The manifest of the files written before the cancel, when the server sent one.
        partial: Option<Box<crate::manifest::Manifest>>,
    },

    /// The status URL is unknown: the job was deleted, cancelled or has expired.
    #[error("export job not found (deleted, cancelled or expired): {0}")]
    JobNotFound(Box<ErrorResponse>),

    /// The server kept answering 429 or a transient failure until the retry policy gave up.
    #[error("gave up after {attempts} attempts over {elapsed:?} of transient failures: {last}")]
    RetriesExhausted {
        /// How many requests were made.
        attempts: usize,
        /// Time spent, waits included.
        elapsed: Duration,
        /// The last failure (also the error's [`source`](std::error::Error::source)).
        #[source]
        last: Box<Error>,
    },

    /// The server answered in a way this step of the protocol does not allow.
    #[error("unexpected answer to {context}: {response}")]
    UnexpectedResponse {
        /// The protocol step, e.g. `"DELETE of the export job"`.
        context: &'static str,
        /// The answer.
        response: Box<ErrorResponse>,
    },

    /// The request did not get an HTTP answer (connection refused or reset, timeout, TLS,
    /// truncated or undecodable body).
    #[error("{kind} during {context} at {url}: {message}")]
    Transport {
        /// The protocol step.
        context: &'static str,
        /// What kind of failure.
        kind: TransportErrorKind,
        /// The URL, without its query string (which may hold a pre-signed credential).
        url: String,
        /// The underlying error's message chain (query strings and secrets removed).
        message: String,
        /// The underlying error (the HTTP stack's or the decoder's), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// Authorization failed: no token could be obtained, or the server rejected it.
    #[error("authorization failed: {message}")]
    Auth {
        /// What went wrong and what to check.
        message: String,
        /// The server's answer, when there was one.
        response: Option<Box<ErrorResponse>>,
    },

    /// The bearer token would have gone to an origin it is not trusted for.
    #[error(
        "refusing to send the access token to {origin} ({url}): the manifest says the file \
         requires a token, but that origin is neither the FHIR server's nor trusted. If it \
         belongs to the same server, add it with `BulkClientBuilder::trusted_origin`"
    )]
    UntrustedOrigin {
        /// The origin (`scheme://host:port`).
        origin: String,
        /// The URL, without its query string.
        url: String,
    },

    /// The manifest (complete status body) could not be read.
    #[error("bad export manifest from {url}: {message}")]
    BadManifest {
        /// Where it came from.
        url: String,
        /// What is wrong.
        message: String,
        /// The underlying error (the JSON parser's, or the URL parser's), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A manifest file URL cannot be downloaded over HTTP(S).
    #[error("cannot download {url}: {message}")]
    UnsupportedFileUrl {
        /// The URL, without its query string.
        url: String,
        /// Why, and what to do instead.
        message: String,
    },

    /// A file URL has expired (the manifest's `Expires` passed, or the server said so).
    #[error(
        "the file has expired: {response}. Fetch a fresh manifest with \
         `ExportJob::refresh_manifest` (servers may issue new URLs) and download again, or \
         start a new export"
    )]
    FileExpired {
        /// The server's answer.
        response: Box<ErrorResponse>,
    },

    /// A line of an NDJSON file is unusable.
    #[error("{file}, line {line}: {kind}: {message}")]
    InvalidLine {
        /// The file's URL, without its query string.
        file: String,
        /// The 1-based physical line number.
        line: u64,
        /// What is wrong.
        kind: LineErrorKind,
        /// Details (the parser's message, the types involved).
        message: String,
    },

    /// A file held a different number of resources than the manifest's `count`.
    #[error("{file}: the manifest says {expected} resources, the file held {actual}")]
    CountMismatch {
        /// The file's URL, without its query string.
        file: String,
        /// The manifest's `count`.
        expected: u64,
        /// Lines read.
        actual: u64,
    },

    /// Reading or writing a local file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. `"writing"`.
        action: &'static str,
        /// The local path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The export did not complete within the poll policy's deadline.
    #[error(
        "the export did not complete within {deadline:?} (the poll policy's deadline); the job is still on the server at {status_url}"
    )]
    PollDeadline {
        /// The deadline that passed.
        deadline: Duration,
        /// The status URL, to resume polling later.
        status_url: String,
    },
}

/// The kind of a [`Error::Transport`] failure.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The TCP or TLS connection could not be made.
    Connect,
    /// The connect, read or overall timeout passed.
    Timeout,
    /// The body broke off, or could not be decoded (gzip), after the headers arrived.
    Body,
    /// Too many redirects, or a redirect to an unusable or untrusted location.
    Redirect,
    /// The answer was larger than such an answer may be (a 10 MB token answer, an oversized
    /// manifest). Not retried: the same request brings the same answer.
    TooLarge,
    /// Anything else the HTTP stack reported.
    Other,
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportErrorKind::Connect => "connection failure",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Body => "broken response body",
            TransportErrorKind::Redirect => "redirect failure",
            TransportErrorKind::TooLarge => "oversized answer",
            TransportErrorKind::Other => "HTTP failure",
        })
    }
}

/// What is wrong with an NDJSON line.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineErrorKind {
    /// Longer than the maximum line length.
    TooLong,
    /// Not valid JSON, or not the shape the caller's type expects.
    Parse,
    /// Its `resourceType` is not the manifest entry's `type`.
    WrongType,
}

impl fmt::Display for LineErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LineErrorKind::TooLong => "line too long",
            LineErrorKind::Parse => "unparsable line",
            LineErrorKind::WrongType => "unexpected resourceType",
        })
    }
}

/// A server's answer that was not the one the protocol step expected, with everything a
/// support desk asks for.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorResponse {
    /// HTTP status code. With `separate-export-status`, the status from `X-Export-Status`.
    pub status: u16,
    /// The request URL, without its query string.
    pub url: String,
    /// The `OperationOutcome` body, when the body was one.
    pub outcome: Option<OperationOutcome>,
    /// The start of the body (up to 2 KiB) when it was not an `OperationOutcome`.
    pub body: Option<String>,
    /// The request-id headers the server sent.
    pub request_ids: RequestIds,
    /// The `Retry-After` the server asked for.
    pub retry_after: Option<Duration>,
}

/// Request-id headers that vendors ask for when you report a problem.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestIds {
    /// `X-Request-Id`.
    pub x_request_id: Option<String>,
    /// `opc-request-id` (Oracle Health).
    pub opc_request_id: Option<String>,
}

impl RequestIds {
    /// The first id present, `X-Request-Id` first.
    pub fn first(&self) -> Option<&str> {
        self.x_request_id
            .as_deref()
            .or(self.opc_request_id.as_deref())
    }

    /// Whether no id was sent.
    pub fn is_empty(&self) -> bool {
        self.x_request_id.is_none() && self.opc_request_id.is_none()
    }
}

impl fmt::Display for RequestIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(id) = &self.x_request_id {
            write!(f, "X-Request-Id: {id}")?;
            sep = ", ";
        }
        if let Some(id) = &self.opc_request_id {
            write!(f, "{sep}opc-request-id: {id}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} from {}", self.status, self.url)?;
        match (&self.outcome, &self.body) {
            (Some(oo), _) => write!(f, ": {oo}")?,
            (None, Some(body)) if !body.trim().is_empty() => write!(f, ": {}", body.trim())?,
            _ => {}
        }
        if !self.request_ids.is_empty() {
            write!(f, " ({})", self.request_ids)?;
        }
        if let Some(wait) = self.retry_after {
            write!(f, " (Retry-After: {}s)", wait.as_secs())?;
        }
        Ok(())
    }
}

impl ErrorResponse {
    /// Whether the answer says the failure is transient: 408, 429, 5xx without a body, or an
    /// `OperationOutcome` with a transient issue code.
    pub fn is_transient(&self) -> bool {
        crate::transport::retry::is_transient_answer(
            self.status,
            self.outcome.as_ref(),
            self.body.is_some(),
        )
    }
}

impl Error {
    fn response(&self) -> Option<&ErrorResponse> {
        match self {
            Error::KickoffRejected(r)
            | Error::ExportInProgress(r)
            | Error::JobFailed(r)
            | Error::JobNotFound(r)
            | Error::UnexpectedResponse { response: r, .. }
            | Error::FileExpired { response: r } => Some(r),
            Error::Auth { response, .. } => response.as_deref(),
            Error::RetriesExhausted { last, .. } => last.response(),
            _ => None,
        }
    }

    /// The server's answer behind this error, if any.
    pub fn error_response(&self) -> Option<&ErrorResponse> {
        self.response()
    }

    /// The HTTP status the server answered with, if the error came from an answer.
    pub fn status(&self) -> Option<u16> {
        self.response().map(|r| r.status)
    }

    /// The server's `OperationOutcome`, if it sent one.
    pub fn operation_outcome(&self) -> Option<&OperationOutcome> {
        self.response().and_then(|r| r.outcome.as_ref())
    }

    /// The request id (`X-Request-Id`, else `opc-request-id`) to quote to the vendor.
    pub fn request_id(&self) -> Option<&str> {
        self.response().and_then(|r| r.request_ids.first())
    }

    /// The `Retry-After` the server sent, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.response().and_then(|r| r.retry_after)
    }

    /// Whether trying the same call again later may succeed: transport failures, 429,
    /// transient server answers, and [`Error::ExportInProgress`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { kind, .. } => {
                crate::transport::retry::is_transient_transport(*kind, true)
            }
            Error::ExportInProgress(_) | Error::RetriesExhausted { .. } => true,
            Error::UnexpectedResponse { response, .. } => response.is_transient(),
            Error::KickoffRejected(r) => r.is_transient(),
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> ErrorResponse {
        ErrorResponse {
            status: 400,
            url: "https://ehr.example/r4/t/Group/g/$export".into(),
            outcome: OperationOutcome::parse(
                br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"_typeFilter not supported"}]}"#,
            ),
            body: None,
            request_ids: RequestIds {
                x_request_id: None,
                opc_request_id: Some("opc-1".into()),
            },
            retry_after: None,
        }
    }

    #[test]
    fn message_names_status_outcome_and_request_id() {
        let err = Error::KickoffRejected(Box::new(response()));
        let text = err.to_string();
        assert!(text.contains("HTTP 400"), "{text}");
        assert!(text.contains("_typeFilter not supported"), "{text}");
        assert!(text.contains("opc-request-id: opc-1"), "{text}");
        assert_eq!(err.status(), Some(400));
        assert_eq!(err.request_id(), Some("opc-1"));
        assert_eq!(err.operation_outcome().unwrap().issue[0].code, "invalid");
        assert!(!err.is_retryable());
    }

    #[test]
    fn retries_exhausted_exposes_the_last_answer() {
        let mut r = response();
        r.status = 429;
        r.retry_after = Some(Duration::from_secs(30));
        let err = Error::RetriesExhausted {
            attempts: 3,
            elapsed: Duration::from_secs(90),
            last: Box::new(Error::UnexpectedResponse {
                context: "status request",
                response: Box::new(r),
            }),
        };
        assert_eq!(err.status(), Some(429));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        assert!(err.is_retryable());
    }
}
