//! `log.ndjson`: one JSON event a line, with the event ids and fields of the SMART
//! bulk-data-client's export log, so tools that read its logs read ours.
//!
//! Every line is `{"exportId", "timestamp", "eventId", "eventDetail", "_client",
//! "_clientVersion"}`. The events: `kickoff`, `status_progress`, `status_error`,
//! `status_complete`, `status_page_complete`, `manifest_complete`, `download_request`,
//! `download_complete`, `download_error`, `export_complete`, and from the library's tracing
//! events `retry`, `download_error` (a download retried) and `download_warning`
//! ([`crate::trace`]). URLs are logged without their query strings (pre-signed URLs carry credentials there) and tokens never appear.

use crate::args::LogFilesArg;
use fhir_bulk::{CompletedExport, Error, ExportFile, FileKind};
use serde_json::{Value, json};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The log's file name.
pub(crate) const LOG_FILE: &str = "log.ndjson";

/// An append-only event log. Clones write to the same file.
#[derive(Debug, Clone)]
pub(crate) struct EventLog {
    file: Arc<Mutex<File>>,
    export_id: String,
    warned: Arc<AtomicBool>,
    /// Which per-file events are written (`--log-files`).
    files: LogFilesArg,
}

/// The log of the running command, for the entries of the library's tracing events.
static CURRENT: Mutex<Option<EventLog>> = Mutex::new(None);

/// Appends an event to the log of the running command, if one is open.
pub(crate) fn to_current(event_id: &str, detail: Value) {
    let log = CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(log) = log {
        log.event(event_id, detail);
    }
}

impl EventLog {
    /// Opens (appends to) `dir/log.ndjson`.
    pub(crate) fn open(dir: &Path, export_id: &str) -> std::io::Result<EventLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))?;
        let log = EventLog {
            file: Arc::new(Mutex::new(file)),
            export_id: export_id.to_owned(),
            warned: Arc::new(AtomicBool::new(false)),
            files: LogFilesArg::default(),
        };
        *CURRENT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(log.clone());
        Ok(log)
    }

    /// This log, writing the per-file events `files` names (`--log-files`; the default is
    /// [`LogFilesArg::Done`]).
    pub(crate) fn with_files(mut self, files: LogFilesArg) -> EventLog {
        self.files = files;
        self
    }

    /// Appends one event. A failed write is reported once on stderr and does not stop the
    /// export: the files matter more than their log.
    pub(crate) fn event(&self, event_id: &str, detail: Value) {
        let line = json!({
            "exportId": self.export_id,
            "timestamp": crate::time::now(),
            "eventId": event_id,
            "eventDetail": detail,
            "_client": "fhir-bulk",
            "_clientVersion": env!("CARGO_PKG_VERSION"),
        });
        let mut text = line.to_string();
        text.push('\n');
        let result = match self.file.lock() {
            Ok(mut file) => file.write_all(text.as_bytes()),
            Err(poisoned) => poisoned.into_inner().write_all(text.as_bytes()),
        };
        if let Err(e) = result
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            crate::out::err(&format!("warning: cannot write {LOG_FILE}: {e}"));
        }
    }
}

/// `itemType` of a file kind.
pub(crate) fn item_type(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Output => "output",
        FileKind::Error => "error",
        FileKind::Deleted => "deleted",
        // `FileKind` is non-exhaustive; a kind added later is logged as data.
        _ => "output",
    }
}

/// The details of a failed request: HTTP status, the OperationOutcome (or null), the message
/// and the request-id headers.
pub(crate) fn error_detail(error: &Error) -> Value {
    let body = error
        .operation_outcome()
        .and_then(|oo| serde_json::to_value(oo).ok())
        .or_else(|| {
            error
                .error_response()
                .and_then(|r| r.body.clone())
                .map(Value::String)
        })
        .unwrap_or(Value::Null);
    let mut headers = serde_json::Map::new();
    if let Some(r) = error.error_response() {
        if let Some(id) = &r.request_ids.x_request_id {
            headers.insert("x-request-id".into(), json!(id));
        }
        if let Some(id) = &r.request_ids.opc_request_id {
            headers.insert("opc-request-id".into(), json!(id));
        }
        if let Some(wait) = r.retry_after {
            headers.insert("retry-after".into(), json!(crate::time::seconds(wait)));
        }
    }
    json!({
        "body": body,
        "code": error.status(),
        "message": crate::error::describe(error),
        "responseHeaders": headers,
    })
}

/// `download_request`, with `--log-files all`.
pub(crate) fn download_request(log: &EventLog, file: &ExportFile) {
    if log.files != LogFilesArg::All {
        return;
    }
    log.event(
        "download_request",
        json!({
            "fileUrl": file.file.url.redacted(),
            "itemType": item_type(file.kind),
            "resourceType": file.file.resource_type,
        }),
    );
}

/// `download_complete` (unless `--log-files errors`): the file's URL without its query, its
/// NDJSON size and its resources.
pub(crate) fn download_complete(log: &EventLog, url: &str, data_bytes: u64, resources: u64) {
    if log.files == LogFilesArg::Errors {
        return;
    }
    log.event(
        "download_complete",
        json!({
            "fileUrl": url,
            "fileSize": data_bytes,
            "resourceCount": resources,
        }),
    );
}

/// `status_page_complete` for every manifest page, then `manifest_complete` and
/// `status_complete`.
pub(crate) fn manifest_events(log: &EventLog, export: &CompletedExport) {
    let (mut outputs, mut deleted, mut errors) = (0, 0, 0);
    for page in &export.manifests {
        outputs += page.output.len();
        deleted += page.deleted.len();
        errors += page.error.len();
        log.event(
            "status_page_complete",
            json!({
                "transactionTime": page.transaction_time,
                "outputFileCount": page.output.len(),
                "deletedFileCount": page.deleted.len(),
                "errorFileCount": page.error.len(),
            }),
        );
    }
    log.event(
        "manifest_complete",
        json!({
            "transactionTime": export.transaction_time(),
            "totalOutputFileCount": outputs,
            "totalDeletedFileCount": deleted,
            "totalErrorFileCount": errors,
            "totalManifests": export.manifests.len(),
        }),
    );
    log.event(
        "status_complete",
        json!({ "transactionTime": export.transaction_time() }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_bulk_data_client_shape() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), "abc").unwrap();
        log.event("kickoff", json!({"exportUrl": "https://x/$export"}));
        log.event("status_progress", json!({"xProgress": "50%"}));
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["exportId"], "abc");
        assert_eq!(lines[0]["eventId"], "kickoff");
        assert_eq!(lines[0]["eventDetail"]["exportUrl"], "https://x/$export");
        assert!(lines[1]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
