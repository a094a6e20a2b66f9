//! `fhir-bulk status` (one poll) and `fhir-bulk cancel` (DELETE the job).

use crate::args::{CancelArgs, JobTarget, PollArgs, StatusArgs};
use crate::client;
use crate::error::{CliError, describe, from_lib};
use crate::time::human_duration;
use fhir_bulk::{DeleteOutcome, Error, ExportJob, Manifest, PollStatus};
use std::collections::BTreeMap;
use std::fmt::Write;
use url::Url;

/// The origin of a status URL, used as the FHIR base when none is given.
fn base_of(status_url: &str) -> Result<String, CliError> {
    let url = Url::parse(status_url.trim()).map_err(|e| {
        CliError::usage(
            "STATUS_URL",
            format!("`{status_url}` is not an absolute URL ({e})"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(CliError::usage(
            "STATUS_URL",
            format!("`{status_url}` is not an http(s) URL"),
        ));
    }
    Ok(url.origin().ascii_serialization() + "/")
}

impl JobTarget {
    /// The job, through a client for its server (`--base-url`, else the status URL's origin).
    fn job(&self, poll: &PollArgs) -> Result<ExportJob, CliError> {
        let base = match &self.base_url {
            Some(base) => base.clone(),
            None => base_of(&self.status_url)?,
        };
        let client = client::build(&base, &self.server, poll)?;
        client.job_at(self.status_url.trim()).map_err(from_lib)
    }
}

/// Polls once and prints the progress, or a summary of the manifest.
pub(crate) async fn status(args: &StatusArgs) -> Result<(), CliError> {
    let job = args.target.job(&args.poll)?;
    match job.poll().await {
        Ok(PollStatus::InProgress(progress)) => {
            let mut text = format!(
                "in progress: {}",
                progress.text.as_deref().unwrap_or("(no X-Progress)")
            );
            if let Some(wait) = progress.retry_after {
                let _ = write!(text, "; poll again in {}", human_duration(wait));
            }
            crate::out::line(&text);
            Ok(())
        }
        Ok(PollStatus::Complete(manifest)) => {
            crate::out::text(&describe_manifest(&manifest));
            Ok(())
        }
        Ok(_) => Err(CliError::Failed(
            "the server's status answer is of a kind this fhir-bulk does not know".into(),
        )),
        Err(error @ Error::JobNotFound(_)) => Err(CliError::Failed(format!(
            "no such job (deleted, cancelled or expired): {}",
            describe(&error)
        ))),
        Err(error) => Err(from_lib(error)),
    }
}

/// A manifest in a few lines: transactionTime, output files by type, error and deleted files.
fn describe_manifest(manifest: &Manifest) -> String {
    let mut by_type: BTreeMap<&str, (u64, Option<u64>)> = BTreeMap::new();
    for file in &manifest.output {
        let entry = by_type
            .entry(file.resource_type.as_deref().unwrap_or("(organized)"))
            .or_insert((0, Some(0)));
        entry.0 += 1;
        entry.1 = match (entry.1, file.count) {
            (Some(total), Some(n)) => Some(total + n),
            _ => None,
        };
    }
    let mut out = format!(
        "complete: transactionTime {}\n  {} output files, {} error files, {} deleted files\n",
        manifest.transaction_time,
        manifest.output.len(),
        manifest.error.len(),
        manifest.deleted.len()
    );
    for (t, (files, count)) in by_type {
        let count = count.map_or_else(|| "?".to_owned(), |c| c.to_string());
        let _ = writeln!(out, "  {t:<24} {files:>5} files {count:>10} resources");
    }
    if manifest.next_link().is_some() {
        out.push_str("  (the manifest has more pages: `fhir-bulk download` fetches them all)\n");
    }
    out
}

/// DELETEs the job.
pub(crate) async fn cancel(args: &CancelArgs) -> Result<(), CliError> {
    let job = args.target.job(&PollArgs::default())?;
    let report = job.cancel().await.map_err(from_lib)?;
    match report.outcome {
        DeleteOutcome::Deleted => crate::out::line("cancelled: the server accepted the DELETE"),
        DeleteOutcome::AlreadyGone => {
            crate::out::line("already gone: the server no longer knows this job");
        }
        // `DeleteOutcome` is non-exhaustive: an answer the library learns to tell apart later.
        _ => crate::out::line("the server answered the DELETE"),
    }
    if let Some(outcome) = &report.operation_outcome {
        crate::out::line(&format!("the server says: {outcome}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_the_status_urls_origin() {
        assert_eq!(
            base_of("https://ehr.example:8443/r4/jobs/1?x=1").unwrap(),
            "https://ehr.example:8443/"
        );
        assert!(base_of("jobs/1").is_err());
        assert!(base_of("ftp://x/jobs/1").is_err());
    }

    #[test]
    fn manifest_summary_counts_by_type() {
        let m = Manifest::from_slice(
            br#"{"transactionTime":"2024-01-01T00:00:00Z","output":[
                {"type":"Patient","url":"https://x/1","count":3},
                {"type":"Patient","url":"https://x/2","count":4},
                {"type":"Observation","url":"https://x/3"}],"error":[]}"#,
            "x",
        )
        .unwrap();
        let text = describe_manifest(&m);
        assert!(text.contains("3 output files, 0 error files"), "{text}");
        let patient = text.lines().find(|l| l.contains("Patient")).unwrap();
        assert!(patient.contains("2 files") && patient.contains("7 resources"));
        let obs = text.lines().find(|l| l.contains("Observation")).unwrap();
        assert!(obs.contains("? resources"), "{obs}");
    }
}
