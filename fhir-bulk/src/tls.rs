//! The TLS stack and crypto provider, as the crate features choose them.
//!
//! | feature | TLS | SMART assertions signed with |
//! | --- | --- | --- |
//! | `rustls-aws-lc` (default) | rustls, aws-lc-rs provider | aws-lc-rs (through `jsonwebtoken`) |
//! | `rustls-ring` | rustls, ring provider | ring |
//! | `native-tls` | the platform's TLS library | ring |
//!
//! With several enabled, `rustls-aws-lc` wins; with none, only plain `http://` (to loopback,
//! or with `allow_insecure_http`) works and SMART Backend Services cannot sign.

use crate::error::{Error, Result};
use url::Url;

/// Whether this build can speak `https://`.
pub(crate) const HAS_TLS: bool = cfg!(any(
    feature = "rustls-aws-lc",
    feature = "rustls-ring",
    feature = "native-tls"
));

/// The explanation when no crypto was compiled in.
#[cfg_attr(
    any(
        feature = "rustls-aws-lc",
        feature = "rustls-ring",
        feature = "native-tls"
    ),
    allow(dead_code)
)]
pub(crate) const NO_CRYPTO: &str = "fhir-bulk was built without TLS and crypto: enable one of \
     its features `rustls-aws-lc` (the default), `rustls-ring` or `native-tls`";

/// Call before building a reqwest client. With `rustls-ring` (and not `rustls-aws-lc`),
/// reqwest's rustls has no crypto provider of its own: ring becomes rustls's process-wide
/// default, unless the application installed one already (then that one is used).
pub(crate) fn prepare() {
    #[cfg(all(feature = "rustls-ring", not(feature = "rustls-aws-lc")))]
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing one is fine: a provider is there.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Refuses an `https://` URL when no TLS stack was compiled in, naming the `setting`.
pub(crate) fn check_scheme(setting: &'static str, url: &Url) -> Result<()> {
    if url.scheme() == "https" && !HAS_TLS {
        return Err(Error::InvalidConfig {
            setting,
            message: format!("`https://` needs TLS, but {NO_CRYPTO}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_no_tls() {
        let plain = Url::parse("http://127.0.0.1:8080/fhir").unwrap();
        assert!(check_scheme("base_url", &plain).is_ok());
    }

    #[cfg(any(
        feature = "rustls-aws-lc",
        feature = "rustls-ring",
        feature = "native-tls"
    ))]
    #[test]
    fn https_is_accepted_with_a_tls_feature() {
        let url = Url::parse("https://ehr.example/fhir").unwrap();
        assert!(check_scheme("base_url", &url).is_ok());
    }

    #[cfg(not(any(
        feature = "rustls-aws-lc",
        feature = "rustls-ring",
        feature = "native-tls"
    )))]
    #[test]
    fn https_is_refused_without_tls_naming_the_features() {
        let url = Url::parse("https://ehr.example/fhir").unwrap();
        match check_scheme("base_url", &url) {
            Err(Error::InvalidConfig { setting, message }) => {
                assert_eq!(setting, "base_url");
                assert!(message.contains("`rustls-ring`"), "{message}");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
}
