//! [`BulkClient`] and its builder: the FHIR base, the HTTP settings ([`HttpOptions`]),
//! authorization and the poll and retry policies.

use crate::auth::{AuthContext, AuthProvider, StaticToken};
use crate::error::{Error, Result};
use crate::manifest::CompletedExport;
use crate::poll::{ClockFn, PollPolicy, SleepFn, system_clock, tokio_sleep};
use crate::profile::ServerProfile;
use crate::request::ExportRequest;
use crate::retry::RetryPolicy;
use crate::secret::{AccessToken, SecretString};
use crate::transport::origin::{Insecure, check_secure};
use crate::transport::retry::{RandomFn, fastrand_source};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;
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
/// println!("next _since: {:?}", export.transaction_time());
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
    pub(crate) random: RandomFn,
    /// The access tokens sent lately, scrubbed from whatever the server sends back.
    pub(crate) sent_tokens: Mutex<Vec<AccessToken>>,
    pub(crate) profile: ServerProfile,
    /// Where `gs://` files are read (the Cloud Storage endpoint), if enabled.
    pub(crate) gcs_endpoint: Option<Url>,
}

impl Inner {
    pub(crate) fn auth_context(&self) -> AuthContext<'_> {
        AuthContext {
            fhir_base: &self.base,
            allow_insecure_http: self.allow_insecure_http,
            inner: self,
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
            .field("profile", &inner.profile)
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

    /// The server profile.
    pub fn server_profile(&self) -> ServerProfile {
        self.inner.profile
    }

    /// [`BulkClient::capability_statement`] within a per-call budget of time, for a look at
    /// the server that must not delay what comes next (the CLI reads it for its log before
    /// the kick-off). Transient failures are retried as usual (each retry is a
    /// `fhir_bulk::retry` event), but no retry is scheduled whose wait would pass `budget`,
    /// and an attempt still running when `budget` has passed is abandoned: the error is then
    /// [`Error::Transport`](crate::Error::Transport) of kind
    /// [`Timeout`](crate::TransportErrorKind::Timeout). A server that refuses connections is
    /// reported within `budget`.
    pub async fn capability_statement_within(
        &self,
        budget: std::time::Duration,
    ) -> Result<crate::CapabilityStatement> {
        let mut ctx = self.inner.retry_context().within(budget);
        match tokio::time::timeout(budget, self.capability_statement_in(&mut ctx)).await {
            Ok(result) => result,
            Err(_) => Err(crate::Error::Transport {
                context: "the CapabilityStatement request",
                kind: crate::TransportErrorKind::Timeout,
                url: self
                    .inner
                    .base
                    .join("metadata")
                    .map(|u| crate::secret::redact_url(&u))
                    .unwrap_or_default(),
                message: format!("no answer within the budget of {} ms", budget.as_millis()),
                source: None,
            }),
        }
    }

    /// Kicks off `request` and waits for it to complete.
    pub async fn export(&self, request: &ExportRequest) -> Result<CompletedExport> {
        let span = tracing::info_span!("export", base = %self.inner.base.as_str());
        async { self.kick_off(request).await?.wait().await }
            .instrument(span)
            .await
    }
}

/// HTTP settings applied to every HTTP client the crate builds (it builds its own, with
/// redirects off: the crate follows redirects itself and checks every hop).
///
/// ```
/// use fhir_bulk::{BulkClient, HttpOptions};
/// use std::time::Duration;
/// let options = HttpOptions::default()
///     .with_proxy("http://proxy.internal:3128")
///     .with_connect_timeout(Some(Duration::from_secs(10)))
///     .with_user_agent("my-pipeline/1.0");
/// let client = BulkClient::builder("https://ehr.example/fhir").http_options(options).build()?;
/// # Ok::<(), fhir_bulk::Error>(())
/// ```
#[must_use]
#[derive(Clone)]
pub struct HttpOptions {
    proxy: Option<SecretString>,
    root_certificates: Vec<Vec<u8>>,
    identity: Option<(Vec<u8>, SecretString)>,
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    user_agent: String,
    pool_max_idle_per_host: Option<usize>,
    pool_idle_timeout: Option<Duration>,
}

impl Default for HttpOptions {
    /// No proxy besides the environment's (`HTTPS_PROXY`, ...), the system's root
    /// certificates, no client identity, 30 s connect and 120 s read timeouts, the user agent
    /// [`DEFAULT_USER_AGENT`], the HTTP stack's pool defaults.
    fn default() -> Self {
        HttpOptions {
            proxy: None,
            root_certificates: Vec::new(),
            identity: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            pool_max_idle_per_host: None,
            pool_idle_timeout: None,
        }
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOptions")
            .field(
                "proxy",
                &self
                    .proxy
                    .as_ref()
                    .map(|p| crate::secret::redact_url_str(p.expose_secret())),
            )
            .field("root_certificates", &self.root_certificates.len())
            .field("identity", &self.identity.as_ref().map(|_| "[redacted]"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("user_agent", &self.user_agent)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .finish()
    }
}

impl HttpOptions {
    /// Sends every request through this proxy (`http://`, `https://` or `socks5://` URL;
    /// user and password in the URL authenticate with the proxy, and are never printed).
    pub fn with_proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(SecretString::new(url.into()));
        self
    }

    /// Trusts this root certificate (PEM, one or more `BEGIN CERTIFICATE` blocks) besides the
    /// system's, e.g. a company CA in front of the FHIR server.
    pub fn with_root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// Presents this client certificate (mutual TLS): the certificate chain and its private
    /// key, both PEM.
    pub fn with_identity_pem(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        private_key_pem: impl Into<SecretString>,
    ) -> Self {
        self.identity = Some((certificate_pem.into(), private_key_pem.into()));
        self
    }

    /// The TCP/TLS connect timeout (default 30 s; `None`: the operating system's).
    pub fn with_connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait for any read from the server (default 120 s; `None`: no limit).
    pub fn with_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The `User-Agent` header (default [`DEFAULT_USER_AGENT`]).
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// The most idle connections kept per host (default: the HTTP stack's; 0 keeps none).
    pub fn with_pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = Some(n);
        self
    }

    /// How long an idle connection is kept (default: the HTTP stack's, 90 s).
    pub fn with_pool_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// One HTTP client with these settings; `gzip`: whether it decompresses by itself.
    pub(crate) fn build_client(&self, gzip: bool) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .gzip(gzip);
        if let Some(t) = self.connect_timeout {
            builder = builder.connect_timeout(t);
        }
        if let Some(t) = self.read_timeout {
            builder = builder.read_timeout(t);
        }
        if let Some(n) = self.pool_max_idle_per_host {
            builder = builder.pool_max_idle_per_host(n);
        }
        builder = builder.pool_idle_timeout(self.pool_idle_timeout);
        if let Some(proxy) = &self.proxy {
            let text = proxy.expose_secret();
            let shown = crate::secret::redact_url_str(text);
            let parsed = Url::parse(text.trim()).map_err(|e| {
                invalid(
                    "http_options.proxy",
                    format!("`{shown}` is not an absolute URL ({e}); give e.g. http://proxy:3128"),
                )
            })?;
            let proxy = reqwest::Proxy::all(parsed.as_str()).map_err(|_| {
                invalid(
                    "http_options.proxy",
                    format!("`{shown}` is not a proxy URL this client can use"),
                )
            })?;
            builder = builder.proxy(proxy);
        }
        builder = self.apply_tls(builder)?;
        builder.build().map_err(|e| {
            invalid(
                "http_options",
                format!(
                    "cannot build the HTTP client: {}",
                    crate::transport::scrub::scrub(&e.to_string(), [])
                ),
            )
        })
    }

    /// Extra root certificates and the client identity (mTLS), on the TLS stack the crate's
    /// feature chose.
    #[cfg(any(
        feature = "rustls-aws-lc",
        feature = "rustls-ring",
        feature = "native-tls"
    ))]
    fn apply_tls(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        for (n, pem) in self.root_certificates.iter().enumerate() {
            let text = String::from_utf8_lossy(pem);
            let certs = if text.contains("-----BEGIN CERTIFICATE-----") {
                reqwest::Certificate::from_pem_bundle(pem).ok()
            } else {
                None
            };
            // The TLS stack checks the DER only when a client is built: probe each one, so
            // the error names this setting.
            let certs = certs
                .filter(|c| !c.is_empty())
                .filter(|c| {
                    reqwest::Client::builder()
                        .tls_certs_merge(c.iter().cloned())
                        .build()
                        .is_ok()
                })
                .ok_or_else(|| {
                    invalid(
                        "http_options.root_certificate",
                        format!(
                            "root certificate {} is not a PEM certificate (`BEGIN \
                             CERTIFICATE` block holding a valid X.509 certificate)",
                            n + 1
                        ),
                    )
                })?;
            builder = builder.tls_certs_merge(certs);
        }
        if let Some((cert, key)) = &self.identity {
            let cert_text = String::from_utf8_lossy(cert);
            let key_text = key.expose_secret();
            if !cert_text.contains("-----BEGIN CERTIFICATE-----")
                || !key_text.contains("PRIVATE KEY-----")
            {
                return Err(invalid(
                    "http_options.identity",
                    "the client identity needs a PEM certificate (`BEGIN CERTIFICATE`) and a \
                     PEM private key (`BEGIN PRIVATE KEY`)",
                ));
            }
            // rustls reads one PEM bundle; native-tls wants the certificate chain and a PKCS#8
            // key apart.
            #[cfg(any(feature = "rustls-aws-lc", feature = "rustls-ring"))]
            let identity = {
                let mut pem = cert.clone();
                pem.push(b'\n');
                pem.extend_from_slice(key_text.as_bytes());
                reqwest::Identity::from_pem(&pem)
            };
            #[cfg(not(any(feature = "rustls-aws-lc", feature = "rustls-ring")))]
            let identity = reqwest::Identity::from_pkcs8_pem(cert, key_text.as_bytes());
            let identity = identity.map_err(|_| {
                invalid(
                    "http_options.identity",
                    "the client certificate or its private key cannot be read (PEM expected)",
                )
            })?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }

    /// Without a TLS feature there is no TLS stack to configure: a root certificate or a client
    /// identity is refused, naming the setting.
    #[cfg(not(any(
        feature = "rustls-aws-lc",
        feature = "rustls-ring",
        feature = "native-tls"
    )))]
    fn apply_tls(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        let needs = "needs a TLS stack: enable one of fhir-bulk's features rustls-aws-lc, \
                     rustls-ring or native-tls";
        if !self.root_certificates.is_empty() {
            return Err(invalid("http_options.root_certificate", needs));
        }
        if self.identity.is_some() {
            return Err(invalid("http_options.identity", needs));
        }
        Ok(builder)
    }
}

/// Builds a [`BulkClient`]. Setters never fail; [`BulkClientBuilder::build`] reports the first
/// invalid setting by name.
#[must_use]
pub struct BulkClientBuilder {
    base_url: String,
    http_options: HttpOptions,
    headers: Vec<(String, String)>,
    auth: Option<Arc<dyn AuthProvider>>,
    trusted_origins: Vec<String>,
    allow_insecure_http: bool,
    poll: Option<PollPolicy>,
    profile: ServerProfile,
    retry: RetryPolicy,
    sleep: Option<SleepFn>,
    clock: Option<ClockFn>,
    random: Option<RandomFn>,
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
    match check_secure(&url, allow_insecure_http) {
        Ok(()) => Ok(url),
        Err(Insecure::PlainHttp) => Err(invalid(
            setting,
            format!(
                "`{}` uses plain http to a host that is not this machine: tokens and health \
                 data would cross the network unencrypted. Use https, or call \
                 `allow_insecure_http(true)` if you really mean it",
                crate::secret::redact_url(&url)
            ),
        )),
        Err(Insecure::Scheme) => Err(invalid(
            setting,
            format!("the `{}:` scheme is not http or https", url.scheme()),
        )),
        Err(Insecure::NoHost) => Err(invalid(setting, "the URL has no host")),
    }
}

impl BulkClientBuilder {
    fn new(base_url: String) -> Self {
        BulkClientBuilder {
            base_url,
            http_options: HttpOptions::default(),
            headers: Vec::new(),
            auth: None,
            trusted_origins: Vec::new(),
            allow_insecure_http: false,
            poll: None,
            profile: ServerProfile::Generic,
            retry: RetryPolicy::default(),
            sleep: None,
            clock: None,
            random: None,
            google_storage: None,
        }
    }

    /// The HTTP settings (proxy, root certificates, client identity, timeouts, user agent,
    /// connection pool) applied to every HTTP client the crate builds. Replaces any set before.
    pub fn http_options(mut self, options: HttpOptions) -> Self {
        self.http_options = options;
        self
    }

    /// The `User-Agent` header (default `fhir-bulk/<version>`); see
    /// [`HttpOptions::with_user_agent`].
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.http_options.user_agent = user_agent.into();
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

    /// The TCP/TLS connect timeout (default 30 s); see [`HttpOptions::with_connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.http_options.connect_timeout = Some(timeout);
        self
    }

    /// The longest wait for any read from the server (default 120 s), so a stalled server
    /// cannot hang a call. There is no overall timeout: downloads may take hours. See
    /// [`HttpOptions::with_read_timeout`].
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.http_options.read_timeout = Some(timeout);
        self
    }

    /// How status polling waits (default: the server profile's
    /// [`ServerProfile::poll_policy`]).
    pub fn poll_policy(mut self, policy: PollPolicy) -> Self {
        self.poll = Some(policy);
        self
    }

    /// The kind of server (default [`ServerProfile::Generic`]): its parameter encodings and
    /// documented limits apply to every kick-off, its poll defaults to polling (unless
    /// [`BulkClientBuilder::poll_policy`] is set), and its readings of `Retry-After` and DELETE
    /// answers to every job.
    pub fn server_profile(mut self, profile: ServerProfile) -> Self {
        self.profile = profile;
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

    /// Replaces the random source (values in `[0, 1)`) of the retry jitter and the poll
    /// schedule, for tests and simulations.
    pub fn random_fn(mut self, random: RandomFn) -> Self {
        self.random = Some(random);
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
        let user_agent = HeaderValue::from_str(&self.http_options.user_agent).map_err(|_| {
            invalid(
                "user_agent",
                "the user agent holds characters a header cannot carry",
            )
        })?;
        let poll = self.poll.unwrap_or_else(|| self.profile.poll_policy());
        if poll.max_interval.is_zero() {
            return Err(invalid("poll_policy", "max_interval must be above zero"));
        }
        crate::tls::check_scheme("base_url", &base)?;
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        crate::tls::prepare();
        let http = self.http_options.build_client(true)?;
        let download_http = self.http_options.build_client(false)?;
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
                poll,
                retry: self.retry,
                sleep: self.sleep.unwrap_or_else(tokio_sleep),
                clock: self.clock.unwrap_or_else(system_clock),
                random: self.random.unwrap_or_else(fastrand_source),
                sent_tokens: Mutex::new(Vec::new()),
                profile: self.profile,
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
