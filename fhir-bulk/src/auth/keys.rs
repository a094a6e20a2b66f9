//! Loading private keys: PEM (PKCS#8, PKCS#1 RSA, SEC 1 EC) and private JWKs / JWKS.
//!
//! Errors are plain messages that never include key material; the caller wraps them into
//! [`Error::InvalidConfig`](crate::Error::InvalidConfig).

use super::der;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};
use std::fmt;

/// The JWS algorithm of the client assertion.
///
/// SMART Backend Services requires clients to support [`SigningAlgorithm::Rs384`] and
/// [`SigningAlgorithm::Es384`]; the others are for servers that ask for them.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-384 (`RS384`), the default for RSA keys.
    Rs384,
    /// ECDSA P-384 with SHA-384 (`ES384`), the default for P-384 keys.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (`RS512`).
    Rs512,
    /// RSASSA-PSS with SHA-256 (`PS256`).
    Ps256,
    /// RSASSA-PSS with SHA-384 (`PS384`).
    Ps384,
    /// RSASSA-PSS with SHA-512 (`PS512`).
    Ps512,
    /// ECDSA P-256 with SHA-256 (`ES256`), the default for P-256 keys.
    Es256,
}

impl SigningAlgorithm {
    /// The JWS name, e.g. `"RS384"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Rs384 => "RS384",
            SigningAlgorithm::Es384 => "ES384",
            SigningAlgorithm::Rs256 => "RS256",
            SigningAlgorithm::Rs512 => "RS512",
            SigningAlgorithm::Ps256 => "PS256",
            SigningAlgorithm::Ps384 => "PS384",
            SigningAlgorithm::Ps512 => "PS512",
            SigningAlgorithm::Es256 => "ES256",
        }
    }

    /// The algorithm with this JWS name (`"RS384"`, `"ES384"`, ...), if supported.
    pub fn from_name(name: &str) -> Option<SigningAlgorithm> {
        ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub(super) fn jwt(self) -> Algorithm {
        match self {
            SigningAlgorithm::Rs384 => Algorithm::RS384,
            SigningAlgorithm::Es384 => Algorithm::ES384,
            SigningAlgorithm::Rs256 => Algorithm::RS256,
            SigningAlgorithm::Rs512 => Algorithm::RS512,
            SigningAlgorithm::Ps256 => Algorithm::PS256,
            SigningAlgorithm::Ps384 => Algorithm::PS384,
            SigningAlgorithm::Ps512 => Algorithm::PS512,
            SigningAlgorithm::Es256 => Algorithm::ES256,
        }
    }

    /// Whether a key of this type can sign with the algorithm.
    pub(super) fn fits(self, key: KeyType) -> bool {
        match self {
            SigningAlgorithm::Es384 => key == KeyType::Ec(Curve::P384),
            SigningAlgorithm::Es256 => key == KeyType::Ec(Curve::P256),
            _ => key == KeyType::Rsa,
        }
    }
}

const ALL: [SigningAlgorithm; 8] = [
    SigningAlgorithm::Rs384,
    SigningAlgorithm::Es384,
    SigningAlgorithm::Rs256,
    SigningAlgorithm::Rs512,
    SigningAlgorithm::Ps256,
    SigningAlgorithm::Ps384,
    SigningAlgorithm::Ps512,
    SigningAlgorithm::Es256,
];

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An elliptic curve the signer supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Curve {
    P256,
    P384,
}

impl Curve {
    fn from_oid(oid: &[u8]) -> Option<Curve> {
        match oid {
            der::OID_P384 => Some(Curve::P384),
            der::OID_P256 => Some(Curve::P256),
            _ => None,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => der::OID_P256,
            Curve::P384 => der::OID_P384,
        }
    }

    /// Bytes in a coordinate or private scalar.
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// What kind of key was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyType {
    Rsa,
    Ec(Curve),
}

impl KeyType {
    /// The SMART default algorithm for this key.
    pub(super) fn default_algorithm(self) -> SigningAlgorithm {
        match self {
            KeyType::Rsa => SigningAlgorithm::Rs384,
            KeyType::Ec(Curve::P384) => SigningAlgorithm::Es384,
            KeyType::Ec(Curve::P256) => SigningAlgorithm::Es256,
        }
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            KeyType::Rsa => "an RSA key",
            KeyType::Ec(Curve::P384) => "an EC P-384 key",
            KeyType::Ec(Curve::P256) => "an EC P-256 key",
        }
    }
}

/// A private key ready for signing, with what its source said about it.
pub(super) struct LoadedKey {
    pub(super) key: EncodingKey,
    pub(super) key_type: KeyType,
    /// The JWK's `kid`.
    pub(super) kid: Option<String>,
    /// The JWK's `alg`, when it names a supported algorithm.
    pub(super) alg: Option<SigningAlgorithm>,
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedKey")
            .field("key_type", &self.key_type)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Loads a private key from PEM text.
pub(super) fn from_pem(text: &str) -> Result<LoadedKey, String> {
    let blocks = pem_blocks(text)?;
    let Some(block) = blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")) else {
        return Err(match blocks.first() {
            Some(b) => format!(
                "the PEM holds a `{}`, not a private key: give the client's private key (the \
                 server has the public one)",
                b.label
            ),
            None => "no PEM block found: expected `-----BEGIN PRIVATE KEY-----` (PKCS#8), \
                     `-----BEGIN RSA PRIVATE KEY-----` or `-----BEGIN EC PRIVATE KEY-----`"
                .to_owned(),
        });
    };
    if block.encrypted || block.label == "ENCRYPTED PRIVATE KEY" {
        return Err(
            "the private key is encrypted with a passphrase, which is not supported: \
                    decrypt it first, e.g. `openssl pkcs8 -topk8 -nocrypt -in key.pem -out \
                    key-plain.pem`, and keep the result as safe as the original"
                .to_owned(),
        );
    }
    let der = STANDARD
        .decode(block.base64.as_bytes())
        .map_err(|_| format!("the `{}` PEM block is not valid base64", block.label))?;
    match block.label.as_str() {
        "PRIVATE KEY" => from_pkcs8(&der),
        "RSA PRIVATE KEY" => {
            check_rsa_pkcs1(&der)?;
            Ok(LoadedKey {
                key: EncodingKey::from_rsa_der(&der),
                key_type: KeyType::Rsa,
                kid: None,
                alg: None,
            })
        }
        "EC PRIVATE KEY" => from_sec1(&der),
        other => Err(format!(
            "unsupported private key type `{other}`: use an RSA or EC P-384 key in PKCS#8 form"
        )),
    }
}

/// Loads a private key from a JWKS (`{"keys": [...]}`) or a single JWK. With `kid`, the key
/// with that `kid`; otherwise the only private key (or the only one fitting `alg`).
pub(super) fn from_jwks(
    text: &str,
    kid: Option<&str>,
    alg: Option<SigningAlgorithm>,
) -> Result<LoadedKey, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "the JWKS is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let keys: Vec<&Map<String, Value>> = match &value {
        Value::Object(o) if o.contains_key("kty") => vec![o],
        Value::Object(o) => match o.get("keys") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_object).collect(),
            _ => return Err("the JWKS has no `keys` array".to_owned()),
        },
        _ => return Err("the JWKS is not a JSON object".to_owned()),
    };
    let jwk = if let Some(kid) = kid {
        let found = keys
            .iter()
            .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid));
        match found {
            Some(k) => *k,
            None => {
                return Err(format!(
                    "the JWKS has no key with kid `{kid}` (it has: {})",
                    kids(&keys)
                ));
            }
        }
    } else {
        let private: Vec<_> = keys.iter().filter(|k| k.contains_key("d")).collect();
        let fitting: Vec<_> = match alg {
            Some(alg) => private
                .iter()
                .filter(|k| jwk_type(k).is_ok_and(|t| alg.fits(t)))
                .copied()
                .collect(),
            None => private,
        };
        match fitting.as_slice() {
            [one] => **one,
            [] => {
                return Err(
                    "the JWKS holds no private key (no JWK with `d`): give the private JWKS, not \
                     the public one registered with the server"
                        .to_owned(),
                );
            }
            _ => {
                return Err(format!(
                    "the JWKS holds several private keys ({}): choose one with `kid`",
                    kids(&keys)
                ));
            }
        }
    };
    from_jwk(jwk)
}

fn kids(keys: &[&Map<String, Value>]) -> String {
    let list: Vec<&str> = keys
        .iter()
        .map(|k| k.get("kid").and_then(Value::as_str).unwrap_or("(no kid)"))
        .collect();
    if list.is_empty() {
        "no keys".to_owned()
    } else {
        list.join(", ")
    }
}

fn jwk_type(jwk: &Map<String, Value>) -> Result<KeyType, String> {
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => Ok(KeyType::Rsa),
        Some("EC") => match jwk.get("crv").and_then(Value::as_str) {
            Some("P-384") => Ok(KeyType::Ec(Curve::P384)),
            Some("P-256") => Ok(KeyType::Ec(Curve::P256)),
            Some(other) => Err(format!(
                "EC curve `{other}` is not supported: use P-384 (ES384)"
            )),
            None => Err("the EC JWK has no `crv`".to_owned()),
        },
        Some(other) => Err(format!(
            "key type `{other}` is not supported: use RSA (RS384) or EC P-384 (ES384)"
        )),
        None => Err("the JWK has no `kty`".to_owned()),
    }
}

fn from_jwk(jwk: &Map<String, Value>) -> Result<LoadedKey, String> {
    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
    let name = kid.as_deref().unwrap_or("(no kid)");
    let key_type = jwk_type(jwk).map_err(|e| format!("JWK `{name}`: {e}"))?;
    if !jwk.contains_key("d") {
        return Err(format!(
            "JWK `{name}` has no private part (`d`): give the private JWK, not the public one \
             registered with the server"
        ));
    }
    let param = |field: &str| -> Result<Vec<u8>, String> {
        let text = jwk
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("JWK `{name}` has no `{field}`"))?;
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('=').as_bytes())
            .map_err(|_| format!("JWK `{name}`: `{field}` is not base64url"))
    };
    let key = match key_type {
        KeyType::Rsa => {
            let mut parts = Vec::with_capacity(9);
            parts.push(der::unsigned_integer(&[0]));
            for field in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
                parts.push(der::unsigned_integer(&param(field).map_err(|e| {
                    if ["p", "q", "dp", "dq", "qi"].contains(&field) {
                        format!(
                            "{e}: RSA JWKs need the CRT parameters p, q, dp, dq and qi as well \
                             as n, e and d"
                        )
                    } else {
                        e
                    }
                })?));
            }
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            EncodingKey::from_rsa_der(&der::sequence(&refs))
        }
        KeyType::Ec(curve) => {
            let size = curve.size();
            let fixed = |field: &str| -> Result<Vec<u8>, String> {
                let bytes = param(field)?;
                let skip = bytes.len().saturating_sub(size);
                if bytes[..skip].iter().any(|b| *b != 0) {
                    return Err(format!("JWK `{name}`: `{field}` is too long for its curve"));
                }
                let mut out = vec![0; size - (bytes.len() - skip)];
                out.extend_from_slice(&bytes[skip..]);
                Ok(out)
            };
            let d = fixed("d")?;
            let mut point = vec![0x00, 0x04];
            point.extend_from_slice(&fixed("x")?);
            point.extend_from_slice(&fixed("y")?);
            let sec1 = der::sequence(&[
                &der::unsigned_integer(&[1]),
                &der::tlv(der::OCTET_STRING, &d),
                &der::tlv(der::CONTEXT_1, &der::tlv(der::BIT_STRING, &point)),
            ]);
            EncodingKey::from_ec_der(&pkcs8_ec(curve, &sec1))
        }
    };
    let alg = jwk
        .get("alg")
        .and_then(Value::as_str)
        .and_then(SigningAlgorithm::from_name)
        .filter(|a| a.fits(key_type));
    Ok(LoadedKey {
        key,
        key_type,
        kid,
        alg,
    })
}

/// A PKCS#8 `PrivateKeyInfo` around a SEC 1 `ECPrivateKey`.
fn pkcs8_ec(curve: Curve, sec1: &[u8]) -> Vec<u8> {
    der::sequence(&[
        &der::unsigned_integer(&[0]),
        &der::sequence(&[
            &der::tlv(der::OID, der::OID_EC_PUBLIC_KEY),
            &der::tlv(der::OID, curve.oid()),
        ]),
        &der::tlv(der::OCTET_STRING, sec1),
    ])
}

const MALFORMED_PKCS8: &str = "the `PRIVATE KEY` PEM block is not a valid PKCS#8 key";

fn from_pkcs8(der_bytes: &[u8]) -> Result<LoadedKey, String> {
    let outer = der::single(der_bytes)
        .filter(|e| e.tag == der::SEQUENCE)
        .ok_or(MALFORMED_PKCS8)?;
    let fields = der::children(outer.content).ok_or(MALFORMED_PKCS8)?;
    let (Some(algorithm), Some(private)) = (fields.get(1), fields.get(2)) else {
        return Err(MALFORMED_PKCS8.to_owned());
    };
    if algorithm.tag != der::SEQUENCE || private.tag != der::OCTET_STRING {
        return Err(MALFORMED_PKCS8.to_owned());
    }
    let ids = der::children(algorithm.content).ok_or(MALFORMED_PKCS8)?;
    let oid = ids
        .first()
        .filter(|e| e.tag == der::OID)
        .ok_or(MALFORMED_PKCS8)?;
    match oid.content {
        der::OID_RSA_ENCRYPTION => {
            check_rsa_pkcs1(private.content)?;
            Ok(LoadedKey {
                key: EncodingKey::from_rsa_der(private.content),
                key_type: KeyType::Rsa,
                kid: None,
                alg: None,
            })
        }
        der::OID_EC_PUBLIC_KEY => {
            let curve = ids
                .get(1)
                .filter(|e| e.tag == der::OID)
                .and_then(|e| Curve::from_oid(e.content))
                .ok_or("the EC key's curve is not supported: use P-384 (ES384)")?;
            Ok(LoadedKey {
                key: EncodingKey::from_ec_der(der_bytes),
                key_type: KeyType::Ec(curve),
                kid: None,
                alg: None,
            })
        }
        _ => Err(
            "unsupported private key algorithm: use an RSA (RS384) or EC P-384 (ES384) key"
                .to_owned(),
        ),
    }
}

fn check_rsa_pkcs1(der_bytes: &[u8]) -> Result<(), String> {
    let ok = der::single(der_bytes)
        .filter(|e| e.tag == der::SEQUENCE)
        .and_then(|e| der::children(e.content))
        .is_some_and(|fields| fields.len() >= 9 && fields.iter().all(|f| f.tag == der::INTEGER));
    if ok {
        Ok(())
    } else {
        Err("the RSA private key is not a valid PKCS#1 RSAPrivateKey".to_owned())
    }
}

fn from_sec1(der_bytes: &[u8]) -> Result<LoadedKey, String> {
    const MALFORMED: &str = "the `EC PRIVATE KEY` PEM block is not a valid SEC 1 key";
    let outer = der::single(der_bytes)
        .filter(|e| e.tag == der::SEQUENCE)
        .ok_or(MALFORMED)?;
    let fields = der::children(outer.content).ok_or(MALFORMED)?;
    let curve_oid = fields
        .iter()
        .find(|e| e.tag == der::CONTEXT_0)
        .and_then(|e| der::single(e.content))
        .filter(|e| e.tag == der::OID)
        .ok_or(
            "the EC key does not name its curve: convert it to PKCS#8 with `openssl pkcs8 \
             -topk8 -nocrypt`",
        )?;
    let curve = Curve::from_oid(curve_oid.content)
        .ok_or("the EC key's curve is not supported: use P-384 (ES384)")?;
    Ok(LoadedKey {
        key: EncodingKey::from_ec_der(&pkcs8_ec(curve, der_bytes)),
        key_type: KeyType::Ec(curve),
        kid: None,
        alg: None,
    })
}

struct PemBlock {
    label: String,
    base64: String,
    encrypted: bool,
}

fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<PemBlock> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some(PemBlock {
                label: label.to_owned(),
                base64: String::new(),
                encrypted: false,
            });
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            match current.take() {
                Some(block) if block.label == label => blocks.push(block),
                _ => return Err(format!("unexpected PEM end line for `{label}`")),
            }
        } else if let Some(block) = current.as_mut() {
            if line.contains(':') {
                // RFC 1421 headers, e.g. `Proc-Type: 4,ENCRYPTED`.
                block.encrypted |= line.contains("ENCRYPTED");
            } else {
                block.base64.push_str(line);
            }
        }
    }
    if let Some(block) = current {
        return Err(format!("the `{}` PEM block has no end line", block.label));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/../fixtures/keys/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn pem_forms_are_recognised() {
        let rsa = from_pem(&fixture("rsa-private.pem")).unwrap();
        assert_eq!(rsa.key_type, KeyType::Rsa);
        let pkcs1 = from_pem(&fixture("rsa-private-pkcs1.pem")).unwrap();
        assert_eq!(pkcs1.key_type, KeyType::Rsa);
        let ec = from_pem(&fixture("ec-p384-private.pem")).unwrap();
        assert_eq!(ec.key_type, KeyType::Ec(Curve::P384));
        let sec1 = from_pem(&fixture("ec-p384-private-sec1.pem")).unwrap();
        assert_eq!(sec1.key_type, KeyType::Ec(Curve::P384));
        let p256 = from_pem(&fixture("ec-p256-private.pem")).unwrap();
        assert_eq!(p256.key_type, KeyType::Ec(Curve::P256));
        assert_eq!(p256.key_type.default_algorithm(), SigningAlgorithm::Es256);
    }

    #[test]
    fn bad_pem_gives_messages_without_key_material() {
        let public = from_pem(&fixture("rsa-public.pem")).unwrap_err();
        assert!(public.contains("PUBLIC KEY"), "{public}");
        assert!(from_pem("hello").unwrap_err().contains("no PEM block"));
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(from_pem(garbage).unwrap_err().contains("PKCS#8"));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(from_pem(encrypted).unwrap_err().contains("encrypted"));
        let bad64 = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
        assert!(from_pem(bad64).unwrap_err().contains("base64"));
        let unterminated = "-----BEGIN PRIVATE KEY-----\nAAAA\n";
        assert!(from_pem(unterminated).unwrap_err().contains("no end line"));
    }

    #[test]
    fn jwks_selection() {
        let jwks = fixture("private-jwks.json");
        let rsa = from_jwks(&jwks, Some("test-rsa-1"), None).unwrap();
        assert_eq!(rsa.key_type, KeyType::Rsa);
        assert_eq!(rsa.alg, Some(SigningAlgorithm::Rs384));
        let ec = from_jwks(&jwks, Some("test-ec-1"), None).unwrap();
        assert_eq!(ec.key_type, KeyType::Ec(Curve::P384));
        assert_eq!(ec.kid.as_deref(), Some("test-ec-1"));
        let by_alg = from_jwks(&jwks, None, Some(SigningAlgorithm::Es384)).unwrap();
        assert_eq!(by_alg.kid.as_deref(), Some("test-ec-1"));
        let ambiguous = from_jwks(&jwks, None, None).unwrap_err();
        assert!(ambiguous.contains("several"), "{ambiguous}");
        let missing = from_jwks(&jwks, Some("nope"), None).unwrap_err();
        assert!(missing.contains("test-rsa-1"), "{missing}");
        let public = from_jwks(&fixture("public-jwks.json"), None, None).unwrap_err();
        assert!(public.contains("no private key"), "{public}");
        let public = from_jwks(&fixture("public-jwks.json"), Some("test-ec-1"), None).unwrap_err();
        assert!(public.contains("no private part"), "{public}");
    }

    #[test]
    fn bad_jwks_gives_messages_without_key_material() {
        assert!(from_jwks("{", None, None).unwrap_err().contains("not JSON"));
        assert!(from_jwks("[]", None, None).unwrap_err().contains("object"));
        assert!(from_jwks("{}", None, None).unwrap_err().contains("keys"));
        let okp = r#"{"kty":"OKP","crv":"Ed25519","d":"AAAA","x":"AAAA"}"#;
        assert!(from_jwks(okp, None, None).unwrap_err().contains("OKP"));
        let p521 = r#"{"kty":"EC","crv":"P-521","d":"AAAA","x":"AAAA","y":"AAAA"}"#;
        assert!(from_jwks(p521, None, None).unwrap_err().contains("P-521"));
        let no_crt = r#"{"kty":"RSA","kid":"k","n":"AQAB","e":"AQAB","d":"U0VDUkVU"}"#;
        let err = from_jwks(no_crt, None, None).unwrap_err();
        assert!(err.contains("CRT"), "{err}");
        assert!(!err.contains("U0VDUkVU"), "{err}");
        let bad64 = r#"{"kty":"EC","crv":"P-384","kid":"k","d":"*SECRET*","x":"AA","y":"AA"}"#;
        let err = from_jwks(bad64, None, None).unwrap_err();
        assert!(
            err.contains("base64url") && !err.contains("SECRET"),
            "{err}"
        );
        let long = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"k","d":"{}","x":"AA","y":"AA"}}"#,
            URL_SAFE_NO_PAD.encode([1u8; 40])
        );
        assert!(
            from_jwks(&long, None, None)
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn algorithm_names_round_trip() {
        for alg in ALL {
            assert_eq!(SigningAlgorithm::from_name(alg.as_str()), Some(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
        assert_eq!(SigningAlgorithm::from_name("HS256"), None);
        assert!(SigningAlgorithm::Rs384.fits(KeyType::Rsa));
        assert!(!SigningAlgorithm::Es384.fits(KeyType::Ec(Curve::P256)));
        assert!(!SigningAlgorithm::Ps256.fits(KeyType::Ec(Curve::P384)));
    }
}
