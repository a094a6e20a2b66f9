//! `fhir-bulk status` (one poll) and `fhir-bulk cancel` (DELETE the job).

use crate::args::{CancelArgs, JobTarget, PollArgs, ServerArgs, StatusArgs};
use crate::client;
use crate::error::{CliError, Step, describe_in, from_lib, from_lib_in};
use crate::escape::server_text;
use crate::plural::count;
use crate::time::human_duration;
use fhir_bulk::{DeleteOutcome, Error, ExportJob, Manifest, PollStatus};
use std::collections::BTreeMap;
use std::fmt::Write;
use url::Url;

/// The FHIR base for a job: `--base-url`, else the status URL's origin, which is enough for a
/// static token (it goes to that origin) but not for SMART discovery, which reads
/// `[base]/.well-known/smart-configuration` at the FHIR base, not at the bare origin.
pub(crate) fn job_base(
    base_url: Option<&str>,
    status_url: &str,
    server: &ServerArgs,
    argument: &str,
) -> Result<String, CliError> {
    if let Some(base) = base_url {
        return Ok(base.trim().to_owned());
    }
    let origin = base_of(status_url, argument)?;
    if server.client_id.is_some() && server.token_url.is_none() {
        return Err(CliError::usage(
            "--base-url",
            format!(
                "--client-id needs the FHIR server's base URL to find its token endpoint (SMART \
                 discovery reads [base]/.well-known/smart-configuration), and {argument} does \
                 not tell it: give --base-url (the BASE_URL the export was started with), or \
                 --token-url"
            ),
        ));
    }
    Ok(origin)
}

/// The origin of a status URL, used as the FHIR base when none is given.
fn base_of(status_url: &str, argument: &str) -> Result<String, CliError> {
    let url = Url::parse(status_url.trim()).map_err(|e| {
        CliError::usage(
            argument,
            format!("`{}` is not an absolute URL ({e})", server_text(status_url)),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(CliError::usage(
            argument,
            format!("`{}` is not an http(s) URL", server_text(status_url)),
        ));
    }
    Ok(url.origin().ascii_serialization() + "/")
}

impl JobTarget {
    /// The job, through a client for its server (`--base-url`, else the status URL's origin).
    fn job(&self, poll: &PollArgs) -> Result<ExportJob, CliError> {
        let base = job_base(
            self.base_url.as_deref(),
            &self.status_url,
            &self.server,
            "STATUS_URL",
        )?;
        let client = client::build(&base, &self.server, poll)?;
        client.job_at(self.status_url.trim()).map_err(from_lib)
    }
}

/// Polls once and prints the progress, or a summary of the manifest.
pub(crate) async fn status(args: &StatusArgs) -> Result<(), CliError> {
    let poll = PollArgs {
        retry_after_unit: args.retry_after_unit,
        ..PollArgs::default()
    };
    let job = args.target.job(&poll)?;
    match job.poll().await {
        Ok(PollStatus::InProgress(progress)) => {
            let mut text = format!(
                "in progress: {}",
                progress
                    .text
                    .as_deref()
                    .map_or_else(|| "(no X-Progress)".to_owned(), server_text)
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
            describe_in(&error, Step::Poll)
        ))),
        Err(error) => Err(from_lib_in(error, Step::Poll)),
    }
}

/// A manifest in a few lines: transactionTime, output files by type, error and deleted files.
fn describe_manifest(manifest: &Manifest) -> String {
    let mut by_type: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
    for file in &manifest.output {
        let entry = by_type
            .entry(
                file.resource_type
                    .as_deref()
                    .map_or_else(|| "(organized)".to_owned(), server_text),
            )
            .or_insert((0, Some(0)));
        entry.0 += 1;
        entry.1 = match (entry.1, file.count) {
            (Some(total), Some(n)) => Some(total + n),
            _ => None,
        };
    }
    let mut out = format!(
        "complete: transactionTime {}\n  {}, {}, {}\n",
        server_text(&manifest.transaction_time),
        count(manifest.output.len() as u64, "output file"),
        count(manifest.error.len() as u64, "error file"),
        count(manifest.deleted.len() as u64, "deleted file")
    );
    for (t, (files, resources)) in by_type {
        let resources =
            resources.map_or_else(|| "? resources".to_owned(), |c| count(c, "resource"));
        let _ = writeln!(
            out,
            "  {t:<24} {:>11} {resources:>16}",
            count(files, "file")
        );
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
        crate::out::line(&format!(
            "the server says: {}",
            server_text(&outcome.to_string())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_the_status_urls_origin() {
        assert_eq!(
            base_of("https://ehr.example:8443/r4/jobs/1?x=1", "STATUS_URL").unwrap(),
            "https://ehr.example:8443/"
        );
        assert!(base_of("jobs/1", "STATUS_URL").is_err());
        assert!(base_of("ftp://x/jobs/1", "STATUS_URL").is_err());
    }

    #[test]
    fn smart_discovery_needs_the_fhir_base_not_the_origin() {
        let url = "https://ehr.example/fhir/r4/jobs/1";
        let smart = ServerArgs {
            client_id: Some("cid".into()),
            ..ServerArgs::default()
        };
        let e = job_base(None, url, &smart, "STATUS_URL").unwrap_err();
        assert!(e.to_string().starts_with("--base-url:"), "{e}");
        assert_eq!(
            job_base(
                Some("https://ehr.example/fhir/r4"),
                url,
                &smart,
                "STATUS_URL"
            )
            .unwrap(),
            "https://ehr.example/fhir/r4"
        );
        let with_token_url = ServerArgs {
            token_url: Some("https://auth.example/token".into()),
            ..smart
        };
        assert_eq!(
            job_base(None, url, &with_token_url, "STATUS_URL").unwrap(),
            "https://ehr.example/"
        );
        assert_eq!(
            job_base(None, url, &ServerArgs::default(), "STATUS_URL").unwrap(),
            "https://ehr.example/"
        );
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
        assert!(
            text.contains("3 output files, 0 error files, 0 deleted files"),
            "{text}"
        );
        let patient = text.lines().find(|l| l.contains("Patient")).unwrap();
        assert!(patient.contains("2 files") && patient.contains("7 resources"));
        let obs = text.lines().find(|l| l.contains("Observation")).unwrap();
        assert!(obs.contains("1 file "), "{obs}");
        let obs = text.lines().find(|l| l.contains("Observation")).unwrap();
        assert!(obs.contains("? resources"), "{obs}");
    }
}
