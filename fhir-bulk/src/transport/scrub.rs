//! One scrubber for everything a server sends back before it reaches an error, a log line or
//! a tracing field: known secrets (the access tokens this client sent, client secrets,
//! assertions) and anything that looks like a bearer credential (`Bearer xxx`,
//! `Authorization: ...` echoes of a debug error page).

/// What replaces a secret.
pub(crate) const REDACTED: &str = "[redacted]";

/// Removes `secrets` and bearer-looking text from `text`.
pub(crate) fn scrub<'s>(text: &str, secrets: impl IntoIterator<Item = &'s str>) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        // Very short strings would shred ordinary text; real tokens are long.
        if secret.len() >= 4 && out.contains(secret) {
            out = out.replace(secret, REDACTED);
        }
    }
    let out = redact_after(&out, "authorization", |c| {
        c == '\n' || c == '\r' || c == '"'
    });
    redact_after(&out, "bearer ", |c| {
        c.is_whitespace() || matches!(c, '"' | '\'' | '<' | ',' | ';' | '}' | ')')
    })
}

/// Replaces what follows each case-insensitive `marker` (after an optional `:`/`"`/spaces
/// separator) up to the first character for which `stop` is true.
fn redact_after(text: &str, marker: &str, stop: impl Fn(char) -> bool) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(marker) {
        let start = pos + found + marker.len();
        out.push_str(&text[pos..start]);
        // Skip the separator (`: `, `":"`, spaces) so the value itself is what is replaced.
        let rest = &text[start..];
        let sep = rest
            .char_indices()
            .find(|(_, c)| !matches!(c, ':' | '"' | ' ' | '=' | '\t'))
            .map_or(rest.len(), |(i, _)| i);
        out.push_str(&rest[..sep]);
        let value = &rest[sep..];
        let end = value
            .char_indices()
            .find(|(_, c)| stop(*c))
            .map_or(value.len(), |(i, _)| i);
        if end > 0 {
            out.push_str(REDACTED);
        }
        pos = start + sep + end;
        // An `Authorization: Bearer x` echo is already replaced as a whole.
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_and_bearer_echoes_are_removed() {
        let page = "debug: request headers\nAuthorization: Bearer eyJabc.def\nX: 1\n\
                    token=tok-SECRET-123 seen";
        let clean = scrub(page, ["tok-SECRET-123"]);
        assert!(!clean.contains("eyJabc"), "{clean}");
        assert!(!clean.contains("SECRET"), "{clean}");
        assert!(clean.contains("X: 1"), "{clean}");
        assert!(clean.contains("request headers"), "{clean}");
        let json =
            r#"{"diagnostics":"got bearer abc123xyz, refused","authorization":"Basic Zm9v"}"#;
        let clean = scrub(json, []);
        assert!(!clean.contains("abc123xyz"), "{clean}");
        assert!(!clean.contains("Zm9v"), "{clean}");
        assert!(clean.contains("refused"), "{clean}");
        assert_eq!(scrub("nothing here", ["ab"]), "nothing here");
        assert_eq!(scrub("a bearer", []), "a bearer");
    }
}
