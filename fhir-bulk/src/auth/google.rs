//! Google OAuth tokens (`cloud-platform` scope) for the Cloud Healthcare API and Cloud
//! Storage: a service-account key, application default credentials, the metadata server, or
//! an external command such as `gcloud auth print-access-token`.

use super::cache::{DEFAULT_MARGIN, FreshToken, TokenCache};
use super::keys::{self, KeyType};
use super::token_endpoint::parse_success;
use super::{AuthContext, AuthProvider};
use crate::error::{Error, Result};
use crate::secret::{AccessToken, SecretString, redact_url};
use crate::transport::origin::is_loopback;
use crate::transport::{Call, RedirectRule, TOKEN_LIMIT, TokenUse};
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;

/// The scope asked for by default; the Healthcare API and Cloud Storage both accept it.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, for credentials that do not name one.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The grant type of the service-account flow (RFC 7523).
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The metadata server's host when `GCE_METADATA_HOST` is not set.
const METADATA_HOST: &str = "metadata.google.internal";
/// The token path of the metadata server.
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// The lifetime of a service-account assertion (Google allows at most one hour).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Token requests made for one token: the first and up to two retries.
const MAX_ATTEMPTS: u32 = 3;
/// The first wait before a retry; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How long the external command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Tokens from Google OAuth, for Google Cloud Healthcare and Cloud Storage.
///
/// Sources:
/// - [`GoogleAuth::service_account_key_file`]: a service-account key (JSON, from the Cloud
///   console): a JWT signed with its RS256 key is exchanged at the key's `token_uri`.
/// - [`GoogleAuth::credentials_file`]: a service-account key or an `authorized_user` file
///   (what `gcloud auth application-default login` writes; refresh-token flow).
/// - [`GoogleAuth::application_default`]: application default credentials: the file named by
///   `GOOGLE_APPLICATION_CREDENTIALS`, else `~/.config/gcloud/application_default_credentials.json`,
///   else the metadata server.
/// - [`GoogleAuth::metadata_server`]: on Google Cloud (GCE, GKE, Cloud Run): the instance's
///   service account (`GCE_METADATA_HOST` overrides the host).
/// - [`GoogleAuth::command`] / [`GoogleAuth::gcloud`]: the first line a command prints, e.g.
///   `gcloud auth print-access-token`.
///
/// Tokens are cached until a margin before they expire, fetched once however many requests
/// ask at the same time, and dropped when a server answers 401. Keys, refresh tokens, client
/// secrets and tokens never appear in `Debug` or errors.
///
/// ```no_run
/// use fhir_bulk::{BulkClient, GoogleStorage};
/// use fhir_bulk::auth::GoogleAuth;
/// # fn run() -> fhir_bulk::Result<()> {
/// let auth = GoogleAuth::service_account_key_file("sa-key.json")?;
/// let client = BulkClient::builder(
///     "https://healthcare.googleapis.com/v1/projects/p/locations/us/datasets/d/fhirStores/s/fhir",
/// )
/// .auth(auth)
/// .google_storage(GoogleStorage::new()) // read the gs:// files of the manifest
/// .build()?;
/// # Ok(()) }
/// ```
pub struct GoogleAuth {
    source: Source,
    scope: String,
    cache: TokenCache,
}

enum Source {
    ServiceAccount {
        client_email: String,
        private_key_id: Option<String>,
        key: EncodingKey,
        token_uri: Url,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: SecretString,
        refresh_token: SecretString,
        token_uri: Url,
    },
    Metadata {
        base: Url,
    },
    Command {
        program: String,
        args: Vec<String>,
    },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::ServiceAccount {
                client_email,
                private_key_id,
                token_uri,
                ..
            } => f
                .debug_struct("ServiceAccount")
                .field("client_email", client_email)
                .field("private_key_id", private_key_id)
                .field("private_key", &"[redacted]")
                .field("token_uri", &redact_url(token_uri))
                .finish(),
            Source::AuthorizedUser {
                client_id,
                token_uri,
                ..
            } => f
                .debug_struct("AuthorizedUser")
                .field("client_id", client_id)
                .field("client_secret", &"[redacted]")
                .field("refresh_token", &"[redacted]")
                .field("token_uri", &redact_url(token_uri))
                .finish(),
            Source::Metadata { base } => f
                .debug_struct("Metadata")
                .field("base", &redact_url(base))
                .finish(),
            Source::Command { program, args } => f
                .debug_struct("Command")
                .field("program", program)
                .field("args", args)
                .finish(),
        }
    }
}

impl fmt::Debug for GoogleAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleAuth")
            .field("source", &self.source)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The fields of a Google credentials file that this client reads.
#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

fn invalid(setting: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        setting,
        message: message.into(),
    }
}

fn auth_error(message: impl Into<String>) -> Error {
    Error::Auth {
        message: message.into(),
        response: None,
    }
}

/// Where application default credentials come from, in Google's order. Non-exhaustive:
/// Google adds sources (workload identity federation, for one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdcSource {
    /// The file named by `GOOGLE_APPLICATION_CREDENTIALS`.
    EnvFile(PathBuf),
    /// gcloud's `application_default_credentials.json`.
    GcloudFile(PathBuf),
    /// The metadata server.
    MetadataServer,
}

/// Chooses the application default credentials from the value of
/// `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's configuration directory (`CLOUDSDK_CONFIG`,
/// else `~/.config/gcloud`) and whether a file exists. Pure: the caller reads the
/// environment.
pub fn choose_adc(
    env_file: Option<&str>,
    gcloud_config_dir: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> AdcSource {
    if let Some(path) = env_file.map(str::trim).filter(|p| !p.is_empty()) {
        return AdcSource::EnvFile(PathBuf::from(path));
    }
    if let Some(dir) = gcloud_config_dir {
        let file = dir.join("application_default_credentials.json");
        if exists(&file) {
            return AdcSource::GcloudFile(file);
        }
    }
    AdcSource::MetadataServer
}

/// The metadata server's base URL for a value of `GCE_METADATA_HOST`.
pub fn metadata_base(host: Option<&str>) -> std::result::Result<Url, String> {
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or(METADATA_HOST);
    let text = if host.contains("://") {
        host.to_owned()
    } else {
        format!("http://{host}")
    };
    Url::parse(&text).map_err(|e| format!("`{host}` is not a host or URL ({e})"))
}

fn token_uri(text: Option<&str>) -> Result<Url> {
    let text = text.map(str::trim).unwrap_or(GOOGLE_TOKEN_URI);
    Url::parse(text).map_err(|e| {
        invalid(
            "google_credentials",
            format!("the credentials' token_uri `{text}` is not a URL ({e})"),
        )
    })
}

impl GoogleAuth {
    fn with_source(source: Source) -> GoogleAuth {
        GoogleAuth {
            source,
            scope: CLOUD_PLATFORM_SCOPE.to_owned(),
            cache: TokenCache::new(DEFAULT_MARGIN),
        }
    }

    /// Asks for these scopes (space-separated) instead of `cloud-platform`.
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> GoogleAuth {
        self.scope = scope.into();
        self
    }

    /// A service-account key or `authorized_user` credentials file.
    pub fn credentials_file(path: impl AsRef<Path>) -> Result<GoogleAuth> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "google_credentials",
                format!(
                    "cannot read the Google credentials file {}: {e}",
                    path.display()
                ),
            )
        })?;
        GoogleAuth::credentials_json(SecretString::new(text)).map_err(|e| match e {
            Error::InvalidConfig { setting, message } => Error::InvalidConfig {
                setting,
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        })
    }

    /// A service-account key file (the JSON the Cloud console downloads).
    pub fn service_account_key_file(path: impl AsRef<Path>) -> Result<GoogleAuth> {
        let auth = GoogleAuth::credentials_file(path.as_ref())?;
        match auth.source {
            Source::ServiceAccount { .. } => Ok(auth),
            _ => Err(invalid(
                "google_credentials",
                format!(
                    "{} is not a service-account key (`\"type\": \"service_account\"`)",
                    path.as_ref().display()
                ),
            )),
        }
    }

    /// Credentials from their JSON text (service account or `authorized_user`).
    pub fn credentials_json(json: impl Into<SecretString>) -> Result<GoogleAuth> {
        let json: SecretString = json.into();
        let file: CredentialsFile = serde_json::from_str(json.expose_secret()).map_err(|e| {
            invalid(
                "google_credentials",
                format!(
                    "not a Google credentials JSON file (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let missing = |field: &str, kind: &str| {
            invalid(
                "google_credentials",
                format!("the {kind} credentials have no `{field}`"),
            )
        };
        match file.kind.as_deref() {
            Some("service_account") => {
                let client_email = file
                    .client_email
                    .filter(|e| !e.trim().is_empty())
                    .ok_or_else(|| missing("client_email", "service-account"))?;
                let pem = file
                    .private_key
                    .ok_or_else(|| missing("private_key", "service-account"))?;
                let loaded = keys::from_pem(&pem)
                    .map_err(|m| invalid("google_credentials", format!("the private_key: {m}")))?;
                if loaded.key_type != KeyType::Rsa {
                    return Err(invalid(
                        "google_credentials",
                        "the private_key is not an RSA key: Google service-account keys are \
                         RSA (RS256)",
                    ));
                }
                let auth = GoogleAuth::with_source(Source::ServiceAccount {
                    client_email: client_email.trim().to_owned(),
                    private_key_id: file.private_key_id,
                    key: loaded.key,
                    token_uri: token_uri(file.token_uri.as_deref())?,
                });
                auth.sign_assertion(0)
                    .map_err(|m| invalid("google_credentials", m))?;
                Ok(auth)
            }
            Some("authorized_user") => {
                let client_id = file
                    .client_id
                    .ok_or_else(|| missing("client_id", "authorized_user"))?;
                let client_secret = file
                    .client_secret
                    .ok_or_else(|| missing("client_secret", "authorized_user"))?;
                let refresh_token = file
                    .refresh_token
                    .ok_or_else(|| missing("refresh_token", "authorized_user"))?;
                Ok(GoogleAuth::with_source(Source::AuthorizedUser {
                    client_id,
                    client_secret: SecretString::new(client_secret),
                    refresh_token: SecretString::new(refresh_token),
                    token_uri: token_uri(file.token_uri.as_deref())?,
                }))
            }
            Some(other) => Err(invalid(
                "google_credentials",
                format!(
                    "credentials of type `{other}` are not supported: use a service-account \
                     key, `authorized_user` credentials (gcloud auth application-default \
                     login), the metadata server, or `gcloud auth print-access-token`"
                ),
            )),
            None => Err(missing("type", "Google")),
        }
    }

    /// Application default credentials, found as Google's libraries find them.
    pub fn application_default() -> Result<GoogleAuth> {
        let env = std::env::var("GOOGLE_APPLICATION_CREDENTIALS").ok();
        let config = std::env::var_os("CLOUDSDK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/gcloud")));
        match choose_adc(env.as_deref(), config.as_deref(), Path::exists) {
            AdcSource::EnvFile(path) | AdcSource::GcloudFile(path) => {
                GoogleAuth::credentials_file(path)
            }
            AdcSource::MetadataServer => GoogleAuth::metadata_server(),
        }
    }

    /// The metadata server of a Google Cloud machine (`GCE_METADATA_HOST` overrides
    /// `metadata.google.internal`).
    pub fn metadata_server() -> Result<GoogleAuth> {
        let host = std::env::var("GCE_METADATA_HOST").ok();
        let base = metadata_base(host.as_deref())
            .map_err(|m| invalid("google_credentials", format!("GCE_METADATA_HOST: {m}")))?;
        Ok(GoogleAuth::with_source(Source::Metadata { base }))
    }

    /// The metadata server at `base` (e.g. a test server).
    pub fn metadata_server_at(base: impl AsRef<str>) -> Result<GoogleAuth> {
        let base =
            metadata_base(Some(base.as_ref())).map_err(|m| invalid("google_credentials", m))?;
        Ok(GoogleAuth::with_source(Source::Metadata { base }))
    }

    /// The first line `program args...` prints on success, as the token; run again when the
    /// token is due (every few minutes, since the command does not say how long it lasts).
    pub fn command<I, S>(program: impl Into<String>, args: I) -> GoogleAuth
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        GoogleAuth::with_source(Source::Command {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        })
    }

    /// `gcloud auth print-access-token`.
    pub fn gcloud() -> GoogleAuth {
        GoogleAuth::command("gcloud", ["auth", "print-access-token"])
    }

    /// A signed assertion for the service-account flow, issued at `now` (seconds since the
    /// epoch; 0 means the current time).
    fn sign_assertion(&self, now: u64) -> std::result::Result<SecretString, String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        let Source::ServiceAccount {
            client_email,
            private_key_id,
            key,
            token_uri,
        } = &self.source
        else {
            return Err("not a service account".into());
        };
        let now = if now == 0 {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|_| "the system clock is before 1970".to_owned())?
                .as_secs()
        } else {
            now
        };
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_owned());
        header.kid.clone_from(private_key_id);
        let claims = Claims {
            iss: client_email,
            scope: &self.scope,
            aud: token_uri.as_str(),
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        super::jwt::encode(&header, &claims, key)
            .map(SecretString::new)
            .map_err(|e| format!("cannot sign the service-account assertion with RS256: {e}"))
    }

    /// Where this source asks for tokens (for retry messages; the metadata server's base).
    fn token_url(&self) -> Option<Url> {
        match &self.source {
            Source::ServiceAccount { token_uri, .. } | Source::AuthorizedUser { token_uri, .. } => {
                Some(token_uri.clone())
            }
            Source::Metadata { base } => Some(base.clone()),
            Source::Command { .. } => None,
        }
    }

    async fn fetch(&self, ctx: AuthContext<'_>) -> Result<FreshToken> {
        if let Source::Command { program, args } = &self.source {
            return run_command(program, args).await;
        }
        // Transient failures are retried in the transport's retry context: bounded by attempts
        // and time, the client's (injectable) sleep, a tracing event per retry.
        let policy = crate::RetryPolicy::default()
            .with_max_retries(MAX_ATTEMPTS as usize - 1)
            .with_min_delay(FIRST_BACKOFF)
            .with_max_delay(Duration::from_secs(4))
            .with_max_elapsed(Some(Duration::from_secs(30)));
        let mut retries = crate::transport::RetryContext::new(&policy, ctx.inner.random.clone());
        let url = self
            .token_url()
            .ok_or_else(|| auth_error("a command is not a token endpoint"))?;
        loop {
            match self.attempt(ctx).await {
                Ok(token) => return Ok(token),
                Err((error, false)) => return Err(error),
                Err((error, true)) => {
                    ctx.inner
                        .retry_wait("token request", &url, &mut retries, None, error)
                        .await?;
                }
            }
        }
    }

    /// One token request; the error says whether another attempt may succeed.
    async fn attempt(
        &self,
        ctx: AuthContext<'_>,
    ) -> std::result::Result<FreshToken, (Error, bool)> {
        let fatal = |e: Error| (e, false);
        let mut secrets: Vec<String> = Vec::new();
        let (url, request) = match &self.source {
            Source::ServiceAccount { token_uri, .. } => {
                check_transport(token_uri, ctx.allow_insecure_http).map_err(fatal)?;
                let assertion = self.sign_assertion(0).map_err(|m| fatal(auth_error(m)))?;
                secrets.push(assertion.expose_secret().to_owned());
                let form = [
                    ("grant_type", JWT_BEARER_GRANT),
                    ("assertion", assertion.expose_secret()),
                ];
                (token_uri.clone(), form_call(token_uri, &form))
            }
            Source::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                check_transport(token_uri, ctx.allow_insecure_http).map_err(fatal)?;
                secrets.push(client_secret.expose_secret().to_owned());
                secrets.push(refresh_token.expose_secret().to_owned());
                let form = [
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.expose_secret()),
                    ("refresh_token", refresh_token.expose_secret()),
                ];
                (token_uri.clone(), form_call(token_uri, &form))
            }
            Source::Metadata { base } => {
                let mut url = base.clone();
                url.set_path(METADATA_TOKEN_PATH);
                url.query_pairs_mut().append_pair("scopes", &self.scope);
                let mut call = Call::new("the Google token request", Method::GET, url.clone())
                    .what("token request");
                call.headers.insert(
                    reqwest::header::HeaderName::from_static("metadata-flavor"),
                    reqwest::header::HeaderValue::from_static("Google"),
                );
                call.token = TokenUse::Never;
                call.redirects = RedirectRule::Never;
                call.limit = TOKEN_LIMIT;
                (url, call)
            }
            Source::Command { .. } => {
                return Err(fatal(auth_error("a command is not a token endpoint")));
            }
        };
        let shown = redact_url(&url);
        // One attempt through the crate's send path (origin rules, no redirect, bounded body).
        let answer = async {
            let response = ctx.inner.send(&request).await?;
            ctx.inner.read(&request, response).await
        }
        .await
        .map_err(|e| {
            (
                auth_error(format!("the Google token request to {shown} failed: {e}")),
                true,
            )
        })?;
        let status = answer.status;
        let body = answer.body.to_vec();
        if (200..300).contains(&status) {
            return parse_success(&body, &url).map_err(fatal);
        }
        let mut text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), "[redacted]");
        }
        let advice = match &self.source {
            Source::ServiceAccount { client_email, .. } => format!(
                " Check that the service account `{client_email}` and its key still exist (keys \
                 can be disabled or deleted in the Cloud console) and that this machine's clock \
                 is right."
            ),
            Source::AuthorizedUser { .. } => " The refresh token may have been revoked or \
                 expired: run `gcloud auth application-default login` again."
                .to_owned(),
            _ => " Check that this machine has a service account attached.".to_owned(),
        };
        let transient = status >= 500 || status == 429;
        Err((
            auth_error(format!(
                "the Google token endpoint {shown} answered HTTP {status}: {}.{advice}",
                text.trim()
            )),
            transient,
        ))
    }
}

/// Token endpoints use https, except on this machine or when insecure http is allowed.
fn check_transport(url: &Url, allow_insecure_http: bool) -> Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        _ => Err(auth_error(format!(
            "refusing to send Google credentials to {}: use an https token_uri",
            redact_url(url)
        ))),
    }
}

/// A form POST to a token endpoint: never redirected (the body holds credentials), no bearer
/// token, a small answer.
fn form_call(url: &Url, form: &[(&str, &str)]) -> Call {
    let mut call = Call::new("the Google token request", Method::POST, url.clone())
        .what("token request")
        .header(reqwest::header::ACCEPT, "application/json")
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    call.token = TokenUse::Never;
    call.redirects = RedirectRule::Never;
    call.limit = TOKEN_LIMIT;
    let mut body = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in form {
        body.append_pair(name, value);
    }
    call.body = Some(bytes::Bytes::from(body.finish()));
    call
}

/// Runs the token command; its first output line is the token.
async fn run_command(program: &str, args: &[String]) -> Result<FreshToken> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| {
            auth_error(format!(
                "the token command `{program}` did not finish within {} s",
                COMMAND_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| auth_error(format!("cannot run the token command `{program}`: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let token = stdout.lines().next().unwrap_or("").trim().to_owned();
    if !output.status.success() || token.is_empty() {
        // stderr may say why (not logged in); stdout may hold a token, so it is not shown.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(auth_error(format!(
            "the token command `{program}` {} without printing a token{}{}",
            if output.status.success() {
                "succeeded".to_owned()
            } else {
                format!("failed ({})", output.status)
            },
            if reason.is_empty() { "" } else { ": " },
            reason.chars().take(300).collect::<String>()
        )));
    }
    Ok(FreshToken {
        token: AccessToken::new(token),
        lifetime: None,
    })
}

impl AuthProvider for GoogleAuth {
    fn token<'a>(&'a self, ctx: AuthContext<'a>) -> BoxFuture<'a, Result<AccessToken>> {
        Box::pin(async move { self.cache.get(|| self.fetch(ctx)).await })
    }

    fn token_rejected(&self, token: &AccessToken) {
        self.cache.reject(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adc_order() {
        let none = |_: &Path| false;
        let all = |_: &Path| true;
        assert_eq!(
            choose_adc(Some("/k.json"), Some(Path::new("/h/.config/gcloud")), all),
            AdcSource::EnvFile("/k.json".into())
        );
        assert_eq!(
            choose_adc(Some(" "), Some(Path::new("/h/.config/gcloud")), all),
            AdcSource::GcloudFile("/h/.config/gcloud/application_default_credentials.json".into())
        );
        assert_eq!(
            choose_adc(None, Some(Path::new("/h/.config/gcloud")), none),
            AdcSource::MetadataServer
        );
        assert_eq!(choose_adc(None, None, all), AdcSource::MetadataServer);
    }

    #[test]
    fn metadata_hosts() {
        assert_eq!(
            metadata_base(None).unwrap().as_str(),
            "http://metadata.google.internal/"
        );
        assert_eq!(
            metadata_base(Some("127.0.0.1:8080")).unwrap().as_str(),
            "http://127.0.0.1:8080/"
        );
        assert!(metadata_base(Some("http://[::1")).is_err());
    }

    #[test]
    fn bad_credentials_say_what_is_missing() {
        let err = |json: &str| GoogleAuth::credentials_json(json).unwrap_err().to_string();
        assert!(err("{").contains("not a Google credentials"));
        assert!(err(r#"{"type":"service_account"}"#).contains("client_email"));
        assert!(err(r#"{"type":"authorized_user","client_id":"c"}"#).contains("client_secret"));
        assert!(err(r#"{"type":"external_account"}"#).contains("external_account"));
        let bad_key = err(
            r#"{"type":"service_account","client_email":"a@b","private_key":"SECRET-NOT-PEM"}"#,
        );
        assert!(
            bad_key.contains("private_key") && !bad_key.contains("SECRET-NOT-PEM"),
            "{bad_key}"
        );
    }

    #[test]
    fn authorized_user_debug_hides_secrets() {
        let auth = GoogleAuth::credentials_json(
            r#"{"type":"authorized_user","client_id":"cid","client_secret":"CSECRET","refresh_token":"RTOKEN"}"#,
        )
        .unwrap();
        let debug = format!("{auth:?}");
        assert!(debug.contains("cid"), "{debug}");
        assert!(
            !debug.contains("CSECRET") && !debug.contains("RTOKEN"),
            "{debug}"
        );
    }
}
