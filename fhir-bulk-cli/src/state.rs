//! The job state file (`fhir-bulk-job.json` in the output directory): which export the
//! directory holds, its status URL, and which files are complete. Written atomically (a
//! temporary file renamed over it) after the kick-off, when the manifest arrives, after every
//! completed file and at the end, so an interrupted run can be resumed.

use crate::error::CliError;
use fhir_bulk::{ExportRequest, FileKind, JobHandle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The state file's name.
pub(crate) const STATE_FILE: &str = "fhir-bulk-job.json";

/// The version of the state file's format.
const FORMAT: u32 = 1;

/// Where an export stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Kicked off; the job is running on the server.
    Running,
    /// The manifest arrived; files are being downloaded.
    Downloading,
    /// Every file is downloaded and verified.
    Complete,
}

/// A file saved completely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// Output, error or deleted.
    pub(crate) kind: FileKind,
    /// The manifest entry's `type`, if any.
    pub(crate) resource_type: Option<String>,
    /// The file URL without its query string.
    pub(crate) url: String,
    /// Resources (lines) saved.
    pub(crate) resources: u64,
    /// Bytes on disk.
    pub(crate) bytes: u64,
    /// NDJSON bytes before compression.
    pub(crate) data_bytes: u64,
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobState {
    /// The format version.
    pub(crate) format: u32,
    /// The id of this export's `log.ndjson` events, the same across resumed runs.
    pub(crate) export_id: String,
    /// The FHIR base URL the export was kicked off at (`export` only).
    #[serde(default)]
    pub(crate) base_url: Option<String>,
    /// The kick-off request (`export` only).
    #[serde(default)]
    pub(crate) request: Option<ExportRequest>,
    /// The job on the server.
    #[serde(default)]
    pub(crate) job: Option<JobHandle>,
    /// Where the export stands.
    pub(crate) phase: Phase,
    /// The manifest's `transactionTime`, once known.
    #[serde(default)]
    pub(crate) transaction_time: Option<String>,
    /// Complete files by their path relative to the output directory (`/`-separated).
    #[serde(default)]
    pub(crate) files: BTreeMap<String, FileRecord>,
    /// Error and fatal issues found in the error files.
    #[serde(default)]
    pub(crate) error_issues: u64,
    /// Whether the job was deleted on the server.
    #[serde(default)]
    pub(crate) job_deleted: bool,
    /// When this file was last written.
    #[serde(default)]
    pub(crate) updated_at: String,
}

impl JobState {
    /// A new state with a fresh export id.
    pub(crate) fn new(phase: Phase) -> JobState {
        JobState {
            format: FORMAT,
            export_id: new_export_id(),
            base_url: None,
            request: None,
            job: None,
            phase,
            transaction_time: None,
            files: BTreeMap::new(),
            error_issues: 0,
            job_deleted: false,
            updated_at: String::new(),
        }
    }

    /// Whether this state records an export of `request` at `base`.
    pub(crate) fn is_export_of(&self, base: &str, request: &ExportRequest) -> bool {
        self.job.is_some()
            && self.base_url.as_deref() == Some(base)
            && self.request.as_ref() == Some(request)
    }
}

/// Ten random bytes in hex, as the SMART bulk-data-client's `exportId`.
fn new_export_id() -> String {
    (0..10)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

/// The state file of one output directory.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    /// The state; written by [`StateFile::save`].
    pub(crate) state: JobState,
}

impl StateFile {
    /// The state file's path in `dir`.
    pub(crate) fn path_in(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state of `dir`, if it has one. An unreadable file is a usage error: the
    /// user decides whether to delete it.
    pub(crate) fn load(dir: &Path) -> Result<Option<JobState>, CliError> {
        let path = Self::path_in(dir);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CliError::usage(
                    "--output-dir",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        let state: JobState = serde_json::from_slice(&text).map_err(|e| {
            CliError::usage(
                "--output-dir",
                format!(
                    "{} is not a fhir-bulk job state ({e}); delete it or pass --fresh",
                    path.display()
                ),
            )
        })?;
        if state.format != FORMAT {
            return Err(CliError::usage(
                "--output-dir",
                format!(
                    "{} has format {} (this fhir-bulk reads {FORMAT}); delete it or pass --fresh",
                    path.display(),
                    state.format
                ),
            ));
        }
        Ok(Some(state))
    }

    /// Wraps a state to be saved in `dir`.
    pub(crate) fn new(dir: &Path, state: JobState) -> StateFile {
        StateFile {
            path: Self::path_in(dir),
            state,
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the state: to a temporary file, synced, then renamed over the old one, so a
    /// crash leaves either the old or the new state. Synchronous on purpose: an interrupted
    /// task cannot stop it half-way.
    pub(crate) fn save(&mut self) -> Result<(), CliError> {
        self.state.updated_at = crate::time::now();
        let text = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| CliError::Failed(format!("cannot encode the job state: {e}")))?;
        write_atomically(&self.path, &text).map_err(|e| {
            CliError::Failed(format!(
                "cannot write the job state {}: {e}",
                self.path.display()
            ))
        })
    }

    /// Removes the state file.
    pub(crate) fn remove(dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path_in(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Writes `data` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// The state key of a file path relative to the output directory.
pub(crate) fn key(relative: &Path) -> String {
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StateFile::load(dir.path()).unwrap().is_none());
        let mut state = JobState::new(Phase::Running);
        state.base_url = Some("http://127.0.0.1:1/fhir/".into());
        state.request = Some(ExportRequest::system().types(["Patient"]));
        state.job = Some(JobHandle::new(
            url::Url::parse("http://127.0.0.1:1/fhir/jobs/1").unwrap(),
        ));
        state.files.insert(
            "error/OperationOutcome.1.ndjson".into(),
            FileRecord {
                kind: FileKind::Error,
                resource_type: None,
                url: "http://127.0.0.1:1/fhir/files/1/errors.ndjson".into(),
                resources: 2,
                bytes: 100,
                data_bytes: 100,
            },
        );
        let mut file = StateFile::new(dir.path(), state.clone());
        file.save().unwrap();
        let back = StateFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.files, state.files);
        assert!(back.is_export_of(
            "http://127.0.0.1:1/fhir/",
            &ExportRequest::system().types(["Patient"])
        ));
        assert!(!back.is_export_of(
            "http://127.0.0.1:1/fhir/",
            &ExportRequest::system().types(["Observation"])
        ));
        assert_eq!(back.export_id.len(), 20);

        std::fs::write(StateFile::path_in(dir.path()), b"{not json").unwrap();
        let err = StateFile::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("--fresh"), "{err}");
        StateFile::remove(dir.path()).unwrap();
        StateFile::remove(dir.path()).unwrap();
    }

    #[test]
    fn keys_use_slashes() {
        let p = Path::new("error").join("OperationOutcome.1.ndjson");
        assert_eq!(key(&p), "error/OperationOutcome.1.ndjson");
    }
}
