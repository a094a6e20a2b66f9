//! `fhir-bulk export` (and the demo, which runs it against its own server): kick off, or
//! resume the export recorded in the output directory; poll; save the manifest; download the
//! files not yet complete; verify; DELETE the job unless `--keep-job`; print the summary.

use crate::args::ExportArgs;
use crate::client;
use crate::error::{CliError, describe, from_lib};
use crate::log::{self, EventLog};
use crate::manifest;
use crate::progress::Reporter;
use crate::request;
use crate::state::{JobState, Phase, StateFile};
use crate::summary::Summary;
use crate::transfer;
use fhir_bulk::{BulkClient, Error, ExportJob, ExportRequest, KickoffMethod, Progress};
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Instant;

/// What to run again to resume (checked after the interruption: before the kick-off answer
/// there is nothing to resume).
pub(crate) fn resume_hint(dir: &Path) -> String {
    let state = StateFile::path_in(dir);
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
    let request = request::build(args)?;
    let client = client::build(&args.base_url, &args.server, &args.poll)?;
    let base = client.base_url().to_string();
    let dir = args.output_dir.as_path();
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::usage(
            "--output-dir",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let reporter = Reporter::new(&args.output);
    let existing = match StateFile::load(dir)? {
        Some(old) if args.fresh => {
            discard(dir, &old, &reporter)?;
            None
        }
        other => other,
    };
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
        None => kick_off(&client, &request, dir, &reporter).await?,
    };
    let log = open_log(dir, &state.state.export_id)?;
    let export = wait(&job, &mut state, &log, &reporter).await?;
    log::manifest_events(&log, &export);
    manifest::write(dir, &export)?;
    reporter.milestone(&format!(
        "export ready: {} files (transactionTime {})",
        export.all_files().len(),
        export.transaction_time()
    ));
    let report = transfer::download(
        &client,
        &export,
        dir,
        &args.output,
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
    let job_note = finish_job(&job, args.keep_job, &mut state, &reporter).await;
    transfer::summarize(
        dir,
        &mut state,
        &report,
        issues,
        started,
        Some(job_note),
        &reporter,
    )
}

pub(crate) fn open_log(dir: &Path, export_id: &str) -> Result<EventLog, CliError> {
    EventLog::open(dir, export_id).map_err(|e| {
        CliError::usage(
            "--output-dir",
            format!("cannot write {}: {e}", dir.join(log::LOG_FILE).display()),
        )
    })
}

/// Exit code 1 when the error files hold error or fatal issues.
pub(crate) fn issues_result(dir: &Path, errors: u64) -> Result<(), CliError> {
    if errors > 0 {
        return Err(CliError::Failed(format!(
            "the server's error files hold {errors} error/fatal issue(s): see {}",
            dir.join("error").display()
        )));
    }
    Ok(())
}

/// The export recorded in the directory is already complete: say so, show its summary.
fn already_complete(dir: &Path, old: JobState, started: Instant) -> Result<(), CliError> {
    crate::out::err(&format!(
        "The export in {} is already complete; pass --fresh to run a new one.",
        dir.display()
    ));
    let summary = Summary {
        files: &old.files,
        issues: Default::default(),
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
) -> Result<(StateFile, ExportJob), CliError> {
    let mut state = JobState::new(Phase::Running);
    let log = open_log(dir, &state.export_id)?;
    let export_url = export_url(client, request);
    // What the server runs, for the log (as the SMART bulk-data-client records it); a server
    // without a readable CapabilityStatement still gets its export.
    let server = match client.capability_statement().await {
        Ok(server) => Some(server),
        Err(error) => {
            reporter.detail(&format!(
                "no CapabilityStatement: {}",
                crate::error::describe(&error)
            ));
            None
        }
    };
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
        "requestParameters": request_parameters(request),
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
            return Err(from_lib(error));
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

/// The kick-off URL: the operation, with the query string for GET.
fn export_url(client: &BulkClient, request: &ExportRequest) -> String {
    let Ok(mut url) = client.base_url().join(&request.operation_path()) else {
        return format!("{}{}", client.base_url(), request.operation_path());
    };
    if request.kickoff_method() == KickoffMethod::Get {
        let pairs = request.query_pairs();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
    }
    url.to_string()
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
    for (name, value) in request.query_pairs() {
        add(name, value);
    }
    for patient in request.patient_references() {
        add("patient".into(), patient.clone());
    }
    Value::Object(params)
}

/// Polls until the export is complete, logging every answer. Errors name `state`'s file as the
/// place the job is recorded.
pub(crate) async fn wait(
    job: &ExportJob,
    state: &mut StateFile,
    log: &EventLog,
    reporter: &Reporter,
) -> Result<fhir_bulk::CompletedExport, CliError> {
    reporter.polling();
    let mut polls = 0u32;
    let result = job
        .wait_with(|progress: &Progress| {
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
                    state.path().display(),
                    describe(&error)
                ),
                e if e.is_retryable() => format!(
                    "{}. The job is still recorded in {}: run the same command again to \
                     resume polling",
                    describe(e),
                    state.path().display()
                ),
                e => format!(
                    "{}. Start a new export with --fresh once the problem is fixed",
                    describe(e)
                ),
            }))
        }
    }
}

/// DELETEs the job unless `--keep-job`; returns the summary's note about it.
pub(crate) async fn finish_job(
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

/// `--fresh`: removes what an earlier export left (its files, manifest pages, `.part` files
/// and state); the log is kept.
fn discard(dir: &Path, old: &JobState, reporter: &Reporter) -> Result<(), CliError> {
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CliError::Failed(format!(
            "--fresh: cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    };
    for key in old.files.keys() {
        remove(&dir.join(key))?;
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
    if let (Some(job), false) = (&old.job, old.job_deleted || old.phase == Phase::Complete) {
        reporter.warn(&format!(
            "the earlier export job is left on the server; cancel it with `fhir-bulk cancel {}`",
            job.status_url
        ));
    }
    Ok(())
}
