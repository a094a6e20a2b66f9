//! Server configuration and fault injection.

use std::time::Duration;

/// Everything a [`TestServerBuilder`](super::TestServerBuilder) can set.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) seed: u64,
    pub(crate) patients: u64,
    pub(crate) resource_types: Vec<String>,
    pub(crate) per_patient: Vec<(String, u64)>,
    pub(crate) file_bytes: Vec<(String, u64)>,
    pub(crate) max_resources_per_file: Option<u64>,
    pub(crate) polls_before_complete: u32,
    pub(crate) retry_after: Option<String>,
    pub(crate) x_progress: Vec<String>,
    pub(crate) require_bearer: Option<String>,
    pub(crate) requires_access_token: bool,
    pub(crate) gzip: bool,
    pub(crate) accept_ranges: bool,
    pub(crate) error_severities: Vec<String>,
    pub(crate) deleted: u64,
    pub(crate) faults: Vec<Fault>,
    pub(crate) partial_manifests: bool,
    /// DocumentReferences per patient, with DiagnosticReports, when attachments are on.
    pub(crate) attachments: Option<u64>,
    pub(crate) google: Option<super::google::GoogleShape>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0x00f1_b01c,
            patients: 10,
            resource_types: ["Patient", "Observation", "Condition", "Encounter"]
                .map(String::from)
                .to_vec(),
            per_patient: Vec::new(),
            file_bytes: Vec::new(),
            max_resources_per_file: None,
            polls_before_complete: 1,
            retry_after: Some("1".into()),
            x_progress: vec!["in-progress".into()],
            require_bearer: None,
            requires_access_token: true,
            gzip: true,
            accept_ranges: true,
            error_severities: Vec::new(),
            deleted: 0,
            faults: Vec::new(),
            partial_manifests: false,
            attachments: None,
            google: None,
        }
    }
}

/// Which requests a [`Fault`] applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultTarget {
    /// Kick-off requests (`$export` on any level) that passed validation.
    Kickoff,
    /// Status requests (`GET /fhir/jobs/{id}`) for an existing job.
    Status,
    /// Every file download: output, error and deleted files.
    AllFiles,
    /// Downloads of the file with this name in any job, e.g.
    /// `"Observation.2.ndjson"`, `"patients.1.ndjson"`, `"errors.ndjson"`.
    File(String),
    /// Downloads of the file at this 0-based index of the manifest's `output`
    /// array, in any job.
    FileIndex(usize),
    /// `GET Binary/{id}` of this Binary id, e.g. `"b-doc-4"` (never a file target).
    Binary(String),
    /// Every `GET Binary/{id}`.
    AllBinaries,
}

/// What a [`Fault`] does to a request it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer with this HTTP status (typically 5xx; anything outside
    /// 200..=599 becomes 500) and an OperationOutcome.
    Status(u16),
    /// Answer `429 Too Many Requests` with an OperationOutcome whose issue
    /// code is `throttled`, and this raw `Retry-After` value if any.
    TooManyRequests {
        /// Raw `Retry-After` header value.
        retry_after: Option<String>,
        /// The OperationOutcome's `diagnostics`.
        diagnostics: String,
    },
    /// Send the status line, the headers (including the full
    /// `Content-Length`) and exactly this many body bytes, then abort the
    /// connection, so the client sees a truncated body. A body that is not
    /// longer than this is sent completely.
    DropAfter(u64),
    /// Send the body in pieces of at most `chunk_size` bytes, pausing `delay`
    /// after each piece.
    Trickle {
        /// Maximum bytes per piece (at least 1).
        chunk_size: usize,
        /// Pause after each piece.
        delay: Duration,
    },
    /// Send the status line and headers, then nothing for this long, then the
    /// body.
    Stall(Duration),
}

/// A fault to inject into the server's answers: what happens
/// ([`FaultKind`]), to which requests ([`FaultTarget`]) and how many times.
///
/// The constructors pick a default target (all files, except
/// [`Fault::export_in_progress`] which targets kick-off) and fire once;
/// change that with the `on_*` methods and [`Fault::times`].
///
/// A fault fires on each request it applies to until its count is used up.
/// When several faults apply to one request, the first one added fires and
/// the others are left untouched. Authentication (401) and "not found"
/// checks come first and do not use up faults.
///
/// ```
/// use std::time::Duration;
/// use fhir_bulk_test_server::Fault;
///
/// // The first two downloads of Observation.1.ndjson are cut after 1000 bytes.
/// let cut = Fault::drop_after(1000).on_file("Observation.1.ndjson").times(2);
/// // The first three status polls answer 503.
/// let busy = Fault::http_status(503).on_status().times(3);
/// // Every file is trickled, 4 KiB every 10 ms.
/// let slow = Fault::trickle(4096, Duration::from_millis(10)).times(u32::MAX);
/// # let _ = (cut, busy, slow);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) target: FaultTarget,
    pub(crate) times: u32,
}

impl Fault {
    /// A fault of the given kind on all files, firing once.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            target: FaultTarget::AllFiles,
            times: 1,
        }
    }

    /// Answer with `status` (e.g. 500, 503) and an OperationOutcome.
    pub fn http_status(status: u16) -> Self {
        Self::new(FaultKind::Status(status))
    }

    /// Answer `429 Too Many Requests` with an OperationOutcome (`throttled`)
    /// and, if given, this raw `Retry-After` value (`"5"`, an HTTP-date, ...).
    pub fn too_many_requests(retry_after: Option<&str>) -> Self {
        Self::new(FaultKind::TooManyRequests {
            retry_after: retry_after.map(String::from),
            diagnostics: "Too many requests; slow down".into(),
        })
    }

    /// On kick-off, answer `429` with an OperationOutcome (`throttled`)
    /// saying an export is already in progress, as Oracle Health does.
    pub fn export_in_progress() -> Self {
        Fault {
            kind: FaultKind::TooManyRequests {
                retry_after: None,
                diagnostics: "An export is already in progress for this client; \
                              wait for it to complete or cancel it"
                    .into(),
            },
            target: FaultTarget::Kickoff,
            times: 1,
        }
    }

    /// Abort the connection after exactly `bytes` body bytes.
    pub fn drop_after(bytes: u64) -> Self {
        Self::new(FaultKind::DropAfter(bytes))
    }

    /// Send the body `chunk_size` bytes at a time, pausing `delay` after each.
    pub fn trickle(chunk_size: usize, delay: Duration) -> Self {
        Self::new(FaultKind::Trickle {
            chunk_size: chunk_size.max(1),
            delay,
        })
    }

    /// Send the headers, then nothing for `duration`, then the body.
    pub fn stall(duration: Duration) -> Self {
        Self::new(FaultKind::Stall(duration))
    }

    /// Apply to kick-off requests.
    #[must_use]
    pub fn on_kickoff(self) -> Self {
        self.on(FaultTarget::Kickoff)
    }

    /// Apply to status requests.
    #[must_use]
    pub fn on_status(self) -> Self {
        self.on(FaultTarget::Status)
    }

    /// Apply to every file download (the default).
    #[must_use]
    pub fn on_all_files(self) -> Self {
        self.on(FaultTarget::AllFiles)
    }

    /// Apply to downloads of the file named `name`, e.g. `"Patient.1.ndjson"`.
    #[must_use]
    pub fn on_file(self, name: impl Into<String>) -> Self {
        self.on(FaultTarget::File(name.into()))
    }

    /// Apply to downloads of the `index`-th (0-based) `output` file.
    #[must_use]
    pub fn on_file_index(self, index: usize) -> Self {
        self.on(FaultTarget::FileIndex(index))
    }

    /// Apply to `GET Binary/{id}` of this Binary id (an attachment), e.g. `"b-doc-4"`.
    #[must_use]
    pub fn on_binary(self, id: impl Into<String>) -> Self {
        self.on(FaultTarget::Binary(id.into()))
    }

    /// Apply to the given target.
    #[must_use]
    pub fn on(mut self, target: FaultTarget) -> Self {
        self.target = target;
        self
    }

    /// Fire this many times (default 1; `u32::MAX` is effectively always).
    #[must_use]
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    /// What the fault does.
    pub fn kind(&self) -> &FaultKind {
        &self.kind
    }

    /// Which requests it applies to.
    pub fn target(&self) -> &FaultTarget {
        &self.target
    }

    /// How many more times it will fire.
    pub fn remaining(&self) -> u32 {
        self.times
    }

    pub(crate) fn applies_to(&self, site: &FaultSite<'_>) -> bool {
        match (&self.target, site) {
            (FaultTarget::Kickoff, FaultSite::Kickoff)
            | (FaultTarget::Status, FaultSite::Status) => true,
            (FaultTarget::AllFiles, FaultSite::File { .. }) => true,
            (FaultTarget::File(want), FaultSite::File { name, .. }) => want == name,
            (FaultTarget::FileIndex(want), FaultSite::File { output_index, .. }) => {
                *output_index == Some(*want)
            }
            (FaultTarget::Binary(want), FaultSite::Binary { id }) => want == id,
            (FaultTarget::AllBinaries, FaultSite::Binary { .. }) => true,
            _ => false,
        }
    }
}

/// The request a fault is being looked up for.
#[derive(Debug)]
pub(crate) enum FaultSite<'a> {
    Kickoff,
    Status,
    File {
        name: &'a str,
        output_index: Option<usize>,
    },
    Binary {
        id: &'a str,
    },
}
