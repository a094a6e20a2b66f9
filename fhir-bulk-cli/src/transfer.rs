//! Downloading an export's files into the output directory: the files already complete (in
//! the state file and on disk with the recorded size) are skipped, the others are fetched
//! `--concurrency` at a time, each written under a `.part` name and renamed when complete and
//! verified (line count against the manifest's `count`, `resourceType` against its `type`).
//! Every completed file is recorded in the state file at once, so an interrupted run loses at
//! most the files in flight.

use crate::args::OutputArgs;
use crate::error::CliError;
use crate::log::{self, EventLog};
use crate::outcomes::{self, IssueCounts};
use crate::progress::Reporter;
use crate::state::{self, FileRecord, StateFile};
use fhir_bulk::download::{SaveOptions, file_names};
use fhir_bulk::{BulkClient, CompletedExport, DownloadOptions, Error, FileKind};
use futures::StreamExt;
use serde_json::json;
use std::path::{Path, PathBuf};

/// What the download phase did.
#[derive(Debug, Default)]
pub(crate) struct TransferReport {
    /// NDJSON bytes downloaded in this run.
    pub(crate) downloaded_bytes: u64,
    /// Files downloaded in this run.
    pub(crate) downloaded: usize,
    /// Files already complete from an earlier run.
    pub(crate) skipped: usize,
    /// Files that failed: their name and the error.
    pub(crate) failures: Vec<(String, Error)>,
    /// How long the downloads took.
    pub(crate) elapsed: std::time::Duration,
}

/// The library's save options for the output flags.
pub(crate) fn save_options(output: &OutputArgs) -> SaveOptions {
    let mut download = DownloadOptions::default().with_concurrency(usize::from(output.concurrency));
    if let Some(max) = output.max_line_bytes {
        download = download.with_max_line_bytes(usize::try_from(max).unwrap_or(usize::MAX));
    }
    SaveOptions::default()
        .with_gzip(output.gzip)
        .with_download(download)
}

/// Whether `relative` is recorded complete for `url` and still on disk with its size.
fn already_complete(dir: &Path, relative: &Path, url: &str, state: &StateFile) -> bool {
    let Some(record) = state.state.files.get(&state::key(relative)) else {
        return false;
    };
    record.url == url
        && std::fs::metadata(dir.join(relative))
            .is_ok_and(|m| m.is_file() && m.len() == record.bytes)
}

/// Downloads the files of `export` not yet complete into `dir`, recording each in `state`.
pub(crate) async fn download(
    client: &BulkClient,
    export: &CompletedExport,
    dir: &Path,
    output: &OutputArgs,
    state: &mut StateFile,
    log: &EventLog,
    reporter: &Reporter,
) -> Result<TransferReport, CliError> {
    state.state.phase = state::Phase::Downloading;
    state.state.transaction_time = export.transaction_time().map(|t| t.to_string());
    state.save()?;
    let started = std::time::Instant::now();
    let options = save_options(output);
    let mut report = TransferReport::default();
    let mut todo = Vec::new();
    let names = file_names(export, options.gzip);
    // Forget records of files this manifest does not list (an earlier manifest's).
    let listed: std::collections::HashSet<String> =
        names.iter().map(|(_, rel)| state::key(rel)).collect();
    state.state.files.retain(|key, _| listed.contains(key));
    for (file, relative) in names {
        let url = file.file.url.redacted();
        if already_complete(dir, &relative, &url, state) {
            report.skipped += 1;
            reporter.detail(&format!("{} is already complete", relative.display()));
        } else {
            state.state.files.remove(&state::key(&relative));
            todo.push((file, relative));
        }
    }
    if report.skipped > 0 {
        reporter.info(&format!(
            "{} of {} files already complete; downloading the other {}",
            report.skipped,
            report.skipped + todo.len(),
            todo.len()
        ));
    } else {
        reporter.info(&format!("downloading {} files", todo.len()));
    }
    reporter.downloads(todo.len());
    let concurrency = usize::from(output.concurrency).max(1);
    let mut results = futures::stream::iter(todo.into_iter().map(|(file, relative)| {
        let path: PathBuf = dir.join(&relative);
        let name = state::key(&relative);
        log::download_request(log, &file);
        let progress = reporter.file(&name, file.file.count, file.file.file_size);
        let on_progress = progress.clone();
        let options = options
            .clone()
            .with_progress(move |_, lines, bytes| on_progress.update(lines, bytes));
        async move {
            let result = client.save_file(&file, &path, &options).await;
            (file, relative, name, progress, result)
        }
    }))
    .buffer_unordered(concurrency);
    while let Some((file, relative, name, progress, result)) = results.next().await {
        let url = file.file.url.redacted();
        match result {
            Ok(saved) => {
                log.event(
                    "download_complete",
                    json!({
                        "fileUrl": url,
                        "fileSize": saved.data_bytes,
                        "resourceCount": saved.lines,
                    }),
                );
                reporter.file_done(&progress, &name, saved.lines, saved.bytes);
                report.downloaded += 1;
                report.downloaded_bytes += saved.data_bytes;
                state.state.files.insert(
                    state::key(&relative),
                    FileRecord {
                        kind: file.kind,
                        resource_type: file.file.resource_type.clone(),
                        url,
                        resources: saved.lines,
                        bytes: saved.bytes,
                        data_bytes: saved.data_bytes,
                    },
                );
                state.save()?;
            }
            Err(error) => {
                let mut detail = log::error_detail(&error);
                detail["fileUrl"] = json!(url);
                log.event("download_error", detail);
                reporter.file_failed(&progress, &name, &crate::error::describe(&error));
                report.failures.push((name, error));
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// After the downloads: an error if any file failed (`failure_suffix` appended to the
/// message); otherwise the error files' issues counted, `export_complete` logged, and the
/// export recorded as complete and saved (before any DELETE, so an interruption during the
/// DELETE leaves a directory known to be complete).
pub(crate) fn conclude(
    report: &TransferReport,
    dir: &Path,
    state: &mut StateFile,
    reporter: &Reporter,
    log: &EventLog,
    started: std::time::Instant,
    failure_suffix: &str,
) -> Result<IssueCounts, CliError> {
    if !report.failures.is_empty() {
        reporter.finish();
        return Err(CliError::Failed(format!(
            "{}{failure_suffix}",
            failure_message(report, "run the same command again")
        )));
    }
    let issues = count_issues(dir, state, reporter);
    state.state.error_issues = issues.errors();
    log.event(
        "export_complete",
        json!({
            "files": state.state.files.len(),
            "resources": state.state.files.values().map(|f| f.resources).sum::<u64>(),
            "bytes": state.state.files.values().map(|f| f.data_bytes).sum::<u64>(),
            "attachments": 0,
            "duration": started.elapsed().as_millis() as u64,
        }),
    );
    state.state.phase = state::Phase::Complete;
    state.save()?;
    Ok(issues)
}

/// The end of a run whose files are complete: saves the state, clears the bars, prints the
/// summary, and turns error or fatal issues in the error files into exit code 1.
pub(crate) fn summarize(
    dir: &Path,
    state: &mut StateFile,
    report: &TransferReport,
    issues: IssueCounts,
    started: std::time::Instant,
    job_note: Option<String>,
    reporter: &Reporter,
) -> Result<(), CliError> {
    state.save()?;
    reporter.finish();
    let summary = crate::summary::Summary {
        files: &state.state.files,
        issues,
        elapsed: started.elapsed(),
        downloaded_bytes: report.downloaded_bytes,
        download_elapsed: report.elapsed,
        transaction_time: state.state.transaction_time.as_deref(),
        output_dir: dir,
        job_note,
    };
    crate::out::text(&summary.render());
    crate::export::issues_result(dir, issues.errors())
}

/// Counts the issues in the saved error files recorded in `state`.
pub(crate) fn count_issues(dir: &Path, state: &StateFile, reporter: &Reporter) -> IssueCounts {
    let mut counts = IssueCounts::default();
    for (key, record) in &state.state.files {
        if record.kind == FileKind::Error
            && let Err(e) = outcomes::count_file(&dir.join(key), &mut counts)
        {
            reporter.warn(&format!("cannot read {key}: {e}"));
        }
    }
    counts
}

/// The message for failed files: how many, the first error, and how to resume.
pub(crate) fn failure_message(report: &TransferReport, resume: &str) -> String {
    let Some((name, first)) = report.failures.first() else {
        return format!("the downloads did not complete; {resume}");
    };
    let expired = report
        .failures
        .iter()
        .any(|(_, e)| matches!(e, Error::FileExpired { .. }));
    let mut text = format!(
        "{} file(s) failed to download (first: {name}: {})",
        report.failures.len(),
        crate::error::describe(first)
    );
    if expired {
        text.push_str(". The file links expired; the next run fetches fresh ones");
    }
    text.push_str(&format!(
        ". The complete files are kept; {resume} to download the rest"
    ));
    text
}
