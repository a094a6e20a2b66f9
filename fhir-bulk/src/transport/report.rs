//! The one error-report builder: what a support desk needs from an answer (status, URL
//! without its query, the OperationOutcome or the start of another body, request ids,
//! Retry-After), with secrets scrubbed before anything is parsed or kept; and transport
//! failures turned into [`Error::Transport`] with their cause kept in `source()`.

use super::scrub::scrub;
use crate::error::{Error, ErrorResponse, RequestIds, TransportErrorKind};
use crate::outcome::OperationOutcome;
use crate::secret::redact_url;
use reqwest::header::HeaderMap;
use std::time::Duration;
use url::Url;

/// How much of a non-FHIR error body is kept for the error message.
pub(crate) const BODY_EXCERPT: usize = 2048;

/// A header's value as text, trimmed.
pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The request-id headers vendors ask for.
pub(crate) fn request_ids(headers: &HeaderMap) -> RequestIds {
    let scrubbed = |name| header_str(headers, name).map(|v| scrub(v, []));
    RequestIds {
        x_request_id: scrubbed("x-request-id"),
        opc_request_id: scrubbed("opc-request-id"),
    }
}

/// The support-desk report of an answer. `body` is the decoded body; `secrets` are scrubbed
/// out of it (with anything bearer-looking) before it is parsed or kept.
pub(crate) fn report<'s>(
    status: u16,
    url: &Url,
    headers: &HeaderMap,
    body: &[u8],
    retry_after: Option<Duration>,
    secrets: impl IntoIterator<Item = &'s str> + Clone,
) -> ErrorResponse {
    let text = String::from_utf8_lossy(body);
    let clean = scrub(&text, secrets);
    let outcome = OperationOutcome::parse(clean.as_bytes());
    let body = if outcome.is_none() && !clean.trim().is_empty() {
        let text = clean.trim();
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

/// Turns a reqwest failure into the public error, without the URL's query string (reqwest's
/// own message would print it, and a pre-signed URL's query is a credential). The cause stays
/// in `source()`.
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
        message: scrub(&message, []),
        source: Some(Box::new(err)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_scrub_before_parsing() {
        let url = Url::parse("https://ehr.example/files/1?sig=abc").unwrap();
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden","diagnostics":"token tok-SECRET-1 rejected; header Authorization: Bearer tok-SECRET-1"}]}"#;
        let r = report(403, &url, &HeaderMap::new(), body, None, ["tok-SECRET-1"]);
        let text = r.to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("sig=abc"), "{text}");
        assert!(r.outcome.is_some());
        let html = report(
            500,
            &url,
            &HeaderMap::new(),
            b"<p>Bearer zzz999zzz999</p>",
            None,
            [],
        );
        assert!(!html.to_string().contains("zzz999zzz999"), "{html}");
    }
}
