//! Where the data lives: Google credentials (`--google-credentials`, application default
//! credentials for healthcare.googleapis.com), one export across machines
//! (`download --shard K/N`), and what `--output-dir` may name (a directory, `file://`, and
//! object storage, which needs the `cloud` feature).

use crate::args::{DownloadArgs, ServerArgs};
use crate::auth;
use crate::client;
use crate::cloud_state;
use crate::error::{CliError, describe, from_lib};
use crate::log;
use crate::manifest;
use crate::outcomes::IssueCounts;
use crate::progress::Reporter;
use crate::state::{self, FileRecord};
use crate::transfer;
use fhir_bulk::auth::{AuthProvider, GoogleAuth};
use fhir_bulk::download::SavedFile;
use fhir_bulk::storage::Shard;
use fhir_bulk::{CompletedExport, ExportJob, FileKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use url::Url;

/// Parses `--shard K/N`.
pub(crate) fn parse_shard(value: &str) -> Result<Shard, String> {
    Shard::parse(value).map_err(|e| match e {
        fhir_bulk::Error::InvalidConfig { message, .. } => message,
        other => other.to_string(),
    })
}

/// The Google provider the flags ask for: `--google-credentials FILE`, or application
/// default credentials when the base URL is Google Cloud Healthcare's and no other
/// credentials were given.
pub(crate) fn google_auth(
    base: &str,
    server: &ServerArgs,
) -> Result<Option<Arc<dyn AuthProvider>>, CliError> {
    if let Some(path) = &server.google_credentials {
        if server.token.is_some() || server.client_id.is_some() {
            return Err(CliError::usage(
                "--google-credentials",
                "give either Google credentials or --token / --client-id, not both",
            ));
        }
        let auth = GoogleAuth::credentials_file(path)
            .map_err(|e| CliError::usage("--google-credentials", describe(&e)))?;
        return Ok(Some(Arc::new(auth)));
    }
    let google = Url::parse(base.trim())
        .ok()
        .is_some_and(|u| fhir_bulk::storage::gcs::is_google_healthcare(&u));
    if google && !auth::has_credentials(server) {
        let auth = GoogleAuth::application_default().map_err(|e| {
            CliError::usage(
                "--google-credentials",
                format!(
                    "{} (Google Cloud Healthcare needs Google credentials: give a key file, \
                     set GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth \
                     application-default login`)",
                    describe(&e)
                ),
            )
        })?;
        return Ok(Some(Arc::new(auth)));
    }
    Ok(None)
}

/// What `--output-dir` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// A local directory.
    Local(PathBuf),
    /// An object store URL (`s3://`, `gs://`, `az://`, ...).
    Store(String),
}

/// The object-store schemes `--output-dir` accepts with the `cloud` feature.
const STORE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Reads `--output-dir`: a path, a `file://` URL, or an object store URL. A URL-looking
/// value this build cannot write is refused (never a local folder named `s3:`).
pub(crate) fn destination(output_dir: &Path) -> Result<Destination, CliError> {
    let text = output_dir.to_string_lossy();
    let Some((scheme, _)) = text.split_once("://") else {
        return Ok(Destination::Local(output_dir.to_owned()));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "file" {
        let url = Url::parse(&text).map_err(|e| {
            CliError::usage(
                "--output-dir",
                format!("`{text}` is not a file:// URL ({e})"),
            )
        })?;
        return url.to_file_path().map(Destination::Local).map_err(|()| {
            CliError::usage(
                "--output-dir",
                format!("`{text}` is not a local absolute file:// URL"),
            )
        });
    }
    if !STORE_SCHEMES.contains(&scheme.as_str()) {
        return Err(CliError::usage(
            "--output-dir",
            format!(
                "`{scheme}://` is not a destination this tool writes to: give a local \
                 directory, a file:// URL, or object storage (s3://, gs://, az://)"
            ),
        ));
    }
    if cfg!(feature = "cloud") {
        Ok(Destination::Store(text.into_owned()))
    } else {
        Err(CliError::usage(
            "--output-dir",
            format!(
                "`{scheme}://` is object storage, which this build cannot write: build the CLI \
                 with the `cloud` feature (`cargo install fhir-bulk-cli --features cloud`, \
                 which brings in the object_store crate), or give a local directory"
            ),
        ))
    }
}

/// `export` writes into a local directory (its state journal lives there): object storage
/// and `file://` URLs are refused with what to do instead.
pub(crate) fn refuse_store_output(output_dir: &Path) -> Result<(), CliError> {
    match destination(output_dir)? {
        Destination::Local(path) if path == output_dir => Ok(()),
        Destination::Local(path) => Err(CliError::usage(
            "--output-dir",
            format!(
                "give the directory as a path: --output-dir {}",
                path.display()
            ),
        )),
        Destination::Store(url) => Err(CliError::usage(
            "--output-dir",
            format!(
                "`export` writes into a local directory; to land the files in `{url}`, run \
                 the export, then `fhir-bulk download <STATUS_URL or manifest.json> \
                 --output-dir {url}`"
            ),
        )),
    }
}

/// `download` with `--shard`, a `file://` or an object store `--output-dir`; `None` for the
/// ordinary download into a directory.
pub(crate) async fn download(args: &DownloadArgs) -> Option<Result<(), CliError>> {
    let destination = match destination(&args.output_dir) {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    match destination {
        Destination::Local(path) if args.shard.is_none() && path == args.output_dir => None,
        Destination::Local(path) if args.shard.is_none() => {
            let mut local = args.clone();
            local.output_dir = path;
            Some(Box::pin(crate::download::run(&local)).await)
        }
        Destination::Local(path) => {
            Some(download_shard(args, &path, args.shard.unwrap_or_else(Shard::all)).await)
        }
        #[cfg(feature = "cloud")]
        Destination::Store(url) => Some(store::download(args, &url).await),
        #[cfg(not(feature = "cloud"))]
        Destination::Store(_) => None,
    }
}

/// `scheme://host[:port]/` of a URL.
fn origin(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    url.host()?;
    Some(url.origin().ascii_serialization() + "/")
}

/// The export to download (a finished job's, or a saved manifest's) and its client.
pub(crate) async fn source_export(
    args: &DownloadArgs,
    reporter: &Reporter,
) -> Result<(fhir_bulk::BulkClient, CompletedExport, Option<ExportJob>), CliError> {
    let source = args.source.trim();
    let lower = source.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let base = match &args.base_url {
            Some(base) => base.clone(),
            None => origin(source).ok_or_else(|| {
                CliError::usage("STATUS_URL", format!("`{source}` is not an http(s) URL"))
            })?,
        };
        let client = client::build(&base, &args.server, &args.poll)?;
        let job = client.job_at(source).map_err(from_lib)?;
        reporter.milestone(&format!("polling {}", job.status_url()));
        let export = job.wait().await.map_err(from_lib)?;
        return Ok((client, export, Some(job)));
    }
    let export = manifest::read(Path::new(source))?;
    let base = match &args.base_url {
        Some(base) => base.clone(),
        None => export
            .manifests
            .iter()
            .find_map(|m| m.request.as_deref().and_then(origin))
            .ok_or_else(|| {
                CliError::usage(
                    "--base-url",
                    "the manifest does not name its FHIR server (it has no `request`); give \
                     the server's base URL",
                )
            })?,
    };
    let client = client::build(&base, &args.server, &args.poll)?;
    Ok((client, export, None))
}

/// Writes the manifest pages into `dir` under a name of this process (shards write the
/// same pages at the same time).
fn write_manifest(dir: &Path, export: &CompletedExport) -> Result<(), CliError> {
    for (i, page) in export.manifests.iter().enumerate() {
        let path = dir.join(manifest::page_name(i + 1));
        let body = if page.raw().is_empty() {
            serde_json::to_string_pretty(page).unwrap_or_default()
        } else {
            page.raw().to_owned()
        };
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            manifest::page_name(i + 1),
            std::process::id()
        ));
        std::fs::write(&tmp, body.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The name of a saved file relative to `dir` (`/`-separated).
fn relative_in(dir: &Path, path: &Path) -> String {
    state::key(path.strip_prefix(dir).unwrap_or(path))
}

/// The summary of a shard or object-storage run: every file of the run (earlier runs' too),
/// the issues of the error files, the throughput of what this run wrote.
fn print_summary(
    records: &BTreeMap<String, FileRecord>,
    issues: IssueCounts,
    written: &[&SavedFile],
    started: Instant,
    download_elapsed: std::time::Duration,
    export: &CompletedExport,
    shown: &Path,
) {
    let summary = crate::summary::Summary {
        files: records,
        issues,
        elapsed: started.elapsed(),
        downloaded_bytes: written.iter().map(|f| f.data_bytes).sum(),
        download_elapsed,
        transaction_time: export
            .manifests
            .first()
            .map(|m| m.transaction_time.as_str()),
        output_dir: shown,
        job_note: None,
    };
    crate::out::text(&summary.render());
}

/// `download --shard K/N` into a local directory: this worker's files, under the names
/// one machine would give them; files already there are complete and skipped. Each
/// complete file gets its record ([`crate::cloud_state`]), the run is logged in the shared
/// `log.ndjson`, and a summary of the shard's files ends it.
async fn download_shard(args: &DownloadArgs, dir: &Path, shard: Shard) -> Result<(), CliError> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::usage(
            "--output-dir",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let reporter = Reporter::new(&args.output);
    let (client, export, _job) = source_export(args, &reporter).await?;
    write_manifest(dir, &export)?;
    let export_id = state::JobState::new(state::Phase::Downloading).export_id;
    let log = crate::export::open_log(dir, &export_id)?.with_files(args.output.log_files);
    log::manifest_events(&log, &export);
    let options = transfer::save_options(&args.output).with_skip_existing(true);
    let names = fhir_bulk::storage::shard_file_names(&export, options.gzip, shard);
    reporter.info(&format!(
        "shard {shard}: {} of {} files",
        names.len(),
        export.all_files().len()
    ));
    let downloads = Instant::now();
    let report = match client
        .save_export_shard(&export, dir, &options, shard)
        .await
    {
        Ok(report) => report,
        Err(error) => {
            log.event("download_error", log::error_detail(&error));
            reporter.finish();
            return Err(CliError::Failed(format!(
                "shard {shard} did not complete: {}. The complete files are kept; run the \
                 same command again to download the rest",
                describe(&error)
            )));
        }
    };
    let download_elapsed = downloads.elapsed();
    let earlier = cloud_state::load_local(dir);
    let files: Vec<(String, SavedFile)> = report
        .files
        .iter()
        .map(|f| (relative_in(dir, &f.path), f.clone()))
        .collect();
    let (mut records, missing) = cloud_state::merge(&files, &earlier);
    for (relative, saved) in &files {
        if missing.contains(relative) {
            let record = cloud_state::record_from_disk(dir, relative, saved).map_err(|e| {
                CliError::Failed(format!("cannot read {}: {e}", dir.join(relative).display()))
            })?;
            records.insert(relative.clone(), record);
        } else if saved.skipped {
            continue;
        } else {
            log::download_complete(&log, &saved.url, saved.data_bytes, saved.lines);
        }
        if let Some(record) = records.get(relative) {
            cloud_state::save_local(dir, relative, record).map_err(|e| {
                CliError::Failed(format!(
                    "cannot record {relative} in {}: {e}",
                    dir.display()
                ))
            })?;
        }
    }
    let mut issues = IssueCounts::default();
    for (key, record) in &records {
        if record.kind == FileKind::Error
            && let Err(e) = crate::outcomes::count_file(&dir.join(key), &mut issues)
        {
            reporter.warn(&format!("cannot read {key}: {e}"));
        }
    }
    log.event(
        "export_complete",
        serde_json::json!({
            "files": records.len(),
            "resources": records.values().map(|f| f.resources).sum::<u64>(),
            "bytes": records.values().map(|f| f.data_bytes).sum::<u64>(),
            "attachments": 0,
            "duration": started.elapsed().as_millis() as u64,
            "shard": shard.to_string(),
        }),
    );
    let written: Vec<&SavedFile> = report.files.iter().filter(|f| !f.skipped).collect();
    let skipped = report.files.len() - written.len();
    reporter.milestone(&format!(
        "shard {shard} complete: {} files downloaded, {skipped} already complete, in {}",
        written.len(),
        dir.display()
    ));
    reporter.finish();
    print_summary(
        &records,
        issues,
        &written,
        started,
        download_elapsed,
        &export,
        dir,
    );
    crate::export::issues_result(dir, issues.errors())
}

#[cfg(feature = "cloud")]
mod store {
    //! `download --output-dir s3://|gs://|az://`: the files streamed into object storage.

    use super::*;

    /// Downloads the export's files (or this shard's) into the object store at `url`: each
    /// complete object gets its record as soon as it is complete, a rerun writes only what is
    /// missing, and a summary of every file of the run (earlier runs' too) ends it.
    pub(super) async fn download(args: &DownloadArgs, url: &str) -> Result<(), CliError> {
        let started = Instant::now();
        let reporter = Reporter::new(&args.output);
        let destination = fhir_bulk::storage::cloud::Destination::from_url(url)
            .map_err(|e| CliError::usage("--output-dir", describe(&e)))?;
        let (client, export, _job) = source_export(args, &reporter).await?;
        let options = transfer::save_options(&args.output);
        let shard = args.shard.unwrap_or_else(Shard::all);
        let earlier = cloud_state::store::load(&destination)
            .await
            .map_err(|e| CliError::Failed(format!("cannot read {url}: {}", describe(&e))))?;
        let done = earlier.len();
        reporter.info(&format!(
            "writing to {url} (shard {shard}; {done} file record(s) from earlier runs)"
        ));
        let prefix = destination.prefix().to_owned();
        let relative = move |saved: &SavedFile| {
            let key = state::key(&saved.path);
            match key.strip_prefix(&prefix) {
                Some(rest) if !prefix.is_empty() => rest.trim_start_matches('/').to_owned(),
                _ => key,
            }
        };
        let destination_ref = &destination;
        let reporter_ref = &reporter;
        let relative_ref = &relative;
        let downloads = Instant::now();
        let result = destination
            .save_export_each(&client, &export, &options, shard, |saved| async move {
                if saved.skipped {
                    return;
                }
                let name = relative_ref(&saved);
                let record = cloud_state::record_of(&saved);
                if let Err(e) = cloud_state::store::save(destination_ref, &name, &record).await {
                    reporter_ref.warn(&format!(
                        "cannot record {name} in {url}: {} (a rerun counts it by its size)",
                        describe(&e)
                    ));
                }
            })
            .await;
        let report = match result {
            Ok(report) => report,
            Err(error) => {
                reporter.finish();
                return Err(CliError::Failed(format!(
                    "the files were not all written to {url}: {}. The complete objects are \
                     kept; run the same command again to write the rest",
                    describe(&error)
                )));
            }
        };
        let download_elapsed = downloads.elapsed();
        let files: Vec<(String, SavedFile)> = report
            .files
            .iter()
            .map(|f| (relative(f), f.clone()))
            .collect();
        let (mut records, missing) = cloud_state::merge(&files, &earlier);
        for (name, saved) in files.iter().filter(|(n, _)| missing.contains(n)) {
            // Complete, but its run ended before recording it: counted by its size.
            let record = cloud_state::record_of(saved);
            if let Err(e) = cloud_state::store::save(&destination, name, &record).await {
                reporter.warn(&format!("cannot record {name} in {url}: {}", describe(&e)));
            }
            records.insert(name.clone(), record);
        }
        if !missing.is_empty() {
            reporter.warn(&format!(
                "{} complete object(s) had no record from their run: their resources are not \
                 counted in the summary",
                missing.len()
            ));
        }
        let written: Vec<&SavedFile> = report.files.iter().filter(|f| !f.skipped).collect();
        let skipped = report.files.len() - written.len();
        reporter.milestone(&format!(
            "{} files written, {skipped} already complete, in {url}",
            written.len()
        ));
        reporter.finish();
        // The error files' issues are in the bucket: they are not read back here.
        print_summary(
            &records,
            IssueCounts::default(),
            &written,
            started,
            download_elapsed,
            &export,
            Path::new(url),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dirs() {
        assert_eq!(
            destination(Path::new("out/x")).unwrap(),
            Destination::Local("out/x".into())
        );
        assert_eq!(
            destination(Path::new("file:///tmp/exp")).unwrap(),
            Destination::Local("/tmp/exp".into())
        );
        let ftp = destination(Path::new("ftp://h/x")).unwrap_err().to_string();
        assert!(
            ftp.contains("--output-dir") && ftp.contains("ftp://"),
            "{ftp}"
        );
        let s3 = destination(Path::new("s3://bucket/prefix"));
        if cfg!(feature = "cloud") {
            assert_eq!(s3.unwrap(), Destination::Store("s3://bucket/prefix".into()));
        } else {
            let err = s3.unwrap_err().to_string();
            assert!(err.contains("`cloud` feature"), "{err}");
        }
        assert!(refuse_store_output(Path::new("out")).is_ok());
        assert!(refuse_store_output(Path::new("gs://b/p")).is_err());
    }

    #[test]
    fn shards_parse() {
        assert_eq!(parse_shard("1/3").unwrap().to_string(), "1/3");
        assert!(parse_shard("3/3").unwrap_err().contains("0 to count - 1"));
    }
}
