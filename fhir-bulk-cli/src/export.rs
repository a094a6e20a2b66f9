//! `fhir-bulk export` (and the demo, which runs it against its own server): kick off, or
//! resume the export recorded in the output directory; poll; save the manifest; download the
//! files not yet complete; verify; DELETE the job unless `--keep-job`; print the summary.

use crate::args::ExportArgs;
use crate::client;
use crate::error::{CliError, Step, describe, describe_in};
use crate::history::{self, Since};
use crate::lock::DirLock;
use crate::log::{self, EventLog};
use crate::manifest;
use crate::progress::Reporter;
use crate::request;
use crate::state::{self, JobState, Phase, StateFile};
use crate::summary::Summary;
use crate::transfer::{self, Downloads};
use fhir_bulk::{
    BulkClient, CompletedExport, Error, ExportJob, ExportRequest, KickoffMethod, Manifest, Progress,
};
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Instant;

/// What to run again to resume (checked after the interruption: before the kick-off answer
/// there is nothing to resume).
pub(crate) fn resume_hint(dir: &Path) -> String {
    // A history keeps the state in the newest run's subdirectory.
    let state = match history::newest_run(dir) {
        Some(run) if !StateFile::path_in(dir).exists() => StateFile::path_in(&run),
        _ => StateFile::path_in(dir),
    };
    if state.exists() {
        format!(
            "the finished files and the job state ({}) are kept; run the same command again \
             to resume",
            state.display()
        )
    } else {
        "no export job was recorded yet; running the same command again starts one".to_owned()
    }
}

/// Runs an export from the flags.
pub(crate) async fn run(args: &ExportArgs) -> Result<(), CliError> {
    let started = Instant::now();
    crate::cloud::refuse_store_output(&args.output_dir)?;
    let since = Since::from_arg(args.since.as_deref());
    let with_history = args.history || since == Since::Auto;
    let request = if since == Since::Auto {
        refuse_two_sinces(args)?;
        let mut without = args.clone();
        without.since = None;
        request::build(&without)?
    } else {
        request::build(args)?
    };
    let client = client::build(&args.base_url, &args.server, &args.poll)?;
    let base = client.base_url().to_string();
    let root = args.output_dir.as_path();
    std::fs::create_dir_all(root).map_err(|e| {
        CliError::usage(
            "--output-dir",
            format!("cannot create {}: {e}", root.display()),
        )
    })?;
    let _root_lock = DirLock::acquire(root)?;
    let reporter = Reporter::new(&args.output);
    // A history run: its own subdirectory (an interrupted run's, or a new dated one), locked
    // as well, so a plain run can never share it.
    let (history, request, _run_lock, fresh) = if with_history {
        refuse_plain_export(root)?;
        let plan = history::plan(root, &base, request, &since, args.fresh)?;
        reporter.milestone(&plan.note);
        let lock = DirLock::acquire(&plan.dir)?;
        (Some(plan.dir), plan.request, Some(lock), false)
    } else {
        refuse_history(root)?;
        (None, request, None, args.fresh)
    };
    let dir = history.as_deref().unwrap_or(root);
    let existing = match StateFile::load(dir)? {
        Some(old) if fresh => {
            discard(dir, Some(&old), &reporter)?;
            None
        }
        None if fresh => {
            discard(dir, None, &reporter)?;
            None
        }
        other => other,
    };
    if existing.is_none() {
        refuse_unrecorded_files(dir, "pass --fresh to remove them")?;
    }
    let (mut state, job) = match existing {
        Some(old) if old.is_export_of(&base, &request) => {
            if old.phase == Phase::Complete {
                return already_complete(dir, old, started);
            }
            let Some(handle) = old.job.clone() else {
                return Err(CliError::Failed("the job state has no job".into()));
            };
            let state = StateFile::new(dir, old);
            reporter.milestone(&format!(
                "resuming the export recorded in {}: status URL {}",
                state.path().display(),
                handle.status_url
            ));
            (state, client.job(handle))
        }
        Some(old) => {
            let what = old
                .job
                .as_ref()
                .map(|j| format!("the export at {}", j.status_url))
                .unwrap_or_else(|| "a download".to_owned());
            return Err(CliError::usage(
                "--output-dir",
                format!(
                    "{} holds {what}, made with other options or another server \
                     ({}); use another --output-dir, or pass --fresh to discard it",
                    dir.display(),
                    StateFile::path_in(dir).display()
                ),
            ));
        }
        None => {
            let profile_given = args.server.server_profile.is_some();
            kick_off(&client, &request, dir, &reporter, profile_given).await?
        }
    };
    let log = open_log(dir, &state.state.export_id)?.with_files(args.output.log_files);
    let mut downloads = Downloads::new(&client, dir, &args.output, &log, &reporter);
    let export = if request::wants_partial_manifests(&request) {
        wait_downloading(&job, &mut state, &mut downloads, &log, &reporter).await?
    } else {
        wait(&job, &state, &log, &reporter).await?
    };
    log::manifest_events(&log, &export);
    manifest::write(dir, &export)?;
    reporter.milestone(&format!(
        "export ready: {} (transactionTime {})",
        crate::plural::count(export.all_files().len() as u64, "file"),
        export.manifests.first().map_or_else(
            || "unknown".to_owned(),
            |m| crate::escape::server_text(&m.transaction_time)
        )
    ));
    let mut report = downloads.finish(&export, &mut state).await?;
    report.attachments = crate::attachments::run(
        &client,
        dir,
        &args.attachments,
        &report,
        &mut state,
        &log,
        &reporter,
    )
    .await?;
    let issues = transfer::conclude(
        &report,
        dir,
        &mut state,
        &reporter,
        &log,
        started,
        ". The job was not deleted",
    )?;
    if history.is_some() {
        record_in_history(root, dir, &base, &request, &state, &reporter)?;
    }
    let job_note = finish_job(Some(&job), args.keep_job, &mut state, &reporter).await?;
    transfer::summarize(dir, &state, &report, issues, started, job_note, &reporter)
}

/// `--since auto` with `--param _since=...`: two answers to one question.
fn refuse_two_sinces(args: &ExportArgs) -> Result<(), CliError> {
    if args.params.iter().any(|(name, _)| name == "_since") {
        return Err(CliError::usage(
            "--since",
            "`--since auto` takes _since from the history, and --param _since=... gives \
             another one; drop one of them",
        ));
    }
    Ok(())
}

/// A history run refuses an output root that holds a plain export (its job state at the top).
fn refuse_plain_export(root: &Path) -> Result<(), CliError> {
    if StateFile::path_in(root).exists() || !state::export_like_files(root).is_empty() {
        return Err(CliError::usage(
            "--output-dir",
            format!(
                "{} holds an export made without --history (its files are at the top, not \
                 in dated subdirectories); use another --output-dir for the history, or run \
                 without --history / --since auto",
                root.display()
            ),
        ));
    }
    Ok(())
}

/// A plain run refuses an output root that holds a history.
fn refuse_history(root: &Path) -> Result<(), CliError> {
    if root.join(history::POINTER_FILE).exists() {
        return Err(CliError::usage(
            "--output-dir",
            format!(
                "{} holds an export history ({}); pass --history (or --since auto) to add a \
                 run to it, or use another --output-dir",
                root.display(),
                history::POINTER_FILE
            ),
        ));
    }
    Ok(())
}

/// Records the complete run in the history's `latest.json`, for the next `--since auto`.
fn record_in_history(
    root: &Path,
    dir: &Path,
    base: &str,
    request: &ExportRequest,
    state: &StateFile,
    reporter: &Reporter,
) -> Result<(), CliError> {
    let Some(time) = state.state.transaction_time.as_deref() else {
        reporter.warn(
            "the manifest has no transactionTime, so this run is not recorded for --since auto",
        );
        return Ok(());
    };
    history::record_complete(root, dir, base, request, time)?;
    reporter.info(&format!(
        "history: recorded in {} (transactionTime {}) for the next --since auto",
        root.join(history::POINTER_FILE).display(),
        crate::escape::server_text(time)
    ));
    Ok(())
}

pub(crate) fn open_log(dir: &Path, export_id: &str) -> Result<EventLog, CliError> {
    EventLog::open(dir, export_id).map_err(|e| {
        CliError::usage(
            "--output-dir",
            format!("cannot write {}: {e}", dir.join(log::LOG_FILE).display()),
        )
    })
}

/// Exit code 3 when the error files hold error or fatal issues (all the data is here, the
/// server reported problems).
pub(crate) fn issues_result(dir: &Path, errors: u64) -> Result<(), CliError> {
    if errors > 0 {
        return Err(CliError::ServerReportedErrors(format!(
            "every file is downloaded, but the server's error files report {}: see {}",
            crate::plural::count(errors, "error/fatal issue"),
            dir.join("error").display()
        )));
    }
    Ok(())
}

/// The export recorded in the directory is already complete: say so, show its summary.
fn already_complete(dir: &Path, old: JobState, started: Instant) -> Result<(), CliError> {
    // A run killed after recording the end of its downloads in the journal, before its
    // header write, left the mark only there: write the header, as that run would have.
    let old = if StateFile::header_phase(dir) != Some(Phase::Complete) {
        let mut file = StateFile::new(dir, old);
        file.save()?;
        file.state
    } else {
        old
    };
    crate::out::err(&format!(
        "The export in {} is already complete; pass --fresh to run a new one.",
        dir.display()
    ));
    let summary = Summary {
        files: &old.files,
        // The state keeps the error and fatal issues' total, so the result line matches the
        // exit code.
        issues: crate::outcomes::IssueCounts {
            error: old.error_issues,
            ..Default::default()
        },
        elapsed: started.elapsed(),
        downloaded_bytes: 0,
        download_elapsed: Default::default(),
        transaction_time: old.transaction_time.as_deref(),
        output_dir: dir,
        job_note: match &old.job {
            Some(job) if !old.job_deleted => {
                Some(format!("still on the server: {}", job.status_url))
            }
            _ => None,
        },
    };
    crate::out::text(&summary.render());
    issues_result(dir, old.error_issues)
}

/// Kicks off, logs the `kickoff` event and records the job in a new state file.
async fn kick_off(
    client: &BulkClient,
    request: &ExportRequest,
    dir: &Path,
    reporter: &Reporter,
    profile_given: bool,
) -> Result<(StateFile, ExportJob), CliError> {
    let mut state = JobState::new(Phase::Running);
    let log = open_log(dir, &state.export_id)?;
    let export_url = export_url(client, request);
    // What the server runs, for the log (as the SMART bulk-data-client records it); a server
    // without a readable CapabilityStatement still gets its export.
    let server = match client::capability_statement(client).await {
        Ok(server) => Some(server),
        Err(error) => {
            reporter.detail(&format!(
                "no CapabilityStatement: {}",
                crate::error::describe(&error)
            ));
            None
        }
    };
    // The suggestion is one line at normal verbosity, shown once (at the kick-off), when no
    // --server-profile was given; with one, -v still tells what the server names.
    if let Some(suggested) = server.as_ref().and_then(|s| s.suggested_profile())
        && suggested != client.server_profile()
    {
        let line = format!(
            "the CapabilityStatement names {}: consider --server-profile {suggested} (using {})",
            suggested.display_name(),
            client.server_profile()
        );
        if profile_given {
            reporter.detail(&line);
        } else {
            reporter.info(&line);
        }
    } else {
        reporter.detail(&format!("server profile: {}", client.server_profile()));
    }
    let software = |field: fn(&fhir_bulk::CapabilityStatement) -> &Option<String>| {
        server.as_ref().and_then(|s| field(s).clone())
    };
    reporter.info(&format!("kicking off {export_url}"));
    let mut detail = json!({
        "exportUrl": export_url,
        "errorCode": null,
        "errorBody": null,
        "softwareName": software(|s| &s.software_name),
        "softwareVersion": software(|s| &s.software_version),
        "softwareReleaseDate": software(|s| &s.software_release_date),
        "fhirVersion": software(|s| &s.fhir_version),
        "requestParameters": request_parameters(
            &client.prepare_request(request).unwrap_or_else(|_| request.clone())
        ),
        "responseHeaders": {},
    });
    let job = match client.kick_off(request).await {
        Ok(job) => job,
        Err(error) => {
            let failed = log::error_detail(&error);
            detail["errorCode"] = failed["code"].clone();
            detail["errorBody"] = failed["body"].clone();
            detail["responseHeaders"] = failed["responseHeaders"].clone();
            log.event("kickoff", detail);
            let refused = if client.kickoff_method(request).ok() == Some(KickoffMethod::Post) {
                format!(
                    "POST {export_url} with the parameters {}",
                    request_parameters(request)
                )
            } else {
                format!("GET {export_url}")
            };
            return Err(crate::error::kickoff_refused(error, &refused));
        }
    };
    let mut headers = Map::new();
    headers.insert("content-location".into(), json!(job.status_url().as_str()));
    if let Some(id) = &job.handle().request_ids.x_request_id {
        headers.insert("x-request-id".into(), json!(id));
    }
    if let Some(id) = &job.handle().request_ids.opc_request_id {
        headers.insert("opc-request-id".into(), json!(id));
    }
    detail["responseHeaders"] = Value::Object(headers);
    log.event("kickoff", detail);
    if let Some(outcome) = job.kickoff_outcome() {
        reporter.info(&format!("the server says: {outcome}"));
    }
    state.base_url = Some(client.base_url().to_string());
    state.request = Some(request.clone());
    state.job = Some(job.handle().clone());
    let mut file = StateFile::new(dir, state);
    file.save()?;
    reporter.milestone(&format!(
        "export kicked off; status URL {}",
        job.status_url()
    ));
    Ok((file, job))
}

/// The kick-off URL exactly as the library sends it (the server profile applied).
fn export_url(client: &BulkClient, request: &ExportRequest) -> String {
    match client.kickoff_url(request) {
        Ok(url) => url.to_string(),
        Err(_) => format!("{}{}", client.base_url(), request.operation_path()),
    }
}

/// The kick-off parameters as an object; repeated names become arrays.
fn request_parameters(request: &ExportRequest) -> Value {
    let mut params = Map::new();
    let mut add = |name: String, value: String| match params.get_mut(&name) {
        Some(Value::Array(values)) => values.push(json!(value)),
        Some(existing) => {
            let first = existing.take();
            *existing = json!([first, value]);
        }
        None => {
            params.insert(name, json!(value));
        }
    };
    for (name, value) in request.parameter_pairs() {
        add(name, value);
    }
    Value::Object(params)
}

/// Polls until the export is complete, logging every answer. Errors name `state`'s file as the
/// place the job is recorded.
pub(crate) async fn wait(
    job: &ExportJob,
    state: &StateFile,
    log: &EventLog,
    reporter: &Reporter,
) -> Result<CompletedExport, CliError> {
    wait_reporting(job, state.path(), log, reporter, |_| {}).await
}

/// Polls until the export is complete while downloading the files of the partial manifests
/// that arrive (`allowPartialManifests`); the downloads still running or queued at the end
/// stay in `downloads`. A partial manifest with a `next` link ends the early downloads (the
/// pages behind it are fetched by the library, so the names of later files are only known at
/// completion): the rest waits for the complete export.
async fn wait_downloading(
    job: &ExportJob,
    state: &mut StateFile,
    downloads: &mut Downloads<'_>,
    log: &EventLog,
    reporter: &Reporter,
) -> Result<CompletedExport, CliError> {
    let (pages_tx, mut pages_rx) = tokio::sync::mpsc::unbounded_channel::<Manifest>();
    let state_path = state.path().to_path_buf();
    let waiting = wait_reporting(job, &state_path, log, reporter, move |page| {
        let _ = pages_tx.send(page.clone());
    });
    tokio::pin!(waiting);
    let mut pages: Vec<Manifest> = Vec::new();
    let mut chained = false;
    loop {
        tokio::select! {
            result = &mut waiting => return result,
            Some(page) = pages_rx.recv() => {
                if chained || pages.last().is_some_and(|last| last.raw() == page.raw()) {
                    continue;
                }
                chained = page.next_link().is_some();
                pages.push(page);
                let partial = CompletedExport::from_manifests(job.status_url().clone(), pages);
                let (queued, _) = downloads.offer(&partial, state);
                pages = partial.manifests;
                if queued > 0 {
                    reporter.info(&format!(
                        "a partial manifest lists {queued} new file(s): downloading them while \
                         the export runs"
                    ));
                }
            }
            Some(result) = downloads.next(state), if downloads.busy() => result?,
        }
    }
}

/// Polls until the export is complete, logging every answer and passing every partial
/// manifest to `on_partial`. Errors name `state_path` as the place the job is recorded.
async fn wait_reporting(
    job: &ExportJob,
    state_path: &Path,
    log: &EventLog,
    reporter: &Reporter,
    mut on_partial: impl FnMut(&Manifest),
) -> Result<CompletedExport, CliError> {
    reporter.polling();
    let mut polls = 0u32;
    let result = job
        .wait_with(|progress: &Progress| {
            if let Some(page) = &progress.partial_manifest {
                on_partial(page);
            }
            polls += 1;
            log.event(
                "status_progress",
                json!({
                    "body": progress.outcome.as_ref().and_then(|o| serde_json::to_value(o).ok()),
                    "xProgress": progress.text,
                    "retryAfter": progress.retry_after.map(crate::time::seconds),
                }),
            );
            reporter.poll(progress, polls);
        })
        .await;
    reporter.polling_done();
    match result {
        Ok(export) => Ok(export),
        Err(error) => {
            log.event("status_error", log::error_detail(&error));
            reporter.finish();
            Err(CliError::Failed(match &error {
                Error::JobNotFound(_) => format!(
                    "the export job recorded in {} is gone from the server (deleted, \
                     cancelled or expired): {}. Start a new export with --fresh (or delete \
                     that file)",
                    state_path.display(),
                    describe_in(&error, Step::Poll)
                ),
                e if e.is_retryable() => format!(
                    "{}. The job is still recorded in {}: run the same command again to \
                     resume polling",
                    describe_in(e, Step::Poll),
                    state_path.display()
                ),
                e => format!(
                    "{}. Start a new export with --fresh once the problem is fixed",
                    describe_in(e, Step::Poll)
                ),
            }))
        }
    }
}

/// The end of a complete run: DELETEs the job, if there is one, unless `--keep-job`
/// (recording the deletion), then writes the whole job state, the only time this run
/// writes every file's record ([`transfer::conclude`] recorded the completion in the
/// journal before the DELETE). Returns the summary's note about the job.
pub(crate) async fn finish_job(
    job: Option<&ExportJob>,
    keep: bool,
    state: &mut StateFile,
    reporter: &Reporter,
) -> Result<Option<String>, CliError> {
    let note = match job {
        Some(job) => Some(delete_job(job, keep, state, reporter).await),
        None => None,
    };
    state.save()?;
    Ok(note)
}

/// DELETEs the job unless `keep`, marking the state's job deleted; the summary's note.
async fn delete_job(
    job: &ExportJob,
    keep: bool,
    state: &mut StateFile,
    reporter: &Reporter,
) -> String {
    let url = job.status_url().to_string();
    if keep {
        return format!("kept on the server (--keep-job): {url}");
    }
    match job.delete().await {
        Ok(report) => {
            state.state.job_deleted = true;
            if let Some(outcome) = &report.operation_outcome {
                reporter.info(&format!("the server says about the DELETE: {outcome}"));
            }
            "deleted on the server".to_owned()
        }
        Err(e) => {
            reporter.warn(&format!(
                "the files are complete, but deleting the job failed: {}. Remove it with \
                 `fhir-bulk cancel {url}`",
                describe(&e)
            ));
            format!("still on the server (the DELETE failed): {url}")
        }
    }
}

/// Refuses a directory without a job state that holds files named like an export's: they
/// belong to an export this directory has no record of, and downloading into it would replace
/// some of them and keep the others. `advice` says how to clear them.
pub(crate) fn refuse_unrecorded_files(dir: &Path, advice: &str) -> Result<(), CliError> {
    let found = state::export_like_files(dir);
    let Some(first) = found.first() else {
        return Ok(());
    };
    Err(CliError::usage(
        "--output-dir",
        format!(
            "{} holds {} file(s) named like an export's ({first}{}) but no job state ({}), \
             so they are not from an export fhir-bulk can resume and would be mixed with this \
             one; {advice}, or use another --output-dir",
            dir.display(),
            found.len(),
            if found.len() > 1 { ", ..." } else { "" },
            state::STATE_FILE,
        ),
    ))
}

/// `--fresh`: removes what an earlier export left (the files its state records, every file
/// named like an export's, manifest pages, `.part` files, the state and its journal); the log
/// is kept. Only paths inside `dir` are touched: the state's keys were checked on load.
fn discard(dir: &Path, old: Option<&JobState>, reporter: &Reporter) -> Result<(), CliError> {
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CliError::Failed(format!(
            "--fresh: cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    };
    if let Some(old) = old {
        for key in old.files.keys().filter(|k| state::is_safe_key(k)) {
            remove(&dir.join(key))?;
        }
    }
    for relative in state::export_like_files(dir) {
        remove(&dir.join(relative))?;
    }
    let mut n = 1;
    while dir.join(manifest::page_name(n)).exists() {
        remove(&dir.join(manifest::page_name(n)))?;
        n += 1;
    }
    for sub in [dir.to_path_buf(), dir.join("error"), dir.join("deleted")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".part") {
                remove(&entry.path())?;
            }
        }
    }
    StateFile::remove(dir)
        .map_err(|e| CliError::Failed(format!("--fresh: cannot remove the job state: {e}")))?;
    if let Some(old) = old
        && let (Some(job), false) = (&old.job, old.job_deleted || old.phase == Phase::Complete)
    {
        reporter.warn(&format!(
            "the earlier export job is left on the server; cancel it with `fhir-bulk cancel {}`",
            job.status_url
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FileRecord, UrlId};
    use fhir_bulk::FileKind;

    /// A run killed between the end-of-downloads mark and its header write leaves the mark
    /// only in the journal; the rerun that finds the export complete writes it to the header.
    #[test]
    fn an_export_found_complete_writes_the_mark_into_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::new(dir.path(), JobState::new(Phase::Downloading));
        file.save().unwrap();
        std::fs::write(dir.path().join("Patient.1.ndjson"), "{}\n").unwrap();
        let record = FileRecord {
            kind: FileKind::Output,
            resource_type: Some("Patient".into()),
            url: UrlId::of("http://h/1"),
            resources: 1,
            bytes: 3,
            data_bytes: 3,
        };
        file.record("Patient.1.ndjson", record).unwrap();
        file.record_complete(0).unwrap();
        drop(file);
        let loaded = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.phase, Phase::Complete);
        let journal = std::fs::read(StateFile::journal_in(dir.path())).unwrap();
        already_complete(dir.path(), loaded, Instant::now()).unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&std::fs::read(StateFile::path_in(dir.path())).unwrap())
                .unwrap();
        assert_eq!(header["phase"], "complete");
        assert_eq!(
            std::fs::read(StateFile::journal_in(dir.path())).unwrap(),
            journal,
            "the journal, the list of files, is left as it is"
        );
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!((back.phase, back.files.len()), (Phase::Complete, 1));
        // Once the header says complete, a rerun writes nothing (its time would change).
        let header = std::fs::read(StateFile::path_in(dir.path())).unwrap();
        already_complete(dir.path(), back, Instant::now()).unwrap();
        assert_eq!(
            std::fs::read(StateFile::path_in(dir.path())).unwrap(),
            header
        );
    }
}
