//! Cloud destinations (feature `cloud`): an export saved into S3, Google Cloud Storage,
//! Azure Blob Storage or a local directory through the [`object_store`] crate.
//!
//! Each file is streamed into a multipart upload: memory stays bounded by the part size
//! (and a few parts in flight), whatever the file size. An object appears only when its
//! upload completes, so the objects present *are* the resume state: a rerun with the same
//! manifest skips them and writes the rest. `manifest.json` (each page as received) and a
//! `log.ndjson` of what the run did are written beside the data.
//!
//! Endpoints and credentials follow each ecosystem's conventions (object_store's
//! `from_env` builders): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`; `GOOGLE_APPLICATION_CREDENTIALS`,
//! `GOOGLE_SERVICE_ACCOUNT_KEY`, and `STORAGE_EMULATOR_HOST` for an emulator;
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR`
//! (with `AZURITE_BLOB_STORAGE_URL`).

use super::shard::{Shard, shard_file_names};
use crate::client::BulkClient;
use crate::download::{SaveOptions, SaveReport, SavedFile};
use crate::error::{Error, Result};
use crate::manifest::CompletedExport;
use crate::secret::redact_url_str;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::fmt;
use std::io::Write;
use std::sync::Arc;

/// The size of each uploaded part (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once per file.
const PARTS_IN_FLIGHT: usize = 2;
/// Data handed to the uploader at a time.
const FLUSH_BYTES: usize = 256 * 1024;

/// Where an export is saved: an object store and a prefix in it.
#[derive(Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    shown: String,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store's own Debug may hold credentials: print only where it points.
        f.debug_struct("Destination")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

fn store_error(action: &str, shown: &str, e: object_store::Error) -> Error {
    Error::InvalidConfig {
        setting: "destination",
        message: format!("{action} {shown}: {e}"),
    }
}

fn write_error(shown: &str, e: object_store::Error) -> Error {
    Error::Transport {
        context: "writing to object storage",
        kind: crate::error::TransportErrorKind::Body,
        url: shown.to_owned(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

impl Destination {
    /// A destination in `store` under `prefix` (`""` for the root).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Destination> {
        let prefix =
            ObjectPath::parse(prefix.trim_matches('/')).map_err(|e| Error::InvalidConfig {
                setting: "destination",
                message: format!("`{prefix}` is not a usable object prefix: {e}"),
            })?;
        Ok(Destination {
            shown: format!("{store}/{prefix}"),
            store,
            prefix,
        })
    }

    /// A destination from its URL: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` (also `azure://`, `abfs[s]://`), or `file:///dir`, with
    /// credentials and endpoints from the environment (see the module docs).
    pub fn from_url(url: &str) -> Result<Destination> {
        let parsed = url::Url::parse(url.trim()).map_err(|e| Error::InvalidConfig {
            setting: "destination",
            message: format!("`{url}` is not a URL ({e})"),
        })?;
        let shown = redact_url_str(url.trim());
        let prefix = parsed.path().trim_matches('/').to_owned();
        let failed = |e| store_error("cannot open", &shown, e);
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                // The AWS SDKs' variable (object_store reads AWS_ENDPOINT too).
                if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                    builder = builder.with_endpoint(endpoint);
                }
                Arc::new(builder.build().map_err(failed)?)
            }
            "gs" => {
                let mut builder =
                    object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
                // Google's SDK convention for an emulator, which wants no credentials.
                if let Some(host) = std::env::var(super::gcs::STORAGE_EMULATOR_HOST)
                    .ok()
                    .filter(|h| !h.trim().is_empty())
                {
                    builder = emulator_gcs(builder, &super::gcs::endpoint_from_env(Some(&host)));
                }
                Arc::new(builder.build().map_err(failed)?)
            }
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(failed)?,
            ),
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| Error::InvalidConfig {
                    setting: "destination",
                    message: format!("`{url}` is not a local absolute file:// URL"),
                })?;
                std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
                    action: "creating directory",
                    path: dir.display().to_string(),
                    source: e,
                })?;
                let store =
                    object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(failed)?;
                return Destination::new(Arc::new(store), "");
            }
            other => {
                return Err(Error::InvalidConfig {
                    setting: "destination",
                    message: format!(
                        "`{other}://` is not an object store: use s3://, gs://, az:// or file://"
                    ),
                });
            }
        };
        let mut destination = Destination::new(store, &prefix)?;
        destination.shown = shown;
        Ok(destination)
    }

    /// The object key of a relative name.
    fn key(&self, relative: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            key = key.join(part);
        }
        key
    }

    /// Saves shard `shard` of the export (use [`Shard::all`] for everything): the manifest
    /// pages, every file of the shard under its [`file_names`](crate::download::file_names)
    /// name below the prefix (`.ndjson.gz` with [`SaveOptions::gzip`]), and a log. Objects
    /// already present are complete (an upload becomes visible only when it completes) and
    /// are skipped; a destination holding another export's manifest is refused.
    pub async fn save_export(
        &self,
        client: &BulkClient,
        export: &CompletedExport,
        options: &SaveOptions,
        shard: Shard,
    ) -> Result<SaveReport> {
        self.save_export_each(client, export, options, shard, |_| async {})
            .await
    }

    /// [`Destination::save_export`], calling `on_file` as each file is complete (written, or
    /// found complete and skipped), before the next result is taken: a caller can record its
    /// own resume state per file, so an interrupted run loses only the files in flight.
    pub async fn save_export_each<F, Fut>(
        &self,
        client: &BulkClient,
        export: &CompletedExport,
        options: &SaveOptions,
        shard: Shard,
        on_file: F,
    ) -> Result<SaveReport>
    where
        F: Fn(SavedFile) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        self.check_same_export(export).await?;
        for (i, page) in export.manifests.iter().enumerate() {
            let name = if i == 0 {
                "manifest.json".to_owned()
            } else {
                format!("manifest.{}.json", i + 1)
            };
            let body = if page.raw().is_empty() {
                serde_json::to_string_pretty(page).unwrap_or_default()
            } else {
                page.raw().to_owned()
            };
            self.store
                .put(&self.key(&name), PutPayload::from(body.into_bytes()))
                .await
                .map_err(|e| write_error(&self.shown, e))?;
        }
        let jobs = shard_file_names(export, options.gzip, shard);
        let concurrency = options.download.concurrency.max(1);
        let mut saving = futures::stream::iter(jobs.into_iter().map(|(file, name)| {
            let relative = name
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            async move { self.save_file(client, &file, &relative, options).await }
        }))
        .buffered(concurrency);
        let mut files = Vec::new();
        let mut failure = None;
        while let Some(result) = saving.next().await {
            match result {
                Ok(saved) => {
                    on_file(saved.clone()).await;
                    files.push(saved);
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        drop(saving);
        let report = SaveReport {
            files,
            failed: Vec::new(),
        };
        // The log says what this run did, complete or not.
        self.write_log(&report, shard).await?;
        match failure {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// The prefix below which the export is written (`""` for the root).
    pub fn prefix(&self) -> &str {
        self.prefix.as_ref()
    }

    /// Where the destination points (credentials and query strings left out).
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Writes a small object (a state record, a summary) at `relative` below the prefix,
    /// in one request.
    pub async fn put_small(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.key(relative), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| write_error(&self.shown, e))
    }

    /// Reads an object below the prefix whole (meant for small ones); `None` when absent.
    pub async fn get_small(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        match self.store.get(&self.key(relative)).await {
            Ok(found) => found
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| write_error(&self.shown, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(write_error(&self.shown, e)),
        }
    }

    /// The names, relative to the prefix, of every object below `relative` (a folder).
    pub async fn list_below(&self, relative: &str) -> Result<Vec<String>> {
        let folder = self.key(relative);
        let metas: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|e| write_error(&self.shown, e))?;
        let prefix = self.prefix.as_ref();
        Ok(metas
            .into_iter()
            .map(|m| {
                let key = m.location.as_ref();
                key.strip_prefix(prefix)
                    .map_or(key, |k| k.trim_start_matches('/'))
                    .to_owned()
            })
            .collect())
    }

    /// Refuses to mix exports: a `manifest.json` already there must be this export's.
    async fn check_same_export(&self, export: &CompletedExport) -> Result<()> {
        let Some(first) = export.manifests.first() else {
            return Ok(());
        };
        let existing = match self.store.get(&self.key("manifest.json")).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|e| write_error(&self.shown, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(write_error(&self.shown, e)),
        };
        if first.raw().is_empty() || existing.as_ref() == first.raw().as_bytes() {
            return Ok(());
        }
        Err(Error::InvalidConfig {
            setting: "destination",
            message: format!(
                "{} already holds another export (its manifest.json differs): write each \
                 export under its own prefix",
                self.shown
            ),
        })
    }

    async fn save_file(
        &self,
        client: &BulkClient,
        file: &crate::manifest::ExportFile,
        relative: &str,
        options: &SaveOptions,
    ) -> Result<SavedFile> {
        let key = self.key(relative);
        let saved = |lines, bytes, data_bytes, skipped| SavedFile {
            path: key.as_ref().into(),
            kind: file.kind,
            resource_type: file.file.resource_type.clone(),
            url: file.file.url.redacted(),
            lines,
            bytes,
            data_bytes,
            skipped,
            resumed_bytes: 0,
            warnings: Vec::new(),
        };
        match self.store.head(&key).await {
            Ok(meta) => return Ok(saved(0, meta.size, 0, true)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(write_error(&self.shown, e)),
        }
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(|e| write_error(&self.shown, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let result = stream_into(client, file, options, &mut writer).await;
        match result {
            Ok((lines, bytes, data_bytes)) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| write_error(&self.shown, e))?;
                Ok(saved(lines, bytes, data_bytes, false))
            }
            Err(error) => {
                // Leave no half-written upload behind; the rerun starts the file again.
                let _ = writer.abort().await;
                Err(error)
            }
        }
    }

    /// `log.ndjson` (`log.K-of-N.ndjson` for a shard of several): one line per file, appended
    /// to what earlier runs wrote.
    async fn write_log(&self, report: &SaveReport, shard: Shard) -> Result<()> {
        let mut body = String::new();
        for file in &report.files {
            let line = serde_json::json!({
                "event": if file.skipped { "already_complete" } else { "file_complete" },
                "file": file.path.to_string_lossy(),
                "fileUrl": file.url,
                "resourceCount": file.lines,
                "bytes": file.bytes,
                "dataBytes": file.data_bytes,
                "shard": shard.to_string(),
            });
            body.push_str(&line.to_string());
            body.push('\n');
        }
        let name = if shard.count() > 1 {
            format!("log.{}-of-{}.ndjson", shard.index(), shard.count())
        } else {
            "log.ndjson".to_owned()
        };
        // Each run appends to the log of the runs before it.
        if let Some(mut earlier) = self.get_small(&name).await? {
            if !earlier.is_empty() && !earlier.ends_with(b"\n") {
                earlier.push(b'\n');
            }
            earlier.extend_from_slice(body.as_bytes());
            body = String::from_utf8_lossy(&earlier).into_owned();
        }
        self.store
            .put(&self.key(&name), PutPayload::from(body.into_bytes()))
            .await
            .map_err(|e| write_error(&self.shown, e))?;
        Ok(())
    }
}

/// A Cloud Storage builder for an emulator at `base`: no OAuth (the emulator wants none,
/// and the metadata server must not be asked), plain http allowed.
pub fn emulator_gcs(
    builder: object_store::gcp::GoogleCloudStorageBuilder,
    base: &str,
) -> object_store::gcp::GoogleCloudStorageBuilder {
    let key = serde_json::json!({
        "gcs_base_url": base,
        "disable_oauth": true,
        "client_email": "",
        "private_key": "",
        "private_key_id": ""
    });
    builder
        .with_service_account_key(key.to_string())
        .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
}

/// Streams one file's lines (optionally gzipped) into the upload; returns lines, bytes
/// written and NDJSON bytes.
async fn stream_into(
    client: &BulkClient,
    file: &crate::manifest::ExportFile,
    options: &SaveOptions,
    writer: &mut WriteMultipart,
) -> Result<(u64, u64, u64)> {
    let mut lines = client.download_lines(file, &options.download);
    let mut gzip = options
        .gzip
        .then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut plain: Vec<u8> = Vec::new();
    let (mut count, mut bytes, mut data_bytes) = (0u64, 0u64, 0u64);
    let gzip_error = |e: std::io::Error| Error::Io {
        action: "compressing",
        path: file.file.url.redacted(),
        source: e,
    };
    while let Some(line) = lines.try_next().await? {
        count += 1;
        data_bytes += line.resource.len() as u64 + 1;
        let pending = match gzip.as_mut() {
            Some(encoder) => {
                encoder.write_all(&line.resource).map_err(gzip_error)?;
                encoder.write_all(b"\n").map_err(gzip_error)?;
                encoder.get_mut()
            }
            None => {
                plain.extend_from_slice(&line.resource);
                plain.push(b'\n');
                &mut plain
            }
        };
        if pending.len() >= FLUSH_BYTES {
            bytes += pending.len() as u64;
            writer.write(pending);
            pending.clear();
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| write_error(&file.file.url.redacted(), e))?;
        }
    }
    let rest = match gzip {
        Some(encoder) => encoder.finish().map_err(gzip_error)?,
        None => plain,
    };
    bytes += rest.len() as u64;
    writer.write(&rest);
    Ok((count, bytes, data_bytes))
}
