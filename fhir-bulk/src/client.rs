//! [`BulkClient`] and its builder: the FHIR base, the HTTP client, authorization and the
//! poll and retry policies.

use crate::auth::{AuthContext, AuthProvider, StaticToken};
use crate::error::{Error, Result};
use crate::manifest::CompletedExport;
use crate::poll::{ClockFn, PollPolicy, SleepFn, system_clock, tokio_sleep};
use crate::request::ExportRequest;
use crate::retry::RetryPolicy;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use url::{Origin, Url};

/// The default `User-Agent`.
pub const DEFAULT_USER_AGENT: &str = concat!("fhir-bulk/", env!("CARGO_PKG_VERSION"));

/// A client for one FHIR server's Bulk Data API. Cheap to clone (an `Arc` inside).
///
/// ```no_run
/// use fhir_bulk::{BulkClient, ExportRequest};
/// # async fn run() -> fhir_bulk::Result<()> {
/// let client = BulkClient::builder("https://ehr.example/fhir/r4/tenant")
///     .bearer_token("eyJ...")
///     .header("Epic-Client-ID", "my-client-id")
///     .build()?;
/// let job = client.kick_off(&ExportRequest::group("g1").types(["Patient"])).await?;
/// let export = job.wait().await?;
/// println!("next _since: {}", export.transaction_time());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BulkClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    /// Downloads: must not decompress by itself, so byte offsets are the server's (Range).
    pub(crate) download_http: reqwest::Client,
    pub(crate) base: Url,
    pub(crate) auth: Option<Arc<dyn AuthProvider>>,
    pub(crate) trusted_origins: Vec<Origin>,
    pub(crate) extra_headers: HeaderMap,
    pub(crate) user_agent: HeaderValue,
    pub(crate) allow_insecure_http: bool,
    pub(crate) poll: PollPolicy,
    pub(crate) retry: RetryPolicy,
    pub(crate) sleep: SleepFn,
    pub(crate) clock: ClockFn,
    /// Where `gs://` files are read (the Cloud Storage endpoint), if enabled.
    pub(crate) gcs_endpoint: Option<Url>,
}

impl Inner {
    pub(crate) fn auth_context(&self) -> AuthContext<'_> {
        AuthContext {
            http: &self.http,
            fhir_base: &self.base,
            allow_insecure_http: self.allow_insecure_http,
        }
    }
}

impl fmt::Debug for BulkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let header_names: Vec<&str> = inner.extra_headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("BulkClient")
            .field("base", &inner.base.as_str())
            .field("auth", &inner.auth)
            .field(
                "trusted_origins",
                &inner
                    .trusted_origins
                    .iter()
                    .map(Origin::ascii_serialization)
                    .collect::<Vec<_>>(),
            )
            .field("extra_headers", &header_names)
            .field("user_agent", &inner.user_agent)
            .field("allow_insecure_http", &inner.allow_insecure_http)
            .field("poll", &inner.poll)
            .field("retry", &inner.retry)
            .finish_non_exhaustive()
    }
}

impl BulkClient {
    /// Starts building a client for the FHIR server at `base_url`.
    pub fn builder(base_url: impl Into<String>) -> BulkClientBuilder {
        BulkClientBuilder::new(base_url.into())
    }

    /// The FHIR base URL (always ending in `/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The poll policy.
    pub fn poll_policy(&self) -> &PollPolicy {
        &self.inner.poll
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// Kicks off `request` and waits for it to complete.
    pub async fn export(&self, request: &ExportRequest) -> Result<CompletedExport> {
        self.kick_off(request).await?.wait().await
    }
}

/// Builds a [`BulkClient`]. Setters never fail; [`BulkClientBuilder::build`] reports the first
/// invalid setting by name.
#[must_use]
pub struct BulkClientBuilder {
    base_url: String,
    http: Option<reqwest::Client>,
    download_http: Option<reqwest::Client>,
    user_agent: String,
    headers: Vec<(String, String)>,
    auth: Option<Arc<dyn AuthProvider>>,
    trusted_origins: Vec<String>,
    allow_insecure_http: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
    poll: PollPolicy,
    retry: RetryPolicy,
    sleep: Option<SleepFn>,
    clock: Option<ClockFn>,
    google_storage: Option<crate::storage::GoogleStorage>,
}

impl fmt::Debug for BulkClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkClientBuilder")
            .field("base_url", &self.base_url)
            .field("auth", &self.auth)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("trusted_origins", &self.trusted_origins)
            .finish_non_exhaustive()
    }
}

fn invalid(setting: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        setting,
        message: message.into(),
    }
}

/// Whether `url`'s host is this machine.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Checks a URL setting: absolute http(s), and https unless loopback or allowed.
pub(crate) fn check_http_url(
    setting: &'static str,
    text: &str,
    allow_insecure_http: bool,
) -> Result<Url> {
    let url = Url::parse(text.trim()).map_err(|e| {
        invalid(
            setting,
            format!("`{text}` is not an absolute URL ({e}); give e.g. https://ehr.example/fhir"),
        )
    })?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback(&url) => {}
        "http" => {
            return Err(invalid(
                setting,
                format!(
                    "`{}` uses plain http to a host that is not this machine: tokens and health \
                     data would cross the network unencrypted. Use https, or call \
                     `allow_insecure_http(true)` if you really mean it",
                    crate::secret::redact_url(&url)
                ),
            ));
        }
        other => {
            return Err(invalid(
                setting,
                format!("the `{other}:` scheme is not http or https"),
            ));
        }
    }
    if url.host().is_none() {
        return Err(invalid(setting, "the URL has no host"));
    }
    Ok(url)
}

impl BulkClientBuilder {
    fn new(base_url: String) -> Self {
        BulkClientBuilder {
            base_url,
            http: None,
            download_http: None,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            headers: Vec::new(),
            auth: None,
            trusted_origins: Vec::new(),
            allow_insecure_http: false,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
            poll: PollPolicy::default(),
            retry: RetryPolicy::default(),
            sleep: None,
            clock: None,
            google_storage: None,
        }
    }

    /// Uses this `reqwest::Client` instead of building one. Its own timeouts, TLS and
    /// redirect settings then apply ([`BulkClientBuilder::connect_timeout`] and
    /// [`BulkClientBuilder::read_timeout`] do not); the client follows redirects itself only
    /// if yours does not, and reqwest drops `Authorization` on cross-host redirects either way.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Uses this `reqwest::Client` for file downloads. Build it with `.no_gzip()` and
    /// `redirect(Policy::none())`: the client decodes gzip itself, so that an interrupted
    /// download can resume with `Range` at the server's byte offset. By default downloads use
    /// a client the crate builds with the same timeouts (not the one given to
    /// [`BulkClientBuilder::http_client`], which may decompress on its own).
    pub fn download_http_client(mut self, client: reqwest::Client) -> Self {
        self.download_http = Some(client);
        self
    }

    /// The `User-Agent` header (default `fhir-bulk/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Adds a header sent with every request to the FHIR server and trusted origins (e.g.
    /// `Epic-Client-ID`). Not sent to other origins: it may be a credential.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// How tokens are obtained.
    pub fn auth(mut self, provider: impl AuthProvider + 'static) -> Self {
        self.auth = Some(Arc::new(provider));
        self
    }

    /// [`BulkClientBuilder::auth`] with a shared provider.
    pub fn auth_arc(mut self, provider: Arc<dyn AuthProvider>) -> Self {
        self.auth = Some(provider);
        self
    }

    /// A fixed bearer token ([`StaticToken`]).
    pub fn bearer_token(self, token: impl Into<String>) -> Self {
        self.auth(StaticToken::new(token))
    }

    /// Trusts another origin (`scheme://host[:port]`) with the bearer token, e.g. a file
    /// server of the same vendor that needs it. Only the origin part of the URL counts.
    pub fn trusted_origin(mut self, origin: impl Into<String>) -> Self {
        self.trusted_origins.push(origin.into());
        self
    }

    /// Reads `gs://` file URLs through the Cloud Storage JSON API at `storage`'s endpoint,
    /// whose origin then receives the auth provider's token (use a Google provider such as
    /// [`GoogleAuth`](crate::auth::GoogleAuth)). On by default (endpoint from
    /// `STORAGE_EMULATOR_HOST`, else Google's) when the base URL is on
    /// `healthcare.googleapis.com`; elsewhere `gs://` files are refused until this is set.
    pub fn google_storage(mut self, storage: crate::storage::GoogleStorage) -> Self {
        self.google_storage = Some(storage);
        self
    }

    /// Allows plain `http://` to hosts other than this machine (default false).
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// The TCP/TLS connect timeout (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait for any read from the server (default 120 s), so a stalled server
    /// cannot hang a call. There is no overall timeout: downloads may take hours.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How status polling waits.
    pub fn poll_policy(mut self, policy: PollPolicy) -> Self {
        self.poll = policy;
        self
    }

    /// How transient failures are retried.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Replaces `tokio::time::sleep` between polls and retries (for tests and simulations).
    pub fn sleep_fn(mut self, sleep: SleepFn) -> Self {
        self.sleep = Some(sleep);
        self
    }

    /// Replaces the wall clock used for `Retry-After` dates and `Expires`.
    pub fn clock(mut self, clock: ClockFn) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks every setting and builds the client.
    pub fn build(self) -> Result<BulkClient> {
        let insecure = self.allow_insecure_http;
        let mut base = check_http_url("base_url", &self.base_url, insecure)?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "base_url",
                "the FHIR base URL must not have a query string or fragment",
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut trusted_origins = Vec::new();
        for text in &self.trusted_origins {
            let url = check_http_url("trusted_origin", text, insecure)?;
            trusted_origins.push(url.origin());
        }
        // gs:// reads: the storage endpoint is trusted with the token only when enabled.
        let gcs_endpoint = match &self.google_storage {
            Some(storage) => Some(storage.resolve(insecure)?),
            None if crate::storage::gcs::is_google_healthcare(&base) => {
                Some(crate::storage::GoogleStorage::new().resolve(insecure)?)
            }
            None => None,
        };
        if let Some(endpoint) = &gcs_endpoint {
            trusted_origins.push(endpoint.origin());
        }
        let mut extra_headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid("header", format!("`{name}` is not a valid header name")))?;
            if header == reqwest::header::AUTHORIZATION {
                return Err(invalid(
                    "header",
                    "set Authorization through an auth provider (e.g. `bearer_token`), which \
                     sends it only to trusted origins",
                ));
            }
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
                invalid(
                    "header",
                    format!("the value of `{name}` holds characters a header cannot carry"),
                )
            })?;
            value.set_sensitive(true);
            extra_headers.append(header, value);
        }
        let user_agent = HeaderValue::from_str(&self.user_agent).map_err(|_| {
            invalid(
                "user_agent",
                "the user agent holds characters a header cannot carry",
            )
        })?;
        if self.poll.max_interval.is_zero() {
            return Err(invalid("poll_policy", "max_interval must be above zero"));
        }
        let build = |gzip: bool| {
            reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .read_timeout(self.read_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .gzip(gzip)
                .build()
                .map_err(|e| invalid("http_client", format!("cannot build the HTTP client: {e}")))
        };
        let download_http = match self.download_http {
            Some(http) => http,
            None => build(false)?,
        };
        let http = match self.http {
            Some(http) => http,
            None => build(true)?,
        };
        Ok(BulkClient {
            inner: Arc::new(Inner {
                http,
                download_http,
                base,
                auth: self.auth,
                trusted_origins,
                extra_headers,
                user_agent,
                allow_insecure_http: insecure,
                poll: self.poll,
                retry: self.retry,
                sleep: self.sleep.unwrap_or_else(tokio_sleep),
                clock: self.clock.unwrap_or_else(system_clock),
                gcs_endpoint,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(b: BulkClientBuilder) -> &'static str {
        match b.build() {
            Err(Error::InvalidConfig { setting, .. }) => setting,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn base_url_rules() {
        let c = BulkClient::builder("https://ehr.example/r4/tenant")
            .build()
            .unwrap();
        assert_eq!(c.base_url().as_str(), "https://ehr.example/r4/tenant/");
        BulkClient::builder("http://127.0.0.1:8080/fhir")
            .build()
            .unwrap();
        BulkClient::builder("http://localhost/fhir")
            .build()
            .unwrap();
        BulkClient::builder("http://[::1]:9/fhir").build().unwrap();
        assert_eq!(
            setting_of(BulkClient::builder("http://ehr.example/fhir")),
            "base_url"
        );
        BulkClient::builder("http://ehr.example/fhir")
            .allow_insecure_http(true)
            .build()
            .unwrap();
        assert_eq!(
            setting_of(BulkClient::builder("ehr.example/fhir")),
            "base_url"
        );
        assert_eq!(
            setting_of(BulkClient::builder("ftp://ehr.example/")),
            "base_url"
        );
        assert_eq!(
            setting_of(BulkClient::builder("https://e.example/f?x=1")),
            "base_url"
        );
    }

    #[test]
    fn header_and_origin_rules() {
        let ok = BulkClient::builder("https://ehr.example/")
            .header("Epic-Client-ID", "abc")
            .trusted_origin("https://files.example/some/path")
            .build()
            .unwrap();
        assert_eq!(
            ok.inner.trusted_origins[0].ascii_serialization(),
            "https://files.example"
        );
        let b = BulkClient::builder("https://ehr.example/");
        assert_eq!(setting_of(b.header("Bad Name", "x")), "header");
        let b = BulkClient::builder("https://ehr.example/");
        assert_eq!(setting_of(b.header("Authorization", "Bearer x")), "header");
        let b = BulkClient::builder("https://ehr.example/");
        assert_eq!(setting_of(b.header("X-A", "a\nb")), "header");
        let b = BulkClient::builder("https://ehr.example/");
        assert_eq!(
            setting_of(b.trusted_origin("http://files.example")),
            "trusted_origin"
        );
    }

    #[test]
    fn debug_shows_no_secrets() {
        let c = BulkClient::builder("https://ehr.example/")
            .bearer_token("tok-SECRET-123")
            .header("X-Api-Key", "key-SECRET-456")
            .build()
            .unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(
            text.contains("X-Api-Key") || text.contains("x-api-key"),
            "{text}"
        );
        let b = BulkClient::builder("https://ehr.example/")
            .bearer_token("tok-SECRET-123")
            .header("X-Api-Key", "key-SECRET-456");
        assert!(!format!("{b:?}").contains("SECRET"));
    }
}
