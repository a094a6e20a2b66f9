//! A fixed bearer token.

use super::{AuthContext, AuthProvider};
use crate::error::Result;
use crate::secret::{AccessToken, require_secret};
use futures::future::BoxFuture;

/// The setting named when a bearer token is empty.
const SETTING: &str = "bearer_token";

/// A bearer token obtained elsewhere, used as it is.
///
/// An empty (or whitespace-only) token is refused with
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming `bearer_token`, the same
/// refusal as an empty client secret: by [`StaticToken::try_new`] at once, and by
/// [`BulkClientBuilder::build`](crate::BulkClientBuilder::build) for a token given to
/// [`StaticToken::new`] or [`bearer_token`](crate::BulkClientBuilder::bearer_token).
///
/// ```
/// use fhir_bulk::auth::StaticToken;
/// let auth = StaticToken::new("eyJ...");
/// assert!(!format!("{auth:?}").contains("eyJ"));
///
/// let err = StaticToken::try_new("").unwrap_err();
/// assert_eq!(err.to_string(), "invalid setting `bearer_token`: the bearer token is empty: \
///     give the value itself (an unset environment variable read with `unwrap_or_default()` \
///     gives an empty one)");
/// ```
#[derive(Debug, Clone)]
pub struct StaticToken {
    token: AccessToken,
}

impl StaticToken {
    /// Uses `token` for every request. An empty token is refused when the client is built.
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken {
            token: AccessToken::new(token),
        }
    }

    /// [`StaticToken::new`], refusing an empty token at once.
    pub fn try_new(token: impl Into<String>) -> Result<Self> {
        let auth = StaticToken::new(token);
        auth.validate()?;
        Ok(auth)
    }
}

impl AuthProvider for StaticToken {
    fn token<'a>(&'a self, _ctx: AuthContext<'a>) -> BoxFuture<'a, Result<AccessToken>> {
        Box::pin(async move {
            self.validate()?;
            Ok(self.token.clone())
        })
    }

    fn validate(&self) -> Result<()> {
        require_secret(SETTING, "bearer token", self.token.as_secret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BulkClient;
    use crate::auth::ClientSecretAuth;
    use crate::error::Error;

    fn refusal<T: std::fmt::Debug>(result: Result<T>) -> (&'static str, String) {
        match result {
            Err(Error::InvalidConfig { setting, message }) => (setting, message),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_token_or_secret_is_refused_the_same_way_everywhere() {
        let base = "http://127.0.0.1:9/fhir";
        for blank in ["", " \t"] {
            let from_builder = refusal(BulkClient::builder(base).bearer_token(blank).build());
            let from_auth = refusal(
                BulkClient::builder(base)
                    .auth(StaticToken::new(blank))
                    .build(),
            );
            let from_try_new = refusal(StaticToken::try_new(blank));
            let secret = refusal(ClientSecretAuth::builder("client", blank).build());
            assert_eq!(from_builder.0, "bearer_token");
            assert_eq!(from_builder, from_auth);
            assert_eq!(from_builder, from_try_new);
            assert_eq!(secret.0, "client_secret");
            // One wording: only what names the value differs.
            assert_eq!(
                from_builder.1.replace("bearer token", "X"),
                secret.1.replace("client secret", "X")
            );
        }
        assert!(StaticToken::try_new("eyJ").is_ok());
        assert!(
            BulkClient::builder(base)
                .bearer_token("eyJ")
                .build()
                .is_ok()
        );
    }

    #[test]
    fn debug_shows_no_token() {
        let auth = StaticToken::new("eyJ-very-secret");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
