//! OAuth 2.0 `client_credentials` with a client secret (`client_secret_basic` or
//! `client_secret_post`).

use super::oauth::{OAuthCore, OAuthSettings};
use super::token_endpoint::Credentials;
use super::{AuthContext, AuthProvider};
use crate::error::{Error, Result};
use crate::secret::{AccessToken, SecretString, require_secret};
use futures::future::BoxFuture;
use std::fmt;
use std::time::Duration;

/// How the client secret is sent to the token endpoint.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientSecretMethod {
    /// In an `Authorization: Basic` header (`client_secret_basic`, the OAuth default).
    #[default]
    Basic,
    /// As `client_id` and `client_secret` form fields (`client_secret_post`).
    Post,
}

impl ClientSecretMethod {
    /// The OAuth name, e.g. `"client_secret_basic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientSecretMethod::Basic => "client_secret_basic",
            ClientSecretMethod::Post => "client_secret_post",
        }
    }
}

/// Tokens from an OAuth 2.0 `client_credentials` grant authenticated with a client secret,
/// for servers that register backend clients with a secret rather than a key (SMART's
/// `client-confidential-symmetric`, BCDA-style APIs).
///
/// Token endpoint discovery, the default scope, caching, single-flight refresh and the
/// handling of rejected tokens are as for [`SmartBackendAuth`](super::SmartBackendAuth).
///
/// An empty (or whitespace-only) secret is refused by [`ClientSecretAuthBuilder::build`] with
/// [`Error::InvalidConfig`] naming `client_secret`, the same refusal as an empty bearer token.
///
/// ```no_run
/// use fhir_bulk::auth::{ClientSecretAuth, ClientSecretMethod};
/// # fn run() -> fhir_bulk::Result<()> {
/// // An unset variable gives "", which `build` refuses, naming `client_secret`.
/// let secret = std::env::var("CLIENT_SECRET").unwrap_or_default();
/// let auth = ClientSecretAuth::builder("my-client-id", secret)
///     .method(ClientSecretMethod::Post)
///     .token_url("https://auth.example/oauth2/token")
///     .scope("system/*.read")
///     .build()?;
/// # Ok(()) }
/// ```
pub struct ClientSecretAuth {
    client_id: String,
    secret: SecretString,
    method: ClientSecretMethod,
    core: OAuthCore,
}

impl fmt::Debug for ClientSecretAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretAuth")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.secret)
            .field("method", &self.method)
            .field("oauth", &self.core)
            .finish()
    }
}

impl ClientSecretAuth {
    /// Starts building a provider for `client_id` with its `client_secret`.
    pub fn builder(
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
    ) -> ClientSecretAuthBuilder {
        ClientSecretAuthBuilder {
            client_id: client_id.into(),
            secret: client_secret.into(),
            method: ClientSecretMethod::default(),
            oauth: OAuthSettings::default(),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How the secret is sent.
    pub fn method(&self) -> ClientSecretMethod {
        self.method
    }
}

impl AuthProvider for ClientSecretAuth {
    fn token<'a>(&'a self, ctx: AuthContext<'a>) -> BoxFuture<'a, Result<AccessToken>> {
        Box::pin(self.core.token(
            ctx,
            Credentials::Secret {
                client_id: &self.client_id,
                secret: &self.secret,
                method: self.method,
            },
        ))
    }

    fn token_rejected(&self, token: &AccessToken) {
        self.core.token_rejected(token);
    }
}

/// Builds a [`ClientSecretAuth`]. Setters never fail; [`ClientSecretAuthBuilder::build`]
/// reports the first invalid setting by name. `Debug` shows no secret.
#[must_use]
#[derive(Debug, Clone)]
pub struct ClientSecretAuthBuilder {
    client_id: String,
    secret: SecretString,
    method: ClientSecretMethod,
    oauth: OAuthSettings,
}

impl ClientSecretAuthBuilder {
    /// How the secret is sent (default [`ClientSecretMethod::Basic`]).
    pub fn method(mut self, method: ClientSecretMethod) -> Self {
        self.method = method;
        self
    }

    /// The scopes to request, space-separated. Default: `system/*.rs` or `system/*.read` as
    /// the server advertises.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.oauth.scope = Some(scope.into());
        self
    }

    /// [`ClientSecretAuthBuilder::scope`] from a list.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.oauth.scope = Some(OAuthSettings::join_scopes(scopes));
        self
    }

    /// The token endpoint. Default: discovered from the FHIR server.
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.oauth.token_url = Some(url.into());
        self
    }

    /// How long before a token expires a new one is fetched (default 60 s; never more than
    /// half the token's lifetime).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.oauth.refresh_margin = margin;
        self
    }

    /// Checks every setting.
    pub fn build(self) -> Result<ClientSecretAuth> {
        let client_id = self.client_id.trim().to_owned();
        if client_id.is_empty() {
            return Err(Error::InvalidConfig {
                setting: "client_id",
                message: "the client id is empty: give the id the server registered".into(),
            });
        }
        require_secret("client_secret", "client secret", &self.secret)?;
        Ok(ClientSecretAuth {
            client_id,
            secret: self.secret,
            method: self.method,
            core: OAuthCore::new(self.oauth)?,
        })
    }
}
