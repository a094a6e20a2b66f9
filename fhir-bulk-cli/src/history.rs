//! The export history of an output root (`--history`, implied by `--since auto`): every run
//! writes into a dated subdirectory of `--output-dir` (`2026-12-01T19-55-03Z/`, sortable, no
//! character any file system refuses), and a complete run is recorded in `latest.json`, written
//! atomically, under the fingerprint of its request.
//!
//! The fingerprint covers what decides which data an export holds: the FHIR base URL, the
//! level and Group, `_type`, `_typeFilter`, `_elements`, every other kick-off parameter and
//! their encodings; not `_since` (it is what changes from one run to the next) and never a
//! credential (the request holds none: tokens, secrets and headers are not part of it).
//!
//! `--since auto` sends, as `_since`, the `transactionTime` of the last complete export with
//! the same fingerprint; with none it runs a full export and says so. A run that did not
//! complete (interrupted, or a transfer failed) is never recorded: the next run of the same
//! request resumes it in its own subdirectory instead of starting a new one, as long as no
//! later run of that request completed.

use crate::error::CliError;
use crate::state::{self, JobState, Phase, StateFile};
use fhir_bulk::ExportRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The pointer file's name, in the output root.
pub(crate) const POINTER_FILE: &str = "latest.json";

/// The version of the pointer file's format.
const FORMAT: u32 = 1;

/// The `--since` value that reads the history.
pub(crate) const AUTO: &str = "auto";

/// One complete export recorded in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    /// The run's subdirectory, relative to the output root.
    pub(crate) dir: String,
    /// The manifest's `transactionTime`: the next `--since auto` run's `_since`.
    pub(crate) transaction_time: String,
    /// The request's fingerprint.
    pub(crate) fingerprint: String,
    /// The FHIR base URL.
    pub(crate) base_url: String,
    /// The request as fingerprinted (without `_since`), for people reading the file.
    pub(crate) request: Value,
    /// The `_since` this run sent, if any.
    #[serde(default)]
    pub(crate) since: Option<String>,
    /// When the run completed.
    pub(crate) completed_at: String,
}

/// `latest.json`: the last complete export, and the last one of each request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pointer {
    /// The format version.
    pub(crate) format: u32,
    /// The last complete export, whatever its request.
    pub(crate) latest: Option<Entry>,
    /// The last complete export of each request fingerprint.
    #[serde(default)]
    pub(crate) requests: BTreeMap<String, Entry>,
}

impl Default for Pointer {
    fn default() -> Self {
        Pointer {
            format: FORMAT,
            latest: None,
            requests: BTreeMap::new(),
        }
    }
}

/// Where a history run goes and what it sends.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The run's subdirectory (new, or the interrupted run's).
    pub(crate) dir: PathBuf,
    /// The request to send (with the `_since` `--since auto` chose), or the interrupted run's.
    pub(crate) request: ExportRequest,
    /// What to tell the user about the choice.
    pub(crate) note: String,
}

/// What `--since` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Since {
    /// No `--since`.
    None,
    /// `--since auto`: from the history.
    Auto,
    /// `--since INSTANT`.
    Instant(String),
}

impl Since {
    /// `--since`'s value.
    pub(crate) fn from_arg(arg: Option<&str>) -> Since {
        match arg.map(str::trim) {
            None => Since::None,
            Some(text) if text.eq_ignore_ascii_case(AUTO) => Since::Auto,
            Some(text) => Since::Instant(text.to_owned()),
        }
    }
}

/// The request without `_since`, as JSON (keys sorted: serde_json's map is ordered).
fn without_since(request: &ExportRequest) -> Value {
    let mut value = serde_json::to_value(request).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("since");
    }
    value
}

/// The fingerprint of an export of `request` at `base`: 16 hex digits of FNV-1a (64 bits)
/// over the base URL and the request without `_since`. Stable across runs and versions.
pub(crate) fn fingerprint(base: &str, request: &ExportRequest) -> String {
    let text = format!("{base}\n{}", without_since(request));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A run directory's name for a time given as `YYYY-MM-DDTHH:MM:SS...Z`:
/// `YYYY-MM-DDTHH-MM-SSZ`.
pub(crate) fn run_dir_name(utc: &str) -> String {
    let seconds: String = utc.chars().take(19).collect();
    format!("{}Z", seconds.replace(':', "-"))
}

/// Whether `name` is a run directory's (`YYYY-MM-DDTHH-MM-SSZ`, maybe `-N` after it).
pub(crate) fn is_run_dir_name(name: &str) -> bool {
    let (stamp, suffix) = name.split_at(name.len().min(20));
    let shape = stamp.len() == 20
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 | 13 | 16 => b == b'-',
            10 => b == b'T',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    shape
        && (suffix.is_empty()
            || suffix
                .strip_prefix('-')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// The newest run subdirectory of `root`, if it holds any.
pub(crate) fn newest_run(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| is_run_dir_name(name))
        .max()
        .map(|name| root.join(name))
}

/// Reads `latest.json` (none yet: an empty history).
pub(crate) fn load(root: &Path) -> Result<Pointer, CliError> {
    let path = root.join(POINTER_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pointer::default()),
        Err(e) => {
            return Err(CliError::usage(
                "--output-dir",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let pointer: Pointer = serde_json::from_slice(&text).map_err(|e| {
        CliError::usage(
            "--output-dir",
            format!(
                "{} is not an export history fhir-bulk wrote ({e}); fix or delete it (the runs' \
                 subdirectories stay), or use another --output-dir",
                path.display()
            ),
        )
    })?;
    if pointer.format != FORMAT {
        return Err(CliError::usage(
            "--output-dir",
            format!(
                "{} has format {}, this fhir-bulk reads {FORMAT}",
                path.display(),
                pointer.format
            ),
        ));
    }
    Ok(pointer)
}

/// The newest run directory of `root` after `after` (by name) whose state records an
/// unfinished export with `fingerprint`.
fn find_interrupted(
    root: &Path,
    fingerprint_of: &str,
    after: Option<&str>,
) -> Result<Option<(PathBuf, JobState)>, CliError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(None);
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| is_run_dir_name(name) && after.is_none_or(|a| name.as_str() > a))
        .collect();
    names.sort();
    for name in names.into_iter().rev() {
        let dir = root.join(&name);
        let Some(old) = StateFile::load(&dir)? else {
            continue;
        };
        let (Some(base), Some(request)) = (&old.base_url, &old.request) else {
            continue;
        };
        if old.phase != Phase::Complete
            && old.job.is_some()
            && fingerprint(base, request) == fingerprint_of
        {
            return Ok(Some((dir, old)));
        }
    }
    Ok(None)
}

/// A new run directory under `root`, named for `utc` (`-2`, `-3`, ... after the name when a
/// run of the same second has it).
fn new_run_dir(root: &Path, utc: &str) -> Result<PathBuf, CliError> {
    let name = run_dir_name(utc);
    for n in 1..1000u32 {
        let candidate = if n == 1 {
            root.join(&name)
        } else {
            root.join(format!("{name}-{n}"))
        };
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(CliError::usage(
                    "--output-dir",
                    format!("cannot create {}: {e}", candidate.display()),
                ));
            }
        }
    }
    Err(CliError::usage(
        "--output-dir",
        format!("{} holds too many runs named {name}", root.display()),
    ))
}

/// Chooses the run directory and the request of a history run: the interrupted run of the
/// same request if there is one (unless `fresh`), else a new dated directory, with `_since`
/// from the history when `since` is [`Since::Auto`].
pub(crate) fn plan(
    root: &Path,
    base: &str,
    request: ExportRequest,
    since: &Since,
    fresh: bool,
) -> Result<Plan, CliError> {
    let fingerprint_of = fingerprint(base, &request);
    let pointer = load(root)?;
    let last = pointer.requests.get(&fingerprint_of);
    let interrupted = find_interrupted(root, &fingerprint_of, last.map(|e| e.dir.as_str()))?;
    let mut note = String::new();
    if let Some((dir, old)) = interrupted {
        if !fresh {
            let request = old.request.clone().unwrap_or(request);
            let note = format!(
                "history: resuming the interrupted run of this request in {} (it never \
                 completed, so it is finished before a new run starts; --fresh leaves it and \
                 starts a new one)",
                dir.display()
            );
            return Ok(Plan { dir, request, note });
        }
        note.push_str(&format!(
            "history: --fresh leaves the interrupted run in {} as it is (never complete, so \
             --since auto never uses it). ",
            dir.display()
        ));
    }
    let request = match (since, last) {
        (Since::Auto, Some(entry)) => {
            note.push_str(&format!(
                "--since auto: asking for changes since {} (the transactionTime of the \
                 complete export in {})",
                crate::escape::server_text(&entry.transaction_time),
                root.join(&entry.dir).display()
            ));
            request.since(entry.transaction_time.clone())
        }
        (Since::Auto, None) => {
            note.push_str(&format!(
                "--since auto: no complete export of this request in {} yet, so this is a \
                 full export (no _since)",
                root.display()
            ));
            request
        }
        _ => request,
    };
    let dir = new_run_dir(root, &crate::time::now())?;
    if note.is_empty() {
        note = format!("history: this run goes into {}", dir.display());
    }
    Ok(Plan { dir, request, note })
}

/// Records the complete run in `dir` in `latest.json` (written atomically).
pub(crate) fn record_complete(
    root: &Path,
    dir: &Path,
    base: &str,
    request: &ExportRequest,
    transaction_time: &str,
) -> Result<(), CliError> {
    let mut pointer = load(root)?;
    let relative = dir
        .strip_prefix(root)
        .map(state::key)
        .unwrap_or_else(|_| dir.display().to_string());
    let entry = Entry {
        dir: relative,
        transaction_time: transaction_time.to_owned(),
        fingerprint: fingerprint(base, request),
        base_url: base.to_owned(),
        request: without_since(request),
        since: request
            .query_pairs()
            .into_iter()
            .find(|(name, _)| name == "_since")
            .map(|(_, value)| value),
        completed_at: crate::time::now(),
    };
    pointer
        .requests
        .insert(entry.fingerprint.clone(), entry.clone());
    pointer.latest = Some(entry);
    let path = root.join(POINTER_FILE);
    let text = serde_json::to_vec_pretty(&pointer)
        .map_err(|e| CliError::Failed(format!("cannot encode {}: {e}", path.display())))?;
    state::write_atomically(&path, &text).map_err(|e| {
        CliError::Failed(format!(
            "the export is complete, but recording it in {} failed: {e}; the next --since \
             auto run will not know it",
            path.display()
        ))
    })
}

/// `download --since`: there is no kick-off to send `_since` with.
pub(crate) fn refuse_for_download(since: Option<&str>) -> Result<(), CliError> {
    match since {
        None => Ok(()),
        Some(value) => Err(CliError::usage(
            "--since",
            format!(
                "`download` fetches the files of a job that already ran, so there is no \
                 kick-off to send _since with (got `{value}`); use `fhir-bulk export --since \
                 auto --output-dir DIR BASE_URL` for incremental exports"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_since_and_nothing_else() {
        let base = "https://ehr.example/fhir/";
        let a = ExportRequest::system().types(["Patient", "Observation"]);
        assert_eq!(
            fingerprint(base, &a),
            fingerprint(base, &a.clone().since("2024-01-01T00:00:00Z"))
        );
        assert_ne!(
            fingerprint(base, &a),
            fingerprint(base, &ExportRequest::system().types(["Patient"]))
        );
        assert_ne!(
            fingerprint(base, &a),
            fingerprint(base, &a.clone().type_filter("Observation?code=1"))
        );
        assert_ne!(
            fingerprint(base, &a),
            fingerprint(
                base,
                &ExportRequest::group("g1").types(["Patient", "Observation"])
            )
        );
        assert_ne!(
            fingerprint(base, &a),
            fingerprint("https://other.example/fhir/", &a)
        );
        assert_eq!(fingerprint(base, &a).len(), 16);
    }

    #[test]
    fn run_directory_names_sort_and_are_recognised() {
        assert_eq!(
            run_dir_name("2026-12-01T19:55:03.123Z"),
            "2026-12-01T19-55-03Z"
        );
        assert!(is_run_dir_name("2026-12-01T19-55-03Z"));
        assert!(is_run_dir_name("2026-12-01T19-55-03Z-2"));
        assert!(!is_run_dir_name("2026-12-01T19-55-03Z-"));
        assert!(!is_run_dir_name("2026-12-01T19:55:03Z"));
        assert!(!is_run_dir_name("error"));
        assert!(run_dir_name("2026-12-01T19:55:03Z") < run_dir_name("2026-12-02T01:00:00Z"));
    }

    #[test]
    fn since_values() {
        assert_eq!(Since::from_arg(None), Since::None);
        assert_eq!(Since::from_arg(Some(" auto ")), Since::Auto);
        assert_eq!(Since::from_arg(Some("AUTO")), Since::Auto);
        assert_eq!(
            Since::from_arg(Some("2024-01-01")),
            Since::Instant("2024-01-01".into())
        );
    }

    #[test]
    fn a_history_records_and_plans() {
        let root = tempfile::tempdir().unwrap();
        let base = "https://ehr.example/fhir/";
        let request = ExportRequest::system().types(["Patient"]);
        let first = plan(root.path(), base, request.clone(), &Since::Auto, false).unwrap();
        assert!(first.note.contains("full export"), "{}", first.note);
        assert!(
            first
                .request
                .query_pairs()
                .iter()
                .all(|(n, _)| n != "_since")
        );
        record_complete(
            root.path(),
            &first.dir,
            base,
            &first.request,
            "2026-01-01T00:00:00Z",
        )
        .unwrap();
        let second = plan(root.path(), base, request.clone(), &Since::Auto, false).unwrap();
        assert_ne!(second.dir, first.dir);
        assert!(
            second
                .request
                .query_pairs()
                .contains(&("_since".into(), "2026-01-01T00:00:00Z".into()))
        );
        let other = plan(
            root.path(),
            base,
            ExportRequest::system().types(["Observation"]),
            &Since::Auto,
            false,
        )
        .unwrap();
        assert!(other.note.contains("full export"), "{}", other.note);
        let pointer = load(root.path()).unwrap();
        assert_eq!(pointer.requests.len(), 1);
        assert_eq!(
            pointer.latest.unwrap().transaction_time,
            "2026-01-01T00:00:00Z"
        );
        std::fs::write(root.path().join(POINTER_FILE), "{").unwrap();
        assert!(load(root.path()).is_err());
    }

    #[test]
    fn download_refuses_since() {
        assert!(refuse_for_download(None).is_ok());
        let e = refuse_for_download(Some("auto")).unwrap_err().to_string();
        assert!(
            e.contains("--since") && e.contains("fhir-bulk export"),
            "{e}"
        );
    }
}
