//! Downloading an export's files into the output directory: the files already complete (in
//! the job state and on disk with the recorded size) are skipped, the others go to the
//! library's [`Saver`]: fetched `--concurrency` at a time, each on its own task, written under
//! a `.part` name, and renamed when complete, verified (line count against the manifest's
//! `count`, `resourceType` against its `type`) and synced. Every completed file is recorded
//! in the job state's journal as its result arrives (one small append, see [`crate::state`]),
//! so an interrupted run loses at most the files in flight, and recording a file never holds
//! the other downloads. With partial manifests
//! (`--allow-partial-manifests`) the files are offered as the manifests arrive, while the job
//! still runs ([`Downloads::offer`]).

use crate::args::OutputArgs;
use crate::error::CliError;
use crate::log::{self, EventLog};
use crate::outcomes::{self, IssueCounts};
use crate::progress::{FileProgress, Reporter};
use crate::state::{self, FileRecord, StateFile, UrlId};
use fhir_bulk::download::{Durability, SaveEvent, SaveOptions, SaveResult, Saver, file_names};
use fhir_bulk::{BulkClient, CompletedExport, DownloadOptions, Error, FileKind};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

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
    /// Attachments in place after the attachment pass (`--attachments`).
    pub(crate) attachments: u64,
}

/// The library's save options for the output flags.
pub(crate) fn save_options(output: &OutputArgs) -> SaveOptions {
    let mut download = DownloadOptions::default().with_concurrency(usize::from(output.concurrency));
    if let Some(max) = output.max_line_bytes {
        download = download.with_max_line_bytes(usize::try_from(max).unwrap_or(usize::MAX));
    }
    let durability = if output.no_sync {
        Durability::Unsynced
    } else {
        Durability::Synced
    };
    SaveOptions::default()
        .with_gzip(output.gzip)
        .with_download(download)
        .with_durability(durability)
}

/// Whether `relative` is recorded complete for `url` and still on disk with its size.
fn already_complete(dir: &Path, relative: &Path, url: &str, state: &StateFile) -> bool {
    let Some(record) = state.state.files.get(&state::key(relative)) else {
        return false;
    };
    record.url == UrlId::of(url)
        && std::fs::metadata(dir.join(relative))
            .is_ok_and(|m| m.is_file() && m.len() == record.bytes)
}

/// The progress of the files in flight, by path: made when the library starts a file (its
/// `Started` event), updated by its progress callback, taken when its result arrives. Holds
/// at most the downloads running and finishing, whatever the number of files.
type Active = Arc<Mutex<HashMap<PathBuf, FileProgress>>>;

fn lock(active: &Active) -> std::sync::MutexGuard<'_, HashMap<PathBuf, FileProgress>> {
    active.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The downloads of one run: files offered (a whole export, or the partial manifests seen so
/// far) and not yet complete go to the library's [`Saver`], which runs at most
/// `--concurrency` at once, each on a task of its own, and syncs and renames finished files
/// off the download slots. Per finished file the work here is constant: a journal append, a
/// log line, the bars.
pub(crate) struct Downloads<'a> {
    saver: Saver,
    dir: PathBuf,
    gzip: bool,
    log: &'a EventLog,
    reporter: &'a Reporter,
    active: Active,
    /// Every file offered in this run, by state key, with its URL (redacted).
    offered: HashMap<String, String>,
    report: TransferReport,
    started: Option<std::time::Instant>,
}

impl std::fmt::Debug for Downloads<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("dir", &self.dir)
            .field("saver", &self.saver)
            .field("offered", &self.offered.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Downloads<'a> {
    /// No downloads yet.
    pub(crate) fn new(
        client: &BulkClient,
        dir: &Path,
        output: &OutputArgs,
        log: &'a EventLog,
        reporter: &'a Reporter,
    ) -> Downloads<'a> {
        let active: Active = Arc::default();
        let (on_start, on_progress) = (active.clone(), active.clone());
        let (starter, event_log, root) = (reporter.starter(), log.clone(), dir.to_path_buf());
        let options = save_options(output)
            .with_on_file(move |event| {
                if let SaveEvent::Started { file, path } = event {
                    log::download_request(&event_log, file);
                    let name = state::key(path.strip_prefix(&root).unwrap_or(path));
                    let progress = starter.file(&name, file.file.count, file.file.file_size);
                    lock(&on_start).insert(path.to_path_buf(), progress);
                }
            })
            .with_progress(move |path, lines, bytes| {
                let progress = lock(&on_progress).get(path).cloned();
                if let Some(progress) = progress {
                    progress.update(lines, bytes);
                }
            });
        Downloads {
            saver: Saver::new(client, dir, options),
            dir: dir.to_path_buf(),
            gzip: output.gzip,
            log,
            reporter,
            active,
            offered: HashMap::new(),
            report: TransferReport::default(),
            started: None,
        }
    }

    /// Whether downloads are running or queued.
    pub(crate) fn busy(&self) -> bool {
        !self.saver.is_empty()
    }

    /// Queues the files of `export` not offered before in this run and not already complete;
    /// returns how many were queued and how many were complete from an earlier run. For the
    /// partial manifests of a running job: they are queued at once (the job's final manifest
    /// goes to [`Downloads::finish`], which feeds its files as the downloads drain).
    pub(crate) fn offer(
        &mut self,
        export: &CompletedExport,
        state: &mut StateFile,
    ) -> (usize, usize) {
        let (wanted, queued, skipped) = self.sort(export, state, true);
        for ((file, relative), _) in file_names(export, self.gzip)
            .zip(wanted)
            .filter(|(_, want)| *want)
        {
            self.saver.push(file, relative);
        }
        self.begin(queued);
        (queued, skipped)
    }

    /// Which files of `export` to download, in [`file_names`] order: not offered before in
    /// this run (with `remember`, the others are remembered as offered now) and not already
    /// complete; with how many that is and how many were complete from an earlier run. One
    /// flag per file, so a 100,000-file manifest is sorted without a copy of it.
    fn sort(
        &mut self,
        export: &CompletedExport,
        state: &mut StateFile,
        remember: bool,
    ) -> (Vec<bool>, usize, usize) {
        let (mut queued, mut skipped) = (0, 0);
        let mut wanted = Vec::new();
        for (file, relative) in file_names(export, self.gzip) {
            let key = state::key(&relative);
            let url = file.file.url.redacted();
            if let Some(seen) = self.offered.get(&key) {
                if *seen != url {
                    self.report.failures.push((
                        key,
                        Error::BadManifest {
                            url: fhir_bulk::redact_url_str(export.status_url.as_str()),
                            message: format!(
                                "the manifests name two files {}: {seen} and {url}",
                                relative.display()
                            ),
                            source: None,
                        },
                    ));
                }
                wanted.push(false);
                continue;
            }
            if already_complete(&self.dir, &relative, &url, state) {
                skipped += 1;
                wanted.push(false);
                self.reporter
                    .detail(&format!("{} is already complete", relative.display()));
            } else {
                // Not trusted in this run; its line stays in the journal until the new one
                // supersedes it, and is checked again by any later run.
                state.state.files.remove(&key);
                wanted.push(true);
                queued += 1;
            }
            if remember {
                self.offered.insert(key, url);
            }
        }
        self.report.skipped += skipped;
        (wanted, queued, skipped)
    }

    /// Starts the clock and the bars with the first files queued.
    fn begin(&mut self, queued: usize) {
        if self.started.is_none() && queued > 0 {
            self.started = Some(std::time::Instant::now());
            self.reporter.downloads(queued);
        }
    }

    /// Waits for one download to end (saved, synced and renamed, or failed) and records it.
    /// `None` when none is queued or running. Cancel-safe (used in `select!`).
    pub(crate) async fn next(&mut self, state: &mut StateFile) -> Option<Result<(), CliError>> {
        let done = self.saver.next().await?;
        Some(self.record(done, state))
    }

    fn record(&mut self, done: SaveResult, state: &mut StateFile) -> Result<(), CliError> {
        let SaveResult {
            file, path, result, ..
        } = done;
        let progress = lock(&self.active).remove(&path);
        let name = state::key(path.strip_prefix(&self.dir).unwrap_or(&path));
        let url = file.file.url.redacted();
        match result {
            Ok(saved) => {
                log::download_complete(self.log, &url, saved.data_bytes, saved.lines);
                self.reporter
                    .file_done(progress.as_ref(), &name, saved.lines, saved.bytes);
                self.report.downloaded += 1;
                self.report.downloaded_bytes += saved.data_bytes;
                state.record(
                    &name,
                    FileRecord {
                        kind: file.kind,
                        resource_type: file.file.resource_type.clone(),
                        url: UrlId::of(&url),
                        resources: saved.lines,
                        bytes: saved.bytes,
                        data_bytes: saved.data_bytes,
                    },
                )
            }
            Err(error) => {
                let mut detail = log::error_detail(&error);
                detail["fileUrl"] = json!(url);
                self.log.event("download_error", detail);
                self.reporter.file_failed(
                    progress.as_ref(),
                    &name,
                    &crate::error::describe(&error),
                );
                self.report.failures.push((name, error));
                Ok(())
            }
        }
    }

    /// The complete export: records its phase, forgets records of files it does not list,
    /// queues what is left and waits for every download to end.
    pub(crate) async fn finish(
        mut self,
        export: &CompletedExport,
        state: &mut StateFile,
    ) -> Result<TransferReport, CliError> {
        state.state.phase = state::Phase::Downloading;
        // The server's text as sent: the summary says when it is not an instant.
        state.state.transaction_time = export.manifests.first().map(|m| m.transaction_time.clone());
        // Forget records of files this manifest does not list (an earlier manifest's).
        if !state.state.files.is_empty() {
            let listed: HashSet<String> = file_names(export, self.gzip)
                .map(|(_, relative)| state::key(&relative))
                .collect();
            state.forget_unlisted(&listed);
        }
        state.save()?;
        let early = self.offered.len();
        let (wanted, queued, skipped) = self.sort(export, state, false);
        self.begin(queued);
        let running = self.saver.pending();
        if early > 0 {
            self.reporter.info(&format!(
                "the export is complete: {early} file(s) came with partial manifests ({running} \
                 still downloading), {queued} more to download"
            ));
        } else if skipped > 0 {
            self.reporter.info(&format!(
                "{} of {} files already complete; downloading the other {}",
                skipped,
                skipped + queued,
                queued
            ));
        } else {
            self.reporter.info(&format!("downloading {queued} files"));
        }
        if self.started.is_none() {
            self.started = Some(std::time::Instant::now());
            self.reporter.downloads(0);
        }
        // Fed as the downloads drain: a few files wait, not the whole manifest.
        let mut jobs = file_names(export, self.gzip)
            .zip(wanted)
            .filter_map(|(named, want)| want.then_some(named));
        loop {
            self.saver.feed(&mut jobs);
            let Some(done) = self.saver.next().await else {
                break;
            };
            self.record(done, state)?;
        }
        self.report.elapsed = self.started.map(|s| s.elapsed()).unwrap_or_default();
        Ok(self.report)
    }
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
    Downloads::new(client, dir, output, log, reporter)
        .finish(export, state)
        .await
}

/// After the downloads: an error if any file failed (`failure_suffix` appended to the
/// message); otherwise the error files' issues counted, `export_complete` logged, and the
/// export recorded as complete in the journal, durably (before any DELETE, so an
/// interruption during the DELETE leaves a directory known to be complete). The whole state
/// is written after that, once: [`crate::export::finish_job`].
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
    log.event(
        "export_complete",
        json!({
            "files": state.state.files.len(),
            "resources": state.state.files.values().map(|f| f.resources).sum::<u64>(),
            "bytes": state.state.files.values().map(|f| f.data_bytes).sum::<u64>(),
            "attachments": report.attachments,
            "duration": started.elapsed().as_millis() as u64,
        }),
    );
    state.record_complete(issues.errors())?;
    Ok(issues)
}

/// The end of a run whose files are complete (its state saved by
/// [`crate::export::finish_job`]; the whole state is not written again): clears the bars,
/// prints the summary, and turns error or fatal issues in the error files into exit code 1.
pub(crate) fn summarize(
    dir: &Path,
    state: &StateFile,
    report: &TransferReport,
    issues: IssueCounts,
    started: std::time::Instant,
    job_note: Option<String>,
    reporter: &Reporter,
) -> Result<(), CliError> {
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
