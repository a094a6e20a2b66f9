//! Secret values that never appear in `Debug`, `Display`, logs or errors, and are zeroized
//! when dropped.

use crate::error::{Error, Result};
use std::fmt;
use url::Url;
use zeroize::Zeroize;

/// A string that must not be shown: a token, a client secret, a key, a signed assertion.
///
/// `Debug` and `Display` print `[redacted]`; read the value with [`SecretString::expose_secret`].
/// The crate's copy of the value is overwritten with zeros when it is dropped (the `String`
/// you passed in, and copies you make with `expose_secret`, are yours to handle).
///
/// ```
/// use fhir_bulk::SecretString;
/// let s = SecretString::new("hunter2");
/// assert_eq!(format!("{s:?}"), "[redacted]");
/// assert_eq!(s.expose_secret(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
// A `String`, not a `Box<str>`: `into_boxed_str` may reallocate and free the first buffer
// unzeroed; zeroizing a `String` clears its whole capacity.
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The secret itself. Call this only where the value is sent.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty or only whitespace (never a usable secret).
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The one refusal of an empty token or secret, wherever one is given: `setting` names it
/// (`bearer_token`, `client_secret`, ...) and `what` describes it for the message.
pub(crate) fn require_secret(
    setting: &'static str,
    what: &str,
    value: &SecretString,
) -> Result<()> {
    if value.is_blank() {
        return Err(Error::InvalidConfig {
            setting,
            message: format!(
                "the {what} is empty: give the value itself (an unset environment variable \
                 read with `unwrap_or_default()` gives an empty one)"
            ),
        });
    }
    Ok(())
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        SecretString::new(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        SecretString::new(value)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A bearer access token.
///
/// `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(SecretString);

impl AccessToken {
    /// Wraps a token value.
    pub fn new(value: impl Into<String>) -> Self {
        AccessToken(SecretString::new(value))
    }

    /// The token itself, for the `Authorization` header.
    pub fn secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The token as a [`SecretString`].
    pub(crate) fn as_secret(&self) -> &SecretString {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL as it may be shown: without user info, query string or fragment, which can hold
/// credentials (pre-signed object-storage URLs carry their signature in the query).
pub(crate) fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?[redacted]");
    }
    text
}

/// A URL as it may be shown or logged: without user info, query string or fragment, which can
/// hold credentials (a pre-signed file URL carries its signature in the query); a removed
/// query shows as `?[redacted]`. Text that does not parse as a URL is cut at `?` or `#`.
///
/// ```
/// assert_eq!(
///     fhir_bulk::redact_url_str("https://b.s3.example/f.ndjson?X-Amz-Signature=abc"),
///     "https://b.s3.example/f.ndjson?[redacted]"
/// );
/// ```
pub fn redact_url_str(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => redact_url(&parsed),
        Err(_) => match url.split_once(['?', '#']) {
            Some((head, _)) => format!("{head}?[redacted]"),
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_is_redacted() {
        let s = SecretString::new("s3cr3t-value");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose_secret(), "s3cr3t-value");
    }

    #[test]
    fn access_token_is_redacted() {
        let t = AccessToken::new("eyJhbGciOi.token.value");
        assert!(!format!("{t:?}").contains("eyJ"));
        assert!(!format!("{t}").contains("eyJ"));
        assert_eq!(t.secret(), "eyJhbGciOi.token.value");
    }

    #[test]
    fn blank_secrets_are_refused_naming_the_setting() {
        for blank in ["", "   ", "\n"] {
            match require_secret("client_secret", "client secret", &SecretString::new(blank)) {
                Err(Error::InvalidConfig { setting, message }) => {
                    assert_eq!(setting, "client_secret");
                    assert!(
                        message.starts_with("the client secret is empty"),
                        "{message}"
                    );
                }
                other => panic!("expected InvalidConfig, got {other:?}"),
            }
        }
        assert!(require_secret("x", "x", &SecretString::new("v")).is_ok());
    }

    #[test]
    fn zeroize_clears_the_buffer() {
        // What Drop does, observed on a value that stays alive.
        let mut secret = SecretString::new("s3cr3t");
        secret.0.zeroize();
        assert!(secret.expose_secret().is_empty());
    }

    #[test]
    fn presigned_query_is_redacted() {
        let url = Url::parse(
            "https://bucket.s3.amazonaws.com/f.ndjson?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA",
        )
        .unwrap();
        let shown = redact_url(&url);
        assert_eq!(shown, "https://bucket.s3.amazonaws.com/f.ndjson?[redacted]");
        let user = Url::parse("https://user:pw@host.example/a").unwrap();
        assert_eq!(redact_url(&user), "https://host.example/a");
        assert_eq!(redact_url_str("not a url?sig=1"), "not a url?[redacted]");
        assert_eq!(redact_url_str("files/1#sig"), "files/1?[redacted]");
        assert_eq!(redact_url_str("files/1"), "files/1");
    }
}
