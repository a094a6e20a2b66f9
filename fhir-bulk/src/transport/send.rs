//! The send path: one hop loop per request ([`Inner::send`]), the bounded read of its answer,
//! and the one retry loop ([`Inner::run`]) every request goes through.

use super::body::{ERROR_LIMIT, decode_error_body, read_bounded};
use super::redirect::{Hop, Redirect, next_hop};
use super::report::{report, transport_error};
use super::retry::{RetryContext, ServerWait, is_transient_transport};
use super::{Answer, Call, ClientKind, TokenUse, header_str};
use crate::client::Inner;
use crate::error::{Error, ErrorResponse, Result, TransportErrorKind};
use crate::secret::{AccessToken, redact_url};
use reqwest::Response;
use reqwest::header::{self, HeaderMap, HeaderValue};
use std::time::Duration;
use url::Url;

/// What a caller's judge makes of one answer.
#[derive(Debug)]
pub(crate) enum Verdict<T> {
    /// The result.
    Done(T),
    /// A failure not worth retrying.
    Fail(Error),
    /// A transient failure: retry if the budget allows, after at least `server`'s wait.
    Retry {
        error: Error,
        server: Option<ServerWait>,
    },
}

/// A failed attempt before any answer could be judged.
struct Failure {
    error: Error,
    transient: bool,
}

/// How many recently sent access tokens are remembered for scrubbing.
const REMEMBERED_TOKENS: usize = 4;

/// The longest `cause` field of a retry event.
const CAUSE_CHARS: usize = 300;

fn short(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl Inner {
    /// The wait a server asked for in these headers: `x-ms-retry-after-ms` (Azure), else
    /// `Retry-After` (delta-seconds, or milliseconds per the poll policy, or an HTTP-date).
    pub(crate) fn server_wait(&self, headers: &HeaderMap) -> Option<ServerWait> {
        // The server profile says which header carries the wait (Microsoft's
        // `x-ms-retry-after-ms` before `Retry-After`).
        self.profile
            .retry_after(
                |name| header_str(headers, name),
                self.poll.retry_after_unit,
                (self.clock)(),
            )
            .map(|hint| ServerWait {
                delay: hint.delay,
                source: hint.source,
            })
    }

    /// The parsed wait of an answer's `Retry-After` (or `x-ms-retry-after-ms`).
    pub(crate) fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        self.server_wait(headers).map(|w| w.delay)
    }

    /// Whether `url` may receive the token: the FHIR base's origin, or a trusted one.
    pub(crate) fn is_trusted(&self, url: &Url) -> bool {
        let origin = url.origin();
        origin == self.base.origin() || self.trusted_origins.contains(&origin)
    }

    /// A fresh retry context under the client's policy.
    pub(crate) fn retry_context(&self) -> RetryContext {
        RetryContext::new(&self.retry, self.random.clone())
    }

    fn remember_token(&self, token: &AccessToken) {
        let mut tokens = self.sent_tokens.lock().unwrap_or_else(|e| e.into_inner());
        if !tokens.iter().any(|t| t.secret() == token.secret()) {
            if tokens.len() >= REMEMBERED_TOKENS {
                tokens.remove(0);
            }
            tokens.push(token.clone());
        }
    }

    /// The secrets to scrub from server text: the tokens this client sent lately, and the
    /// call's own.
    pub(crate) fn secrets(&self, call_secrets: &[crate::secret::SecretString]) -> Vec<String> {
        let tokens = self.sent_tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .iter()
            .map(|t| t.secret().to_owned())
            .chain(call_secrets.iter().map(|s| s.expose_secret().to_owned()))
            .collect()
    }

    /// The support-desk report of an answer, scrubbed.
    pub(crate) fn report(&self, answer: &Answer) -> ErrorResponse {
        self.report_with(answer, &[])
    }

    /// [`Inner::report`], also scrubbing a call's own secrets.
    pub(crate) fn report_with(
        &self,
        answer: &Answer,
        call_secrets: &[crate::secret::SecretString],
    ) -> ErrorResponse {
        let secrets = self.secrets(call_secrets);
        report(
            answer.status,
            &answer.url,
            &answer.headers,
            &answer.body,
            self.retry_after(&answer.headers),
            secrets.iter().map(String::as_str),
        )
    }

    async fn token(&self) -> Result<AccessToken> {
        let auth = self.auth.as_ref().ok_or_else(|| Error::Auth {
            message: "no auth provider is configured".into(),
            response: None,
        })?;
        let token = auth.token(self.auth_context()).await?;
        self.remember_token(&token);
        Ok(token)
    }

    /// Sends one request: origin-checked token, redirects followed by hand under the redirect
    /// policy (headers decided per hop), one token refresh on a 401. The answer may be any
    /// status; the body is not read.
    pub(crate) async fn send(&self, call: &Call) -> Result<Response> {
        let wants_token = call.token == TokenUse::Required && self.auth.is_some();
        if wants_token && !self.is_trusted(&call.url) {
            return Err(Error::UntrustedOrigin {
                origin: call.url.origin().ascii_serialization(),
                url: redact_url(&call.url),
            });
        }
        let mut url = call.url.clone();
        let mut method = call.method.clone();
        let mut body = call.body.clone();
        let mut hops = 0;
        let mut refreshed = false;
        loop {
            let trusted = self.is_trusted(&url);
            let token = if wants_token && trusted {
                Some(self.token().await?)
            } else {
                None
            };
            let http = match call.client {
                ClientKind::Api => &self.http,
                ClientKind::Download => &self.download_http,
            };
            let mut request = http
                .request(method.clone(), url.clone())
                .headers(call.headers.clone())
                .header(header::USER_AGENT, self.user_agent.clone());
            if trusted {
                // Extra headers (e.g. Epic-Client-ID) may be credentials too: same rule.
                request = request.headers(self.extra_headers.clone());
            }
            if let Some(token) = &token {
                request = request.header(header::AUTHORIZATION, bearer(token)?);
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| transport_error(call.context, &url, e))?;
            let status = response.status().as_u16();
            let hop = next_hop(
                Redirect {
                    status,
                    method: &method,
                    has_body: body.is_some(),
                    from: &url,
                    location: header_str(response.headers(), "location"),
                    hops,
                    allow_insecure_http: self.allow_insecure_http,
                },
                call.redirects,
                |u| self.is_trusted(u),
            );
            match hop {
                Hop::Final => {}
                Hop::Follow {
                    url: next,
                    method: next_method,
                    keep_body,
                } => {
                    tracing::debug!(
                        target: "fhir_bulk::redirect",
                        from = %redact_url(&url),
                        to = %redact_url(&next),
                        status = u64::from(status),
                        "redirect"
                    );
                    hops += 1;
                    url = next;
                    method = next_method;
                    if !keep_body {
                        body = None;
                    }
                    continue;
                }
                Hop::Refuse(why) => {
                    return Err(Error::Transport {
                        context: call.context,
                        kind: TransportErrorKind::Redirect,
                        url: redact_url(&url),
                        message: why,
                        source: None,
                    });
                }
            }
            if status == 401
                && !refreshed
                && let (Some(token), Some(auth)) = (&token, &self.auth)
            {
                refreshed = true;
                auth.token_rejected(token);
                continue;
            }
            return Ok(response);
        }
    }

    /// Reads a whole answer (bounded by the call's limit); an error answer's body is decoded
    /// per its `Content-Encoding`.
    pub(crate) async fn read(&self, call: &Call, response: Response) -> Result<Answer> {
        let status = response.status().as_u16();
        let url = response.url().clone();
        let headers = response.headers().clone();
        let limit = if status >= 400 {
            call.limit.min(ERROR_LIMIT * 8)
        } else {
            call.limit
        };
        let mut body = read_bounded(response, limit, call.context, &url).await?;
        if status >= 300 {
            body = decode_error_body(&headers, body, ERROR_LIMIT);
        }
        Ok(Answer {
            status,
            url,
            headers,
            body,
        })
    }

    async fn attempt(&self, call: &Call) -> std::result::Result<Answer, Failure> {
        let answer = match self.send(call).await {
            Ok(response) => self.read(call, response).await,
            Err(e) => Err(e),
        };
        answer.map_err(|error| {
            let transient = match &error {
                Error::Transport { kind, .. } => is_transient_transport(*kind, call.idempotent),
                _ => false,
            };
            Failure { error, transient }
        })
    }

    /// The standard judgement of an answer: success, or any answer that is not transient, is
    /// the caller's to read; a transient one is retried.
    pub(crate) fn judge(&self, call: &Call, answer: Answer) -> Verdict<Answer> {
        if answer.status < 400 || (answer.status == 429 && !call.retry_throttled) {
            return Verdict::Done(answer);
        }
        let report = self.report_with(&answer, &call.secrets);
        if report.is_transient() {
            Verdict::Retry {
                server: self.server_wait(&answer.headers),
                error: Error::UnexpectedResponse {
                    context: call.context,
                    response: Box::new(report),
                },
            }
        } else {
            Verdict::Done(answer)
        }
    }

    /// After a transient failure of `what` at `url`: waits as the retry context says (and
    /// says so in a `fhir_bulk::retry` event), or returns the error that ends the retries.
    pub(crate) async fn retry_wait(
        &self,
        what: &'static str,
        url: &Url,
        ctx: &mut RetryContext,
        server: Option<ServerWait>,
        error: Error,
    ) -> Result<()> {
        let Some(wait) = ctx.next_wait(server) else {
            return Err(ctx.give_up(error));
        };
        if let Some(server) = server
            && server.delay >= wait.min(self.retry.max_retry_after)
            && !server.delay.is_zero()
        {
            tracing::info!(
                target: "fhir_bulk::retry_after",
                delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                source = server.source,
                "server wait honoured"
            );
        }
        tracing::warn!(
            target: "fhir_bulk::retry",
            what,
            attempt = u64::from(ctx.attempts()),
            max_attempts = u64::from(ctx.max_attempts()),
            delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            cause = %short(&error.to_string(), CAUSE_CHARS),
            url = %redact_url(url),
            "retrying"
        );
        (self.sleep)(wait).await;
        Ok(())
    }

    /// The one retry loop: builds the call (again for every attempt), sends it, reads the
    /// answer, lets `judge` decide, and retries transient failures under `ctx`.
    pub(crate) async fn run<T>(
        &self,
        ctx: &mut RetryContext,
        mut build: impl FnMut() -> Result<Call> + Send,
        mut judge: impl FnMut(&Call, Answer) -> Verdict<T> + Send,
    ) -> Result<T> {
        loop {
            let call = build()?;
            let verdict = match self.attempt(&call).await {
                Ok(answer) => judge(&call, answer),
                Err(f) if f.transient => Verdict::Retry {
                    error: f.error,
                    server: None,
                },
                Err(f) => Verdict::Fail(f.error),
            };
            match verdict {
                Verdict::Done(t) => return Ok(t),
                Verdict::Fail(e) => return Err(e),
                Verdict::Retry { error, server } => {
                    self.retry_wait(call.what, &call.url, ctx, server, error)
                        .await?;
                }
            }
        }
    }

    /// Sends a request and reads its answer, retrying transient failures under the retry
    /// policy. Returns the first answer that is not transient, whatever its status.
    pub(crate) async fn request(&self, call: &Call) -> Result<Answer> {
        let mut ctx = self.retry_context();
        self.request_in(call, &mut ctx).await
    }

    /// [`Inner::request`] within an existing retry budget.
    pub(crate) async fn request_in(&self, call: &Call, ctx: &mut RetryContext) -> Result<Answer> {
        self.run(
            ctx,
            || Ok(call.clone()),
            |call, answer| self.judge(call, answer),
        )
        .await
    }

    /// The error for an answer no protocol step expected: 401/403 are authorization
    /// failures, anything else an unexpected response.
    pub(crate) fn unexpected(&self, context: &'static str, answer: &Answer) -> Error {
        let response = Box::new(self.report(answer));
        match answer.status {
            401 => Error::Auth {
                message: format!(
                    "the server rejected the access token for {context} (HTTP 401), also after \
                     a fresh token: check the client's registration and scopes"
                ),
                response: Some(response),
            },
            403 => Error::Auth {
                message: format!(
                    "the server refused {context} (HTTP 403): the token's scopes or the \
                     client's permissions do not cover it"
                ),
                response: Some(response),
            },
            _ => Error::UnexpectedResponse { context, response },
        }
    }
}

/// The `Authorization: Bearer` value; a token the HTTP layer cannot carry is a permanent
/// error (retrying cannot fix it).
fn bearer(token: &AccessToken) -> Result<HeaderValue> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.secret())).map_err(|_| Error::Auth {
            message: "the access token holds characters an HTTP header cannot carry (a line \
                      break or another control character): check where the token comes from"
                .into(),
            response: None,
        })?;
    value.set_sensitive(true);
    Ok(value)
}
