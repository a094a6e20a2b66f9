//! A fixed bearer token.

use super::{AuthContext, AuthProvider};
use crate::error::Result;
use crate::secret::AccessToken;
use futures::future::BoxFuture;

/// A bearer token obtained elsewhere, used as it is.
///
/// ```
/// use fhir_bulk::auth::StaticToken;
/// let auth = StaticToken::new("eyJ...");
/// assert!(!format!("{auth:?}").contains("eyJ"));
/// ```
#[derive(Debug, Clone)]
pub struct StaticToken {
    token: AccessToken,
}

impl StaticToken {
    /// Uses `token` for every request.
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken {
            token: AccessToken::new(token),
        }
    }
}

impl AuthProvider for StaticToken {
    fn token<'a>(&'a self, _ctx: AuthContext<'a>) -> BoxFuture<'a, Result<AccessToken>> {
        Box::pin(async move { Ok(self.token.clone()) })
    }
}
