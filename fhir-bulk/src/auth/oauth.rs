//! What the two OAuth providers share: the token endpoint (given or discovered once), the
//! scope (given or chosen from discovery), and the token cache.

use super::AuthContext;
use super::cache::{FreshToken, TokenCache};
use super::discovery::{Discovery, discover};
use super::token_endpoint::{Credentials, Endpoint, request_token};
use crate::error::{Error, Result};
use crate::secret::{AccessToken, redact_url, redact_url_str};
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Settings common to the OAuth provider builders.
#[derive(Clone)]
pub(super) struct OAuthSettings {
    pub(super) token_url: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) refresh_margin: Duration,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            token_url: None,
            scope: None,
            refresh_margin: super::cache::DEFAULT_MARGIN,
        }
    }
}

impl fmt::Debug for OAuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthSettings")
            .field("token_url", &self.token_url.as_deref().map(redact_url_str))
            .field("scope", &self.scope)
            .field("refresh_margin", &self.refresh_margin)
            .finish()
    }
}

impl OAuthSettings {
    /// Space-joins scopes (for the `scopes` setters).
    pub(super) fn join_scopes<I, S>(scopes: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        scopes
            .into_iter()
            .map(|s| s.as_ref().trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The token endpoint, scope and cache of one OAuth client.
pub(super) struct OAuthCore {
    token_url: Option<Endpoint>,
    scope: Option<String>,
    discovery: OnceCell<Discovery>,
    cache: TokenCache,
}

impl fmt::Debug for OAuthCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let discovered = self.discovery.get().and_then(|d| d.token_endpoint.as_ref());
        f.debug_struct("OAuthCore")
            .field(
                "token_url",
                &self
                    .token_url
                    .as_ref()
                    .or(discovered)
                    .map(|e| redact_url(&e.url)),
            )
            .field("scope", &self.scope)
            .field("discovered", &self.discovery.initialized())
            .finish_non_exhaustive()
    }
}

impl OAuthCore {
    /// Checks the settings (`token_url`, `scope`).
    pub(super) fn new(settings: OAuthSettings) -> Result<OAuthCore> {
        let invalid =
            |setting: &'static str, message: String| Error::InvalidConfig { setting, message };
        let token_url = match settings.token_url {
            None => None,
            Some(text) => {
                let endpoint = Endpoint::resolve(&text, None)
                    .filter(|e| matches!(e.url.scheme(), "http" | "https") && e.url.has_host())
                    .ok_or_else(|| {
                        invalid(
                            "token_url",
                            format!(
                                "`{}` is not an absolute http(s) URL",
                                redact_url_str(text.trim())
                            ),
                        )
                    })?;
                Some(endpoint)
            }
        };
        let scope = match settings.scope {
            None => None,
            Some(scope) if scope.trim().is_empty() => {
                return Err(invalid(
                    "scope",
                    "the scope is empty: leave it unset to request `system/*.read` or \
                     `system/*.rs` as the server advertises"
                        .into(),
                ));
            }
            Some(scope) => Some(scope.split_whitespace().collect::<Vec<_>>().join(" ")),
        };
        Ok(OAuthCore {
            token_url,
            scope,
            discovery: OnceCell::new(),
            cache: TokenCache::new(settings.refresh_margin),
        })
    }

    /// A valid token: cached, or fetched once for all concurrent callers.
    pub(super) async fn token(
        &self,
        ctx: AuthContext<'_>,
        credentials: Credentials<'_>,
    ) -> Result<AccessToken> {
        self.cache.get(|| self.fetch(ctx, credentials)).await
    }

    /// Forgets `token` if it is the cached one.
    pub(super) fn token_rejected(&self, token: &AccessToken) {
        self.cache.reject(token);
    }

    async fn fetch(
        &self,
        ctx: AuthContext<'_>,
        credentials: Credentials<'_>,
    ) -> Result<FreshToken> {
        let discovery = if self.token_url.is_none() || self.scope.is_none() {
            Some(self.discovery(ctx).await?)
        } else {
            self.discovery.get()
        };
        let endpoint = match (&self.token_url, discovery) {
            (Some(endpoint), _) => endpoint,
            (
                None,
                Some(Discovery {
                    token_endpoint: Some(endpoint),
                    ..
                }),
            ) => endpoint,
            (None, _) => {
                return Err(Error::Auth {
                    message: "no token endpoint was configured or discovered; give it with \
                              `token_url`"
                        .into(),
                    response: None,
                });
            }
        };
        endpoint.check_transport(ctx.allow_insecure_http)?;
        let scope = match (&self.scope, discovery) {
            (Some(scope), _) => scope.as_str(),
            (None, Some(discovery)) => discovery.default_scope(),
            (None, None) => Discovery::default().default_scope(),
        };
        request_token(ctx.inner, endpoint, scope, credentials, discovery).await
    }

    /// Discovery, done once. Without a configured token URL it must find the token
    /// endpoint (a failure is not cached, so the next token request tries again); with one,
    /// it only informs the scope choice, and a failure counts as "nothing advertised".
    async fn discovery(&self, ctx: AuthContext<'_>) -> Result<&Discovery> {
        let need_token = self.token_url.is_none();
        self.discovery
            .get_or_try_init(|| async {
                match discover(ctx.inner, ctx.fhir_base, need_token).await {
                    Ok(found) => Ok(found),
                    Err(error) if need_token => Err(error),
                    Err(_) => Ok(Discovery::default()),
                }
            })
            .await
    }
}
