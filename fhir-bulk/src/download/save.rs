//! Saving an export's files to a directory, for tools that store rather than process.
//!
//! Each file is written under a temporary name (`<name>.part`) and renamed when it is
//! complete: every line checked whole (one JSON object, valid UTF-8, nothing after it), the
//! body's end proven by its framing, the line count checked against the manifest. So a reader
//! never sees half a file, and bad data is never saved as good.
//!
//! A `.part` is kept when the download is interrupted (the future dropped, the network gone,
//! the disk full), with a small sidecar (`<name>.part.resume`) saying how far its whole lines
//! got in the server's file and which representation it was (`ETag` / `Last-Modified`). The
//! next [`BulkClient::save_file`] of the same file (in this process or another) keeps those
//! lines and continues after them: with `Range` + `If-Range` when the server offers ranges,
//! otherwise by reading the file again and skipping the lines it already has. A permanent
//! failure (a bad line, a count far over the manifest's, an expired or refused file) removes
//! the `.part` and its sidecar. With [`SaveOptions::gzip`] the `.part` is a multi-member gzip
//! file (RFC 1952; `gunzip`, flate2's `MultiGzDecoder` and Python's `gzip` read it whole): a
//! member ends about every MiB of NDJSON and the sidecar records that end,
//! so a resume cuts the `.part` back to it and appends new members. A file the server sends
//! with `Content-Encoding: gzip` is resumed from its decoded bytes: with a `Range` over the
//! identity representation pinned by `Last-Modified` (the coded representation's `ETag`
//! cannot pin the identity one), otherwise by skipping lines.
//!
//! A progress callback ([`SaveOptions::with_progress`]) reports lines and bytes while a file
//! is written, a per-file hook ([`SaveOptions::with_on_file`]) reports each file started,
//! saved, skipped or failed, and [`CompletedExport::from_manifests`](crate::CompletedExport::from_manifests) rebuilds an export from stored manifest
//! pages, so that the files of an export saved earlier (its `manifest.json`) can be fetched
//! again without the server's status URL.

use super::body::ResumeFrom;
use super::lines::{LineEvent, LineStart, line_reader_from};
use super::write_behind::{Encoder, Target, WriteBehind, encoder, put};
use super::{
    DownloadOptions, InvalidLines, check_count, check_raw_line, info_for, line_error, request_for,
};
use crate::client::BulkClient;
use crate::error::{Error, LineErrorKind, Result};
use crate::manifest::{CompletedExport, ExportFile, FileKind};
use crate::ndjson::Checkpoint;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How [`BulkClient::save_export`] writes files.
#[non_exhaustive]
#[derive(Clone, Default)]
pub struct SaveOptions {
    /// Write `.ndjson.gz` instead of `.ndjson`. Default false.
    pub gzip: bool,
    /// Leave files that already exist under their final name alone (resuming a save).
    /// Default false.
    pub skip_existing: bool,
    /// How files are downloaded. Under [`InvalidLines::Report`] a bad line is left out of the
    /// saved file and reported in [`SavedFile::warnings`]; under [`InvalidLines::Stop`] it
    /// fails the file.
    pub download: DownloadOptions,
    /// Called while each file is written, with the file's final path, the lines written so
    /// far and the NDJSON bytes received so far (lines and their line ends, before any
    /// compression): after every 64 KiB of data or so, and once more with the totals when the
    /// file is complete (before it is renamed). Not called for skipped files. Default none.
    #[allow(clippy::type_complexity)]
    pub on_progress: Option<SaveProgress>,
    /// Called by [`BulkClient::save_export`] when a file starts, is saved or skipped, or
    /// fails. Default none.
    pub on_file: Option<SaveHook>,
    /// Decides which files [`BulkClient::save_export`] leaves alone (reported as skipped),
    /// e.g. those an earlier run recorded as complete. Default none (only
    /// [`SaveOptions::skip_existing`] applies).
    pub skip: Option<SkipFn>,
    /// [`BulkClient::save_export`] goes on with the other files when one fails, and lists
    /// the failures in [`SaveReport::failed`] instead of returning the first error. Default
    /// false.
    pub keep_going: bool,
    /// Whether files are synced to the disk before they are final. Default
    /// [`Durability::Synced`].
    pub durability: Durability,
}

/// Whether [`BulkClient::save_export`] (and every save) syncs files to the disk before it
/// reports them saved.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Each file's data is synced (`fdatasync`) before the rename that gives it its final
    /// name, and its directory after: a file reported saved survives a power cut. The
    /// syncs run on the blocking pool, never on a download's slot.
    #[default]
    Synced,
    /// Nothing is synced. A file still gets its final name only when every line in it is
    /// whole and checked, and it survives the process being killed (the kernel holds what was
    /// written), but an operating-system crash or a power cut can lose or empty files already
    /// reported saved, until the kernel writes them back (within about 30 s on Linux by
    /// default). For scratch disks, file systems where a sync is slow and the next step
    /// re-runs anyway, and comparisons with tools that do not sync.
    Unsynced,
}

/// A progress callback: `(path, lines, data_bytes)` of the file being saved.
pub type SaveProgress = Arc<dyn Fn(&Path, u64, u64) + Send + Sync>;

/// A per-file hook: see [`SaveOptions::with_on_file`].
pub type SaveHook = Arc<dyn Fn(&SaveEvent<'_>) + Send + Sync>;

/// A skip predicate: `(file, final path)`; see [`SaveOptions::with_skip`].
pub type SkipFn = Arc<dyn Fn(&ExportFile, &Path) -> bool + Send + Sync>;

/// What [`SaveOptions::on_file`] is told.
#[non_exhaustive]
#[derive(Debug)]
pub enum SaveEvent<'a> {
    /// The download of a file starts.
    Started {
        /// The manifest entry.
        file: &'a ExportFile,
        /// Where it is saved.
        path: &'a Path,
    },
    /// A file was saved (check its [`SavedFile::warnings`]) or skipped.
    Finished(&'a SavedFile),
    /// A file failed. Its `.part` is kept for a resume when the failure was an interruption
    /// (network, disk), removed when it was permanent.
    Failed {
        /// The manifest entry.
        file: &'a ExportFile,
        /// Where it would have been saved.
        path: &'a Path,
        /// Why.
        error: &'a Error,
    },
}

/// How much NDJSON data [`SaveOptions::on_progress`] waits for between two calls.
const PROGRESS_EVERY_BYTES: u64 = 64 * 1024;

fn same_arc<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl fmt::Debug for SaveOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaveOptions")
            .field("gzip", &self.gzip)
            .field("skip_existing", &self.skip_existing)
            .field("download", &self.download)
            .field("on_progress", &self.on_progress.as_ref().map(|_| "Fn"))
            .field("on_file", &self.on_file.as_ref().map(|_| "Fn"))
            .field("skip", &self.skip.as_ref().map(|_| "Fn"))
            .field("keep_going", &self.keep_going)
            .field("durability", &self.durability)
            .finish()
    }
}

/// Two options are equal when their settings are, and they share the same callbacks (the
/// same `Arc`s) or both have none.
impl PartialEq for SaveOptions {
    fn eq(&self, other: &Self) -> bool {
        self.gzip == other.gzip
            && self.skip_existing == other.skip_existing
            && self.download == other.download
            && self.keep_going == other.keep_going
            && self.durability == other.durability
            && same_arc(&self.on_progress, &other.on_progress)
            && same_arc(&self.on_file, &other.on_file)
            && same_arc(&self.skip, &other.skip)
    }
}

impl Eq for SaveOptions {}

impl SaveOptions {
    /// Sets [`SaveOptions::gzip`].
    #[must_use]
    pub fn with_gzip(mut self, gzip: bool) -> Self {
        self.gzip = gzip;
        self
    }

    /// Sets [`SaveOptions::skip_existing`].
    #[must_use]
    pub fn with_skip_existing(mut self, skip: bool) -> Self {
        self.skip_existing = skip;
        self
    }

    /// Sets [`SaveOptions::download`].
    #[must_use]
    pub fn with_download(mut self, download: DownloadOptions) -> Self {
        self.download = download;
        self
    }

    /// Sets [`SaveOptions::keep_going`].
    #[must_use]
    pub fn with_keep_going(mut self, keep_going: bool) -> Self {
        self.keep_going = keep_going;
        self
    }

    /// Sets [`SaveOptions::durability`].
    ///
    /// ```
    /// use fhir_bulk::download::{Durability, SaveOptions};
    ///
    /// // A scratch disk: no syncs (a power cut can take back files reported saved).
    /// let options = SaveOptions::default().with_durability(Durability::Unsynced);
    /// assert_eq!(options.durability, Durability::Unsynced);
    /// assert_eq!(SaveOptions::default().durability, Durability::Synced);
    /// ```
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets [`SaveOptions::on_progress`]: `progress(path, lines, data_bytes)` is called while
    /// each file is written, e.g. to drive a progress bar.
    ///
    /// ```
    /// use fhir_bulk::download::SaveOptions;
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// let lines = Arc::new(AtomicU64::new(0));
    /// let seen = lines.clone();
    /// let options = SaveOptions::default()
    ///     .with_progress(move |_path, n, _bytes| seen.store(n, Ordering::Relaxed));
    /// assert!(options.on_progress.is_some());
    /// ```
    #[must_use]
    pub fn with_progress(
        mut self,
        progress: impl Fn(&Path, u64, u64) + Send + Sync + 'static,
    ) -> Self {
        self.on_progress = Some(Arc::new(progress));
        self
    }

    /// Sets [`SaveOptions::on_file`]: `hook(event)` is called by
    /// [`BulkClient::save_export`] as each file starts, is saved or skipped, or fails, so a
    /// tool can log, record and report each file without its own download loop.
    ///
    /// ```
    /// use fhir_bulk::download::{SaveEvent, SaveOptions};
    ///
    /// let options = SaveOptions::default().with_on_file(|event| match event {
    ///     SaveEvent::Finished(saved) => {
    ///         println!("{}: {} lines", saved.path.display(), saved.lines);
    ///         for warning in &saved.warnings {
    ///             println!("  warning: {warning}");
    ///         }
    ///     }
    ///     SaveEvent::Failed { path, error, .. } => println!("{}: {error}", path.display()),
    ///     _ => {}
    /// });
    /// assert!(options.on_file.is_some());
    /// ```
    #[must_use]
    pub fn with_on_file(mut self, hook: impl Fn(&SaveEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_file = Some(Arc::new(hook));
        self
    }

    /// Sets [`SaveOptions::skip`]: files for which `skip(file, path)` is true are left alone
    /// by [`BulkClient::save_export`] and reported as skipped.
    #[must_use]
    pub fn with_skip(
        mut self,
        skip: impl Fn(&ExportFile, &Path) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.skip = Some(Arc::new(skip));
        self
    }
}

/// Something about a saved file that did not stop it being saved.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveWarning {
    /// An error or deleted file holds a different number of lines than the manifest's
    /// `count` (the SMART reference server, for one, puts the number of resources exported in
    /// each error entry while the file holds one `OperationOutcome`). The file is saved as the
    /// server sent it.
    CountMismatch {
        /// The manifest's `count`.
        expected: u64,
        /// Lines in the file.
        actual: u64,
    },
    /// A line left out of the saved file under [`InvalidLines::Report`].
    InvalidLine {
        /// Its 1-based line number in the server's file.
        line: u64,
        /// What is wrong with it.
        kind: LineErrorKind,
        /// Details.
        message: String,
    },
}

impl fmt::Display for SaveWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaveWarning::CountMismatch { expected, actual } => write!(
                f,
                "the manifest says {expected} resources, the file holds {actual} lines \
                 (saved as sent)"
            ),
            SaveWarning::InvalidLine {
                line,
                kind,
                message,
            } => write!(f, "line {line} left out ({kind}): {message}"),
        }
    }
}

/// A file written by [`BulkClient::save_export`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFile {
    /// Where it is.
    pub path: PathBuf,
    /// Output, error or deleted.
    pub kind: FileKind,
    /// The manifest entry's `type`.
    pub resource_type: Option<String>,
    /// The file URL, without its query string.
    pub url: String,
    /// Lines written (0 when skipped), including those a resumed `.part` already held.
    pub lines: u64,
    /// Bytes written, after compression (0 when skipped).
    pub bytes: u64,
    /// NDJSON bytes of the saved lines: the lines and their line ends, before any
    /// compression (0 when skipped). Equal to [`SavedFile::bytes`] without gzip.
    pub data_bytes: u64,
    /// Whether it existed already and was left alone.
    pub skipped: bool,
    /// Bytes of the file kept from a `.part` of an earlier, interrupted download (0 when it
    /// started from scratch).
    pub resumed_bytes: u64,
    /// What was odd about it (it was saved anyway).
    pub warnings: Vec<SaveWarning>,
}

/// A file [`BulkClient::save_export`] could not save under [`SaveOptions::keep_going`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedFile {
    /// Where it would have been saved.
    pub path: PathBuf,
    /// The file URL, without its query string.
    pub url: String,
    /// The error's message (the typed error went to [`SaveOptions::on_file`]).
    pub message: String,
    /// Whether its `.part` was kept for a resume (an interruption, not a permanent failure).
    pub resumable: bool,
}

/// What [`BulkClient::save_export`] wrote.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// One entry per manifest file saved or skipped, in manifest order.
    pub files: Vec<SavedFile>,
    /// With [`SaveOptions::keep_going`], the files that failed, in manifest order.
    pub failed: Vec<FailedFile>,
}

/// The relative path each file of an export is saved under: `<Type>.<n>.ndjson` for output
/// (n counting from 1 per type, in manifest order; organized output is named after the
/// organizing type), `error/OperationOutcome.<n>.ndjson` and `deleted/Bundle.<n>.ndjson`;
/// `.gz` appended when `gzip`.
///
/// The pairs are made as they are taken (like [`CompletedExport::iter_files`]), so a
/// manifest of 100,000 files is not copied to be named; `.collect()` them for a list.
pub fn file_names(
    export: &CompletedExport,
    gzip: bool,
) -> impl Iterator<Item = (ExportFile, PathBuf)> + '_ {
    let mut counters: HashMap<(FileKind, String), u32> = HashMap::new();
    let ext = if gzip { "ndjson.gz" } else { "ndjson" };
    export.iter_files().map(move |file| {
        let (dir, name) = match file.kind {
            FileKind::Output => (
                None,
                file.file
                    .resource_type
                    .clone()
                    .or_else(|| file.organized_by.clone())
                    .filter(|t| crate::validate::is_resource_type(t))
                    .unwrap_or_else(|| "output".to_owned()),
            ),
            FileKind::Error => (Some("error"), "OperationOutcome".to_owned()),
            FileKind::Deleted => (Some("deleted"), "Bundle".to_owned()),
        };
        let n = counters.entry((file.kind, name.clone())).or_insert(0);
        *n += 1;
        let mut path = PathBuf::new();
        if let Some(dir) = dir {
            path.push(dir);
        }
        path.push(format!("{name}.{n}.{ext}"));
        (file, path)
    })
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Whether a failed save leaves its `.part` for a resume: yes after an interruption (network,
/// retries used up, disk, authentication), no when the file itself is wrong or gone.
pub(crate) fn keeps_part(error: &Error) -> bool {
    !matches!(
        error,
        Error::InvalidLine { .. }
            | Error::CountMismatch { .. }
            | Error::FileExpired { .. }
            | Error::UnexpectedResponse { .. }
            | Error::UntrustedOrigin { .. }
            | Error::UnsupportedFileUrl { .. }
            | Error::BadManifest { .. }
            | Error::InvalidConfig { .. }
    )
}

/// The sidecar of a `.part`: how far its whole lines got and how to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ResumeState {
    /// Format version.
    version: u32,
    /// The file URL without its query (the `.part` belongs to this file).
    url: String,
    /// The `.part` bytes this state describes (more may have been written after it).
    part_bytes: u64,
    /// Lines and NDJSON bytes in those bytes.
    lines: u64,
    data_bytes: u64,
    /// Lines counted against `count` so far (bad lines and block headers included).
    counted: u64,
    /// The reader's place in the server's file: offset just past the last whole line, the
    /// number of the line starting there, lines delivered before it.
    offset: u64,
    line: u64,
    lines_delivered: u64,
    /// `ETag` / `Last-Modified` for `If-Range` when the server offers identity ranges.
    validator: Option<String>,
    /// The `.part` is gzip (a [`SaveOptions::gzip`] save): `part_bytes` is the end of a gzip
    /// member. Absent (false) in sidecars of earlier versions, which only identity saves wrote.
    #[serde(default)]
    gzip: bool,
}

const RESUME_VERSION: u32 = 1;

/// Where the save stands after a line: copied per line (no allocation), turned into a
/// [`ResumeState`] only when the lines are flushed.
#[derive(Debug, Clone, Copy)]
struct Place {
    lines: u64,
    data_bytes: u64,
    counted: u64,
    after: Checkpoint,
}

pub(super) fn sidecar_path(part: &Path) -> PathBuf {
    with_suffix(part, ".resume")
}

/// `path` with `suffix` appended to its file name (`a.ndjson` + `.part` = `a.ndjson.part`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Decides whether a kept `.part` can be continued: its sidecar must be for this file, and the
/// `.part` must hold at least the bytes the sidecar describes. Pure: no I/O.
fn usable_resume(state: &ResumeState, url: &str, gzip: bool, part_len: u64) -> bool {
    state.version == RESUME_VERSION
        && state.url == url
        && state.gzip == gzip
        && part_len >= state.part_bytes
        && state.line >= 1
        && state.lines <= state.counted
}

/// What a save finds on disk before it starts.
enum Found {
    /// A kept `.part` to continue, described by its sidecar.
    Resume(ResumeState),
    /// Nothing to continue: the `.part`, created (empty) in the same trip, a stale sidecar
    /// removed.
    Created(std::fs::File),
}

/// Makes the file's directory, reads what an earlier save left and, when there is nothing to
/// continue, creates the `.part` (blocking: one trip to the blocking pool for all of it, which
/// for a small file is most of its file work).
fn prepare(path: &Path, part: &Path, url: &str, gzip: bool) -> Result<Found> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        std::fs::create_dir_all(parent).map_err(|e| io_error("creating directory", parent, e))?;
    }
    let (resume, sidecar) = match std::fs::read(sidecar_path(part)) {
        Err(_) => (None, false),
        Ok(text) => {
            let resume = serde_json::from_slice::<ResumeState>(&text)
                .ok()
                .zip(std::fs::metadata(part).ok())
                .filter(|(state, meta)| usable_resume(state, url, gzip, meta.len()))
                .map(|(state, _)| state);
            (resume, true)
        }
    };
    if let Some(state) = resume {
        return Ok(Found::Resume(state));
    }
    // A fresh start: a stale sidecar goes before its `.part` is emptied.
    if sidecar {
        let _ = std::fs::remove_file(sidecar_path(part));
    }
    let created = std::fs::File::create(part).map_err(|e| io_error("creating", part, e))?;
    Ok(Found::Created(created))
}

async fn remove_part(part: &Path) {
    let _ = tokio::fs::remove_file(part).await;
    let _ = tokio::fs::remove_file(sidecar_path(part)).await;
}

/// Buffers lines and writes them to a file (compressed on the way, for a gzip save); records
/// how to resume it.
struct Sink {
    /// The `.part`, written behind: the next buffer fills while the last one is written (and
    /// compressed, for a gzip save, on the same trip to the blocking pool).
    file: WriteBehind,
    path: PathBuf,
    /// Whether the `.part` is gzip ([`SaveOptions::gzip`]).
    gzip: bool,
    /// NDJSON bytes given to the current gzip member (buffered ones included).
    member_in: u64,
    /// Lines not handed to the file yet.
    buffer: Vec<u8>,
    /// Where the save stands after the last buffered line.
    pending: Option<Place>,
    /// Where the save will stand once the running write is in the file: recorded in the
    /// sidecar once that write is done (when the next write starts, or at once for a gzip
    /// member end), with the `.part`'s size then, so a sidecar never names bytes the file may
    /// not have yet.
    behind: Option<Place>,
    /// For the sidecar: the file URL without its query, and the validator of the
    /// representation being read when it can be resumed with a range.
    url: String,
    validator: Option<String>,
    /// Whether this file has a sidecar on disk (written by this save or the one it resumes).
    sidecar: bool,
    /// The NDJSON bytes the last sidecar describes.
    checkpointed: u64,
}

const FLUSH_AT: usize = 256 * 1024;

/// NDJSON bytes between two sidecars, at least (a gzip save's members hold as much, so each
/// member end gets one): a resume after a crash reads again at most this much more than the
/// `.part` holds, and a big file rewrites its sidecar once per MiB, not once per write (each
/// rewrite costs an open, a truncation and a write: a sidecar per 256 KiB cost about a fifth
/// of the system time of a 1 GB download without syncs).
const CHECKPOINT_BYTES: u64 = 1024 * 1024;

/// NDJSON bytes per gzip member of a [`SaveOptions::gzip`] save, at least (a member ends with
/// the first buffer written past it): each member end is a resume point. Deflate's window is
/// 32 KiB, so a new member every MiB costs little of the compressed size (1.5% on a synthetic
/// file that compresses 11x, `tests/gzip_resume.rs`).
pub(crate) const GZIP_MEMBER_BYTES: u64 = 1024 * 1024;

/// A written file's last bytes, handed to the trip that syncs or finishes it.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// The lines not written yet (NDJSON, compressed by that trip for a gzip save).
    lines: Vec<u8>,
    /// A gzip save's current member, to compress `lines` into and end; `None` for NDJSON,
    /// and for a gzip file ending at a member end (nothing since: no empty member). Boxed:
    /// a deflate state's fields are large to move around with every written file.
    member: Option<Box<Encoder>>,
    /// The `.part`'s length before the tail.
    part_len: u64,
}

impl Tail {
    /// An NDJSON file's tail: `lines` after the `.part`'s `part_len` bytes.
    #[cfg(test)]
    fn ndjson(lines: Vec<u8>, part_len: u64) -> Tail {
        Tail {
            lines,
            member: None,
            part_len,
        }
    }
}

impl Sink {
    /// A sink writing `path` from its start into `target`: the file the caller has just
    /// created (empty), or [`Target::Create`], created (or emptied) by the first write, or by
    /// the trip that finishes the file when the lines all fit in the buffer: a small file
    /// costs no trip to the blocking pool of its own before its last.
    fn create(path: &Path, target: Target, gzip: bool, url: String) -> Sink {
        Sink {
            file: WriteBehind::new(target, 0, gzip.then(encoder)),
            path: path.to_owned(),
            gzip,
            member_in: 0,
            buffer: Vec::new(), // grows to FLUSH_AT for a big file; a one-line file needs a few bytes
            pending: None,
            behind: None,
            url,
            validator: None,
            sidecar: false,
            checkpointed: 0,
        }
    }

    /// Opens a kept `.part` cut to the bytes its resume state describes (for gzip, the end of
    /// its last whole member: new members follow).
    async fn reopen(path: &Path, state: &ResumeState) -> Result<Sink> {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .map_err(|e| io_error("opening", path, e))?;
        file.set_len(state.part_bytes)
            .await
            .map_err(|e| io_error("truncating", path, e))?;
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::End(0))
            .await
            .map_err(|e| io_error("seeking", path, e))?;
        let target = Target::Open(file.into_std().await);
        Ok(Sink {
            file: WriteBehind::new(target, state.part_bytes, state.gzip.then(encoder)),
            path: path.to_owned(),
            gzip: state.gzip,
            member_in: 0,
            buffer: Vec::with_capacity(FLUSH_AT),
            pending: None,
            behind: None,
            url: state.url.clone(),
            validator: state.validator.clone(),
            sidecar: true,
            checkpointed: state.data_bytes,
        })
    }

    /// Buffers one line; `place` is where the save stands once it is written. Whether a
    /// write is due: then call [`write_due`](Self::write_due) before the next line (a line's
    /// path costs no future when none is).
    fn buffer_line(&mut self, line: &[u8], place: Place) -> Result<bool> {
        self.pending = Some(place);
        self.buffer.extend_from_slice(line);
        self.buffer.push(b'\n');
        if self.gzip {
            self.member_in += line.len() as u64 + 1;
        }
        Ok(self.buffer.len() >= FLUSH_AT)
    }

    /// The write [`buffer_line`](Self::buffer_line) said is due: the buffer, which for a
    /// gzip save ends the member once it holds [`GZIP_MEMBER_BYTES`].
    async fn write_due(&mut self) -> Result<()> {
        if self.buffer.len() < FLUSH_AT {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buffer);
        let end_member = self.gzip && self.member_in >= GZIP_MEMBER_BYTES;
        // Inside a gzip member is not a place to resume from.
        let place = self.pending.take().filter(|_| !self.gzip || end_member);
        self.buffer = self.write(chunk, place, end_member).await?;
        if end_member {
            self.member_in = 0;
            // A member end is where a gzip save resumes: recorded as soon as the member is in
            // the file (once per MiB of NDJSON), not at the next write, a member later.
            self.file
                .wait()
                .await
                .map_err(|e| io_error("writing", &self.path, e))?;
            self.record_behind()?;
        }
        Ok(())
    }

    /// Buffers one line and writes what is due.
    #[cfg(test)]
    async fn line(&mut self, line: &[u8], place: Place) -> Result<()> {
        if self.buffer_line(line, place)? {
            self.write_due().await?;
        }
        Ok(())
    }

    /// Hands `data` to the file once the running write is done, and records in the sidecar
    /// how to resume after that running write (its bytes are in the file now). `place`,
    /// when the data ends at a place to resume from, is recorded once this write is in.
    /// Returns an empty buffer to fill next.
    async fn write(
        &mut self,
        data: Vec<u8>,
        place: Option<Place>,
        end_member: bool,
    ) -> Result<Vec<u8>> {
        let spare = self
            .file
            .write(data, end_member)
            .await
            .map_err(|e| io_error("writing", &self.path, e))?;
        self.record_behind()?;
        self.behind = place;
        Ok(spare)
    }

    /// Records in the sidecar the place the last finished write reached, when it is at least
    /// [`CHECKPOINT_BYTES`] past the last sidecar's (call it only once that write is done:
    /// the file's length is then where that place ends).
    fn record_behind(&mut self) -> Result<()> {
        if let Some(done) = self.behind.take()
            && done.data_bytes - self.checkpointed >= CHECKPOINT_BYTES
        {
            self.checkpoint(&done, self.file.len())?;
            self.checkpointed = done.data_bytes;
        }
        Ok(())
    }

    /// Records in the sidecar how to resume after the `part_bytes` in the file, which end
    /// after a whole line (and for gzip after a whole member) at `place`.
    fn checkpoint(&mut self, place: &Place, part_bytes: u64) -> Result<()> {
        let state = ResumeState {
            version: RESUME_VERSION,
            url: self.url.clone(),
            part_bytes,
            lines: place.lines,
            data_bytes: place.data_bytes,
            counted: place.counted,
            offset: place.after.offset,
            line: place.after.line,
            lines_delivered: place.after.lines_delivered,
            validator: self.validator.clone(),
            gzip: self.gzip,
        };
        let sidecar = sidecar_path(&self.path);
        let text = serde_json::to_vec(&state).unwrap_or_default();
        // A few hundred bytes every MiB or so, written in place rather than on the blocking
        // pool: a future dropped here cannot leave the write running behind it, so the
        // sidecar on disk is always the last one this save wrote.
        std::fs::write(&sidecar, text).map_err(|e| io_error("writing", &sidecar, e))?;
        self.sidecar = true;
        Ok(())
    }

    /// The end of the lines, handing the file over (not yet synced: the finisher syncs it
    /// before the rename): whether it has a sidecar, the file (every earlier write done;
    /// still to create when none was), and its [`Tail`], the last buffered lines (and gzip
    /// member). The tail is written on the trip to the blocking pool that syncs or finishes
    /// the file ([`sync_written`]), not on one of its own: a small file's lines all go out
    /// there, one trip fewer per file.
    async fn finish(self) -> Result<(bool, Target, Tail)> {
        let (target, part_len, member) = self
            .file
            .into_target()
            .await
            .map_err(|e| io_error("writing", &self.path, e))?;
        // Nothing since the last member (a resumed file, or one ending at a member end): no
        // empty member. A file without any line still gets one.
        let member = member
            .filter(|_| self.member_in > 0 || part_len == 0)
            .map(Box::new);
        let tail = Tail {
            lines: self.buffer,
            member,
            part_len,
        };
        Ok((self.sidecar, target, tail))
    }
}

/// Counters of one save.
#[derive(Default)]
struct Tally {
    lines: u64,
    data_bytes: u64,
    warnings: Vec<SaveWarning>,
}

impl BulkClient {
    /// Downloads one file to `path` (written as `path` + `.part`, renamed when complete and
    /// checked), continuing a `.part` an interrupted earlier download left, in this process
    /// or another: with `Range` + `If-Range` when the server offers ranges, otherwise by
    /// reading the file again and skipping the lines the `.part` holds (gzip saves too, from
    /// the last gzip member end; see [`SavedFile::resumed_bytes`]). A permanent failure removes the `.part`.
    ///
    /// Within one process, do not start a second save of the same path while a dropped one
    /// may still have a file operation on tokio's blocking pool (one write or rename); after
    /// a process exits, or once its runtime is dropped, resuming is always safe.
    pub async fn save_file(
        &self,
        file: &ExportFile,
        path: &Path,
        options: &SaveOptions,
    ) -> Result<SavedFile> {
        save_one(self.clone(), file.clone(), path.to_owned(), options.clone()).await
    }

    /// Downloads every file of an export (output, error and deleted, all manifest pages)
    /// into `dir`, named by [`file_names`], [`DownloadOptions::concurrency`] at a time,
    /// telling [`SaveOptions::on_file`] about each: a [`Saver`](super::Saver) fed with
    /// every file. Without [`SaveOptions::keep_going`] the first failure ends it (the other
    /// downloads are aborted, their `.part` files kept). The future is `Send`: it can be
    /// spawned.
    pub async fn save_export(
        &self,
        export: &CompletedExport,
        dir: &Path,
        options: &SaveOptions,
    ) -> Result<SaveReport> {
        self.save_all(file_names(export, options.gzip), dir, options)
            .await
    }

    /// Saves `jobs` (files and their names) through one [`Saver`](super::Saver), fed as it
    /// drains, so the files waiting hold memory for a few entries, not for the manifest.
    pub(crate) async fn save_all(
        &self,
        mut jobs: impl Iterator<Item = (ExportFile, PathBuf)>,
        dir: &Path,
        options: &SaveOptions,
    ) -> Result<SaveReport> {
        let mut saver = super::Saver::new(self, dir, options.clone());
        let mut files: Vec<Option<SavedFile>> = Vec::new();
        let mut failed: Vec<(usize, FailedFile)> = Vec::new();
        loop {
            saver.feed(&mut jobs);
            let Some(done) = saver.next().await else {
                break;
            };
            match done.result {
                Ok(saved) => {
                    if files.len() <= done.index {
                        files.resize(done.index + 1, None);
                    }
                    files[done.index] = Some(saved);
                }
                Err(error) if options.keep_going => failed.push((
                    done.index,
                    FailedFile {
                        path: done.path,
                        url: done.file.file.url.redacted(),
                        message: error.to_string(),
                        resumable: keeps_part(&error),
                    },
                )),
                Err(error) => return Err(error),
            }
        }
        failed.sort_by_key(|(index, _)| *index);
        Ok(SaveReport {
            files: files.into_iter().flatten().collect(),
            failed: failed.into_iter().map(|(_, f)| f).collect(),
        })
    }
}

/// The [`SavedFile`] of a file left alone.
pub(super) fn skipped_file(file: &ExportFile, path: &Path) -> SavedFile {
    saved_file(file, path, Tally::default(), 0, 0, true)
}

fn saved_file(
    file: &ExportFile,
    path: &Path,
    tally: Tally,
    bytes: u64,
    resumed_bytes: u64,
    skipped: bool,
) -> SavedFile {
    SavedFile {
        path: path.to_owned(),
        kind: file.kind,
        resource_type: file.file.resource_type.clone(),
        url: file.file.url.redacted(),
        lines: tally.lines,
        bytes,
        data_bytes: tally.data_bytes,
        skipped,
        resumed_bytes,
        warnings: tally.warnings,
    }
}

/// Downloads one file into its `.part` (owned arguments, so the future is `Send + 'static`),
/// continuing a kept `.part`; a permanent failure removes it. The written file still has to
/// go through [`finish_batch`]. `nothing_left`: the caller knows that neither the `.part`
/// nor its sidecar exists and that the directory does (a [`Saver`](super::Saver) that looked
/// at the directory), so there is nothing to look for before the request.
pub(super) async fn download_one(
    client: BulkClient,
    file: ExportFile,
    path: PathBuf,
    options: SaveOptions,
    nothing_left: bool,
) -> Result<Downloaded> {
    if options.skip_existing && tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(Downloaded::Skipped(saved_file(
            &file,
            &path,
            Tally::default(),
            0,
            0,
            true,
        )));
    }
    let part = with_suffix(&path, ".part");
    let url = file.file.url.redacted();
    let found = if nothing_left {
        None
    } else {
        let (at, kept, gzip) = (path.clone(), part.clone(), options.gzip);
        let found = tokio::task::spawn_blocking(move || prepare(&at, &kept, &url, gzip))
            .await
            .map_err(|e| io_error("opening", &part, std::io::Error::other(e.to_string())))??;
        Some(found)
    };
    let mut fresh = Fresh::Nothing;
    let resume = match found {
        Some(Found::Resume(state)) => Some(state),
        Some(Found::Created(file)) => {
            fresh = Fresh::Created(file);
            None
        }
        None => None,
    };
    let resume = resume.as_ref();
    let start = match resume {
        Some(state) => Start::Resume(state),
        None => Start::Fresh(fresh),
    };
    let result = match save_attempt(&client, &file, &path, &part, &options, start).await {
        // A range past the end of what an earlier run kept (it had every line): start over.
        Err(Error::UnexpectedResponse { response, .. })
            if resume.is_some() && response.status == 416 =>
        {
            let fresh = Start::Fresh(Fresh::Replace);
            save_attempt(&client, &file, &path, &part, &options, fresh).await
        }
        other => other,
    };
    if let Err(error) = &result
        && !keeps_part(error)
    {
        remove_part(&part).await;
    }
    result.map(Downloaded::Written)
}

/// Saves one file: downloaded, then finished on the blocking pool.
async fn save_one(
    client: BulkClient,
    file: ExportFile,
    path: PathBuf,
    options: SaveOptions,
) -> Result<SavedFile> {
    match download_one(client, file, path.clone(), options, false).await? {
        Downloaded::Skipped(saved) => Ok(saved),
        Downloaded::Written(written) => {
            let part = written.part.clone();
            tokio::task::spawn_blocking(move || finish_batch(vec![sync_written(written)]))
                .await
                .map_err(|e| io_error("finishing", &part, std::io::Error::other(e.to_string())))?
                .pop()
                .unwrap_or_else(|| {
                    Err(io_error(
                        "finishing",
                        &path,
                        std::io::Error::other("no result"),
                    ))
                })
        }
    }
}

/// How a save attempt starts its `.part`.
enum Start<'a> {
    /// Continues the kept `.part` this resume state describes.
    Resume(&'a ResumeState),
    /// From the start.
    Fresh(Fresh),
}

/// What is on disk of a file saved from its start.
enum Fresh {
    /// Its `.part`, just created (empty, no sidecar beside it).
    Created(std::fs::File),
    /// Nothing (the saver looked at the directory): the `.part` is created by the first
    /// write.
    Nothing,
    /// A kept `.part` and its sidecar, replaced: the sidecar is removed here, the `.part`
    /// emptied by the first write.
    Replace,
}

async fn save_attempt(
    client: &BulkClient,
    file: &ExportFile,
    path: &Path,
    part: &Path,
    options: &SaveOptions,
    begin: Start<'_>,
) -> Result<Written> {
    let download = &options.download;
    let info = info_for(file);
    let mut request = request_for(client, file)?;
    let resume = match &begin {
        Start::Resume(state) => Some(*state),
        Start::Fresh(_) => None,
    };
    let (mut sink, mut tally, start) = match begin {
        Start::Resume(state) => {
            let sink = Sink::reopen(part, state).await?;
            let tally = Tally {
                lines: state.lines,
                data_bytes: state.data_bytes,
                warnings: Vec::new(),
            };
            let checkpoint = Checkpoint {
                offset: state.offset,
                line: state.line,
                lines_delivered: state.lines_delivered,
            };
            request.resume = state
                .validator
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
                .map(|validator| ResumeFrom {
                    offset: state.offset,
                    validator,
                });
            let start = LineStart {
                checkpoint: Some(checkpoint),
                ranged: request.resume.is_some(),
                counted: state.counted,
            };
            (sink, tally, start)
        }
        Start::Fresh(fresh) => {
            let target = match fresh {
                Fresh::Created(file) => Target::Open(file),
                Fresh::Nothing => Target::Create(part.to_owned()),
                Fresh::Replace => {
                    let _ = tokio::fs::remove_file(sidecar_path(part)).await;
                    Target::Create(part.to_owned())
                }
            };
            (
                Sink::create(part, target, options.gzip, info.url.clone()),
                Tally::default(),
                LineStart::default(),
            )
        }
    };
    let resumed_bytes = resume.map_or(0, |s| s.part_bytes);
    let expected = info
        .resource_type
        .as_deref()
        .filter(|_| download.check_resource_type && file.organized_by.is_none())
        .map(str::to_owned);
    let mut lines = line_reader_from(
        client.inner.clone(),
        request,
        info.clone(),
        download.clone(),
        start,
    );
    let mut reported = 0u64;
    let mut counted = start.counted;
    // Read to the end; on a failure, wait for the write running behind before handing the
    // `.part` to a retry (which cuts it back to its sidecar's size).
    let read: Result<()> = async {
        loop {
            // Lines the last chunk holds first, without a trip through a future.
            let next = match lines.ready() {
                Some(next) => next,
                None => match lines.next().await {
                    Some(next) => next,
                    None => break,
                },
            };
            let line = match next {
                Ok(LineEvent::Line(line)) => line,
                Ok(LineEvent::Representation { resumable }) => {
                    sink.validator = resumable.and_then(|v| v.to_str().ok().map(str::to_owned));
                    continue;
                }
                Ok(LineEvent::End { counted: total }) => {
                    counted = total;
                    break;
                }
                Err(Error::InvalidLine {
                    line,
                    kind,
                    message,
                    ..
                }) if download.invalid_lines == InvalidLines::Report => {
                    tally.warnings.push(SaveWarning::InvalidLine {
                        line,
                        kind,
                        message,
                    });
                    continue;
                }
                Err(error) => return Err(error),
            };
            let bytes = line.line.bytes();
            if !line.header
                && let Err(err) = check_raw_line(bytes, expected.as_deref())
            {
                let error = line_error(&info, line.line.number(), err);
                match (download.invalid_lines, error) {
                    (
                        InvalidLines::Report,
                        Error::InvalidLine {
                            line,
                            kind,
                            message,
                            ..
                        },
                    ) => {
                        tally.warnings.push(SaveWarning::InvalidLine {
                            line,
                            kind,
                            message,
                        });
                        continue;
                    }
                    (_, error) => return Err(error),
                }
            }
            tally.lines += 1;
            tally.data_bytes += bytes.len() as u64 + 1;
            let place = Place {
                lines: tally.lines,
                data_bytes: tally.data_bytes,
                counted: line.counted,
                after: line.after,
            };
            if sink.buffer_line(bytes, place)? {
                sink.write_due().await?;
            }
            if let Some(progress) = &options.on_progress
                && tally.data_bytes - reported >= PROGRESS_EVERY_BYTES
            {
                reported = tally.data_bytes;
                progress(path, tally.lines, tally.data_bytes);
            }
        }
        Ok(())
    }
    .await;
    if let Err(error) = read {
        let _ = sink.file.wait().await;
        return Err(error);
    }
    match check_count(&info, download.check_count, counted) {
        Ok(Some(Error::CountMismatch {
            expected, actual, ..
        })) => tally
            .warnings
            .push(SaveWarning::CountMismatch { expected, actual }),
        Ok(_) => {}
        Err(error) => {
            let _ = sink.file.wait().await;
            return Err(error);
        }
    }
    let (sidecar, handle, tail) = sink.finish().await?;
    // The length once the tail is in; a gzip tail's is known once it is compressed.
    let bytes = tail.part_len + tail.lines.len() as u64;
    if let Some(progress) = &options.on_progress {
        progress(path, tally.lines, tally.data_bytes);
    }
    Ok(Written {
        part: part.to_owned(),
        handle,
        tail,
        sidecar,
        durable: options.durability == Durability::Synced,
        saved: saved_file(file, path, tally, bytes, resumed_bytes, false),
    })
}

/// A file whose lines are all checked and in its `.part` or its `tail`, waiting for
/// [`sync_written`] and [`finish_batch`]: its tail written, synced, renamed to its final name,
/// its directory synced.
#[derive(Debug)]
pub(super) struct Written {
    /// The `.part`.
    part: PathBuf,
    /// The `.part`, open (so the sync needs no second open), or still to create (nothing
    /// was written before the tail).
    handle: Target,
    /// The file's last bytes, not written yet: [`sync_written`] appends them.
    tail: Tail,
    /// Whether it has a sidecar to remove.
    sidecar: bool,
    /// Whether it is synced ([`Durability::Synced`]).
    durable: bool,
    /// What it becomes once renamed.
    pub(super) saved: SavedFile,
}

/// What a download task hands back: a file left alone, or one written and waiting to be
/// finished.
#[derive(Debug)]
pub(super) enum Downloaded {
    /// Skipped (it exists and [`SaveOptions::skip_existing`] is set).
    Skipped(SavedFile),
    /// Written under its `.part` name.
    Written(Written),
}

/// A written file after its tail and data sync ([`sync_written`]), waiting for
/// [`finish_batch`].
#[derive(Debug)]
pub(super) struct Synced {
    written: Written,
    /// The tail's write and the sync: what failed and how, if one did; `None` until they
    /// ran ([`Synced::later`]).
    result: Option<std::result::Result<(), (&'static str, std::io::Error)>>,
}

impl Written {
    /// Whether [`sync_written`] has a sync to run: unsynced files go straight to
    /// [`finish_batch`] (as [`Synced::later`]), which appends their tails.
    pub(super) fn durable(&self) -> bool {
        self.durable
    }

    /// Bytes of its tail, held in memory until [`sync_written`] writes them.
    pub(super) fn tail_len(&self) -> usize {
        self.tail.lines.len()
    }
}

impl Synced {
    /// A written file whose tail is written (and whose data would be synced) by
    /// [`finish_batch`] itself: for [`Durability::Unsynced`], one trip to the blocking pool
    /// per file fewer.
    pub(super) fn later(written: Written) -> Synced {
        Synced {
            written,
            result: None,
        }
    }
}

/// Appends a written file's tail and syncs its data (`fdatasync`, under
/// [`Durability::Synced`]), on the calling (blocking) thread: the first step of making it
/// final. The saver runs several at once, each as soon as its file is written, so a slow
/// disk overlaps its flushes.
pub(super) fn sync_written(mut written: Written) -> Synced {
    let Tail {
        lines,
        mut member,
        part_len,
    } = std::mem::take(&mut written.tail);
    let durable = written.durable;
    let mut finish = || {
        written.handle.file().map_err(|e| ("creating", e))?;
        let end_member = member.is_some();
        let put = put(
            &mut written.handle,
            member.as_deref_mut(),
            &lines,
            end_member,
        )
        .map_err(|e| ("writing", e))?;
        written.saved.bytes = part_len + put;
        if durable {
            let file = written.handle.file().map_err(|e| ("syncing", e))?;
            file.sync_data().map_err(|e| ("syncing", e))?;
        }
        Ok(())
    };
    let result = finish();
    Synced {
        written,
        result: Some(result),
    }
}

/// Makes data-synced files final, in order, on the calling (blocking) thread: each file is
/// renamed to its final name only if its data sync ([`sync_written`]) succeeded, and each
/// directory that received synced files is synced once for the whole batch, after its
/// renames. So once a result is `Ok` the file survives a power cut under its final name (under
/// [`Durability::Synced`], the default); a crash before
/// that leaves its `.part`, which the next save reads again. A failed sync or rename is an
/// [`Error::Io`] and keeps the `.part` (an interruption: the next save resumes it).
pub(super) fn finish_batch(batch: Vec<Synced>) -> Vec<Result<SavedFile>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let results = batch
        .into_iter()
        .map(|synced| {
            let Synced { written, result } = match synced.result {
                None => sync_written(synced.written),
                Some(_) => synced,
            };
            let Written {
                part,
                handle,
                sidecar,
                durable,
                saved,
                ..
            } = written;
            if let Some(Err((step, e))) = result {
                return Err(io_error(step, &part, e));
            }
            drop(handle);
            // The sidecar goes first: dying between the two leaves a `.part` without one,
            // which the next run reads again from the start; never a sidecar next to a
            // finished file.
            if sidecar {
                let _ = std::fs::remove_file(sidecar_path(&part));
            }
            std::fs::rename(&part, &saved.path).map_err(|e| io_error("renaming", &part, e))?;
            let dir = saved
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if durable && !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_owned());
            }
            Ok(saved)
        })
        .collect();
    for dir in &dirs {
        sync_dir(dir);
    }
    results
}

/// Syncs a directory's entries (Unix; elsewhere a rename is as durable as it gets). A failure
/// costs only durability against a power cut of an entry already made, so it is ignored.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::test_support::completed_export;
    use fhir_bulk_test_server::TestServer;
    use std::sync::Mutex;
    use url::Url;

    /// A big save rewrites its sidecar about once per MiB of NDJSON, not after every 256 KiB
    /// write, and a sidecar never names bytes the `.part` does not hold yet: none before the
    /// first MiB is written, then a few for 3 MiB, each within the file's length.
    #[tokio::test]
    async fn sidecars_come_once_per_mib_and_name_only_bytes_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("f.ndjson.part");
        let sidecar = sidecar_path(&part);
        let mut sink = Sink::create(
            &part,
            Target::Create(part.clone()),
            false,
            "https://h/f".into(),
        );
        let line = vec![b'x'; 1023]; // 1 KiB with its line end
        let mut sidecars = Vec::new();
        for i in 1..=3072u64 {
            let place = Place {
                lines: i,
                data_bytes: i * 1024,
                counted: i,
                after: Checkpoint {
                    offset: i * 1024,
                    line: i + 1,
                    lines_delivered: i,
                },
            };
            sink.line(&line, place).await.unwrap();
            let Ok(text) = std::fs::read(&sidecar) else {
                assert!(
                    i * 1024 < CHECKPOINT_BYTES + 2 * FLUSH_AT as u64,
                    "no sidecar after {i} KiB"
                );
                continue;
            };
            let state: ResumeState = serde_json::from_slice(&text).unwrap();
            assert!(state.part_bytes <= std::fs::metadata(&part).unwrap().len());
            assert_eq!(state.part_bytes, state.data_bytes);
            assert!(state.data_bytes >= CHECKPOINT_BYTES);
            if sidecars.last() != Some(&state.part_bytes) {
                sidecars.push(state.part_bytes);
            }
        }
        // 3 MiB in 12 writes of 256 KiB: a sidecar at about each MiB.
        assert!((1..=3).contains(&sidecars.len()), "{sidecars:?}");
        let (had_sidecar, _, tail) = sink.finish().await.unwrap();
        assert_eq!(tail.part_len + tail.lines.len() as u64, 3072 * 1024);
        assert_eq!(std::fs::metadata(&part).unwrap().len(), tail.part_len);
        assert!(had_sidecar);
    }

    /// `Durability::Unsynced` skips the data and directory syncs, `Synced` does them: a
    /// `.part` whose handle cannot be synced (a pipe: `fdatasync` fails with EINVAL) fails
    /// its sync and keeps its `.part` when synced, and is renamed when not.
    #[cfg(unix)]
    #[test]
    fn unsynced_files_skip_the_sync_and_synced_ones_report_its_failure() {
        let dir = tempfile::tempdir().unwrap();
        let export = {
            let body = serde_json::json!({"transactionTime": "2026-01-01T00:00:00Z",
                "requiresAccessToken": false,
                "output": [{"type": "Patient", "url": "https://h/f"}]});
            let page = Manifest::from_slice(body.to_string().as_bytes(), "test").unwrap();
            CompletedExport::from_manifests(Url::parse("https://h/status").unwrap(), vec![page])
        };
        let (file, _) = file_names(&export, false).next().unwrap();
        for durable in [true, false] {
            let path = dir.path().join(format!("durable-{durable}.ndjson"));
            let part = with_suffix(&path, ".part");
            std::fs::write(&part, "{}\n").unwrap();
            let (_reader, writer) = std::io::pipe().unwrap();
            let handle = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
            let written = Written {
                part: part.clone(),
                handle: Target::Open(handle),
                tail: Tail::ndjson(Vec::new(), 3),
                sidecar: false,
                durable,
                saved: saved_file(&file, &path, Tally::default(), 3, 0, false),
            };
            let result = finish_batch(vec![sync_written(written)]).pop().unwrap();
            if durable {
                let error = result.unwrap_err();
                assert!(error.to_string().contains("syncing"), "{error}");
                assert!(part.exists() && !path.exists());
            } else {
                assert_eq!(result.unwrap().path, path);
                assert!(!part.exists() && path.exists());
            }
        }
    }

    /// A batch of several files is finished in order: each result is its own file's, every
    /// `.part` is renamed with its tail appended (by the sync, or by the finisher for a file
    /// handed over unsynced), or first created with it when nothing was written before, and a
    /// sidecar is removed only where the save wrote one.
    #[test]
    fn a_batch_is_finished_in_order_with_its_own_results() {
        let output: Vec<serde_json::Value> = (0..20)
            .map(|i| serde_json::json!({"type": "Patient", "url": format!("https://h/f{i}")}))
            .collect();
        let body = serde_json::json!({"transactionTime": "2026-01-01T00:00:00Z",
            "requiresAccessToken": false, "output": output});
        let page = Manifest::from_slice(body.to_string().as_bytes(), "test").unwrap();
        let export =
            CompletedExport::from_manifests(Url::parse("https://h/status").unwrap(), vec![page]);
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<Written> = file_names(&export, false)
            .enumerate()
            .map(|(i, (file, name))| {
                let path = dir.path().join(name);
                let part = with_suffix(&path, ".part");
                let sidecar = i % 2 == 0;
                if sidecar {
                    std::fs::write(sidecar_path(&part), "{}").unwrap();
                }
                // Every fourth file's lines all fit in its tail: its `.part` is created by
                // the trip that finishes it.
                let (handle, tail) = if i % 4 == 3 {
                    let tail = Tail::ndjson(format!("{i}\n").into_bytes(), 0);
                    (Target::Create(part.clone()), tail)
                } else {
                    std::fs::write(&part, format!("{i}")).unwrap();
                    let file = std::fs::OpenOptions::new().append(true).open(&part);
                    let tail = Tail::ndjson(b"\n".to_vec(), format!("{i}").len() as u64);
                    (Target::Open(file.unwrap()), tail)
                };
                Written {
                    handle,
                    tail,
                    part,
                    sidecar,
                    durable: i % 3 != 0,
                    saved: saved_file(&file, &path, Tally::default(), 2, 0, false),
                }
            })
            .collect();
        let results = finish_batch(
            batch
                .into_iter()
                .map(|w| {
                    if w.durable() {
                        sync_written(w)
                    } else {
                        Synced::later(w)
                    }
                })
                .collect(),
        );
        assert_eq!(results.len(), 20);
        for (i, result) in results.into_iter().enumerate() {
            let saved = result.unwrap();
            assert_eq!(
                saved.path,
                dir.path().join(format!("Patient.{}.ndjson", i + 1))
            );
            assert_eq!(
                std::fs::read_to_string(&saved.path).unwrap(),
                format!("{i}\n")
            );
            let part = with_suffix(&saved.path, ".part");
            assert!(!part.exists());
            // Odd files had no sidecar written by their save: none is looked for.
            assert!(!sidecar_path(&part).exists());
        }
    }

    /// A saver that has looked at its directory still continues what an earlier process
    /// left: a file with a kept `.part` and sidecar, started long after the look, resumes
    /// from them (not from its start) and ends byte-identical; the others are saved fresh.
    #[tokio::test]
    async fn a_saver_resumes_a_part_left_in_a_directory_it_looked_at() {
        use crate::download::{Saver, file_names};
        let (_server, client, export) = completed_export(
            TestServer::builder()
                .patients(50)
                .resource_types(["Patient"])
                .max_resources_per_file(5)
                .polls_before_complete(0),
        )
        .await;
        let options =
            SaveOptions::default().with_download(DownloadOptions::default().with_concurrency(1));
        let save_all = |dir: PathBuf| {
            let (client, options, export) = (client.clone(), options.clone(), export.clone());
            async move {
                let mut saver = Saver::new(&client, &dir, options);
                let mut jobs = file_names(&export, false);
                let mut results = Vec::new();
                loop {
                    saver.feed(&mut jobs);
                    let Some(done) = saver.next().await else {
                        break;
                    };
                    results.push((done.index, done.result.unwrap()));
                }
                results.sort_by_key(|(index, _)| *index);
                results
            }
        };
        let reference = tempfile::tempdir().unwrap();
        let first = save_all(reference.path().to_owned()).await;
        assert_eq!(first.len(), 10);
        let (file, name) = file_names(&export, false).last().unwrap();
        let whole = std::fs::read(reference.path().join(&name)).unwrap();
        let kept: usize = whole
            .split_inclusive(|b| *b == b'\n')
            .take(2)
            .map(<[u8]>::len)
            .sum();
        let dir = tempfile::tempdir().unwrap();
        let part = with_suffix(&dir.path().join(&name), ".part");
        std::fs::write(&part, &whole[..kept]).unwrap();
        let state = ResumeState {
            version: RESUME_VERSION,
            url: file.file.url.redacted(),
            part_bytes: kept as u64,
            lines: 2,
            data_bytes: kept as u64,
            counted: 2,
            offset: kept as u64,
            line: 3,
            lines_delivered: 2,
            validator: None,
            gzip: false,
        };
        std::fs::write(sidecar_path(&part), serde_json::to_vec(&state).unwrap()).unwrap();
        let second = save_all(dir.path().to_owned()).await;
        for ((_, saved), (_, reference)) in second.iter().zip(&first) {
            let resumed = saved.path.ends_with(&name);
            assert_eq!(saved.resumed_bytes, if resumed { kept as u64 } else { 0 });
            assert_eq!(
                std::fs::read(&saved.path).unwrap(),
                std::fs::read(&reference.path).unwrap()
            );
        }
        assert!(!part.exists() && !sidecar_path(&part).exists());
    }

    #[tokio::test]
    async fn progress_is_reported_and_data_bytes_counted() {
        let (server, client, export) = completed_export(
            TestServer::builder()
                .patients(40)
                .resource_types(["Observation"])
                .polls_before_complete(0),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let calls: Arc<Mutex<Vec<(PathBuf, u64, u64)>>> = Arc::default();
        let seen = calls.clone();
        let options =
            SaveOptions::default()
                .with_gzip(true)
                .with_progress(move |path, lines, bytes| {
                    seen.lock().unwrap().push((path.to_owned(), lines, bytes));
                });
        let report = client
            .save_export(&export, dir.path(), &options)
            .await
            .unwrap();
        let saved = &report.files[0];
        let expected: Vec<String> = server.file_lines(&saved.url).unwrap().collect();
        let data: u64 = expected.iter().map(|l| l.len() as u64 + 1).sum();
        assert_eq!(saved.lines, 320);
        assert_eq!(saved.data_bytes, data);
        assert!(saved.bytes < data, "gzip makes the file smaller");
        let calls = calls.lock().unwrap();
        assert!(calls.len() >= 4, "about every 64 KiB: {}", calls.len());
        assert!(
            calls
                .windows(2)
                .all(|w| w[0].1 <= w[1].1 && w[0].2 <= w[1].2)
        );
        assert_eq!(calls.last().unwrap(), &(saved.path.clone(), 320, data));
        assert!(calls.iter().all(|c| c.0 == saved.path));
    }

    #[tokio::test]
    async fn an_export_rebuilt_from_its_manifest_saves_the_same_files() {
        let (_server, client, export) =
            completed_export(TestServer::builder().patients(2).polls_before_complete(0)).await;
        let pages = export
            .manifests
            .iter()
            .map(|m| Manifest::from_slice(m.raw().as_bytes(), "manifest.json").unwrap())
            .collect();
        let rebuilt = CompletedExport::from_manifests(
            Url::parse("file:///tmp/manifest.json").unwrap(),
            pages,
        );
        assert_eq!(rebuilt.all_files().len(), export.all_files().len());
        let names = |e: &CompletedExport| -> Vec<PathBuf> {
            file_names(e, false).map(|(_, p)| p).collect()
        };
        assert_eq!(names(&rebuilt), names(&export));
        let dir = tempfile::tempdir().unwrap();
        let report = client
            .save_export(&rebuilt, dir.path(), &SaveOptions::default())
            .await
            .unwrap();
        assert!(
            report
                .files
                .iter()
                .all(|f| f.lines > 0 && f.data_bytes == f.bytes)
        );
    }

    #[test]
    fn options_compare_callbacks_by_identity() {
        let a = SaveOptions::default().with_progress(|_, _, _| {});
        assert_eq!(a, a.clone());
        assert_ne!(a, SaveOptions::default());
        assert_ne!(a, SaveOptions::default().with_progress(|_, _, _| {}));
        assert!(format!("{a:?}").contains("on_progress"));
    }

    #[test]
    fn permanent_failures_drop_the_part_interruptions_keep_it() {
        let io = Error::Io {
            action: "writing",
            path: "x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert!(keeps_part(&io));
        let count = Error::CountMismatch {
            file: "f".into(),
            expected: 1,
            actual: 2_000,
        };
        assert!(!keeps_part(&count));
        let line = Error::InvalidLine {
            file: "f".into(),
            line: 3,
            kind: LineErrorKind::Parse,
            message: "cut".into(),
        };
        assert!(!keeps_part(&line));
    }

    fn state() -> ResumeState {
        ResumeState {
            version: RESUME_VERSION,
            url: "http://h/files/1".into(),
            part_bytes: 100,
            lines: 3,
            data_bytes: 100,
            counted: 4,
            offset: 120,
            line: 6,
            lines_delivered: 4,
            validator: Some("\"v1\"".into()),
            gzip: false,
        }
    }

    #[test]
    fn a_sidecar_is_used_only_for_its_file_and_a_long_enough_part() {
        let s = state();
        assert!(usable_resume(&s, "http://h/files/1", false, 100));
        assert!(
            usable_resume(&s, "http://h/files/1", false, 150),
            "later bytes are cut off"
        );
        assert!(
            !usable_resume(&s, "http://h/files/1", false, 99),
            "the part lost bytes"
        );
        assert!(
            !usable_resume(&s, "http://h/files/2", false, 100),
            "another file"
        );
        let old = ResumeState {
            version: 0,
            ..state()
        };
        assert!(!usable_resume(&old, "http://h/files/1", false, 100));
        assert!(
            !usable_resume(&s, "http://h/files/1", true, 100),
            "an identity part is not continued as gzip"
        );
        let gz = ResumeState {
            gzip: true,
            ..state()
        };
        assert!(usable_resume(&gz, "http://h/files/1", true, 100));
        assert!(
            !usable_resume(&gz, "http://h/files/1", false, 100),
            "a gzip part is not continued as identity"
        );
        // A sidecar written before the gzip field: an identity save's.
        let mut value = serde_json::to_value(&s).unwrap();
        value.as_object_mut().unwrap().remove("gzip");
        assert_eq!(serde_json::from_value::<ResumeState>(value).unwrap(), s);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ResumeState>(&text).unwrap(), s);
        assert!(sidecar_path(Path::new("/d/P.1.ndjson.part")).ends_with("P.1.ndjson.part.resume"));
    }

    #[test]
    fn warnings_say_what_happened() {
        let w = SaveWarning::CountMismatch {
            expected: 66,
            actual: 1,
        };
        assert!(w.to_string().contains("66") && w.to_string().contains("saved as sent"));
        let w = SaveWarning::InvalidLine {
            line: 7,
            kind: LineErrorKind::Parse,
            message: "trailing characters".into(),
        };
        assert!(w.to_string().starts_with("line 7 left out"));
    }
}
