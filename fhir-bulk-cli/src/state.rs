//! The job state of one output directory: which export the directory holds, its status URL,
//! and which files are complete.
//!
//! Two files: `fhir-bulk-job.json`, a compact header (the export, the job and its phase,
//! written atomically: a synced temporary file renamed over it), and `fhir-bulk-job.journal`,
//! the list of complete files, one short line appended per file as it completes (the format is
//! in [`crate::journal`]: about 35 bytes a file, the URL as the 16 digits of its [`UrlId`]).
//! Finishing a file costs one small append, whatever the number of files; the end of the
//! downloads is one more line (`{"phase":"complete","error_issues":N}`, synced before the job
//! is deleted on the server). The header is written only at the milestones (kick-off,
//! manifest, the end of the run with the job's deletion, start-up), a constant number of times
//! per run, and never holds the files, so a whole run writes each file's record once. The
//! journal is rewritten whole only when it does not hold exactly the records in memory: a
//! torn last line, the records of a format 1-3 header (which held the files), or records of
//! files an earlier manifest listed and this one does not.
//!
//! Crash safety: a journal line is written with one `write` after the file it records was
//! synced and renamed to its final name and its directory synced (the library's
//! [`fhir_bulk::download::Saver`] hands a result back only then), so a kill at any moment
//! leaves at most a torn last line, which loading ignores (the file it would have recorded is
//! downloaded again). A file is trusted as complete only when it exists with the recorded
//! size. Durability against a power cut: the journal is synced in batches on a blocking task
//! (every [`SYNC_EVERY`] records or [`SYNC_INTERVAL`]), never on a download's path, and at
//! every header write.
//!
//! Every path the state names is checked on load: relative, `/`-separated, no `..`, `.` or
//! empty component, no drive or root, so nothing the state says can reach outside the output
//! directory.

use crate::error::CliError;
use crate::journal::{self, Encoder, Entry};
use fhir_bulk::{ExportRequest, FileKind, JobHandle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The state file's name.
pub(crate) const STATE_FILE: &str = "fhir-bulk-job.json";

/// The journal's name.
pub(crate) const JOURNAL_FILE: &str = "fhir-bulk-job.journal";

/// The version of the state file's format written: 4, the header without the files (in the
/// journal, by group and number). 3: the files in the header too, each a short array naming
/// its URL by [`UrlId`]; 2: by the URL itself.
const FORMAT: u32 = 4;

/// The oldest format read (1: a file's record as an object).
const OLDEST_FORMAT: u32 = 1;

/// Journal records between two background syncs.
pub(crate) const SYNC_EVERY: usize = 256;

/// The longest time between two background syncs while files complete.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Where an export stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Kicked off; the job is running on the server.
    Running,
    /// The manifest arrived; files are being downloaded.
    Downloading,
    /// Every file is downloaded and verified.
    Complete,
}

/// Which URL a file was downloaded from: a 64-bit FNV-1a hash of the URL without its query
/// string, written as 16 hex digits. A record only needs to tell whether the manifest still
/// names the same URL for its path, and a URL (often 100-300 bytes) was most of a record's
/// size, in the journal, the header and memory. Read from those 16 digits, or from a URL (the
/// records of formats 1 and 2), which is hashed: a URL always has a `:`, the digits never.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct UrlId(u64);

impl UrlId {
    /// The id of `url` (a URL without its query string).
    pub(crate) fn of(url: &str) -> UrlId {
        // FNV-1a: fixed by its definition, so the ids of a state stay valid in any build.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in url.as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        UrlId(hash)
    }
}

impl std::fmt::Debug for UrlId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for UrlId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for UrlId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UrlId, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(match u64::from_str_radix(&text, 16) {
            Ok(hash) if text.len() == 16 => UrlId(hash),
            _ => UrlId::of(&text),
        })
    }
}

/// A file saved completely. Written as a short array, `[kind, type, url id, resources,
/// bytes]` with `data_bytes` appended when it differs from `bytes` (gzip); read from that (with
/// a URL in place of its id in format 2) or from the object of format 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "CompactRecord", from = "AnyRecord")]
pub(crate) struct FileRecord {
    /// Output, error or deleted.
    pub(crate) kind: FileKind,
    /// The manifest entry's `type`, if any.
    pub(crate) resource_type: Option<String>,
    /// The file URL (without its query string) it was downloaded from.
    pub(crate) url: UrlId,
    /// Resources (lines) saved.
    pub(crate) resources: u64,
    /// Bytes on disk.
    pub(crate) bytes: u64,
    /// NDJSON bytes before compression.
    pub(crate) data_bytes: u64,
}

/// A [`FileRecord`] as written.
#[derive(Serialize)]
#[serde(untagged)]
enum CompactRecord {
    Same(FileKind, Option<String>, UrlId, u64, u64),
    Compressed(FileKind, Option<String>, UrlId, u64, u64, u64),
}

/// A [`FileRecord`] as read: compact (format 2) or an object (format 1).
#[derive(Deserialize)]
#[serde(untagged)]
enum AnyRecord {
    Compressed(FileKind, Option<String>, UrlId, u64, u64, u64),
    Same(FileKind, Option<String>, UrlId, u64, u64),
    Object {
        kind: FileKind,
        resource_type: Option<String>,
        url: UrlId,
        resources: u64,
        bytes: u64,
        data_bytes: u64,
    },
}

impl From<FileRecord> for CompactRecord {
    fn from(r: FileRecord) -> CompactRecord {
        if r.data_bytes == r.bytes {
            CompactRecord::Same(r.kind, r.resource_type, r.url, r.resources, r.bytes)
        } else {
            CompactRecord::Compressed(
                r.kind,
                r.resource_type,
                r.url,
                r.resources,
                r.bytes,
                r.data_bytes,
            )
        }
    }
}

impl From<AnyRecord> for FileRecord {
    fn from(r: AnyRecord) -> FileRecord {
        let (kind, resource_type, url, resources, bytes, data_bytes) = match r {
            AnyRecord::Compressed(k, t, u, n, b, d) => (k, t, u, n, b, d),
            AnyRecord::Same(k, t, u, n, b) => (k, t, u, n, b, b),
            AnyRecord::Object {
                kind,
                resource_type,
                url,
                resources,
                bytes,
                data_bytes,
            } => (kind, resource_type, url, resources, bytes, data_bytes),
        };
        FileRecord::from((kind, resource_type, url, resources, bytes, data_bytes))
    }
}

/// A record from its fields in their written order.
impl From<(FileKind, Option<String>, UrlId, u64, u64, u64)> for FileRecord {
    fn from(
        (kind, resource_type, url, resources, bytes, data_bytes): (
            FileKind,
            Option<String>,
            UrlId,
            u64,
            u64,
            u64,
        ),
    ) -> FileRecord {
        FileRecord {
            kind,
            resource_type,
            url,
            resources,
            bytes,
            data_bytes,
        }
    }
}

/// The journal line that records the end of the downloads: every file is complete and the
/// error files hold `error_issues` error or fatal issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CompleteMark {
    /// Always [`Phase::Complete`].
    pub(crate) phase: Phase,
    /// Error and fatal issues found in the error files.
    pub(crate) error_issues: u64,
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobState {
    /// The format version.
    pub(crate) format: u32,
    /// The id of this export's `log.ndjson` events, the same across resumed runs.
    pub(crate) export_id: String,
    /// The FHIR base URL the export was kicked off at (`export` only).
    #[serde(default)]
    pub(crate) base_url: Option<String>,
    /// The kick-off request (`export` only).
    #[serde(default)]
    pub(crate) request: Option<ExportRequest>,
    /// The job on the server.
    #[serde(default)]
    pub(crate) job: Option<JobHandle>,
    /// Where the export stands.
    pub(crate) phase: Phase,
    /// The manifest's `transactionTime`, once known.
    #[serde(default)]
    pub(crate) transaction_time: Option<String>,
    /// Complete files by their path relative to the output directory (`/`-separated). Kept
    /// in the journal since format 4 (read from the header of formats 1 to 3).
    #[serde(default, skip_serializing)]
    pub(crate) files: BTreeMap<String, FileRecord>,
    /// Error and fatal issues found in the error files.
    #[serde(default)]
    pub(crate) error_issues: u64,
    /// Whether the job was deleted on the server.
    #[serde(default)]
    pub(crate) job_deleted: bool,
    /// When this file was last written.
    #[serde(default)]
    pub(crate) updated_at: String,
    /// Whether the journal on disk replays to exactly `files` (set by [`StateFile::load`]).
    /// When not (a new state, a torn last line, the records of an older header, records
    /// forgotten), the next journal write first rewrites the journal whole.
    #[serde(skip)]
    pub(crate) journal_whole: bool,
}

impl JobState {
    /// A new state with a fresh export id.
    pub(crate) fn new(phase: Phase) -> JobState {
        JobState {
            format: FORMAT,
            export_id: new_export_id(),
            base_url: None,
            request: None,
            job: None,
            phase,
            transaction_time: None,
            files: BTreeMap::new(),
            error_issues: 0,
            job_deleted: false,
            updated_at: String::new(),
            journal_whole: false,
        }
    }

    /// Whether this state records an export of `request` at `base`.
    pub(crate) fn is_export_of(&self, base: &str, request: &ExportRequest) -> bool {
        self.job.is_some()
            && self.base_url.as_deref() == Some(base)
            && self.request.as_ref() == Some(request)
    }
}

/// Ten random bytes in hex, as the SMART bulk-data-client's `exportId`.
fn new_export_id() -> String {
    (0..10)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

/// Whether a state key is a safe relative path: `/`-separated components, none empty, `.`
/// or `..`, no backslash, colon or NUL (no Windows drive or separator), not absolute. Joined to
/// the output directory it names a path inside it.
pub(crate) fn is_safe_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains(['\\', ':', '\0'])
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && Path::new(key).is_relative()
}

/// The error for a state naming a path outside the directory.
fn unsafe_key(path: &Path, key: &str) -> CliError {
    CliError::usage(
        "--output-dir",
        format!(
            "{} names the file `{}`, which is not a path inside the output directory \
             (absolute, or with `..`); fhir-bulk never writes such a state, so it was altered. \
             Nothing was changed or deleted: check it and delete it by hand (with {JOURNAL_FILE} \
             beside it), or use another --output-dir",
            path.display(),
            key.escape_debug()
        ),
    )
}

/// The state file of one output directory, with its journal.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    dir: PathBuf,
    /// The state; written by [`StateFile::save`] and [`StateFile::record`].
    pub(crate) state: JobState,
    /// The journal, open for appending once a line was appended in this run.
    journal: Option<File>,
    /// The groups defined in the journal by this run.
    encoder: Encoder,
    /// Records appended since the last sync.
    unsynced: usize,
    last_sync: Instant,
    /// The background sync in flight, if any.
    syncing: Option<tokio::task::JoinHandle<()>>,
}

impl StateFile {
    /// The state file's path in `dir`.
    pub(crate) fn path_in(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// The journal's path in `dir`.
    pub(crate) fn journal_in(dir: &Path) -> PathBuf {
        dir.join(JOURNAL_FILE)
    }

    /// Reads the state of `dir` (the header, then the journal's records over it), if it has
    /// one. An unreadable header is a usage error (the user decides whether to delete it);
    /// a torn last journal line (a kill while it was written) is ignored; a path that is not
    /// inside the directory is refused.
    pub(crate) fn load(dir: &Path) -> Result<Option<JobState>, CliError> {
        let path = Self::path_in(dir);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CliError::usage(
                    "--output-dir",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        let mut state: JobState = serde_json::from_slice(&text).map_err(|e| {
            CliError::usage(
                "--output-dir",
                format!(
                    "{} is not a fhir-bulk job state ({e}); delete it or pass --fresh",
                    path.display()
                ),
            )
        })?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&state.format) {
            return Err(CliError::usage(
                "--output-dir",
                format!(
                    "{} has format {} (this fhir-bulk reads {OLDEST_FORMAT} to {FORMAT}); \
                     delete it or pass --fresh",
                    path.display(),
                    state.format
                ),
            ));
        }
        if let Some(key) = state.files.keys().find(|k| !is_safe_key(k)) {
            return Err(unsafe_key(&path, key));
        }
        let journal_path = Self::journal_in(dir);
        let journal = match std::fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(CliError::usage(
                    "--output-dir",
                    format!("cannot read {}: {e}", journal_path.display()),
                ));
            }
        };
        state.format = FORMAT;
        let replayed = journal::replay(&journal);
        state.journal_whole = replayed.whole && state.files.is_empty();
        for entry in replayed.entries {
            match entry {
                Entry::File(key, record) => {
                    if !is_safe_key(&key) {
                        return Err(unsafe_key(&journal_path, &key));
                    }
                    state.files.insert(key, record);
                }
                Entry::Complete(mark) => {
                    state.phase = mark.phase;
                    state.error_issues = mark.error_issues;
                }
            }
        }
        Ok(Some(state))
    }

    /// The phase the header of `dir` records (the journal may record a later one), if it is
    /// readable.
    pub(crate) fn header_phase(dir: &Path) -> Option<Phase> {
        #[derive(Deserialize)]
        struct Header {
            phase: Phase,
        }
        let text = std::fs::read(Self::path_in(dir)).ok()?;
        serde_json::from_slice::<Header>(&text)
            .ok()
            .map(|h| h.phase)
    }

    /// Wraps a state to be saved in `dir`.
    pub(crate) fn new(dir: &Path, state: JobState) -> StateFile {
        StateFile {
            path: Self::path_in(dir),
            dir: dir.to_path_buf(),
            state,
            journal: None,
            encoder: Encoder::default(),
            unsynced: 0,
            last_sync: Instant::now(),
            syncing: None,
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the header: the journal is synced (first rewritten whole if it does not hold
    /// exactly [`JobState::files`]), the header goes to a temporary file, synced and renamed
    /// over the old one. A crash leaves the old header or the new one, with the journal before
    /// or after its rewrite (the same records, or those and records forgotten since, which
    /// every run checks again). Synchronous on purpose: an interrupted task cannot stop it
    /// half-way.
    pub(crate) fn save(&mut self) -> Result<(), CliError> {
        self.sync_now();
        if !self.state.journal_whole {
            self.rewrite_journal()?;
        }
        self.state.updated_at = crate::time::now();
        let state = &self.state;
        write_atomically_with(&self.path, |out| {
            serde_json::to_writer(out, state).map_err(std::io::Error::other)
        })
        .map_err(|e| state_failed(&self.path, &e))
    }

    /// Writes the journal whole from [`JobState::files`] (and the end of the downloads when
    /// recorded): a synced temporary file renamed over it, the directory synced. Streamed
    /// through a buffer: a 100,000-file journal is megabytes, not built in memory first.
    fn rewrite_journal(&mut self) -> Result<(), CliError> {
        let path = Self::journal_in(&self.dir);
        // Closed before the rename over it (which some systems refuse for an open file);
        // appends go to the new file, with its groups.
        self.journal = None;
        let mut encoder = Encoder::default();
        let state = &self.state;
        write_atomically_with(&path, |out| {
            let mut line = Vec::with_capacity(256);
            for (key, record) in &state.files {
                line.clear();
                encoder
                    .encode(key, record, &mut line)
                    .map_err(std::io::Error::other)?;
                out.write_all(&line)?;
            }
            if state.phase == Phase::Complete {
                let mark = CompleteMark {
                    phase: Phase::Complete,
                    error_issues: state.error_issues,
                };
                out.write_all(&journal::complete_line(&mark).map_err(std::io::Error::other)?)?;
            }
            Ok(())
        })
        .map_err(|e| state_failed(&path, &e))?;
        // The new file is synced.
        self.encoder = encoder;
        self.unsynced = 0;
        self.state.journal_whole = true;
        Ok(())
    }

    /// Forgets the records of files `listed` does not name (an earlier manifest's), in memory
    /// and, with the next header write, in the journal.
    pub(crate) fn forget_unlisted(&mut self, listed: &std::collections::HashSet<String>) {
        let before = self.state.files.len();
        self.state.files.retain(|key, _| listed.contains(key));
        if self.state.files.len() != before {
            self.state.journal_whole = false;
        }
    }

    /// Records `key` complete: its line(s) appended to the journal, synced with the next
    /// batch. Call it only once the file is final and durable (a
    /// [`fhir_bulk::download::Saver`] result).
    pub(crate) fn record(&mut self, key: &str, record: FileRecord) -> Result<(), CliError> {
        self.open_journal()?;
        let mut line = Vec::with_capacity(128);
        self.encoder
            .encode(key, &record, &mut line)
            .map_err(|e| CliError::Failed(format!("cannot encode the job state: {e}")))?;
        self.state.files.insert(key.to_owned(), record);
        self.append(&line)?;
        self.unsynced += 1;
        if self.unsynced >= SYNC_EVERY || self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.sync_in_background();
        }
        Ok(())
    }

    /// Records the end of the downloads (every file complete, `error_issues` error or fatal
    /// issues in the error files): one journal line, synced before this returns, so the
    /// milestone is durable before the job is deleted on the server. The whole state is
    /// written once after that, by [`StateFile::save`], with the job's deletion if any.
    pub(crate) fn record_complete(&mut self, error_issues: u64) -> Result<(), CliError> {
        let mark = CompleteMark {
            phase: Phase::Complete,
            error_issues,
        };
        let line = journal::complete_line(&mark)
            .map_err(|e| CliError::Failed(format!("cannot encode the job state: {e}")))?;
        self.open_journal()?;
        self.state.phase = mark.phase;
        self.state.error_issues = error_issues;
        self.append(&line)?;
        self.unsynced += 1;
        self.sync_now();
        Ok(())
    }

    /// The journal open for appending, first rewritten whole when it does not hold exactly
    /// the records in memory (so call it before encoding a line: a rewrite starts the groups
    /// again).
    fn open_journal(&mut self) -> Result<&mut File, CliError> {
        let file = match self.journal.take() {
            Some(file) => file,
            None => {
                if !self.state.journal_whole {
                    self.rewrite_journal()?;
                }
                let path = Self::journal_in(&self.dir);
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| state_failed(&path, &e))?
            }
        };
        Ok(self.journal.insert(file))
    }

    /// Appends whole lines to the journal with one `write`.
    fn append(&mut self, line: &[u8]) -> Result<(), CliError> {
        let path = Self::journal_in(&self.dir);
        self.open_journal()?
            .write_all(line)
            .map_err(|e| state_failed(&path, &e))
    }

    /// The journal to sync (a second handle), if records were appended since the last sync.
    fn take_sync_work(&mut self) -> Option<File> {
        let unsynced = std::mem::take(&mut self.unsynced);
        self.last_sync = Instant::now();
        self.journal
            .as_ref()
            .filter(|_| unsynced > 0)
            .and_then(|f| f.try_clone().ok())
    }

    /// Starts a sync on a blocking task unless one is still running (the next record starts
    /// it then).
    fn sync_in_background(&mut self) {
        if self.syncing.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let journal = self.take_sync_work();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.syncing = Some(runtime.spawn_blocking(move || sync(journal)));
        } else {
            sync(journal);
        }
    }

    /// Syncs the journal now.
    fn sync_now(&mut self) {
        let journal = self.take_sync_work();
        sync(journal);
    }

    /// Removes the state file and its journal.
    pub(crate) fn remove(dir: &Path) -> std::io::Result<()> {
        for path in [Self::journal_in(dir), Self::path_in(dir)] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The error for a state file (the header or the journal) that cannot be written.
fn state_failed(path: &Path, e: &std::io::Error) -> CliError {
    CliError::Failed(format!(
        "cannot write the job state {}: {e}",
        path.display()
    ))
}

/// Syncs a journal; a failure only costs durability against a power cut (the files are
/// checked on the next run), so it is not an error.
fn sync(journal: Option<File>) {
    if let Some(file) = journal {
        let _ = file.sync_data();
    }
}

/// Syncs a directory's entries (Unix; elsewhere the rename is as durable as it gets).
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Writes `data` to `path` through a synced temporary file and a rename, then syncs the
/// directory entry.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, |out| out.write_all(data))
}

/// [`write_atomically`] with the content written by `write`, through a 64 KiB buffer.
pub(crate) fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, File::create(&tmp)?);
    write(&mut out)?;
    let file = out
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        });
    }
    Ok(())
}

/// The state key of a file path relative to the output directory.
pub(crate) fn key(relative: &Path) -> String {
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Files in `dir` (and its `error/` and `deleted/`) named as fhir-bulk names an export's
/// files (`<Type>.<n>.ndjson[.gz]`, `error/OperationOutcome.<n>.ndjson`,
/// `deleted/Bundle.<n>.ndjson`, their `.part` files and resume sidecars), relative, sorted. Manifest pages and
/// the log are not counted: they are never mistaken for data.
pub(crate) fn export_like_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (sub, only) in [
        (None, None),
        (Some("error"), Some("OperationOutcome")),
        (Some("deleted"), Some("Bundle")),
    ] {
        let folder = sub.map_or_else(|| dir.to_path_buf(), |s| dir.join(s));
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_file()) && is_export_file_name(&name, only) {
                found.push(match sub {
                    Some(sub) => format!("{sub}/{name}"),
                    None => name,
                });
            }
        }
    }
    found.sort();
    found
}

/// Whether `name` is `<Type>.<n>.ndjson`, optionally `.gz` and then `.part` (or its resume
/// sidecar, `.part.resume`), with `<Type>` `only` when given (else letters).
fn is_export_file_name(name: &str, only: Option<&str>) -> bool {
    let name = name
        .strip_suffix(".part.resume")
        .or_else(|| name.strip_suffix(".part"))
        .unwrap_or(name);
    let name = name.strip_suffix(".gz").unwrap_or(name);
    let Some(stem) = name.strip_suffix(".ndjson") else {
        return false;
    };
    let Some((kind, n)) = stem.split_once('.') else {
        return false;
    };
    let kind_ok = match only {
        Some(only) => kind == only,
        None => !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphabetic()),
    };
    kind_ok && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(url: &str) -> FileRecord {
        FileRecord {
            kind: FileKind::Output,
            resource_type: Some("Patient".into()),
            url: UrlId::of(url),
            resources: 2,
            bytes: 100,
            data_bytes: 100,
        }
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StateFile::load(dir.path()).unwrap().is_none());
        let mut state = JobState::new(Phase::Running);
        state.base_url = Some("http://127.0.0.1:1/fhir/".into());
        state.request = Some(ExportRequest::system().types(["Patient"]));
        state.job = Some(JobHandle::new(
            url::Url::parse("http://127.0.0.1:1/fhir/jobs/1").unwrap(),
        ));
        state.files.insert(
            "error/OperationOutcome.1.ndjson".into(),
            FileRecord {
                kind: FileKind::Error,
                resource_type: None,
                url: UrlId::of("http://127.0.0.1:1/fhir/files/1/errors.ndjson"),
                resources: 2,
                bytes: 100,
                data_bytes: 100,
            },
        );
        let mut file = StateFile::new(dir.path(), state.clone());
        file.save().unwrap();
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.files, state.files);
        assert!(back.is_export_of(
            "http://127.0.0.1:1/fhir/",
            &ExportRequest::system().types(["Patient"])
        ));
        assert!(!back.is_export_of(
            "http://127.0.0.1:1/fhir/",
            &ExportRequest::system().types(["Observation"])
        ));
        assert_eq!(back.export_id.len(), 20);

        std::fs::write(StateFile::path_in(dir.path()), b"{not json").unwrap();
        let err = StateFile::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("--fresh"), "{err}");
        StateFile::remove(dir.path()).unwrap();
        StateFile::remove(dir.path()).unwrap();
    }

    #[test]
    fn records_go_to_the_journal_and_the_header_is_written_only_at_milestones() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::new(dir.path(), JobState::new(Phase::Downloading));
        file.save().unwrap();
        let header = std::fs::read(file.path()).unwrap();
        for i in 0..300 {
            let mut r = record(&format!("http://h/{i}"));
            if i % 2 == 0 {
                r.data_bytes = 1_000;
            }
            file.record(&format!("Patient.{i}.ndjson"), r).unwrap();
            // After every record the state on disk is complete.
            let back = StateFile::load(dir.path()).unwrap().unwrap();
            assert_eq!(back.files.len(), i + 1);
        }
        assert_eq!(
            std::fs::read(file.path()).unwrap(),
            header,
            "no header write"
        );
        let journal = std::fs::read(StateFile::journal_in(dir.path())).unwrap();
        let lines: Vec<&[u8]> = journal.split(|&b| b == b'\n').collect();
        assert!(lines[0].starts_with(b"{\"group\":0,"));
        let id = format!("{:?}", UrlId::of("http://h/1"));
        assert_eq!(lines[2], format!("[0,1,\"{id}\",2,100]").as_bytes());
        // One group line, then about 35 bytes a file (those with gzip's size 5 more).
        assert!(journal.len() < 100 + 300 * 36, "{} bytes", journal.len());
        #[cfg(unix)]
        let inode = |path: PathBuf| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).unwrap().ino()
        };
        #[cfg(unix)]
        let before = inode(StateFile::journal_in(dir.path()));
        file.save().unwrap();
        assert_eq!(
            std::fs::read(StateFile::journal_in(dir.path())).unwrap(),
            journal,
            "the journal holds the files: a header write leaves it as it is"
        );
        // Not rewritten either (a rewrite is a new file renamed over it).
        #[cfg(unix)]
        assert_eq!(inode(StateFile::journal_in(dir.path())), before);
        let header = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            !header.contains("Patient."),
            "no file in the header: {header}"
        );
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.files, file.state.files);
        assert_eq!(back.files["Patient.0.ndjson"].data_bytes, 1_000);
        assert_eq!(back.files["Patient.1.ndjson"].data_bytes, 100);
        // Another record after a header write goes on appending.
        file.record("Patient.300.ndjson", record("http://h/300"))
            .unwrap();
        assert_eq!(
            StateFile::load(dir.path()).unwrap().unwrap().files.len(),
            301
        );
    }

    #[test]
    fn the_end_of_the_downloads_is_a_journal_line_and_the_header_is_written_once_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::new(dir.path(), JobState::new(Phase::Downloading));
        file.save().unwrap();
        let header = std::fs::read(file.path()).unwrap();
        for i in 0..3 {
            file.record(
                &format!("Patient.{i}.ndjson"),
                record(&format!("http://h/{i}")),
            )
            .unwrap();
        }
        file.record_complete(7).unwrap();
        assert_eq!(
            std::fs::read(file.path()).unwrap(),
            header,
            "no header write"
        );
        let journal = std::fs::read_to_string(StateFile::journal_in(dir.path())).unwrap();
        assert_eq!(
            journal.lines().last(),
            Some(r#"{"phase":"complete","error_issues":7}"#)
        );
        // A run killed here (before the DELETE or the header write) reads as complete.
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!((back.phase, back.error_issues), (Phase::Complete, 7));
        assert_eq!(back.files.len(), 3);
        // A torn mark is ignored: the downloads are not known to be complete.
        let torn = &journal[..journal.len() - 10];
        std::fs::write(StateFile::journal_in(dir.path()), torn).unwrap();
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!((back.phase, back.files.len()), (Phase::Downloading, 3));
        std::fs::write(StateFile::journal_in(dir.path()), &journal).unwrap();
        // The one header write after it; the journal stays the list of files.
        file.state.job_deleted = true;
        file.save().unwrap();
        assert_eq!(
            std::fs::read_to_string(StateFile::journal_in(dir.path())).unwrap(),
            journal
        );
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.phase, Phase::Complete);
        assert_eq!(back.error_issues, 7);
        assert!(back.job_deleted);
        assert_eq!(back.files, file.state.files);
    }

    #[test]
    fn format_1_headers_and_journals_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let header = serde_json::json!({
            "format": 1, "export_id": "00112233445566778899", "phase": "downloading",
            "files": {"Patient.1.ndjson": {
                "kind": "Output", "resource_type": "Patient", "url": "http://h/1",
                "resources": 2, "bytes": 100, "data_bytes": 100
            }},
        });
        std::fs::write(StateFile::path_in(dir.path()), header.to_string()).unwrap();
        let line = serde_json::json!({
            "key": "Patient.2.ndjson", "kind": "Output", "resource_type": "Patient",
            "url": "http://h/2", "resources": 2, "bytes": 50, "data_bytes": 100
        });
        std::fs::write(StateFile::journal_in(dir.path()), format!("{line}\n")).unwrap();
        let state = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(state.format, FORMAT);
        assert_eq!(state.files["Patient.1.ndjson"], record("http://h/1"));
        assert_eq!(state.files["Patient.2.ndjson"].bytes, 50);
        assert_eq!(state.files["Patient.2.ndjson"].data_bytes, 100);
        let mut newer = header.clone();
        newer["format"] = serde_json::json!(FORMAT + 1);
        std::fs::write(StateFile::path_in(dir.path()), newer.to_string()).unwrap();
        let err = StateFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("--fresh"), "{err}");
    }

    #[test]
    fn format_2_records_name_urls_and_read_as_their_ids() {
        // FNV-1a's published test vectors: the id is fixed by its definition.
        assert_eq!(UrlId::of("").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(UrlId::of("a").0, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(UrlId::of("http://h/1"), UrlId::of("http://h/2"));
        let dir = tempfile::tempdir().unwrap();
        let header = serde_json::json!({
            "format": 2, "export_id": "00112233445566778899", "phase": "downloading",
            "files": {"Patient.1.ndjson": ["Output", "Patient", "http://h/1", 2, 100]},
        });
        std::fs::write(StateFile::path_in(dir.path()), header.to_string()).unwrap();
        std::fs::write(
            StateFile::journal_in(dir.path()),
            "[\"Patient.2.ndjson\",\"Output\",\"Patient\",\"http://h/2\",2,100]\n",
        )
        .unwrap();
        let state = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(state.files["Patient.1.ndjson"], record("http://h/1"));
        assert_eq!(state.files["Patient.2.ndjson"], record("http://h/2"));
        assert!(!state.journal_whole, "the header held files");
        // Written back as format 4: the header without files, the journal with every record,
        // the ids as 16 hex digits, read back the same.
        let mut file = StateFile::new(dir.path(), state.clone());
        file.save().unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            !text.contains("http://h/") && !text.contains("Patient."),
            "{text}"
        );
        let journal = std::fs::read_to_string(StateFile::journal_in(dir.path())).unwrap();
        let id = format!("{:016x}", UrlId::of("http://h/1").0);
        assert!(
            journal.contains(&format!("\n[0,1,\"{id}\",2,100]\n")),
            "{journal}"
        );
        assert!(!journal.contains("http://h/"), "{journal}");
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert!(back.journal_whole);
        assert_eq!((back.format, back.files), (4, state.files));
    }

    #[test]
    fn a_torn_last_journal_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::new(dir.path(), JobState::new(Phase::Downloading));
        file.state
            .files
            .insert("Patient.1.ndjson".into(), record("http://h/1"));
        file.save().unwrap();
        let mut encoder = Encoder::default();
        let mut line = |key: &str| {
            let mut line = Vec::new();
            encoder
                .encode(key, &record("http://h/x"), &mut line)
                .unwrap();
            line
        };
        // After the journal the header write left (Patient.1).
        let mut journal = std::fs::read(StateFile::journal_in(dir.path())).unwrap();
        journal.extend(line("Patient.2.ndjson"));
        let torn = line("Patient.3.ndjson");
        for cut in 0..torn.len() {
            let mut bytes = journal.clone();
            bytes.extend_from_slice(&torn[..cut]);
            std::fs::write(StateFile::journal_in(dir.path()), &bytes).unwrap();
            let state = StateFile::load(dir.path()).unwrap().unwrap();
            let keys: Vec<&String> = state.files.keys().collect();
            assert_eq!(
                keys,
                ["Patient.1.ndjson", "Patient.2.ndjson"],
                "cut at {cut}"
            );
        }
        journal.extend_from_slice(&torn);
        std::fs::write(StateFile::journal_in(dir.path()), &journal).unwrap();
        assert_eq!(StateFile::load(dir.path()).unwrap().unwrap().files.len(), 3);
    }

    /// A run that found a torn last line rewrites the journal before appending to it: a line
    /// appended after the torn one would be lost on the next load.
    #[test]
    fn records_after_a_torn_line_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::new(dir.path(), JobState::new(Phase::Downloading));
        file.save().unwrap();
        file.record("Patient.1.ndjson", record("http://h/1"))
            .unwrap();
        drop(file);
        let journal = StateFile::journal_in(dir.path());
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes.extend_from_slice(b"[0,2,\"01234");
        std::fs::write(&journal, &bytes).unwrap();
        let state = StateFile::load(dir.path()).unwrap().unwrap();
        assert!(!state.journal_whole);
        let mut file = StateFile::new(dir.path(), state);
        file.record("Patient.3.ndjson", record("http://h/3"))
            .unwrap();
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert!(back.journal_whole);
        let keys: Vec<&String> = back.files.keys().collect();
        assert_eq!(keys, ["Patient.1.ndjson", "Patient.3.ndjson"]);
        // A load of a whole journal appends to it as it is.
        let before = std::fs::read(&journal).unwrap();
        let mut file = StateFile::new(dir.path(), back);
        file.record("Patient.4.ndjson", record("http://h/4"))
            .unwrap();
        let after = std::fs::read(&journal).unwrap();
        assert_eq!(&after[..before.len()], &before[..]);
        assert_eq!(StateFile::load(dir.path()).unwrap().unwrap().files.len(), 3);
    }

    /// Records forgotten (files an earlier manifest listed) leave the journal with the next
    /// header write; with nothing forgotten the journal is not rewritten.
    #[test]
    fn forgotten_records_leave_the_journal_at_the_next_header_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::new(dir.path(), JobState::new(Phase::Downloading));
        for i in 1..=3 {
            file.record(&format!("Patient.{i}.ndjson"), record("http://h/1"))
                .unwrap();
        }
        let journal = StateFile::journal_in(dir.path());
        let before = std::fs::read(&journal).unwrap();
        let all: std::collections::HashSet<String> = file.state.files.keys().cloned().collect();
        file.forget_unlisted(&all);
        file.save().unwrap();
        assert_eq!(std::fs::read(&journal).unwrap(), before);
        let listed = ["Patient.2.ndjson".to_owned()].into_iter().collect();
        file.forget_unlisted(&listed);
        file.save().unwrap();
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        let keys: Vec<&String> = back.files.keys().collect();
        assert_eq!(keys, ["Patient.2.ndjson"]);
    }

    #[test]
    fn keys_outside_the_directory_are_refused() {
        for bad in [
            "../../x",
            "/etc/passwd",
            "a/../../b",
            "./a",
            "a//b",
            "",
            "C:\\x",
            "c:x",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(!is_safe_key(bad), "{bad:?}");
        }
        for good in [
            "Patient.1.ndjson",
            "error/OperationOutcome.1.ndjson",
            "a..b",
        ] {
            assert!(is_safe_key(good), "{good:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut state = JobState::new(Phase::Downloading);
        state.files.insert("../../x".into(), record("http://h/1"));
        StateFile::new(dir.path(), state).save().unwrap();
        let err = StateFile::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("../../x") && err.contains("--output-dir"),
            "{err}"
        );

        let mut file = StateFile::new(dir.path(), JobState::new(Phase::Downloading));
        file.save().unwrap();
        let mut line = Vec::new();
        Encoder::default()
            .encode("/tmp/x", &record("http://h/1"), &mut line)
            .unwrap();
        std::fs::write(StateFile::journal_in(dir.path()), line).unwrap();
        let err = StateFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("/tmp/x"), "{err}");
    }

    #[test]
    fn export_file_names() {
        assert!(is_export_file_name("Patient.1.ndjson", None));
        assert!(is_export_file_name("Patient.12.ndjson.gz.part", None));
        assert!(is_export_file_name("Patient.12.ndjson.part.resume", None));
        assert!(!is_export_file_name("Patient.12.ndjson.resume", None));
        assert!(is_export_file_name(
            "OperationOutcome.1.ndjson",
            Some("OperationOutcome")
        ));
        assert!(!is_export_file_name(
            "Bundle.1.ndjson",
            Some("OperationOutcome")
        ));
        assert!(!is_export_file_name("notes.txt", None));
        assert!(!is_export_file_name("manifest.json", None));
        assert!(!is_export_file_name("log.ndjson", None));
        assert!(!is_export_file_name("Patient.x.ndjson", None));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("error")).unwrap();
        for name in [
            "Patient.1.ndjson",
            "error/OperationOutcome.1.ndjson",
            "Patient.2.ndjson.part",
            "Patient.2.ndjson.part.resume",
            "manifest.json",
            "x.txt",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(
            export_like_files(dir.path()),
            [
                "Patient.1.ndjson",
                "Patient.2.ndjson.part",
                "Patient.2.ndjson.part.resume",
                "error/OperationOutcome.1.ndjson"
            ]
        );
    }

    #[test]
    fn keys_use_slashes() {
        let p = Path::new("error").join("OperationOutcome.1.ndjson");
        assert_eq!(key(&p), "error/OperationOutcome.1.ndjson");
    }
}
