//! Authorization: where bearer tokens come from.
//!
//! The client asks its [`AuthProvider`] for a token before every request that needs one, and
//! tells it when the server rejected a token (HTTP 401), so the provider can fetch a fresh one.
//! The token is attached in one place, which checks the destination's origin first: only the
//! FHIR server's origin and origins trusted with
//! [`BulkClientBuilder::trusted_origin`](crate::BulkClientBuilder::trusted_origin) receive it.
//!
//! Providers:
//! - [`SmartBackendAuth`]: SMART Backend Services (`private_key_jwt` with an RSA or EC key).
//! - [`ClientSecretAuth`]: `client_credentials` with a client secret.
//! - [`GoogleAuth`]: Google OAuth (service-account key, application default credentials,
//!   metadata server, `gcloud auth print-access-token`).
//! - [`TokenFn`]: your own async function.
//! - [`StaticToken`]: a fixed token.

mod cache;
mod client_secret;
mod closure;
mod der;
mod discovery;
mod google;
mod jwt;
#[cfg(all(
    not(feature = "rustls-aws-lc"),
    any(feature = "rustls-ring", feature = "native-tls")
))]
mod jwt_ring;
mod keys;
mod oauth;
mod smart;
mod static_token;
mod token_endpoint;

pub use client_secret::{ClientSecretAuth, ClientSecretAuthBuilder, ClientSecretMethod};
pub use closure::TokenFn;
pub use google::{
    AdcSource, CLOUD_PLATFORM_SCOPE, GOOGLE_TOKEN_URI, GoogleAuth, choose_adc, metadata_base,
};
pub use keys::SigningAlgorithm;
pub use smart::{SmartBackendAuth, SmartBackendAuthBuilder};
pub use static_token::StaticToken;

use crate::error::Result;
use crate::secret::AccessToken;
use futures::future::BoxFuture;
use std::fmt;
use url::Url;

/// What a provider may use to obtain a token. The crate's own providers also reach the
/// client's send path through it (its HTTP settings, redirect policy and retry context).
#[non_exhaustive]
#[derive(Clone, Copy)]
pub struct AuthContext<'a> {
    /// The FHIR base URL, for discovery (`.well-known/smart-configuration`).
    pub fhir_base: &'a Url,
    /// Whether the client allows plain `http://` to non-loopback hosts.
    pub allow_insecure_http: bool,
    pub(crate) inner: &'a crate::client::Inner,
}

impl fmt::Debug for AuthContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthContext")
            .field("fhir_base", &self.fhir_base.as_str())
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish_non_exhaustive()
    }
}

/// A source of bearer tokens.
///
/// Implementations must be cheap to call: the client calls [`AuthProvider::token`] for every
/// request that needs a token, so cache tokens and refresh them before they expire.
pub trait AuthProvider: Send + Sync + fmt::Debug {
    /// A token valid now.
    fn token<'a>(&'a self, ctx: AuthContext<'a>) -> BoxFuture<'a, Result<AccessToken>>;

    /// The server answered 401 to a request carrying `token`: forget it, so that the next
    /// [`AuthProvider::token`] call returns a fresh one. Called once per rejected request;
    /// compare with the cached token so concurrent rejections cause one refresh.
    fn token_rejected(&self, token: &AccessToken) {
        let _ = token;
    }

    /// Checks the provider's own settings; [`BulkClientBuilder::build`](crate::BulkClientBuilder::build)
    /// calls it and fails with its error, so a provider that can never work (an empty
    /// [`StaticToken`]) is refused before anything is sent. The default accepts.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}
