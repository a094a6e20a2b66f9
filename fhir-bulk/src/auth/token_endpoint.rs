//! The token request (`grant_type=client_credentials`), its bounded retries, and OAuth 2.0
//! error answers turned into messages that say what to check.

use super::cache::FreshToken;
use super::client_secret::ClientSecretMethod;
use super::discovery::Discovery;
use super::jwt::{ASSERTION_LIFETIME, AssertionSigner};
use crate::client::Inner;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::secret::{AccessToken, SecretString, redact_url};
use crate::transport::origin::check_secure;
use crate::transport::scrub::scrub;
use crate::transport::{Answer, Call, RedirectRule, RetryContext, TOKEN_LIMIT, TokenUse, Verdict};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{self, HeaderValue};
use serde_json::{Map, Value};
use std::time::Duration;
use url::Url;

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub(super) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How many times a transient failure (bare 5xx, empty 400, 429, lost connection) is retried.
pub(super) const MAX_RETRIES: u32 = 3;
/// The first wait before a retry; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// A token endpoint: the URL requests go to, and the text used as the assertion's `aud`
/// (the endpoint exactly as configured or advertised).
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) url: Url,
    pub(super) audience: String,
}

impl Endpoint {
    /// An endpoint from its text: absolute as given, or relative to `base`.
    pub(super) fn resolve(text: &str, base: Option<&Url>) -> Option<Endpoint> {
        let text = text.trim();
        match Url::parse(text) {
            Ok(url) => Some(Endpoint {
                url,
                audience: text.to_owned(),
            }),
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                let url = base?.join(text).ok()?;
                Some(Endpoint {
                    audience: url.to_string(),
                    url,
                })
            }
            Err(_) => None,
        }
    }

    /// Requires https, except to this machine or when the client allows plain http.
    pub(super) fn check_transport(&self, allow_insecure_http: bool) -> Result<()> {
        check_secure(&self.url, allow_insecure_http).map_err(|why| Error::Auth {
            message: format!(
                "refusing to send client credentials to the token endpoint {}: {}. Use an \
                 https token endpoint, or `BulkClientBuilder::allow_insecure_http(true)` if \
                 you really mean it",
                redact_url(&self.url),
                why.describe()
            ),
            response: None,
        })
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy)]
pub(super) enum Credentials<'a> {
    /// `private_key_jwt`: a signed client assertion.
    Assertion(&'a AssertionSigner),
    /// A client secret.
    Secret {
        client_id: &'a str,
        secret: &'a SecretString,
        method: ClientSecretMethod,
    },
}

impl Credentials<'_> {
    fn method_name(&self) -> &'static str {
        match self {
            Credentials::Assertion(_) => "private_key_jwt",
            Credentials::Secret { method, .. } => method.as_str(),
        }
    }
}

/// An OAuth 2.0 error answer (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OAuthError {
    pub(super) error: String,
    pub(super) description: Option<String>,
    pub(super) uri: Option<String>,
}

impl OAuthError {
    pub(super) fn parse(body: &[u8]) -> Option<OAuthError> {
        let value: Map<String, Value> = serde_json::from_slice(body).ok()?;
        let text = |field: &str| {
            value
                .get(field)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| shorten(s, 500))
        };
        Some(OAuthError {
            error: text("error")?,
            description: text("error_description"),
            uri: text("error_uri"),
        })
    }

    fn is_transient(&self) -> bool {
        matches!(
            self.error.as_str(),
            "temporarily_unavailable" | "server_error"
        )
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The `Authorization: Basic` value of RFC 6749 §2.3.1 (each part form-urlencoded first).
fn basic_auth(client_id: &str, secret: &SecretString) -> HeaderValue {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose_secret()));
    let mut value = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(pair)))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// The retry policy of the token request: [`MAX_RETRIES`] retries, a short backoff from
/// [`FIRST_BACKOFF`], at most 30 s in all.
fn token_retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(MAX_RETRIES as usize)
        .with_min_delay(FIRST_BACKOFF)
        .with_max_delay(Duration::from_secs(4))
        .with_max_elapsed(Some(Duration::from_secs(30)))
        .with_max_retry_after(Duration::from_secs(10))
}

/// The token request of one attempt (a new client assertion each time).
fn token_call(endpoint: &Endpoint, scope: &str, credentials: Credentials<'_>) -> Result<Call> {
    let mut call = Call::new("the token request", Method::POST, endpoint.url.clone())
        .what("token request")
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    call.token = TokenUse::Never;
    // The body holds the client secret or assertion: a redirect is never followed.
    call.redirects = RedirectRule::Never;
    call.limit = TOKEN_LIMIT;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    form.append_pair("scope", scope);
    match credentials {
        Credentials::Assertion(signer) => {
            let assertion = signer
                .sign(&endpoint.audience)
                .map_err(|message| Error::Auth {
                    message,
                    response: None,
                })?;
            form.append_pair("client_assertion_type", JWT_BEARER);
            form.append_pair("client_assertion", assertion.expose_secret());
            call.secrets.push(assertion);
        }
        Credentials::Secret {
            client_id,
            secret,
            method,
        } => {
            call.secrets.push(secret.clone());
            match method {
                ClientSecretMethod::Basic => {
                    call.headers
                        .insert(header::AUTHORIZATION, basic_auth(client_id, secret));
                }
                ClientSecretMethod::Post => {
                    form.append_pair("client_id", client_id);
                    form.append_pair("client_secret", secret.expose_secret());
                }
            }
        }
    }
    call.body = Some(Bytes::from(form.finish()));
    Ok(call)
}

/// Requests a token through the client's send path, retrying transient failures up to
/// [`MAX_RETRIES`] times with a short backoff. Every attempt carries a new client assertion.
pub(super) async fn request_token(
    inner: &Inner,
    endpoint: &Endpoint,
    scope: &str,
    credentials: Credentials<'_>,
    discovery: Option<&Discovery>,
) -> Result<FreshToken> {
    let mut ctx = RetryContext::new(&token_retry_policy(), inner.random.clone());
    let result = inner
        .run(
            &mut ctx,
            || token_call(endpoint, scope, credentials),
            |call, answer| {
                judge(
                    inner,
                    call,
                    &answer,
                    endpoint,
                    scope,
                    credentials,
                    discovery,
                )
            },
        )
        .await;
    result.map_err(|error| match error {
        Error::RetriesExhausted {
            attempts,
            elapsed,
            last,
        } => match *last {
            Error::Auth { message, response } => Error::Auth {
                message: format!("{message} ({attempts} attempts)"),
                response,
            },
            other => Error::RetriesExhausted {
                attempts,
                elapsed,
                last: Box::new(other),
            },
        },
        other => other,
    })
}

/// What one token answer means.
fn judge(
    inner: &Inner,
    call: &Call,
    answer: &Answer,
    endpoint: &Endpoint,
    scope: &str,
    credentials: Credentials<'_>,
    discovery: Option<&Discovery>,
) -> Verdict<FreshToken> {
    let url = &endpoint.url;
    let status = answer.status;
    if (200..300).contains(&status) {
        return match parse_success(&answer.body, url) {
            Ok(token) => Verdict::Done(token),
            Err(e) => Verdict::Fail(e),
        };
    }
    let secrets = inner.secrets(&call.secrets);
    let scrub = |text: &str| scrub(text, secrets.iter().map(String::as_str));
    let report = Box::new(inner.report_with(answer, &call.secrets));
    if (300..400).contains(&status) {
        return Verdict::Fail(Error::Auth {
            message: format!(
                "the token endpoint {} answered with a redirect (HTTP {status}); client \
                 credentials are not sent on: give the final token endpoint URL with `token_url`",
                redact_url(url)
            ),
            response: Some(report),
        });
    }
    let server = inner.server_wait(&answer.headers);
    match OAuthError::parse(scrub(&String::from_utf8_lossy(&answer.body)).as_bytes()) {
        Some(oauth) => {
            let error = Error::Auth {
                message: oauth_message(&oauth, status, endpoint, scope, credentials, discovery),
                response: Some(report),
            };
            if oauth.is_transient() {
                Verdict::Retry { error, server }
            } else {
                Verdict::Fail(error)
            }
        }
        None => {
            let bare = answer.body.iter().all(u8::is_ascii_whitespace);
            let error = Error::Auth {
                message: format!(
                    "the token endpoint {} answered HTTP {status}{} instead of a token or an \
                     OAuth error",
                    redact_url(url),
                    if bare { " with an empty body" } else { "" }
                ),
                response: Some(report),
            };
            if status >= 500 || status == 429 || (status == 400 && bare) {
                Verdict::Retry { error, server }
            } else {
                Verdict::Fail(error)
            }
        }
    }
}

/// The token from a 2xx answer.
pub(super) fn parse_success(body: &[u8], url: &Url) -> Result<FreshToken> {
    let fail = |what: String| Error::Auth {
        message: format!(
            "the token endpoint {} answered with success but {what}",
            redact_url(url)
        ),
        response: None,
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(fail("its body is not a JSON object".into()));
    };
    let token = match fields.get("access_token") {
        Some(Value::String(token)) if !token.trim().is_empty() => AccessToken::new(token.trim()),
        _ => return Err(fail("without an `access_token`".into())),
    };
    if HeaderValue::from_str(token.secret()).is_err() {
        return Err(fail(
            "with an `access_token` that holds characters an HTTP header cannot carry (a \
             line break or another control character); it cannot be sent"
                .into(),
        ));
    }
    match fields.get("token_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind.trim().eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(kind)) => {
            return Err(fail(format!(
                "with token_type `{}`, not `bearer`: this client sends bearer tokens only",
                shorten(kind, 40)
            )));
        }
        Some(_) => return Err(fail("with a `token_type` that is not a string".into())),
    }
    let lifetime = match fields.get("expires_in") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|secs| secs.is_finite() && *secs >= 1.0)
    .map(|secs| Duration::from_secs_f64(secs.min(1e9)));
    Ok(FreshToken { token, lifetime })
}

/// A message for an OAuth error that says what to check.
fn oauth_message(
    oauth: &OAuthError,
    status: u16,
    endpoint: &Endpoint,
    scope: &str,
    credentials: Credentials<'_>,
    discovery: Option<&Discovery>,
) -> String {
    let mut message = format!(
        "the token endpoint {} refused the token request (HTTP {status}, `{}`",
        redact_url(&endpoint.url),
        oauth.error
    );
    if let Some(description) = &oauth.description {
        message.push_str(": ");
        message.push_str(description);
    }
    message.push(')');
    if let Some(uri) = &oauth.uri {
        message.push_str(&format!(" (see {uri})"));
    }
    message.push_str(". ");
    let advertised_methods = discovery
        .and_then(|d| d.auth_methods.as_ref())
        .filter(|m| !m.is_empty())
        .map(|m| format!(" The server advertises {}.", m.join(", ")))
        .unwrap_or_default();
    let advice = match (oauth.error.as_str(), credentials) {
        ("invalid_client", Credentials::Assertion(signer)) => format!(
            "The server did not accept the client or its signed assertion. Check that client \
             id `{}` is the one the server registered; that the server has the public key with \
             kid `{}` (in the JWKS registered for this client, or served at the client's JWKS \
             URL, which the server must be able to reach); that it accepts {} signatures; and \
             that this machine's clock is right (the assertion is valid for {} s from when it \
             is made).",
            signer.client_id,
            signer.kid,
            signer.algorithm,
            ASSERTION_LIFETIME.as_secs()
        ),
        ("invalid_client", Credentials::Secret { client_id, .. }) => format!(
            "Check client id `{client_id}` and the client secret, and whether the server \
             expects the secret in the Authorization header (client_secret_basic) or in the \
             form (client_secret_post): this request used {}.{advertised_methods}",
            credentials.method_name()
        ),
        ("invalid_scope", _) => {
            let supported = discovery
                .and_then(|d| d.scopes_supported.as_ref())
                .filter(|s| !s.is_empty())
                .map(|s| format!(" The server advertises scopes_supported: {}.", s.join(" ")))
                .unwrap_or_default();
            format!(
                "The server does not grant scope `{scope}` to this client.{supported} Request \
                 only scopes the client is registered for, with `scope(...)`: servers that know \
                 only SMART v1 scopes want e.g. `system/*.read`, v2 servers `system/*.rs`."
            )
        }
        ("invalid_grant", Credentials::Assertion(_)) => format!(
            "The server refused the grant. For a client assertion this usually means the \
             assertion itself was rejected: expired (check this machine's clock), a reused \
             `jti`, or an `aud` other than the server's own token URL (it was `{}`).",
            endpoint.audience
        ),
        ("invalid_grant", _) => "The server refused the client_credentials grant: check that \
                                 the client is registered for it."
            .to_owned(),
        ("unauthorized_client", _) => "This client may not use the client_credentials grant: \
                                       register it as a backend-services (system) client."
            .to_owned(),
        ("unsupported_grant_type", _) => format!(
            "The endpoint does not support grant_type=client_credentials: check that {} is the \
             token endpoint and that the server supports SMART Backend Services.",
            redact_url(&endpoint.url)
        ),
        ("invalid_request", _) => format!(
            "The server found the request malformed: check the token endpoint URL and the \
             client authentication method (this request used {}).{advertised_methods}",
            credentials.method_name()
        ),
        _ => "See the server's documentation for this error.".to_owned(),
    };
    message.push_str(&advice);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("https://auth.example/token?x=1").unwrap()
    }

    #[test]
    fn success_answers() {
        let t = parse_success(
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":"120"}"#,
            &url(),
        )
        .unwrap();
        assert_eq!(t.token.secret(), "abc");
        assert_eq!(t.lifetime, Some(Duration::from_secs(120)));
        let t = parse_success(br#"{"access_token":"abc","expires_in":0}"#, &url()).unwrap();
        assert_eq!(t.lifetime, None);
        let t = parse_success(
            br#"{"access_token":"abc","token_type":"bearer","expires_in":299.5}"#,
            &url(),
        )
        .unwrap();
        assert_eq!(t.lifetime, Some(Duration::from_secs_f64(299.5)));
    }

    #[test]
    fn bad_success_answers_name_the_problem_without_the_token() {
        let err = |body: &[u8]| parse_success(body, &url()).unwrap_err().to_string();
        assert!(err(b"not json").contains("not a JSON object"));
        assert!(err(br#"{"token_type":"bearer"}"#).contains("access_token"));
        assert!(err(br#"{"access_token":"","token_type":"bearer"}"#).contains("access_token"));
        let mac = err(br#"{"access_token":"SECRETTOKEN","token_type":"mac"}"#);
        assert!(
            mac.contains("`mac`") && !mac.contains("SECRETTOKEN"),
            "{mac}"
        );
        assert!(!mac.contains("x=1"), "{mac}");
    }

    #[test]
    fn oauth_errors_parse() {
        let e = OAuthError::parse(
            br#"{"error":"invalid_scope","error_description":"nope","error_uri":"https://e/x"}"#,
        )
        .unwrap();
        assert_eq!(e.error, "invalid_scope");
        assert_eq!(e.description.as_deref(), Some("nope"));
        assert_eq!(e.uri.as_deref(), Some("https://e/x"));
        assert!(OAuthError::parse(b"").is_none());
        assert!(OAuthError::parse(br#"{"error":""}"#).is_none());
        assert!(OAuthError::parse(br#"["error"]"#).is_none());
    }

    #[test]
    fn basic_auth_encodes_each_part() {
        let v = basic_auth("my client", &SecretString::new("p:w&d"));
        assert!(v.is_sensitive());
        let text = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(text).unwrap()).unwrap();
        assert_eq!(decoded, "my+client:p%3Aw%26d");
    }

    #[test]
    fn endpoints_resolve_and_keep_their_text() {
        let base = Url::parse("https://ehr.example/fhir/r4/").unwrap();
        let rel = Endpoint::resolve("../auth/token", Some(&base)).unwrap();
        assert_eq!(rel.url.as_str(), "https://ehr.example/fhir/auth/token");
        assert_eq!(rel.audience, "https://ehr.example/fhir/auth/token");
        let abs = Endpoint::resolve(" https://Auth.example:443/token ", None).unwrap();
        assert_eq!(abs.audience, "https://Auth.example:443/token");
        assert_eq!(abs.url.as_str(), "https://auth.example/token");
        assert!(Endpoint::resolve("token", None).is_none());
        assert!(Endpoint::resolve("http://[::1", None).is_none());
        let insecure = Endpoint::resolve("http://auth.example/token", None).unwrap();
        assert!(insecure.check_transport(false).is_err());
        assert!(insecure.check_transport(true).is_ok());
        let local = Endpoint::resolve("http://127.0.0.1:8080/token", None).unwrap();
        assert!(local.check_transport(false).is_ok());
        let ftp = Endpoint::resolve("ftp://auth.example/token", None).unwrap();
        assert!(ftp.check_transport(true).is_err());
    }
}
