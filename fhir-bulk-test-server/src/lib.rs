//! An in-process FHIR Bulk Data server for offline tests, benchmarks and
//! demos.
//!
//! [`TestServer`] listens on `127.0.0.1` on a free port and implements the
//! server side of the Bulk Data Access API (`$export`) over synthetic,
//! deterministic FHIR R4 data:
//!
//! | Endpoint (under [`TestServer::base_url`]) | Behaviour |
//! |---|---|
//! | `GET`/`POST` `$export`, `Patient/$export`, `Group/{id}/$export` | kick-off: needs `Prefer: respond-async`; honours `_type`, `_outputFormat`, `organizeOutputBy=Patient` (query or `Parameters` body); answers `202` with an absolute `Content-Location` and `X-Request-Id` |
//! | `GET jobs/{id}` | `202` + `X-Progress` + `Retry-After` a configurable number of times, then `200` with the manifest and an `Expires` header |
//! | `DELETE jobs/{id}` | `202`; afterwards the job and its files answer `404` |
//! | `GET files/{job}/{name}` | NDJSON (`application/fhir+ndjson`), optionally gzip-encoded, with `ETag`, `Range`/`If-Range` support |
//! | `GET Binary/{id}` | the attachments of [`TestServerBuilder::attachments`]: raw bytes, or a FHIR `Binary` for `Accept: application/fhir+json`; `ETag`, `Range`/`If-Range` |
//!
//! With [`TestServerBuilder::google_shaped`] the server takes the Google Cloud
//! Healthcare API's shape instead (see [`GoogleShape`]).
//!
//! Every error answer carries a FHIR `OperationOutcome` (`application/fhir+json`).
//! Other kick-off parameters (`_since`, `_typeFilter`, `patient`, `_elements`,
//! `includeAssociatedData`, ...) are accepted and ignored; a `_type` naming a
//! type the server does not export, an `_outputFormat` other than NDJSON and
//! an `organizeOutputBy` other than `Patient` get `400`.
//!
//! Files are generated while they are sent, so a file of any size (see
//! [`TestServerBuilder::file_bytes`]) is served in bounded memory. What a
//! client should have received is available from [`TestServer::file_lines`]
//! and [`Dataset`]. Every request is recorded ([`TestServer::requests`]) and
//! failures can be injected with [`Fault`]s: cut connections, 5xx and 429
//! answers, slow or stalled bodies, expired links.
//!
//! # Example
//!
//! ```no_run
//! use fhir_bulk_test_server::{Fault, TestServer};
//!
//! # async fn example() -> std::io::Result<()> {
//! let server = TestServer::builder()
//!     .patients(50)
//!     .max_resources_per_file(100)
//!     .polls_before_complete(2)
//!     .fault(Fault::drop_after(1000).on_file("Observation.1.ndjson"))
//!     .start()
//!     .await?;
//!
//! let kickoff = server.base_url().join("$export").expect("valid URL");
//! // ... run the client under test against `kickoff` ...
//!
//! // Compare what the client saved with what was served.
//! let expected: Vec<String> = server
//!     .dataset()
//!     .type_file_lines("Observation", 1)
//!     .expect("file exists")
//!     .collect();
//! # let _ = (kickoff, expected);
//! # Ok(())
//! # }
//! ```
//!
//! # Data
//!
//! Each line is one compact JSON resource (`resourceType`, `id`,
//! `meta.lastUpdated`, a generated narrative and type-specific fields), 640 to
//! 1050 bytes long (the narrative is padded to a length drawn from the seed).
//! Supported types: `Patient` (`p-1`, `p-2`, ...; name, gender, birthDate,
//! address), `Observation` (LOINC vital signs and labs with `valueQuantity`),
//! `Condition` (SNOMED problems) and `Encounter` (class, type, period). Every
//! non-Patient resource references its patient as `Patient/p-N`.
//!
//! In a per-type export, type `T` is served as `T.1.ndjson`, `T.2.ndjson`, ...
//! With `organizeOutputBy=Patient` the files are `patients.1.ndjson`, ...:
//! runs of blocks, each a `Parameters` header line referencing the patient
//! followed by that patient's resources; a block split across files repeats
//! its header at the top of the next file and the earlier manifest entry
//! gets `continuesInFile`. The optional error file is `errors.ndjson` and the
//! optional deleted file `deleted.ndjson`.
//!
//! # Ranges and compression
//!
//! With [`TestServerBuilder::accept_ranges`] (default on) file answers carry
//! `Accept-Ranges: bytes` and a strong `ETag`, and a single-range `Range`
//! header (`bytes=N-`, `bytes=N-M`, `bytes=-N`) is answered `206` with
//! `Content-Range`. `If-Range` must match the ETag of the representation being
//! served, otherwise the full file is sent with `200` (dates never match: no
//! `Last-Modified` is sent). An unsatisfiable range gets `416` with
//! `Content-Range: bytes */LEN`.
//!
//! With [`TestServerBuilder::gzip`] (default on) a request whose
//! `Accept-Encoding` allows gzip gets `Content-Encoding: gzip`, compressed on
//! the fly. The gzip representation has its own ETag (the identity ETag with
//! a `-gzip` suffix), and ranges apply to the compressed bytes: the compressed
//! stream is deterministic, so the server knows its total length (computed
//! once per file by compressing into a byte counter) and sends `Content-Range:
//! bytes N-M/TOTAL`. Full gzip answers have no `Content-Length` (chunked);
//! identity answers always have one.

mod attachments;
mod config;
mod data;
mod files;
mod google;
mod jobs;
mod server;

pub mod raw;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use url::Url;

pub use attachments::BinaryInfo;
pub use config::{Fault, FaultKind, FaultTarget};
pub use data::{Dataset, Lines};
pub use google::GoogleShape;

use config::Config;
use server::{Shared, lock};

/// One request the server received, as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// HTTP method, e.g. `"GET"`.
    pub method: String,
    /// The path, as sent (not percent-decoded), e.g. `"/fhir/$export"`.
    pub path: String,
    /// The raw query string without `?`, if any.
    pub query: Option<String>,
    /// Headers in the order received, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Decoded `(name, value)` pairs of the query string.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running in-process bulk data server. See the [module docs](self).
///
/// Dropping it stops the server at once (open connections are closed);
/// [`TestServer::shutdown`] stops it gracefully.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("base_url", &self.shared.base.as_str())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A builder to configure the server.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// Starts a server with the default configuration: 10 patients; Patient,
    /// Observation (8 per patient), Condition (2) and Encounter (3); one file
    /// per type; one `202` before the manifest; gzip and ranges on.
    pub async fn start_default() -> io::Result<TestServer> {
        Self::builder().start().await
    }

    /// The FHIR base URL, `http://127.0.0.1:PORT/fhir/` (with trailing slash).
    pub fn base_url(&self) -> Url {
        self.shared.base.clone()
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// The data this server exports.
    pub fn dataset(&self) -> &Dataset {
        &self.shared.dataset
    }

    /// The exact lines (without trailing newline) of a file of any job,
    /// deleted or not, given its manifest URL (`http://.../fhir/files/{job}/{name}`,
    /// query ignored) or just `"{job}/{name}"`. `None` if there is no such file.
    ///
    /// A Google-shaped server ([`TestServerBuilder::google_shaped`]) also
    /// takes the `gs://` URLs its manifests list.
    pub fn file_lines(&self, url: &str) -> Option<Lines> {
        if url.starts_with("gs://") {
            let (job, name) = google::find_file(&self.shared, url)?;
            let spec = self.shared.any_job(&job)?.file(&name)?;
            return Some(self.shared.dataset.lines(&spec.content));
        }
        let path = url.split(['?', '#']).next().unwrap_or_default();
        let path = path.rsplit_once("/files/").map_or(path, |(_, rest)| rest);
        let (job, name) = path.split_once('/')?;
        let spec = self.shared.any_job(job)?.file(name)?;
        Some(self.shared.dataset.lines(&spec.content))
    }

    /// Adds a fault at runtime (after those already configured).
    pub fn add_fault(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// The configured faults with their remaining counts
    /// ([`Fault::remaining`]), in firing priority order.
    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.shared.faults).clone()
    }

    /// Expires every file link handed out so far: those URLs answer
    /// `410 Gone` (OperationOutcome `expired`) from now on. Polling a job's
    /// status URL again returns its manifest with fresh, working URLs (they
    /// carry a `?gen=N` query).
    pub fn expire_files(&self) {
        self.shared.url_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops accepting connections, closes idle ones, waits for in-flight
    /// responses to finish (a stalled or trickled body included), then
    /// returns. Drop the server instead to cut everything at once.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Configures and starts a [`TestServer`].
#[derive(Clone, Debug, Default)]
pub struct TestServerBuilder {
    config: Config,
}

impl TestServerBuilder {
    /// Seed of the synthetic data (same seed and settings, same bytes).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Number of patients (default 10).
    #[must_use]
    pub fn patients(mut self, patients: u64) -> Self {
        self.config.patients = patients;
        self
    }

    /// The resource types exported, in this order (default `Patient`,
    /// `Observation`, `Condition`, `Encounter`; no other type is supported).
    /// A kick-off `_type` naming any other type gets `400`.
    #[must_use]
    pub fn resource_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.resource_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Resources of `resource_type` per patient (defaults: Observation 8,
    /// Condition 2, Encounter 3; Patient is always 1).
    #[must_use]
    pub fn resources_per_patient(mut self, resource_type: impl Into<String>, count: u64) -> Self {
        self.config.per_patient.push((resource_type.into(), count));
        self
    }

    /// Split files so that none holds more than `max` resources (header
    /// lines of patient-organised output are not counted). Default: no limit.
    #[must_use]
    pub fn max_resources_per_file(mut self, max: u64) -> Self {
        self.config.max_resources_per_file = Some(max);
        self
    }

    /// Export `resource_type` as a single file of at least `bytes` bytes
    /// (exceeding it by less than one line), e.g. `1 << 30` for 1 GiB. Its
    /// resources reference the dataset's patients in turn. The file is
    /// generated while it is sent; nothing is held in memory. Ignored by
    /// patient-organised exports.
    #[must_use]
    pub fn file_bytes(mut self, resource_type: impl Into<String>, bytes: u64) -> Self {
        self.config.file_bytes.push((resource_type.into(), bytes));
        self
    }

    /// How many times the status endpoint answers `202` before the manifest
    /// (default 1).
    #[must_use]
    pub fn polls_before_complete(mut self, polls: u32) -> Self {
        self.config.polls_before_complete = polls;
        self
    }

    /// Partial manifests (STU3 `allowPartialManifests`): when the kick-off asked for them
    /// with `allowPartialManifests=true`, every status `202` carries a manifest listing the
    /// files ready so far, a growing prefix of the final manifest's files (poll `p` of `n`
    /// lists the first `ceil(files * (p + 1) / (n + 1))`), in the final manifest's order.
    /// Default off.
    #[must_use]
    pub fn partial_manifests(mut self, enabled: bool) -> Self {
        self.config.partial_manifests = enabled;
        self
    }

    /// Raw `Retry-After` value sent with status `202`s (default `"1"`), e.g.
    /// `"120"`, an HTTP-date, or a non-standard value like `"1500ms"`.
    #[must_use]
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.config.retry_after = Some(value.into());
        self
    }

    /// Send no `Retry-After` with status `202`s.
    #[must_use]
    pub fn no_retry_after(mut self) -> Self {
        self.config.retry_after = None;
        self
    }

    /// `X-Progress` values for successive status `202`s (the last one repeats;
    /// empty: no header). Default `["in-progress"]`.
    #[must_use]
    pub fn x_progress<I, S>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.x_progress = values.into_iter().map(Into::into).collect();
        self
    }

    /// Require `Authorization: Bearer <token>` on every request; others get
    /// `401` with an OperationOutcome and `WWW-Authenticate: Bearer`.
    #[must_use]
    pub fn require_bearer(mut self, token: impl Into<String>) -> Self {
        self.config.require_bearer = Some(token.into());
        self
    }

    /// The manifest's `requiresAccessToken` (default true).
    #[must_use]
    pub fn requires_access_token(mut self, requires: bool) -> Self {
        self.config.requires_access_token = requires;
        self
    }

    /// Gzip-encode files for clients that accept it (default true).
    #[must_use]
    pub fn gzip(mut self, enabled: bool) -> Self {
        self.config.gzip = enabled;
        self
    }

    /// Support byte ranges on files, with `Accept-Ranges` and `ETag`
    /// (default true). When off, `Range` is ignored and no ETag is sent.
    #[must_use]
    pub fn accept_ranges(mut self, enabled: bool) -> Self {
        self.config.accept_ranges = enabled;
        self
    }

    /// List an error file `errors.ndjson` in every manifest, with one
    /// OperationOutcome per given severity (`"error"`, `"warning"`, ...).
    #[must_use]
    pub fn error_file<I, S>(mut self, severities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.error_severities = severities.into_iter().map(Into::into).collect();
        self
    }

    /// List a deleted file `deleted.ndjson` with `count` transaction Bundles,
    /// each with one `DELETE` entry, in every manifest.
    #[must_use]
    pub fn deleted_file(mut self, count: u64) -> Self {
        self.config.deleted = count;
        self
    }

    /// Export `DocumentReference` (`n` per patient) and `DiagnosticReport` (one per patient,
    /// or as [`TestServerBuilder::resources_per_patient`] says) resources with attachments,
    /// served at `GET Binary/{id}`: relative and absolute URLs, short `text/plain` notes and
    /// 200 KiB `application/pdf` documents, each with `size` and `hash`. See
    /// [`Dataset::binaries`] and the `attachments` module docs. Default off.
    #[must_use]
    pub fn attachments(mut self, n: u64) -> Self {
        self.config.attachments = Some(n);
        self
    }

    /// Answer like the Google Cloud Healthcare API (seed 003): a Group export
    /// needs `organizeOutputBy=Patient` (else `400` with an OperationOutcome),
    /// the kick-off's `Content-Location` is the relative `operations/{id}`
    /// (served at `[base]/operations/{id}`), and the completed status lists
    /// `gs://bucket/dir/{id}_{Type}.ndjson` objects that the server wrote into
    /// `shape`'s Cloud Storage endpoint before answering (a failed write
    /// answers `500` with an OperationOutcome). The http file URLs of the
    /// other shape keep working, for comparison.
    #[must_use]
    pub fn google_shaped(mut self, shape: GoogleShape) -> Self {
        self.config.google = Some(shape);
        self
    }

    /// Add a fault (see [`Fault`]); faults fire in the order added.
    #[must_use]
    pub fn fault(mut self, fault: Fault) -> Self {
        self.config.faults.push(fault);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime
    /// (it must be called from within one; any flavour works).
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] for an unsupported resource
    /// type, a `file_bytes` type that is not exported, or a zero
    /// `max_resources_per_file`.
    pub async fn start(self) -> io::Result<TestServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let base = Url::parse(&format!("http://{addr}/fhir/")).map_err(io::Error::other)?;
        let dataset = Dataset::new(&self.config, base.as_str())?;
        let shared = Arc::new(Shared::new(self.config, dataset, base));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(
            listener,
            server::router(shared.clone()),
            shutdown_rx,
        ));
        Ok(TestServer {
            shared,
            addr,
            shutdown,
            task: Some(task),
        })
    }
}
