//! URLs as they may be shown or logged: without user info, query string or fragment, which
//! can hold credentials (pre-signed file URLs carry their signature in the query).

use url::Url;

/// `url` without user info, query or fragment; `?[redacted]` marks a removed query.
pub(crate) fn url(text: &str) -> String {
    match Url::parse(text) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            let had_query = parsed.query().is_some();
            parsed.set_query(None);
            parsed.set_fragment(None);
            let mut shown = parsed.to_string();
            if had_query {
                shown.push_str("?[redacted]");
            }
            shown
        }
        Err(_) => match text.split_once(['?', '#']) {
            Some((head, _)) => format!("{head}?[redacted]"),
            None => text.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn removes_credentials() {
        assert_eq!(
            super::url("https://b.s3.example/f.ndjson?X-Amz-Signature=abc"),
            "https://b.s3.example/f.ndjson?[redacted]"
        );
        assert_eq!(
            super::url("https://u:p@h.example/a#x"),
            "https://h.example/a"
        );
        assert_eq!(super::url("files/1?sig=1"), "files/1?[redacted]");
        assert_eq!(super::url("https://h.example/a"), "https://h.example/a");
    }
}
