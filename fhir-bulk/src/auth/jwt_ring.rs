//! Signing client assertions with `ring`, for the `rustls-ring` and `native-tls` features.
//!
//! `jsonwebtoken` has crypto backends for aws-lc-rs and RustCrypto only (RustCrypto's `rsa`
//! has RUSTSEC-2023-0071, so it is not used). Without aws-lc-rs the assertion is put together
//! here exactly as `jsonwebtoken::encode` does (`base64url(header).base64url(claims)`, signed,
//! `.base64url(signature)`) and signed with `ring`. No process-wide provider is installed, so
//! an application's own use of `jsonwebtoken` is not affected.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use serde::Serialize;

/// A signed JWT of `claims` under `header` with `key` (PKCS#1 DER for RSA, PKCS#8 DER for EC,
/// as [`EncodingKey::from_rsa_der`] and [`EncodingKey::from_ec_der`] hold them). The error
/// is a message without key material.
pub(super) fn encode<T: Serialize>(
    header: &Header,
    claims: &T,
    key: &EncodingKey,
) -> Result<String, String> {
    let message = format!("{}.{}", part(header)?, part(claims)?);
    let signature = sign(header.alg, key.as_bytes(), message.as_bytes())?;
    Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// One base64url-encoded JSON part.
fn part<S: Serialize + ?Sized>(value: &S) -> Result<String, String> {
    serde_json::to_vec(value)
        .map(|json| URL_SAFE_NO_PAD.encode(json))
        .map_err(|e| format!("cannot serialize the assertion: {e}"))
}

/// The JWS signature of `message` with the DER `key`.
fn sign(algorithm: Algorithm, key: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
    let rng = SystemRandom::new();
    let rsa: &'static dyn signature::RsaEncoding = match algorithm {
        Algorithm::ES256 => {
            return sign_ecdsa(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                key,
                message,
                &rng,
            );
        }
        Algorithm::ES384 => {
            return sign_ecdsa(
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                key,
                message,
                &rng,
            );
        }
        Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_SHA512,
        other => {
            return Err(format!(
                "{other:?} is not an algorithm for client assertions"
            ));
        }
    };
    let pair = RsaKeyPair::from_der(key).map_err(|e| format!("the RSA key is not usable: {e}"))?;
    let mut out = vec![0; pair.public().modulus_len()];
    pair.sign(rsa, &rng, message, &mut out)
        .map_err(|_| "the RSA signature failed".to_owned())?;
    Ok(out)
}

fn sign_ecdsa(
    algorithm: &'static signature::EcdsaSigningAlgorithm,
    key: &[u8],
    message: &[u8],
    rng: &SystemRandom,
) -> Result<Vec<u8>, String> {
    let pair = EcdsaKeyPair::from_pkcs8(algorithm, key, rng)
        .map_err(|e| format!("the EC key is not usable: {e}"))?;
    pair.sign(rng, message)
        .map(|sig| sig.as_ref().to_vec())
        .map_err(|_| "the ECDSA signature failed".to_owned())
}
