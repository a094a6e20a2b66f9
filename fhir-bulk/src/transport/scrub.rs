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
    // `Authorization: ...` / `"authorization":"..."`: a header or key echo, not the word in a
    // sentence ("authorization failed").
    let out = redact_after(
        &out,
        "authorization",
        true,
        |c| c == '\n' || c == '\r' || c == '"',
        |_| true,
    );
    redact_after(
        &out,
        "bearer ",
        false,
        |c| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | ',' | ';' | '}' | ')'),
        looks_like_credential,
    )
}

/// Whether a word after `Bearer ` looks like a credential rather than prose ("bearer token
/// missing"): long, or of some length with the digits and punctuation tokens are made of.
fn looks_like_credential(value: &str) -> bool {
    let symbols = value
        .chars()
        .any(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | '~' | '+' | '/' | '='));
    value.len() >= 16 || (value.len() >= 8 && symbols)
}

/// Replaces what follows each case-insensitive `marker` (after an optional `:`/`"`/spaces
/// separator, which must hold a `:` or `=` when `keyed`) up to the first character for which
/// `stop` is true, when `secret` says the value is one.
fn redact_after(
    text: &str,
    marker: &str,
    keyed: bool,
    stop: impl Fn(char) -> bool,
    secret: impl Fn(&str) -> bool,
) -> String {
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
        let separated = !keyed || rest[..sep].contains([':', '=']);
        if end > 0 && separated && secret(&value[..end]) {
            out.push_str(REDACTED);
        } else {
            out.push_str(&value[..end]);
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
        // Prose is not a credential.
        assert_eq!(scrub("bearer token missing", []), "bearer token missing");
        assert_eq!(
            scrub("authorization failed for this client", []),
            "authorization failed for this client"
        );
        assert!(!scrub("Bearer abcdefghijklmnopqrstu", []).contains("abcdefghijklmnopqrstu"));
    }
}
