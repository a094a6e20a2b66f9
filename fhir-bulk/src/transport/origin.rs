//! The "https, or plain http only to this machine" rule, in one place: for the FHIR base,
//! trusted origins, token endpoints and every redirect hop.

use std::net::IpAddr;
use url::Url;

/// Whether `url`'s host is this machine.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Why a URL may not be used to carry credentials or health data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insecure {
    /// Plain http to a host that is not this machine.
    PlainHttp,
    /// Neither http nor https.
    Scheme,
    /// No host at all.
    NoHost,
}

impl Insecure {
    /// A short explanation, for error messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Insecure::PlainHttp => "plain http to a host that is not this machine",
            Insecure::Scheme => "the scheme is not http or https",
            Insecure::NoHost => "the URL has no host",
        }
    }
}

/// Checks the rule: https anywhere; http only to a loopback host, unless
/// `allow_insecure_http`.
pub(crate) fn check_secure(url: &Url, allow_insecure_http: bool) -> Result<(), Insecure> {
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback(url) => {}
        "http" => return Err(Insecure::PlainHttp),
        _ => return Err(Insecure::Scheme),
    }
    if url.host().is_none() {
        return Err(Insecure::NoHost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert_eq!(check_secure(&u("https://ehr.example/"), false), Ok(()));
        assert_eq!(check_secure(&u("http://127.0.0.1:9/"), false), Ok(()));
        assert_eq!(check_secure(&u("http://localhost/"), false), Ok(()));
        assert_eq!(check_secure(&u("http://[::1]:9/"), false), Ok(()));
        assert_eq!(
            check_secure(&u("http://ehr.example/"), false),
            Err(Insecure::PlainHttp)
        );
        assert_eq!(check_secure(&u("http://ehr.example/"), true), Ok(()));
        assert_eq!(
            check_secure(&u("ftp://ehr.example/"), true),
            Err(Insecure::Scheme)
        );
    }
}
