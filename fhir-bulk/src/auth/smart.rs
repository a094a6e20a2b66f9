//! SMART Backend Services: `client_credentials` with a signed client assertion
//! (`private_key_jwt`).

use super::jwt::AssertionSigner;
use super::keys::{self, LoadedKey, SigningAlgorithm};
use super::oauth::{OAuthCore, OAuthSettings};
use super::token_endpoint::Credentials;
use super::{AuthContext, AuthProvider};
use crate::error::{Error, Result};
use crate::secret::{AccessToken, SecretString};
use futures::future::BoxFuture;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tokens from SMART Backend Services: the client proves who it is with a JWT signed by its
/// private key, and gets a short-lived access token (`client_credentials`,
/// `private_key_jwt`).
///
/// The token endpoint is given with [`SmartBackendAuthBuilder::token_url`] or discovered once
/// from `[base]/.well-known/smart-configuration` (relative URLs resolved against the FHIR
/// base), falling back to the CapabilityStatement's `oauth-uris` extension. Without
/// [`SmartBackendAuthBuilder::scope`], it asks for `system/*.rs` or `system/*.read`, as the
/// server advertises (`scopes_supported`, then `permission-v2`/`permission-v1`), and
/// `system/*.read` when it advertises neither.
///
/// Tokens are cached and reused until a margin before they expire; however many requests
/// need a token at once, one token request is made. When the FHIR server rejects a token
/// (401), the next request gets a new one. Assertions are valid for four minutes and carry
/// a new random `jti` each.
///
/// Token endpoints must use https, except on this machine or with
/// [`BulkClientBuilder::allow_insecure_http`](crate::BulkClientBuilder::allow_insecure_http).
///
/// ```no_run
/// use fhir_bulk::BulkClient;
/// use fhir_bulk::auth::SmartBackendAuth;
/// # fn run() -> fhir_bulk::Result<()> {
/// let auth = SmartBackendAuth::builder("my-client-id")
///     .private_key_pem_file("keys/private.pem")
///     .kid("key-2024-01")
///     .build()?;
/// let client = BulkClient::builder("https://ehr.example/fhir/r4").auth(auth).build()?;
/// # Ok(()) }
/// ```
pub struct SmartBackendAuth {
    signer: AssertionSigner,
    core: OAuthCore,
}

impl fmt::Debug for SmartBackendAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartBackendAuth")
            .field("client_id", &self.signer.client_id)
            .field("kid", &self.signer.kid)
            .field("algorithm", &self.signer.algorithm)
            .field("private_key", &"[redacted]")
            .field("oauth", &self.core)
            .finish()
    }
}

impl SmartBackendAuth {
    /// Starts building a provider for the registered `client_id`.
    pub fn builder(client_id: impl Into<String>) -> SmartBackendAuthBuilder {
        SmartBackendAuthBuilder {
            client_id: client_id.into(),
            key: None,
            kid: None,
            algorithm: None,
            jku: None,
            oauth: OAuthSettings::default(),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.signer.client_id
    }

    /// The `kid` of the signing key.
    pub fn kid(&self) -> &str {
        &self.signer.kid
    }

    /// The assertion's signing algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.signer.algorithm
    }
}

impl AuthProvider for SmartBackendAuth {
    fn token<'a>(&'a self, ctx: AuthContext<'a>) -> BoxFuture<'a, Result<AccessToken>> {
        Box::pin(self.core.token(ctx, Credentials::Assertion(&self.signer)))
    }

    fn token_rejected(&self, token: &AccessToken) {
        self.core.token_rejected(token);
    }
}

/// Where the private key comes from.
#[derive(Debug, Clone)]
enum KeySource {
    Pem(SecretString),
    PemFile(PathBuf),
    Jwks(SecretString),
    JwksFile(PathBuf),
}

/// Builds a [`SmartBackendAuth`]. Setters never fail; [`SmartBackendAuthBuilder::build`]
/// loads the key and reports the first invalid setting by name. `Debug` shows no key.
#[must_use]
#[derive(Debug, Clone)]
pub struct SmartBackendAuthBuilder {
    client_id: String,
    key: Option<KeySource>,
    kid: Option<String>,
    algorithm: Option<SigningAlgorithm>,
    jku: Option<String>,
    oauth: OAuthSettings,
}

impl SmartBackendAuthBuilder {
    /// The private key as PEM text: PKCS#8 (`BEGIN PRIVATE KEY`) RSA or EC P-384, PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) or SEC 1 (`BEGIN EC PRIVATE KEY`). Unencrypted. A PEM key
    /// needs [`SmartBackendAuthBuilder::kid`].
    pub fn private_key_pem(mut self, pem: impl Into<SecretString>) -> Self {
        self.key = Some(KeySource::Pem(pem.into()));
        self
    }

    /// [`SmartBackendAuthBuilder::private_key_pem`] read from a file at `build()`.
    pub fn private_key_pem_file(mut self, path: impl AsRef<Path>) -> Self {
        self.key = Some(KeySource::PemFile(path.as_ref().to_owned()));
        self
    }

    /// The private key as a JWKS (`{"keys": [...]}`) or a single JWK holding the private
    /// parameters (RSA: `n`, `e`, `d`, `p`, `q`, `dp`, `dq`, `qi`; EC P-384: `crv`, `x`, `y`,
    /// `d`). With several private keys in the set, choose one with
    /// [`SmartBackendAuthBuilder::kid`]. The JWK's `kid` and `alg` are used unless overridden.
    pub fn jwks(mut self, jwks: impl Into<SecretString>) -> Self {
        self.key = Some(KeySource::Jwks(jwks.into()));
        self
    }

    /// [`SmartBackendAuthBuilder::jwks`] read from a file at `build()`.
    pub fn jwks_file(mut self, path: impl AsRef<Path>) -> Self {
        self.key = Some(KeySource::JwksFile(path.as_ref().to_owned()));
        self
    }

    /// The `kid` the server knows the key by (in the JWKS registered with it). Required for a
    /// PEM key; for a JWKS, selects the key.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The signing algorithm. Default: the JWK's `alg`, else `RS384` for RSA keys and
    /// `ES384` for P-384 keys.
    pub fn algorithm(mut self, algorithm: SigningAlgorithm) -> Self {
        self.algorithm = Some(algorithm);
        self
    }

    /// Adds the optional `jku` header: the URL of the client's JWKS. It must be the exact
    /// JWKS URL registered with the server, or the server rejects the assertion.
    pub fn jku(mut self, jwks_url: impl Into<String>) -> Self {
        self.jku = Some(jwks_url.into());
        self
    }

    /// The scopes to request, space-separated, e.g. `"system/Patient.rs
    /// system/Observation.rs"`. Default: `system/*.rs` or `system/*.read` as the server
    /// advertises.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.oauth.scope = Some(scope.into());
        self
    }

    /// [`SmartBackendAuthBuilder::scope`] from a list.
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

    /// Loads the key and checks every setting; signs a test assertion so a key that cannot
    /// sign fails here rather than at the first request.
    pub fn build(self) -> Result<SmartBackendAuth> {
        let client_id = self.client_id.trim().to_owned();
        if client_id.is_empty() {
            return Err(invalid(
                "client_id",
                "the client id is empty: give the id the server registered",
            ));
        }
        let loaded = self.load_key()?;
        let kid = match self.kid.as_deref().map(str::trim) {
            Some("") => return Err(invalid("kid", "the kid is empty")),
            Some(kid) => kid.to_owned(),
            None => loaded.kid.clone().ok_or_else(|| {
                invalid(
                    "kid",
                    "the key has no `kid`: give the kid the server knows the key by (its entry \
                     in the client's registered JWKS) with `kid(...)`",
                )
            })?,
        };
        let algorithm = self
            .algorithm
            .or(loaded.alg)
            .unwrap_or_else(|| loaded.key_type.default_algorithm());
        if !algorithm.fits(loaded.key_type) {
            return Err(invalid(
                "algorithm",
                format!(
                    "{algorithm} cannot be used with {}: use {}",
                    loaded.key_type.describe(),
                    loaded.key_type.default_algorithm()
                ),
            ));
        }
        let core = OAuthCore::new(self.oauth)?;
        let signer = AssertionSigner::new(
            loaded.key,
            loaded.key_type,
            algorithm,
            kid,
            client_id,
            self.jku,
        );
        signer
            .sign("https://token-endpoint.invalid/")
            .map_err(|message| invalid("private_key", message))?;
        Ok(SmartBackendAuth { signer, core })
    }

    fn load_key(&self) -> Result<LoadedKey> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map(SecretString::new)
                .map_err(|e| {
                    invalid(
                        "private_key",
                        format!("cannot read the key file {}: {e}", path.display()),
                    )
                })
        };
        let kid = self.kid.as_deref().map(str::trim);
        match &self.key {
            None => Err(invalid(
                "private_key",
                "no private key: give one with `private_key_pem`, `private_key_pem_file`, \
                 `jwks` or `jwks_file`",
            )),
            Some(KeySource::Pem(pem)) => {
                keys::from_pem(pem.expose_secret()).map_err(|m| invalid("private_key", m))
            }
            Some(KeySource::PemFile(path)) => keys::from_pem(read(path)?.expose_secret())
                .map_err(|m| invalid("private_key", format!("{}: {m}", path.display()))),
            Some(KeySource::Jwks(jwks)) => {
                keys::from_jwks(jwks.expose_secret(), kid, self.algorithm)
                    .map_err(|m| invalid("jwks", m))
            }
            Some(KeySource::JwksFile(path)) => {
                keys::from_jwks(read(path)?.expose_secret(), kid, self.algorithm)
                    .map_err(|m| invalid("jwks", format!("{}: {m}", path.display())))
            }
        }
    }
}

fn invalid(setting: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        setting,
        message: message.into(),
    }
}
