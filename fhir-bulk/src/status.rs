//! Pure: what one status answer means. No I/O, no sleeping: the job's poll loop acts on the
//! [`StatusDecision`].

use crate::error::{ErrorResponse, Result};
use crate::manifest::Manifest;
use crate::outcome::OperationOutcome;
use crate::retry::is_transient_status;
use std::time::{Duration, SystemTime};

/// What the server said about a running export.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    /// `X-Progress` as sent (free text, e.g. `50% complete`, `in-progress`, `scheduled`).
    pub text: Option<String>,
    /// The percentage in `X-Progress`, when it holds one.
    pub percent: Option<f32>,
    /// The server's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// A partial manifest (STU3+ `allowPartialManifests`): files already downloadable.
    pub partial_manifest: Option<Box<Manifest>>,
    /// An `OperationOutcome` sent with the in-progress answer.
    pub outcome: Option<OperationOutcome>,
}

/// The meaning of one status answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StatusDecision {
    /// Still running: wait and poll again.
    InProgress(Progress),
    /// Done: the manifest.
    Complete(Box<Manifest>),
    /// A transient failure of the status request itself (429, 5xx, transient issue code):
    /// try the same poll again later.
    Retry(ErrorResponse),
    /// The job is gone (deleted, cancelled, expired).
    NotFound(ErrorResponse),
    /// The server refused the token (401/403).
    Unauthorized(ErrorResponse),
    /// The job failed.
    Failed(ErrorResponse),
}

/// Reads a percentage out of `X-Progress`: the first number directly followed by `%`.
pub fn parse_progress_percent(text: &str) -> Option<f32> {
    let percent_at = text.find('%')?;
    let head = &text[..percent_at];
    let start = head
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    let value: f32 = head[start..].parse().ok()?;
    (0.0..=100.0).contains(&value).then_some(value)
}

/// The job status an answer reports: `X-Export-Status` (separate-export-status) when
/// present, else the HTTP status.
fn effective_status(http_status: u16, export_status: Option<&str>) -> u16 {
    export_status
        .and_then(|v| v.trim().get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(http_status)
}

/// The facts of one status answer the decision needs.
#[derive(Debug)]
pub(crate) struct StatusAnswer<'a> {
    pub(crate) http_status: u16,
    pub(crate) export_status: Option<&'a str>,
    pub(crate) x_progress: Option<&'a str>,
    /// `Expires`, parsed by the transport (`transport::expires`, the crate's one parser).
    pub(crate) expires: Option<SystemTime>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: &'a [u8],
    pub(crate) url: &'a str,
}

/// Decides what a status answer means. `report` builds the error report for failures.
pub(crate) fn decide(
    answer: &StatusAnswer<'_>,
    report: impl FnOnce(u16) -> ErrorResponse,
) -> Result<StatusDecision> {
    let status = effective_status(answer.http_status, answer.export_status);
    let decision = match status {
        200 => {
            let mut manifest = Manifest::from_slice(answer.body, answer.url)?;
            manifest.expires = answer.expires;
            StatusDecision::Complete(Box::new(manifest))
        }
        202 => {
            let text = answer.x_progress.map(str::to_owned);
            let body = answer.body;
            let partial_manifest = if Manifest::looks_like_manifest(body) {
                let mut m = Manifest::from_slice(body, answer.url)?;
                m.expires = answer.expires;
                Some(Box::new(m))
            } else {
                None
            };
            StatusDecision::InProgress(Progress {
                percent: text.as_deref().and_then(parse_progress_percent),
                text,
                retry_after: answer.retry_after,
                partial_manifest,
                outcome: OperationOutcome::parse(body),
            })
        }
        404 | 410 => StatusDecision::NotFound(report(status)),
        401 | 403 => StatusDecision::Unauthorized(report(status)),
        _ => {
            let report = report(status);
            if is_transient_status(status, report.outcome.as_ref(), report.body.is_some()) {
                StatusDecision::Retry(report)
            } else {
                StatusDecision::Failed(report)
            }
        }
    };
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RequestIds;

    fn answer<'a>(status: u16, body: &'a [u8]) -> StatusAnswer<'a> {
        StatusAnswer {
            http_status: status,
            export_status: None,
            x_progress: None,
            expires: None,
            retry_after: None,
            body,
            url: "https://ehr.example/jobs/1",
        }
    }

    fn report(status: u16, body: &[u8]) -> ErrorResponse {
        ErrorResponse {
            status,
            url: "https://ehr.example/jobs/1".into(),
            outcome: OperationOutcome::parse(body),
            body: (OperationOutcome::parse(body).is_none() && !body.is_empty())
                .then(|| String::from_utf8_lossy(body).into_owned()),
            request_ids: RequestIds::default(),
            retry_after: None,
        }
    }

    fn run(a: &StatusAnswer<'_>) -> StatusDecision {
        decide(a, |s| report(s, a.body)).unwrap()
    }

    const MANIFEST: &[u8] =
        br#"{"transactionTime":"2024-01-01T00:00:00Z","requiresAccessToken":true,"output":[]}"#;

    #[test]
    fn progress_percentages() {
        assert_eq!(parse_progress_percent("50% complete"), Some(50.0));
        assert_eq!(parse_progress_percent("23.0% complete"), Some(23.0));
        assert_eq!(parse_progress_percent("“Exporting: 7%”"), Some(7.0));
        assert_eq!(parse_progress_percent("in-progress"), None);
        assert_eq!(parse_progress_percent("% done"), None);
        assert_eq!(parse_progress_percent("250%"), None);
    }

    #[test]
    fn in_progress_with_headers() {
        let mut a = answer(202, b"");
        a.x_progress = Some("scheduled");
        a.retry_after = Some(Duration::from_millis(1500));
        match run(&a) {
            StatusDecision::InProgress(p) => {
                assert_eq!(p.text.as_deref(), Some("scheduled"));
                assert_eq!(p.percent, None);
                assert_eq!(p.retry_after, Some(Duration::from_millis(1500)));
                assert!(p.partial_manifest.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_manifest_with_202() {
        let a = answer(202, MANIFEST);
        match run(&a) {
            StatusDecision::InProgress(p) => assert!(p.partial_manifest.is_some()),
            other => panic!("{other:?}"),
        }
        let oo = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational","diagnostics":"queued"}]}"#;
        match run(&answer(202, oo)) {
            StatusDecision::InProgress(p) => {
                assert!(p.partial_manifest.is_none());
                assert_eq!(p.outcome.unwrap().issue[0].code, "informational");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn complete_with_expires() {
        let mut a = answer(200, MANIFEST);
        a.expires = Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777));
        match run(&a) {
            StatusDecision::Complete(m) => {
                assert_eq!(m.transaction_time, "2024-01-01T00:00:00Z");
                assert_eq!(
                    m.expires,
                    Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(decide(&answer(200, b"not json"), |s| report(s, b"")).is_err());
    }

    #[test]
    fn failures() {
        let oo_fatal = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"processing","diagnostics":"boom"}]}"#;
        let oo_transient = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}"#;
        assert!(matches!(
            run(&answer(500, oo_fatal)),
            StatusDecision::Failed(_)
        ));
        assert!(matches!(
            run(&answer(500, oo_transient)),
            StatusDecision::Retry(_)
        ));
        assert!(matches!(run(&answer(503, b"")), StatusDecision::Retry(_)));
        assert!(matches!(run(&answer(429, b"")), StatusDecision::Retry(_)));
        assert!(matches!(
            run(&answer(404, b"")),
            StatusDecision::NotFound(_)
        ));
        assert!(matches!(
            run(&answer(410, b"")),
            StatusDecision::NotFound(_)
        ));
        assert!(matches!(
            run(&answer(401, b"")),
            StatusDecision::Unauthorized(_)
        ));
        assert!(matches!(
            run(&answer(400, b"bad")),
            StatusDecision::Failed(_)
        ));
        assert!(matches!(
            run(&answer(500, b"<html>")),
            StatusDecision::Failed(_)
        ));
    }

    #[test]
    fn separate_export_status_header_wins() {
        let mut a = answer(200, b"");
        a.export_status = Some("202 Accepted");
        assert!(matches!(run(&a), StatusDecision::InProgress(_)));
        let mut a = answer(200, MANIFEST);
        a.export_status = Some("200 OK");
        assert!(matches!(run(&a), StatusDecision::Complete(_)));
        let mut a = answer(200, b"");
        a.export_status = Some("500 Internal Server Error");
        assert!(matches!(run(&a), StatusDecision::Retry(r) if r.status == 500));
        let mut a = answer(200, b"");
        a.export_status = Some("404");
        assert!(matches!(run(&a), StatusDecision::NotFound(r) if r.status == 404));
        let mut a = answer(202, b"");
        a.export_status = Some("garbage");
        assert!(
            matches!(run(&a), StatusDecision::InProgress(_)),
            "falls back to HTTP status"
        );
    }
}
