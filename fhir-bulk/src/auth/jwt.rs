//! The client assertion: a JWT signed with the client's private key (SMART
//! client-confidential-asymmetric, RFC 7523).

use super::keys::{KeyType, SigningAlgorithm};
use crate::secret::SecretString;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long an assertion is valid. SMART allows at most five minutes; four leaves a minute
/// for the client's clock to run ahead of the server's.
pub(super) const ASSERTION_LIFETIME: Duration = Duration::from_secs(240);

/// Signs client assertions for one client and key.
pub(super) struct AssertionSigner {
    key: EncodingKey,
    pub(super) key_type: KeyType,
    pub(super) algorithm: SigningAlgorithm,
    pub(super) kid: String,
    pub(super) client_id: String,
    pub(super) jku: Option<String>,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("key", &"[redacted]")
            .field("key_type", &self.key_type)
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("client_id", &self.client_id)
            .field("jku", &self.jku)
            .finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    jti: String,
}

impl AssertionSigner {
    pub(super) fn new(
        key: EncodingKey,
        key_type: KeyType,
        algorithm: SigningAlgorithm,
        kid: String,
        client_id: String,
        jku: Option<String>,
    ) -> AssertionSigner {
        AssertionSigner {
            key,
            key_type,
            algorithm,
            kid,
            client_id,
            jku,
        }
    }

    /// A fresh assertion for the token endpoint `audience` (its exact URL), with a new `jti`.
    /// The error is a message without key material.
    pub(super) fn sign(&self, audience: &str) -> Result<SecretString, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_owned())?
            .as_secs();
        let mut header = Header::new(self.algorithm.jwt());
        header.typ = Some("JWT".to_owned());
        header.kid = Some(self.kid.clone());
        header.jku.clone_from(&self.jku);
        let claims = Claims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: audience,
            exp: now + ASSERTION_LIFETIME.as_secs(),
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        encode(&header, &claims, &self.key)
            .map(SecretString::new)
            .map_err(|e| {
                format!(
                    "cannot sign the client assertion with {} using {}: {e}",
                    self.algorithm,
                    self.key_type.describe()
                )
            })
    }
}

/// The signed JWT, with the crypto the crate features chose (see `crate::tls`). Every JWT the
/// crate signs goes through here: `jsonwebtoken::encode` has no crypto provider (and would
/// panic) unless `rustls-aws-lc` is on.
#[cfg(feature = "rustls-aws-lc")]
pub(super) fn encode<T: Serialize>(
    header: &Header,
    claims: &T,
    key: &EncodingKey,
) -> Result<String, String> {
    jsonwebtoken::encode(header, claims, key).map_err(|e| e.to_string())
}

/// The signed JWT, with the crypto the crate features chose (see `crate::tls`).
#[cfg(all(
    not(feature = "rustls-aws-lc"),
    any(feature = "rustls-ring", feature = "native-tls")
))]
pub(super) fn encode<T: Serialize>(
    header: &Header,
    claims: &T,
    key: &EncodingKey,
) -> Result<String, String> {
    super::jwt_ring::encode(header, claims, key)
}

/// Without a TLS feature there is no crypto to sign with.
#[cfg(not(any(
    feature = "rustls-aws-lc",
    feature = "rustls-ring",
    feature = "native-tls"
)))]
pub(super) fn encode<T: Serialize>(_: &Header, _: &T, _: &EncodingKey) -> Result<String, String> {
    Err(crate::tls::NO_CRYPTO.to_owned())
}
