//! Saving an export's files to a directory, for tools that store rather than process.
//!
//! Each file is written under a temporary name (`<name>.part`) and renamed when it is
//! complete and its line count checked, so a reader never sees half a file.
//!
//! A progress callback ([`SaveOptions::with_progress`]) reports lines and bytes while a file
//! is written, and [`CompletedExport::from_manifests`](crate::CompletedExport::from_manifests) rebuilds an export from stored manifest
//! pages, so that the files of an export saved earlier (its `manifest.json`) can be fetched
//! again without the server's status URL.

use super::DownloadOptions;
use crate::client::BulkClient;
use crate::error::{Error, Result};
use crate::manifest::{CompletedExport, ExportFile, FileKind};
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// How [`BulkClient::save_export`] writes files.
#[non_exhaustive]
#[derive(Clone, Default)]
pub struct SaveOptions {
    /// Write `.ndjson.gz` instead of `.ndjson`. Default false.
    pub gzip: bool,
    /// Leave files that already exist under their final name alone (resuming a save).
    /// Default false.
    pub skip_existing: bool,
    /// How files are downloaded.
    pub download: DownloadOptions,
    /// Called while each file is written, with the file's final path, the lines written so
    /// far and the NDJSON bytes received so far (lines and their line ends, before any
    /// compression): after every 64 KiB of data or so, and once more with the totals when the
    /// file is complete (before it is renamed). Not called for skipped files. Default none.
    #[allow(clippy::type_complexity)]
    pub on_progress: Option<SaveProgress>,
}

/// A progress callback: `(path, lines, data_bytes)` of the file being saved.
pub type SaveProgress = Arc<dyn Fn(&Path, u64, u64) + Send + Sync>;

/// How much NDJSON data [`SaveOptions::on_progress`] waits for between two calls.
const PROGRESS_EVERY_BYTES: u64 = 64 * 1024;

impl fmt::Debug for SaveOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaveOptions")
            .field("gzip", &self.gzip)
            .field("skip_existing", &self.skip_existing)
            .field("download", &self.download)
            .field("on_progress", &self.on_progress.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// Two options are equal when their settings are, and they share the same progress callback
/// (the same `Arc`) or both have none.
impl PartialEq for SaveOptions {
    fn eq(&self, other: &Self) -> bool {
        let same_callback = match (&self.on_progress, &other.on_progress) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.gzip == other.gzip
            && self.skip_existing == other.skip_existing
            && self.download == other.download
            && same_callback
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
    /// Lines written (0 when skipped).
    pub lines: u64,
    /// Bytes written, after compression (0 when skipped).
    pub bytes: u64,
    /// NDJSON bytes received: the lines and their line ends, before any compression (0 when
    /// skipped). Equal to [`SavedFile::bytes`] without gzip.
    pub data_bytes: u64,
    /// Whether it existed already and was left alone.
    pub skipped: bool,
}

/// What [`BulkClient::save_export`] wrote.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// One entry per manifest file, in manifest order.
    pub files: Vec<SavedFile>,
}

/// The relative path each file of an export is saved under: `<Type>.<n>.ndjson` for output
/// (n counting from 1 per type, in manifest order; organized output is named after the
/// organizing type), `error/OperationOutcome.<n>.ndjson` and `deleted/Bundle.<n>.ndjson`;
/// `.gz` appended when `gzip`.
pub fn file_names(export: &CompletedExport, gzip: bool) -> Vec<(ExportFile, PathBuf)> {
    let mut counters: HashMap<(FileKind, String), u32> = HashMap::new();
    let ext = if gzip { "ndjson.gz" } else { "ndjson" };
    export
        .all_files()
        .into_iter()
        .map(|file| {
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
        .collect()
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Buffers, optionally compresses, and writes lines to a file.
struct Sink {
    file: tokio::fs::File,
    path: PathBuf,
    gzip: Option<GzEncoder<Vec<u8>>>,
    buffer: Vec<u8>,
    written: u64,
}

const FLUSH_AT: usize = 256 * 1024;

impl Sink {
    async fn create(path: &Path, gzip: bool) -> Result<Sink> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| io_error("creating", path, e))?;
        Ok(Sink {
            file,
            path: path.to_owned(),
            gzip: gzip.then(|| GzEncoder::new(Vec::new(), Compression::default())),
            buffer: Vec::with_capacity(FLUSH_AT),
            written: 0,
        })
    }

    async fn line(&mut self, line: &[u8]) -> Result<()> {
        match &mut self.gzip {
            Some(encoder) => {
                let path = &self.path;
                encoder
                    .write_all(line)
                    .and_then(|()| encoder.write_all(b"\n"))
                    .map_err(|e| io_error("compressing", path, e))?;
                if encoder.get_ref().len() >= FLUSH_AT {
                    let chunk = std::mem::take(encoder.get_mut());
                    self.write(&chunk).await?;
                }
            }
            None => {
                self.buffer.extend_from_slice(line);
                self.buffer.push(b'\n');
                if self.buffer.len() >= FLUSH_AT {
                    let chunk = std::mem::take(&mut self.buffer);
                    self.write(&chunk).await?;
                    self.buffer = chunk;
                    self.buffer.clear();
                }
            }
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .await
            .map_err(|e| io_error("writing", &self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    async fn finish(mut self) -> Result<u64> {
        let rest = match self.gzip.take() {
            Some(encoder) => encoder
                .finish()
                .map_err(|e| io_error("compressing", &self.path, e))?,
            None => std::mem::take(&mut self.buffer),
        };
        self.write(&rest).await?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_error("syncing", &self.path, e))?;
        Ok(self.written)
    }
}

impl BulkClient {
    /// Downloads one file to `path` (written as `path` + `.part`, renamed when complete).
    pub async fn save_file(
        &self,
        file: &ExportFile,
        path: &Path,
        options: &SaveOptions,
    ) -> Result<SavedFile> {
        let saved = |lines, bytes, data_bytes, skipped| SavedFile {
            path: path.to_owned(),
            kind: file.kind,
            resource_type: file.file.resource_type.clone(),
            url: file.file.url.redacted(),
            lines,
            bytes,
            data_bytes,
            skipped,
        };
        if options.skip_existing && tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Ok(saved(0, 0, 0, true));
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_error("creating directory", parent, e))?;
        }
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let mut sink = Sink::create(&part, options.gzip).await?;
        let mut lines = self.download_lines(file, &options.download);
        let mut count = 0u64;
        let mut data_bytes = 0u64;
        let mut reported = 0u64;
        while let Some(line) = lines.try_next().await? {
            sink.line(&line.resource).await?;
            count += 1;
            data_bytes += line.resource.len() as u64 + 1;
            if let Some(progress) = &options.on_progress
                && data_bytes - reported >= PROGRESS_EVERY_BYTES
            {
                reported = data_bytes;
                progress(path, count, data_bytes);
            }
        }
        let bytes = sink.finish().await?;
        if let Some(progress) = &options.on_progress {
            progress(path, count, data_bytes);
        }
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| io_error("renaming", &part, e))?;
        Ok(saved(count, bytes, data_bytes, false))
    }

    /// Downloads every file of an export (output, error and deleted, all manifest pages)
    /// into `dir`, named by [`file_names`], [`DownloadOptions::concurrency`] at a time.
    pub async fn save_export(
        &self,
        export: &CompletedExport,
        dir: &Path,
        options: &SaveOptions,
    ) -> Result<SaveReport> {
        let jobs = file_names(export, options.gzip);
        let concurrency = options.download.concurrency.max(1);
        let files = futures::stream::iter(jobs.iter().map(|(file, name)| {
            let path = dir.join(name);
            async move { self.save_file(file, &path, options).await }
        }))
        .buffered(concurrency)
        .try_collect()
        .await?;
        Ok(SaveReport { files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExportRequest;
    use crate::manifest::Manifest;
    use fhir_bulk_test_server::TestServer;
    use std::sync::Mutex;
    use url::Url;

    #[tokio::test]
    async fn progress_is_reported_and_data_bytes_counted() {
        let server = TestServer::builder()
            .patients(40)
            .resource_types(["Observation"])
            .polls_before_complete(0)
            .start()
            .await
            .unwrap();
        let client = BulkClient::builder(server.base_url().as_str())
            .build()
            .unwrap();
        let export = client
            .kick_off(&ExportRequest::system())
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
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
        let server = TestServer::builder()
            .patients(2)
            .polls_before_complete(0)
            .start()
            .await
            .unwrap();
        let client = BulkClient::builder(server.base_url().as_str())
            .build()
            .unwrap();
        let export = client
            .kick_off(&ExportRequest::system())
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
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
            file_names(e, false).into_iter().map(|(_, p)| p).collect()
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
}
