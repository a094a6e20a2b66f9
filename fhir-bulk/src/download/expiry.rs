//! Pure: is a failed file request an expired URL?

use crate::outcome::OperationOutcome;
use std::time::SystemTime;

/// Whether an answer to a file request means the URL has expired: a 401, 403, 404 or 410 after
/// the manifest's `Expires`, a 410 at any time, or an answer whose body says so (an
/// OperationOutcome with code `expired`, or text such as S3's "Request has expired").
pub(crate) fn is_expired(
    status: u16,
    expires: Option<SystemTime>,
    now: SystemTime,
    outcome: Option<&OperationOutcome>,
    body: Option<&str>,
) -> bool {
    if !matches!(status, 401 | 403 | 404 | 410) {
        return false;
    }
    let past_expiry = expires.is_some_and(|e| now >= e);
    let says_expired = outcome.is_some_and(|oo| {
        oo.issue.iter().any(|i| {
            i.code == "expired"
                || i.diagnostics
                    .as_deref()
                    .is_some_and(|d| d.to_ascii_lowercase().contains("expired"))
        })
    }) || body.is_some_and(|b| b.to_ascii_lowercase().contains("expired"));
    status == 410 || past_expiry || says_expired
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_rules() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let before = Some(now - Duration::from_secs(1));
        let after = Some(now + Duration::from_secs(1));
        assert!(is_expired(403, before, now, None, None));
        assert!(is_expired(404, before, now, None, None));
        assert!(!is_expired(403, after, now, None, None));
        assert!(!is_expired(404, None, now, None, None));
        assert!(is_expired(410, None, now, None, None));
        assert!(!is_expired(500, before, now, None, None));
        assert!(is_expired(
            403,
            None,
            now,
            None,
            Some("<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
        ));
        let oo = OperationOutcome::parse(
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"expired"}]}"#,
        );
        assert!(is_expired(401, None, now, oo.as_ref(), None));
    }
}
