//! `--attachments save|inline|off`: after the data files are saved, the attachments of their
//! DocumentReference and DiagnosticReport resources are downloaded beside them
//! (`attachments/`, the resources pointed at the files) or inlined as base64 `data`, by the
//! library's [`BulkClient::save_attachments`]. Each rewritten data file's new size is recorded
//! in the job state (so the next run still finds it complete); `log.ndjson` gets an
//! `attachment_error` per failed attachment and one `attachments_complete` with the counts.
//! A rerun downloads only what is missing (a cut download continues where it stopped).

use crate::args::{AttachmentArgs, AttachmentsArg};
use crate::error::CliError;
use crate::log::EventLog;
use crate::plural::count;
use crate::progress::Reporter;
use crate::state::StateFile;
use crate::transfer::TransferReport;
use fhir_bulk::attachment::{AttachmentOptions, AttachmentReport, may_hold_attachments};
use fhir_bulk::{BulkClient, FileKind};
use serde_json::json;
use std::path::Path;

/// The library's options for the flags; `None` for `--attachments off`.
pub(crate) fn options(args: &AttachmentArgs) -> Option<AttachmentOptions> {
    let mut options = match args.attachments {
        AttachmentsArg::Off => return None,
        AttachmentsArg::Save => AttachmentOptions::save(),
        AttachmentsArg::Inline => AttachmentOptions::inline(),
    };
    if let Some(bytes) = args.inline_attachments_smaller_than {
        options = options.with_inline_smaller_than(bytes);
    }
    if !args.inline_attachment_types.is_empty() {
        options = options.with_inline_types(
            args.inline_attachment_types
                .iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        );
    }
    Some(options)
}

/// The summary line of a pass.
pub(crate) fn describe(report: &AttachmentReport) -> String {
    format!(
        "attachments: {} saved, {} inlined, {} already in place, {} skipped, {} failed",
        report.saved,
        report.inlined,
        report.present,
        report.skipped.len(),
        report.failed.len()
    )
}

/// Runs the pass over the complete data files recorded in `state` (none when a download
/// failed: the run ends in that error, and the next run does both). Returns the number of
/// attachments in place (saved, inlined, or already there), for `export_complete`.
pub(crate) async fn run(
    client: &BulkClient,
    dir: &Path,
    args: &AttachmentArgs,
    transfer: &TransferReport,
    state: &mut StateFile,
    log: &EventLog,
    reporter: &Reporter,
) -> Result<u64, CliError> {
    let Some(options) = options(args) else {
        return Ok(0);
    };
    if !transfer.failures.is_empty() {
        return Ok(0);
    }
    let files: Vec<(String, crate::state::FileRecord)> = state
        .state
        .files
        .iter()
        .filter(|(_, r)| {
            r.kind == FileKind::Output && may_hold_attachments(r.resource_type.as_deref())
        })
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    let mut total = AttachmentReport::default();
    for (key, mut record) in files {
        let path = dir.join(&key);
        let report = client
            .save_attachments(&path, &options)
            .await
            .map_err(|e| {
                CliError::Failed(format!(
                    "attachments of {key}: {}",
                    crate::error::describe(&e)
                ))
            })?;
        if report.files_rewritten > 0 {
            let bytes = std::fs::metadata(&path)
                .map(|m| m.len())
                .unwrap_or(record.bytes);
            if !key.ends_with(".gz") {
                record.data_bytes = bytes;
            }
            record.bytes = bytes;
            state.record(&key, record)?;
        }
        for failed in &report.failed {
            log.event(
                "attachment_error",
                json!({
                    "resource": failed.resource,
                    "fileUrl": failed.url,
                    "message": failed.error.to_string(),
                }),
            );
            reporter.warn(&format!(
                "attachment of {} ({}) failed: {}",
                failed.resource, failed.url, failed.error
            ));
        }
        total.absorb(report);
    }
    log.event(
        "attachments_complete",
        json!({
            "saved": total.saved,
            "inlined": total.inlined,
            "present": total.present,
            "skipped": total.skipped.len(),
            "failed": total.failed.len(),
            "bytes": total.bytes,
        }),
    );
    reporter.milestone(&describe(&total));
    if let Some(first) = total.failed.first() {
        return Err(CliError::Failed(format!(
            "{} failed to download (first: {}: {}); the data files are complete; run the same \
             command again to retry them",
            count(total.failed.len() as u64, "attachment"),
            first.resource,
            first.error
        )));
    }
    Ok(total.saved + total.inlined + total.present)
}
