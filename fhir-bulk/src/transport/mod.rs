//! The one transport layer: every request of the crate (FHIR API calls, SMART discovery, the
//! token endpoint, the CapabilityStatement, manifest pages, file downloads, DELETE) goes
//! through [`Inner::run`](crate::client::Inner) and its helpers here.
//!
//! - `send`: one hop loop: the token is attached here and nowhere else, after the
//!   destination's origin is checked; extra headers go only to trusted origins; a 401 triggers
//!   one token refresh.
//! - `redirect`: the redirect policy asked at every hop (the crate's reqwest clients never
//!   follow redirects).
//! - `retry`: the one [`RetryContext`](retry::RetryContext) (attempts and time, backoff with
//!   injected randomness, `Retry-After`) and the one classification of transient failures.
//! - `body`: the one bounded body reader and error-body decoding.
//! - `report`: the one error-report builder; `scrub`: the one secret scrubber.
//! - `origin`: the "https, or http only on loopback" rule.

pub(crate) mod body;
pub(crate) mod origin;
pub(crate) mod redirect;
pub(crate) mod report;
pub(crate) mod retry;
pub(crate) mod scrub;
mod send;

pub(crate) use body::{API_LIMIT, DOCUMENT_LIMIT, TOKEN_LIMIT};
pub(crate) use redirect::RedirectRule;
pub(crate) use report::{header_str, request_ids, transport_error};
pub(crate) use retry::{RetryContext, ServerWait};
pub(crate) use send::Verdict;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::SystemTime;
use url::Url;

/// Whether a request carries the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenUse {
    /// Attach the token (kick-off, status, DELETE, files with `requiresAccessToken: true`).
    /// The first hop must be on a trusted origin; redirect hops elsewhere go without it.
    Required,
    /// Never attach it (capability URLs, discovery, the token endpoint).
    Never,
}

/// Which HTTP client sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientKind {
    /// The API client: decompresses gzip answers itself.
    Api,
    /// The download client: never decompresses, so byte offsets are the server's (Range).
    Download,
}

/// One logical request.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// What the request is, in the tracing contract's words (`"kick-off"`, `"status poll"`,
    /// `"download"`, `"token request"`, ...).
    pub(crate) what: &'static str,
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
    pub(crate) client: ClientKind,
    pub(crate) redirects: RedirectRule,
    /// The most body bytes read for this kind of call.
    pub(crate) limit: usize,
    /// Secrets of this request (client secret, assertion) scrubbed from what comes back.
    pub(crate) secrets: Vec<crate::secret::SecretString>,
}

impl Call {
    /// A request with the defaults of a FHIR API call: token required, idempotent, 429
    /// retried, redirects followed, [`API_LIMIT`].
    pub(crate) fn new(context: &'static str, method: Method, url: Url) -> Call {
        Call {
            what: context,
            context,
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            token: TokenUse::Required,
            idempotent: true,
            retry_throttled: true,
            client: ClientKind::Api,
            redirects: RedirectRule::Follow,
            limit: API_LIMIT,
            secrets: Vec::new(),
        }
    }

    /// Sets [`Call::what`], the tracing label.
    pub(crate) fn what(mut self, what: &'static str) -> Call {
        self.what = what;
        self
    }

    pub(crate) fn header(mut self, name: HeaderName, value: &'static str) -> Call {
        self.headers.insert(name, HeaderValue::from_static(value));
        self
    }
}

/// A complete HTTP answer, body read (and decoded for error answers).
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

    /// The answer as a (scrubbed) error report.
    pub(crate) fn error_response(&self, inner: &crate::client::Inner) -> crate::ErrorResponse {
        inner.report(self)
    }

    /// The answer's `Expires`.
    pub(crate) fn expires(&self) -> Option<SystemTime> {
        expires(&self.headers)
    }
}

/// The `Expires` header as a time: parsed here, once, for every caller.
pub(crate) fn expires(headers: &HeaderMap) -> Option<SystemTime> {
    header_str(headers, "expires").and_then(|e| httpdate::parse_http_date(e).ok())
}
