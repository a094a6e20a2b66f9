//! A provider built from an async closure, for callers with their own token source.

use super::{AuthContext, AuthProvider};
use crate::error::Result;
use crate::secret::AccessToken;
use futures::future::BoxFuture;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

type TokenCallback = Arc<dyn Fn() -> BoxFuture<'static, Result<AccessToken>> + Send + Sync>;
type RejectedCallback = Arc<dyn Fn(&AccessToken) + Send + Sync>;

/// Tokens from your own async function: a vault, a sidecar, another OAuth library.
///
/// The function is called before every request that needs a token, so it should cache.
/// [`TokenFn::on_rejected`] tells it when the server rejected a token (HTTP 401); the client
/// then calls the function again and retries once.
///
/// ```
/// use fhir_bulk::AccessToken;
/// use fhir_bulk::auth::TokenFn;
/// let auth = TokenFn::new(|| async { Ok(AccessToken::new("token-from-my-vault")) })
///     .on_rejected(|_token| eprintln!("token rejected; my source will issue a new one"));
/// assert!(!format!("{auth:?}").contains("vault"));
/// ```
#[derive(Clone)]
pub struct TokenFn {
    token: TokenCallback,
    rejected: Option<RejectedCallback>,
}

impl fmt::Debug for TokenFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFn")
            .field("on_rejected", &self.rejected.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenFn {
    /// Uses `token` to obtain every token.
    pub fn new<F, Fut>(token: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AccessToken>> + Send + 'static,
    {
        TokenFn {
            token: Arc::new(move || Box::pin(token())),
            rejected: None,
        }
    }

    /// Calls `rejected` with each token the server rejected (HTTP 401).
    pub fn on_rejected<R>(mut self, rejected: R) -> Self
    where
        R: Fn(&AccessToken) + Send + Sync + 'static,
    {
        self.rejected = Some(Arc::new(rejected));
        self
    }
}

impl AuthProvider for TokenFn {
    fn token<'a>(&'a self, _ctx: AuthContext<'a>) -> BoxFuture<'a, Result<AccessToken>> {
        (self.token)()
    }

    fn token_rejected(&self, token: &AccessToken) {
        if let Some(rejected) = &self.rejected {
            rejected(token);
        }
    }
}
