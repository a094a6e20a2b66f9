//! `fhir-bulk download`: the files of a finished job, from a saved manifest (`manifest.json`
//! and its `manifest.N.json` pages) or from the job's status URL. Files already complete in
//! the output directory are skipped, so running it again resumes.

use crate::args::{DownloadArgs, ServerArgs};
use crate::auth;
use crate::client;
use crate::error::{CliError, from_lib};
use crate::export;
use crate::log;
use crate::manifest;
use crate::progress::Reporter;
use crate::state::{JobState, Phase, StateFile};
use crate::transfer;
use fhir_bulk::{BulkClient, CompletedExport, ExportJob};
use std::path::Path;
use std::time::Instant;
use url::Url;

/// Whether the argument is a status URL rather than a file.
fn is_url(source: &str) -> bool {
    let lower = source.trim().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// `scheme://host[:port]/` of a URL.
fn origin(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    url.host()?;
    Some(url.origin().ascii_serialization() + "/")
}

/// The FHIR base of a kick-off URL (a manifest's `request`): what comes before `/$export`,
/// less a `/Patient` or `/Group/<id>` level.
fn base_of_request(request: &str) -> Option<String> {
    let url = Url::parse(request.trim()).ok()?;
    url.host()?;
    let path = url.path();
    let at = path.find("/$export")?;
    let mut segments: Vec<&str> = path[..at].split('/').collect();
    match segments.as_slice() {
        [.., "Group", _] => {
            segments.truncate(segments.len() - 2);
        }
        [.., "Patient"] => {
            segments.pop();
        }
        _ => {}
    }
    let mut base = url.clone();
    base.set_query(None);
    base.set_fragment(None);
    base.set_path(&format!("{}/", segments.join("/").trim_end_matches('/')));
    Some(base.to_string())
}

/// The FHIR base for a manifest file: `--base-url`, else the FHIR base of the manifest's
/// `request` (so SMART discovery reads the server's own .well-known/smart-configuration);
/// without credentials any origin will do, as no token is sent.
fn manifest_base(args: &DownloadArgs, export: &CompletedExport) -> Result<String, CliError> {
    if let Some(base) = &args.base_url {
        return Ok(base.clone());
    }
    if let Some(base) = export.manifests.iter().find_map(|m| {
        m.request
            .as_deref()
            .and_then(|r| base_of_request(r).or_else(|| origin(r)))
    }) {
        return Ok(base);
    }
    if !auth::has_credentials(&args.server) {
        let first = export
            .all_files()
            .into_iter()
            .find_map(|f| origin(f.file.url.expose()));
        return Ok(first.unwrap_or_else(|| "http://127.0.0.1/".to_owned()));
    }
    Err(CliError::usage(
        "--base-url",
        "the manifest does not name its FHIR server (it has no `request`); give the server's \
         base URL, so the token goes to that server only",
    ))
}

/// With `--client-id`, gets a token before any file (by reading the CapabilityStatement with
/// it), so a token endpoint that cannot be found or refuses the client fails the command
/// once, before the downloads, not once per file.
async fn token_first(client: &BulkClient, server: &ServerArgs) -> Result<(), CliError> {
    if server.client_id.is_none() {
        return Ok(());
    }
    match client::capability_statement(client).await {
        Err(error @ fhir_bulk::Error::Auth { .. }) => Err(CliError::Failed(format!(
            "no access token, so no file was downloaded: {}",
            crate::error::describe(&error)
        ))),
        _ => Ok(()),
    }
}

/// Downloads the files of a finished job.
pub(crate) async fn run(args: &DownloadArgs) -> Result<(), CliError> {
    let started = Instant::now();
    crate::history::refuse_for_download(args.since.as_deref())?;
    if let Some(done) = crate::cloud::download(args).await {
        return done;
    }
    let dir = args.output_dir.as_path();
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::usage(
            "--output-dir",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let _lock = crate::lock::DirLock::acquire(dir)?;
    let reporter = Reporter::new(&args.output);
    let state = match StateFile::load(dir)? {
        Some(state) => state,
        None => {
            export::refuse_unrecorded_files(dir, "remove them")?;
            JobState::new(Phase::Downloading)
        }
    };
    let mut state = StateFile::new(dir, state);
    let log = export::open_log(dir, &state.state.export_id)?.with_files(args.output.log_files);
    let source = args.source.trim();
    let (client, export, job): (BulkClient, CompletedExport, Option<ExportJob>) = if is_url(source)
    {
        let base =
            crate::status::job_base(args.base_url.as_deref(), source, &args.server, "STATUS_URL")?;
        let client = client::build(&base, &args.server, &args.poll)?;
        let job = client.job_at(source).map_err(from_lib)?;
        reporter.milestone(&format!("polling {}", job.status_url()));
        let export = export::wait(&job, &state, &log, &reporter).await?;
        log::manifest_events(&log, &export);
        manifest::write(dir, &export)?;
        state.state.job = Some(job.handle().clone());
        (client, export, Some(job))
    } else {
        let path = Path::new(source);
        let export = manifest::read(path)?;
        let client = client::build(&manifest_base(args, &export)?, &args.server, &args.poll)?;
        token_first(&client, &args.server).await?;
        if !same_dir(path.parent().unwrap_or(Path::new(".")), dir) {
            manifest::write(dir, &export)?;
        }
        reporter.milestone(&format!(
            "downloading the files listed in {} ({} page(s))",
            path.display(),
            export.manifests.len()
        ));
        if export
            .manifests
            .last()
            .and_then(|m| m.next_link())
            .is_some()
        {
            reporter.warn(
                "the manifest links to further pages that are not saved next to it; only the \
                 files of the pages at hand are downloaded (give the status URL to get them all)",
            );
        }
        (client, export, None)
    };
    let mut report = transfer::download(
        &client,
        &export,
        dir,
        &args.output,
        &mut state,
        &log,
        &reporter,
    )
    .await?;
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
    let issues = transfer::conclude(&report, dir, &mut state, &reporter, &log, started, "")?;
    let job_note = export::finish_job(job.as_ref(), args.keep_job, &mut state, &reporter).await?;
    transfer::summarize(dir, &state, &report, issues, started, job_note, &reporter)
}

/// Whether two paths name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    let a = if a.as_os_str().is_empty() {
        Path::new(".")
    } else {
        a
    };
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_origins() {
        assert!(is_url("https://ehr.example/jobs/1"));
        assert!(is_url(" HTTP://127.0.0.1:1/jobs/1"));
        assert!(!is_url("out/manifest.json"));
        assert_eq!(
            origin("https://ehr.example/fhir/$export?_type=Patient").as_deref(),
            Some("https://ehr.example/")
        );
        assert_eq!(origin("manifest.json"), None);
        let base = |r: &str| base_of_request(r);
        assert_eq!(
            base("https://ehr.example/fhir/r4/$export?_type=Patient").as_deref(),
            Some("https://ehr.example/fhir/r4/")
        );
        assert_eq!(
            base("https://ehr.example/fhir/Patient/$export").as_deref(),
            Some("https://ehr.example/fhir/")
        );
        assert_eq!(
            base("https://ehr.example:8443/api/FHIR/R4/Group/g-1/$export").as_deref(),
            Some("https://ehr.example:8443/api/FHIR/R4/")
        );
        assert_eq!(
            base("https://ehr.example/$export").as_deref(),
            Some("https://ehr.example/")
        );
        assert_eq!(base("https://ehr.example/fhir/metadata"), None);
    }
}
