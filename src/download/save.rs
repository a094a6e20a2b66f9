//! Saving an export's files to a directory, for tools that store rather than process.
//!
//! Each file is written under a temporary name (`<name>.part`) and renamed when it is
//! complete and its line count checked, so a reader never sees half a file.

use super::DownloadOptions;
use crate::client::BulkClient;
use crate::error::{Error, Result};
use crate::manifest::{CompletedExport, ExportFile, FileKind};
use crate::secret::redact_url_str;
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// How [`BulkClient::save_export`] writes files.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveOptions {
    /// Write `.ndjson.gz` instead of `.ndjson`. Default false.
    pub gzip: bool,
    /// Leave files that already exist under their final name alone (resuming a save).
    /// Default false.
    pub skip_existing: bool,
    /// How files are downloaded.
    pub download: DownloadOptions,
}

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
        let saved = |lines, bytes, skipped| SavedFile {
            path: path.to_owned(),
            kind: file.kind,
            resource_type: file.file.resource_type.clone(),
            url: redact_url_str(&file.file.url),
            lines,
            bytes,
            skipped,
        };
        if options.skip_existing && tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Ok(saved(0, 0, true));
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
        while let Some(line) = lines.try_next().await? {
            sink.line(&line.resource).await?;
            count += 1;
        }
        let bytes = sink.finish().await?;
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| io_error("renaming", &part, e))?;
        Ok(saved(count, bytes, false))
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
