//! The one redirect policy. The crate's HTTP clients never follow redirects themselves; the
//! send path asks [`next_hop`] at every 3xx, so every hop gets the same checks: the target must
//! be http(s) under the "https, or http only on loopback" rule, a request body is re-sent only
//! within the trusted origins (a POST kick-off holds patient ids), and a request that must not
//! be redirected at all (the token POST holds the client secret) gets the 3xx as its answer.
//! Which headers go on the next hop is decided by the send path, per hop, from the same trust.

use super::origin::check_secure;
use reqwest::Method;
use url::Url;

/// The most redirects followed for one request.
pub(crate) const MAX_REDIRECTS: usize = 10;

/// How a request may be redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedirectRule {
    /// Follow (bodies only within trusted origins).
    Follow,
    /// Never: the 3xx is the answer (token endpoint: its body holds the credentials).
    Never,
}

/// What to do with a 3xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hop {
    /// Not a redirect to follow: the answer is final.
    Final,
    /// Send the request again to `url`, with `method`, keeping the body or not.
    Follow {
        url: Url,
        method: Method,
        keep_body: bool,
    },
    /// A redirect that must not be followed: why (the send path makes it an error).
    Refuse(String),
}

/// The facts of one redirect answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Redirect<'a> {
    pub(crate) status: u16,
    pub(crate) method: &'a Method,
    pub(crate) has_body: bool,
    pub(crate) from: &'a Url,
    pub(crate) location: Option<&'a str>,
    /// Redirects already followed for this request.
    pub(crate) hops: usize,
    pub(crate) allow_insecure_http: bool,
}

/// Pure: the next hop of a redirect answer. `trusted` says whether an origin may receive the
/// request's credentials and body.
pub(crate) fn next_hop(r: Redirect<'_>, rule: RedirectRule, trusted: impl Fn(&Url) -> bool) -> Hop {
    if !matches!(r.status, 301 | 302 | 303 | 307 | 308) || rule == RedirectRule::Never {
        return Hop::Final;
    }
    let Some(location) = r.location else {
        return Hop::Final;
    };
    if r.hops >= MAX_REDIRECTS {
        return Hop::Refuse(format!("more than {MAX_REDIRECTS} redirects"));
    }
    let Ok(url) = r.from.join(location) else {
        return Hop::Refuse("a redirect to a Location that is not a URL".into());
    };
    if let Err(why) = check_secure(&url, r.allow_insecure_http) {
        return Hop::Refuse(format!(
            "a redirect to {} refused: {}",
            crate::secret::redact_url(&url),
            why.describe()
        ));
    }
    // 303, and 301/302 after a POST (what browsers do), turn into a GET without a body.
    let to_get = r.status == 303 || (matches!(r.status, 301 | 302) && *r.method == Method::POST);
    let (method, keep_body) = if to_get {
        (Method::GET, false)
    } else {
        (r.method.clone(), r.has_body)
    };
    if keep_body && !trusted(&url) {
        return Hop::Refuse(format!(
            "the server redirected a {} with a body to {}, an origin that is neither the FHIR \
             server's nor trusted: the body is not re-sent there (trust the origin if it \
             belongs to the server)",
            r.method,
            url.origin().ascii_serialization()
        ));
    }
    Hop::Follow {
        url,
        method,
        keep_body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Url {
        Url::parse("https://ehr.example/fhir/Patient/$export").unwrap()
    }

    fn r<'a>(status: u16, method: &'a Method, from: &'a Url, to: &'a str) -> Redirect<'a> {
        Redirect {
            status,
            method,
            has_body: *method == Method::POST,
            from,
            location: Some(to),
            hops: 0,
            allow_insecure_http: false,
        }
    }

    fn ehr_only(u: &Url) -> bool {
        u.host_str() == Some("ehr.example")
    }

    #[test]
    fn post_bodies_stay_within_trusted_origins() {
        let f = from();
        let post = Method::POST;
        let same = next_hop(
            r(307, &post, &f, "/fhir/v2/$export"),
            RedirectRule::Follow,
            ehr_only,
        );
        assert!(
            matches!(
                same,
                Hop::Follow {
                    keep_body: true,
                    ..
                }
            ),
            "{same:?}"
        );
        let other = next_hop(
            r(308, &post, &f, "https://evil.example/x"),
            RedirectRule::Follow,
            ehr_only,
        );
        assert!(matches!(other, Hop::Refuse(_)), "{other:?}");
        let see_other = next_hop(
            r(303, &post, &f, "https://evil.example/x"),
            RedirectRule::Follow,
            ehr_only,
        );
        assert!(
            matches!(see_other, Hop::Follow { keep_body: false, ref method, .. } if *method == Method::GET),
            "{see_other:?}"
        );
    }

    #[test]
    fn gets_follow_anywhere_secure_and_never_means_never() {
        let f = from();
        let get = Method::GET;
        let hop = next_hop(
            r(302, &get, &f, "https://files.example/a?sig=1"),
            RedirectRule::Follow,
            ehr_only,
        );
        assert!(matches!(hop, Hop::Follow { .. }), "{hop:?}");
        let plain = next_hop(
            r(302, &get, &f, "http://files.example/a"),
            RedirectRule::Follow,
            ehr_only,
        );
        assert!(matches!(plain, Hop::Refuse(_)), "{plain:?}");
        let never = next_hop(r(307, &get, &f, "/x"), RedirectRule::Never, ehr_only);
        assert_eq!(never, Hop::Final);
        assert_eq!(
            next_hop(r(200, &get, &f, "/x"), RedirectRule::Follow, ehr_only),
            Hop::Final
        );
        let mut many = r(302, &get, &f, "/x");
        many.hops = MAX_REDIRECTS;
        assert!(matches!(
            next_hop(many, RedirectRule::Follow, ehr_only),
            Hop::Refuse(_)
        ));
    }
}
