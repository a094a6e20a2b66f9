//! Attachments: the documents `DocumentReference.content[].attachment` and
//! `DiagnosticReport.presentedForm[]` point at with a `url` (Epic's relative `Binary/x`,
//! Oracle Health's absolute Binary URLs), downloaded beside the data or inlined into it.
//!
//! [`BulkClient::save_attachments`] makes one pass over a saved NDJSON file:
//!
//! - each attachment with a `url` and no `data` is downloaded through the same transport as
//!   the export's files: retries under the client's [`RetryPolicy`](crate::RetryPolicy), the
//!   redirect policy checked at every hop, the bearer token only to the FHIR server's origin
//!   and the trusted ones (an attachment elsewhere is fetched without it), resumed with
//!   `Range` + `If-Range` after a cut, in this process or the next (`<name>.part` with a
//!   `.part.resume` sidecar, as for data files);
//! - a FHIR `Binary` JSON answer (`{"resourceType":"Binary","data":...}`) is unwrapped into
//!   its content, streaming (memory stays bounded whatever its size);
//! - the attachment's `size` and `hash` (base64 SHA-1), when it gives them, are checked; a
//!   mismatch is an [`AttachmentError`] and nothing is kept;
//! - [`AttachmentMode::Save`]: the content is saved as `attachments/<Type>/<id>.<n>.<ext>`
//!   beside the data file ([`attachment_path`]) and the attachment's `url` is rewritten to
//!   that relative path (the original URL is replaced; `size` and `hash` stay);
//! - inlining: an attachment smaller than [`AttachmentOptions::inline_smaller_than`] of a type
//!   in [`AttachmentOptions::inline_types`] gets its content as base64 `data`, **and keeps its
//!   `url`** (FHIR allows both when they hold the same content; the original URL says where it
//!   came from). [`AttachmentMode::Inline`] inlines only: other attachments are left as they
//!   are and reported as skipped.
//!
//! The data file is rewritten line by line into `<file>.attachments.part`, which replaces it
//! (an atomic rename) only when every line is written; an interrupted pass leaves the data
//! file as it was. Running it again is cheap: attachments already saved (their final file
//! exists) are not downloaded again, and rewritten ones (`url` pointing at `attachments/`, or
//! `data` present) are left alone. A file with nothing to change is not rewritten.

mod binary;
mod fetch;
mod find;

pub use find::{
    ATTACHMENTS_DIR, AttachmentPlace, AttachmentUrl, FoundAttachment, SkipReason, attachment_path,
    find_attachments, mime_allowed, resolve_attachment_url,
};

use crate::client::BulkClient;
use crate::download::with_suffix;
use crate::download::{SaveReport, SavedFile};
use crate::error::{Error, Result};
use crate::manifest::FileKind;
use crate::transport::TokenUse;
use base64::Engine;
use find::{Ordered, Plan, describe, holder, json_string, path_url, place, raw};
use flate2::Compression;
use flate2::write::{GzEncoder, MultiGzDecoder};
use reqwest::header::HeaderValue;
use serde_json::value::RawValue;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What [`BulkClient::save_attachments`] does with attachments.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachmentMode {
    /// Save each beside the data (`attachments/`) and point its `url` there; inline those
    /// small enough, if [`AttachmentOptions::inline_smaller_than`] is above 0.
    #[default]
    Save,
    /// Only inline: attachments small enough and of an allowed type get `data`; the others are
    /// left as they are (reported as skipped).
    Inline,
}

/// How attachments are downloaded and stored.
///
/// ```
/// use fhir_bulk::attachment::AttachmentOptions;
/// let options = AttachmentOptions::inline()
///     .with_inline_smaller_than(64 * 1024)
///     .with_inline_types(["text/plain", "text/html"]);
/// assert_eq!(options.inline_smaller_than, 65_536);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentOptions {
    /// Save or inline only. Default [`AttachmentMode::Save`].
    pub mode: AttachmentMode,
    /// Attachments of fewer bytes than this (by their `size`, else once downloaded) and of an
    /// allowed type are inlined. Default 0 (none) for [`AttachmentOptions::save`], 1 MiB for
    /// [`AttachmentOptions::inline`].
    pub inline_smaller_than: u64,
    /// The MIME types inlined (`type/subtype`, `type/*`; parameters and case ignored).
    /// Default `text/plain`, `text/html`, `application/xhtml+xml`.
    pub inline_types: Vec<String>,
    /// The `Accept` header of attachment requests. Default `*/*` (the raw content; a server
    /// may still answer a FHIR `Binary`, which is unwrapped). `application/fhir+json` asks for
    /// the `Binary` resource.
    pub accept: String,
    /// The most bytes accepted for one attachment without a `size` (with a `size`: twice it
    /// plus 64 KiB, room for a `Binary`'s base64). Default 4 GiB.
    pub max_bytes: u64,
}

/// The default [`AttachmentOptions::inline_types`].
pub const DEFAULT_INLINE_TYPES: [&str; 3] = ["text/plain", "text/html", "application/xhtml+xml"];

impl Default for AttachmentOptions {
    fn default() -> Self {
        AttachmentOptions {
            mode: AttachmentMode::Save,
            inline_smaller_than: 0,
            inline_types: DEFAULT_INLINE_TYPES.map(String::from).to_vec(),
            accept: "*/*".into(),
            max_bytes: 4 << 30,
        }
    }
}

impl AttachmentOptions {
    /// Save every attachment beside the data (the default).
    pub fn save() -> Self {
        Self::default()
    }

    /// Only inline: those smaller than 1 MiB of the default types.
    pub fn inline() -> Self {
        AttachmentOptions {
            mode: AttachmentMode::Inline,
            inline_smaller_than: 1 << 20,
            ..Self::default()
        }
    }

    /// Sets [`AttachmentOptions::mode`].
    #[must_use]
    pub fn with_mode(mut self, mode: AttachmentMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets [`AttachmentOptions::inline_smaller_than`].
    #[must_use]
    pub fn with_inline_smaller_than(mut self, bytes: u64) -> Self {
        self.inline_smaller_than = bytes;
        self
    }

    /// Sets [`AttachmentOptions::inline_types`].
    #[must_use]
    pub fn with_inline_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inline_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`AttachmentOptions::accept`].
    #[must_use]
    pub fn with_accept(mut self, accept: impl Into<String>) -> Self {
        self.accept = accept.into();
        self
    }

    /// Sets [`AttachmentOptions::max_bytes`].
    #[must_use]
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }
}

/// Why an attachment could not be saved or inlined.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// The download failed (after the client's retries): the transport's error.
    #[error("downloading failed: {0}")]
    Download(#[source] Box<Error>),
    /// The content's length is not the attachment's `size`.
    #[error("{url}: {actual} bytes, but the attachment's size says {expected}")]
    SizeMismatch {
        /// The URL, without its query string.
        url: String,
        /// `size`.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The content's SHA-1 is not the attachment's `hash`.
    #[error("{url}: SHA-1 {actual}, but the attachment's hash says {expected}")]
    HashMismatch {
        /// The URL, without its query string.
        url: String,
        /// `hash` as given.
        expected: String,
        /// The content's SHA-1, base64.
        actual: String,
    },
    /// The answer was longer than allowed ([`AttachmentOptions::max_bytes`], or twice the
    /// `size`).
    #[error("{url}: the answer is longer than {limit} bytes")]
    TooLarge {
        /// The URL, without its query string.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The server answered a FHIR `Binary` that cannot be used.
    #[error("{url}: {message}")]
    BadBinary {
        /// The URL, without its query string.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The URL is plain http to another machine (see
    /// [`BulkClientBuilder::allow_insecure_http`](crate::BulkClientBuilder::allow_insecure_http)).
    #[error("{url}: not downloaded over {reason}")]
    InsecureUrl {
        /// The URL, without its query string.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A local file could not be written or read.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// An attachment left as it was by rule.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedAttachment {
    /// `Type/id` of its resource.
    pub resource: String,
    /// Where it is in the resource.
    pub place: AttachmentPlace,
    /// Its `url` as written, without a query string.
    pub url: String,
    /// Why.
    pub reason: SkipReason,
}

/// An attachment that failed. The resource keeps it as it was; running the pass again retries
/// it (a cut download continues where it stopped).
#[non_exhaustive]
#[derive(Debug)]
pub struct FailedAttachment {
    /// `Type/id` of its resource.
    pub resource: String,
    /// Where it is in the resource.
    pub place: AttachmentPlace,
    /// The URL it was downloaded from, without a query string.
    pub url: String,
    /// What went wrong.
    pub error: AttachmentError,
}

/// What [`BulkClient::save_attachments`] did.
#[non_exhaustive]
#[derive(Debug, Default)]
pub struct AttachmentReport {
    /// Attachments saved beside the data (downloaded in this pass, or found complete from an
    /// interrupted earlier one).
    pub saved: u64,
    /// Attachments inlined as `data`.
    pub inlined: u64,
    /// Attachments already done: inline, or pointing at a saved file.
    pub present: u64,
    /// Content bytes downloaded in this pass.
    pub bytes: u64,
    /// Attachments left alone by rule.
    pub skipped: Vec<SkippedAttachment>,
    /// Attachments that failed.
    pub failed: Vec<FailedAttachment>,
    /// Data files rewritten.
    pub files_rewritten: u64,
}

impl AttachmentReport {
    /// Adds another report's counts and lists to this one.
    pub fn absorb(&mut self, other: AttachmentReport) {
        self.saved += other.saved;
        self.inlined += other.inlined;
        self.present += other.present;
        self.bytes += other.bytes;
        self.skipped.extend(other.skipped);
        self.failed.extend(other.failed);
        self.files_rewritten += other.files_rewritten;
    }
}

/// Whether a saved file of this manifest `type` may hold attachments: `DocumentReference`,
/// `DiagnosticReport`, or no type (`organizeOutputBy` files mix types).
pub fn may_hold_attachments(resource_type: Option<&str>) -> bool {
    resource_type.is_none_or(|t| holder(t).is_some())
}

/// Reads a data file's lines (gzip or not) in bounded pieces.
struct LineReader {
    file: tokio::fs::File,
    gzip: Option<MultiGzDecoder<Vec<u8>>>,
    pending: Vec<u8>,
    eof: bool,
    max_line: usize,
}

impl LineReader {
    async fn next_line(&mut self, path: &Path) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=at).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.eof {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.pending)));
            }
            if self.pending.len() > self.max_line {
                return Err(Error::InvalidLine {
                    file: path.display().to_string(),
                    line: 0,
                    kind: crate::LineErrorKind::TooLong,
                    message: format!("a line is longer than {} bytes", self.max_line),
                });
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self
                .file
                .read(&mut chunk)
                .await
                .map_err(|e| io_error("reading", path, e))?;
            chunk.truncate(n);
            match &mut self.gzip {
                Some(decoder) => {
                    if n == 0 {
                        decoder
                            .try_finish()
                            .map_err(|e| io_error("decompressing", path, e))?;
                    } else {
                        decoder
                            .write_all(&chunk)
                            .map_err(|e| io_error("decompressing", path, e))?;
                    }
                    self.pending.append(decoder.get_mut());
                }
                None => self.pending.extend_from_slice(&chunk),
            }
            self.eof = n == 0;
        }
    }
}

/// Writes the rewritten data file.
struct LineWriter {
    file: tokio::fs::File,
    gzip: Option<GzEncoder<Vec<u8>>>,
    buffer: Vec<u8>,
}

impl LineWriter {
    async fn line(&mut self, line: &[u8], path: &Path) -> Result<()> {
        match &mut self.gzip {
            Some(encoder) => {
                encoder
                    .write_all(line)
                    .and_then(|()| encoder.write_all(b"\n"))
                    .map_err(|e| io_error("compressing", path, e))?;
                self.buffer.append(encoder.get_mut());
            }
            None => {
                self.buffer.extend_from_slice(line);
                self.buffer.push(b'\n');
            }
        }
        if self.buffer.len() >= 256 * 1024 {
            self.file
                .write_all(&self.buffer)
                .await
                .map_err(|e| io_error("writing", path, e))?;
            self.buffer.clear();
        }
        Ok(())
    }

    async fn finish(mut self, path: &Path) -> Result<()> {
        if let Some(encoder) = self.gzip.take() {
            let rest = encoder
                .finish()
                .map_err(|e| io_error("compressing", path, e))?;
            self.buffer.extend_from_slice(&rest);
        }
        self.file
            .write_all(&self.buffer)
            .await
            .map_err(|e| io_error("writing", path, e))?;
        self.file
            .flush()
            .await
            .map_err(|e| io_error("writing", path, e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_error("syncing", path, e))
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// One pass over one data file.
struct Pass<'a> {
    client: &'a BulkClient,
    options: &'a AttachmentOptions,
    accept: HeaderValue,
    /// The data file's directory: attachment paths are relative to it.
    dir: PathBuf,
    report: AttachmentReport,
    /// Files of inlined attachments, removed once the data file holds their content.
    scratch: Vec<PathBuf>,
}

/// What became of one attachment.
enum Done {
    Unchanged,
    Saved(String),
    Inlined(String),
}

impl Pass<'_> {
    /// The line rewritten, or `None` when nothing in it changes.
    async fn line(&mut self, line: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(line).ok()?;
        let mut top = Ordered::parse(text)?;
        let resource_type = top.str("resourceType")?;
        let (key, nested) = holder(&resource_type)?;
        let id = top.str("id");
        let mut items: Vec<Box<RawValue>> = serde_json::from_str(top.get(key)?.get()).ok()?;
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            let Some(mut element) = Ordered::parse(item.get()) else {
                continue;
            };
            let inner = if nested {
                match element
                    .get("attachment")
                    .and_then(|a| Ordered::parse(a.get()))
                {
                    Some(inner) => Some(inner),
                    None => continue,
                }
            } else {
                None
            };
            let mut attachment = inner.unwrap_or_else(|| std::mem::take(&mut element));
            let found = describe(
                &resource_type,
                id.as_deref(),
                place(&resource_type, i),
                &attachment,
            );
            let done = self.attachment(&found).await;
            let touched = match done {
                Done::Unchanged => false,
                Done::Saved(url) => {
                    attachment.set("url", raw(json_string(&url)), "url");
                    true
                }
                Done::Inlined(data) => {
                    attachment.set("data", raw(json_string(&data)), "url");
                    true
                }
            };
            if !touched {
                continue;
            }
            changed = true;
            *item = if nested {
                element.set("attachment", attachment.to_raw(), "attachment");
                element.to_raw()
            } else {
                attachment.to_raw()
            };
        }
        if !changed {
            return None;
        }
        let array = items.iter().map(|i| i.get()).collect::<Vec<_>>().join(",");
        top.set(key, raw(format!("[{array}]")), key);
        Some(top.to_raw().get().to_owned())
    }

    fn skip(&mut self, found: &FoundAttachment, reason: SkipReason) {
        self.report.skipped.push(SkippedAttachment {
            resource: found.resource(),
            place: found.place,
            url: crate::secret::redact_url_str(found.url.as_deref().unwrap_or_default()),
            reason,
        });
    }

    async fn attachment(&mut self, found: &FoundAttachment) -> Done {
        let options = self.options;
        let inner = self.client.inner.clone();
        let plan = find::plan(
            found,
            &inner.base,
            options.mode == AttachmentMode::Inline,
            options.inline_smaller_than,
            &options.inline_types,
        );
        let (url, inline) = match plan {
            Plan::Nothing => return Done::Unchanged,
            Plan::Present => {
                self.report.present += 1;
                return Done::Unchanged;
            }
            Plan::Skip(reason) => {
                self.skip(found, reason);
                return Done::Unchanged;
            }
            Plan::Fetch { url, inline } => (url, inline),
        };
        let relative = attachment_path(found);
        let dest = self.dir.join(&relative);
        let shown = crate::secret::redact_url(&url);
        let fail = |error: AttachmentError| FailedAttachment {
            resource: found.resource(),
            place: found.place,
            url: shown.clone(),
            error,
        };
        let bytes = match tokio::fs::metadata(&dest).await {
            // Saved and checked by an earlier, interrupted pass.
            Ok(meta) if meta.is_file() => meta.len(),
            _ => {
                if let Err(insecure) =
                    crate::transport::origin::check_secure(&url, inner.allow_insecure_http)
                {
                    self.report.failed.push(fail(AttachmentError::InsecureUrl {
                        url: shown.clone(),
                        reason: insecure.describe(),
                    }));
                    return Done::Unchanged;
                }
                let token = if inner.is_trusted(&url) {
                    TokenUse::Required
                } else {
                    TokenUse::Never
                };
                let limit = found.size.map_or(options.max_bytes, |s| {
                    s.saturating_mul(2).saturating_add(64 << 10)
                });
                let request = fetch::Fetch {
                    url: &url,
                    token,
                    accept: &self.accept,
                    dest: &dest,
                    limit,
                    size: found.size,
                    hash: found.hash.as_deref(),
                };
                match fetch::fetch(&inner, &request).await {
                    Ok(fetched) => {
                        self.report.bytes += fetched.bytes;
                        fetched.bytes
                    }
                    Err(error) => {
                        self.report.failed.push(fail(error));
                        return Done::Unchanged;
                    }
                }
            }
        };
        if inline && bytes < options.inline_smaller_than {
            match tokio::fs::read(&dest).await {
                Ok(content) => {
                    self.scratch.push(dest);
                    self.report.inlined += 1;
                    return Done::Inlined(
                        base64::engine::general_purpose::STANDARD.encode(content),
                    );
                }
                Err(e) => {
                    self.report.failed.push(fail(AttachmentError::Io {
                        action: "reading",
                        path: dest.display().to_string(),
                        source: e,
                    }));
                    return Done::Unchanged;
                }
            }
        }
        if options.mode == AttachmentMode::Inline {
            // Downloaded to be measured: too large to inline.
            self.scratch.push(dest);
            self.skip(found, SkipReason::TooLargeToInline);
            return Done::Unchanged;
        }
        self.report.saved += 1;
        Done::Saved(path_url(&relative))
    }
}

impl BulkClient {
    /// Downloads the attachments of one saved NDJSON file (`.ndjson` or `.ndjson.gz`) and
    /// rewrites it, as the [module docs](crate::attachment) describe. Lines that are not
    /// `DocumentReference` or `DiagnosticReport` are copied as they are.
    ///
    /// `Err` only when the data file cannot be read or rewritten (it is then left as it
    /// was); each attachment's failure is in [`AttachmentReport::failed`].
    pub async fn save_attachments(
        &self,
        data_file: &Path,
        options: &AttachmentOptions,
    ) -> Result<AttachmentReport> {
        let accept = HeaderValue::from_str(&options.accept).map_err(|_| Error::InvalidConfig {
            setting: "AttachmentOptions::accept",
            message: "not a valid header value".into(),
        })?;
        let gzip = data_file.extension().is_some_and(|e| e == "gz");
        let file = tokio::fs::File::open(data_file)
            .await
            .map_err(|e| io_error("opening", data_file, e))?;
        let mut reader = LineReader {
            file,
            gzip: gzip.then(|| MultiGzDecoder::new(Vec::new())),
            pending: Vec::new(),
            eof: false,
            max_line: crate::ndjson::DEFAULT_MAX_LINE_LEN,
        };
        let tmp = with_suffix(data_file, ".attachments.part");
        let out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_error("creating", &tmp, e))?;
        let mut writer = LineWriter {
            file: out,
            gzip: gzip.then(|| GzEncoder::new(Vec::new(), Compression::default())),
            buffer: Vec::new(),
        };
        let mut pass = Pass {
            client: self,
            options,
            accept,
            dir: data_file
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            report: AttachmentReport::default(),
            scratch: Vec::new(),
        };
        let mut changed = false;
        let result: Result<()> = async {
            while let Some(line) = reader.next_line(data_file).await? {
                match pass.line(&line).await {
                    Some(new) => {
                        changed = true;
                        writer.line(new.as_bytes(), &tmp).await?;
                    }
                    None => writer.line(&line, &tmp).await?,
                }
            }
            writer.finish(&tmp).await
        }
        .await;
        if let Err(error) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(error);
        }
        if changed {
            tokio::fs::rename(&tmp, data_file)
                .await
                .map_err(|e| io_error("renaming", &tmp, e))?;
            if let Some(parent) = data_file.parent().map(Path::to_path_buf) {
                let _ =
                    tokio::task::spawn_blocking(move || crate::download::sync_dir(&parent)).await;
            }
            pass.report.files_rewritten += 1;
        } else {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        for path in pass.scratch {
            let _ = tokio::fs::remove_file(path).await;
        }
        Ok(pass.report)
    }

    /// [`BulkClient::save_attachments`] for every output file of a
    /// [`save_export`](BulkClient::save_export) that may hold attachments
    /// ([`may_hold_attachments`]), skipped files included (an earlier run saved them).
    pub async fn save_export_attachments(
        &self,
        saved: &SaveReport,
        options: &AttachmentOptions,
    ) -> Result<AttachmentReport> {
        let mut report = AttachmentReport::default();
        let files = saved.files.iter().filter(|f: &&SavedFile| {
            f.kind == FileKind::Output && may_hold_attachments(f.resource_type.as_deref())
        });
        for file in files {
            report.absorb(self.save_attachments(&file.path, options).await?);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_defaults() {
        let save = AttachmentOptions::save();
        assert_eq!(save.mode, AttachmentMode::Save);
        assert_eq!(save.inline_smaller_than, 0);
        assert_eq!(save.accept, "*/*");
        let inline = AttachmentOptions::inline();
        assert_eq!(inline.mode, AttachmentMode::Inline);
        assert_eq!(inline.inline_smaller_than, 1 << 20);
        assert!(inline.inline_types.iter().any(|t| t == "text/plain"));
        assert!(may_hold_attachments(Some("DocumentReference")));
        assert!(may_hold_attachments(None));
        assert!(!may_hold_attachments(Some("Patient")));
    }

    #[test]
    fn errors_name_the_url_not_a_query() {
        let e = AttachmentError::HashMismatch {
            url: crate::secret::redact_url_str("https://s3.example/b?X-Amz-Signature=secret"),
            expected: "a".into(),
            actual: "b".into(),
        };
        let text = e.to_string();
        assert!(!text.contains("secret") && text.contains("SHA-1"), "{text}");
    }
}
