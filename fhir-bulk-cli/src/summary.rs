//! The table printed at the end: resource types with files, resources and bytes, the elapsed
//! time and throughput, the error-file and deleted counts, and the transactionTime to pass as
//! the next `--since`.

use crate::escape::server_text;
use crate::outcomes::IssueCounts;
use crate::plural::{count, thousands};
use crate::state::FileRecord;
use crate::time::human_duration;
use fhir_bulk::FileKind;
use fhir_bulk::resource::Timestamp;
use indicatif::HumanBytes;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

/// Everything the summary shows.
#[derive(Debug, Clone)]
pub(crate) struct Summary<'a> {
    /// Every complete file by its relative path.
    pub(crate) files: &'a BTreeMap<String, FileRecord>,
    /// Issues in the error files.
    pub(crate) issues: IssueCounts,
    /// This run's wall time.
    pub(crate) elapsed: Duration,
    /// NDJSON bytes downloaded in this run (for the throughput).
    pub(crate) downloaded_bytes: u64,
    /// How long this run's downloads took.
    pub(crate) download_elapsed: Duration,
    /// The manifest's `transactionTime`.
    pub(crate) transaction_time: Option<&'a str>,
    /// The output directory.
    pub(crate) output_dir: &'a Path,
    /// What happened to the job on the server, e.g. `deleted on the server`.
    pub(crate) job_note: Option<String>,
}

#[derive(Default)]
struct Row {
    files: u64,
    resources: u64,
    bytes: u64,
}

/// The type an output file counts under: its manifest `type`, else the name it was saved as.
fn type_of(key: &str, record: &FileRecord) -> String {
    record.resource_type.clone().unwrap_or_else(|| {
        let name = key.rsplit('/').next().unwrap_or(key);
        name.split('.').next().unwrap_or(name).to_owned()
    })
}

impl Summary<'_> {
    /// The summary as text (no escape codes), ending in a newline.
    pub(crate) fn render(&self) -> String {
        let mut rows: BTreeMap<String, Row> = BTreeMap::new();
        let (mut errors, mut deleted) = (Row::default(), Row::default());
        for (key, record) in self.files {
            let row = match record.kind {
                FileKind::Error => &mut errors,
                FileKind::Deleted => &mut deleted,
                // Output, and any kind a later library adds (`FileKind` is non-exhaustive).
                _ => rows.entry(type_of(key, record)).or_default(),
            };
            row.files += 1;
            row.resources += record.resources;
            row.bytes += record.bytes;
        }
        let total = rows.values().fold(Row::default(), |mut t, r| {
            t.files += r.files;
            t.resources += r.resources;
            t.bytes += r.bytes;
            t
        });
        let secs = self.download_elapsed.as_secs_f64().max(0.001);
        let rate = HumanBytes((self.downloaded_bytes as f64 / secs) as u64);
        // The same totals as log.ndjson's `export_complete`: every file, error and deleted
        // files included, in NDJSON bytes.
        let all_files = self.files.len() as u64;
        let all_resources: u64 = self.files.values().map(|f| f.resources).sum();
        let all_bytes: u64 = self.files.values().map(|f| f.data_bytes).sum();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Export complete: {}, {}, {} of NDJSON in {}",
            count(all_files, "file"),
            count(all_resources, "resource"),
            HumanBytes(all_bytes),
            human_duration(self.elapsed),
        );
        let _ = writeln!(
            out,
            "  output: {} in {}, {}; {}; {}",
            count(rows.len() as u64, "resource type"),
            count(total.files, "file"),
            count(total.resources, "resource"),
            count(errors.files, "error file"),
            count(deleted.files, "deleted file"),
        );
        let _ = writeln!(
            out,
            "  downloaded in this run: {} of NDJSON in {} ({rate}/s)",
            HumanBytes(self.downloaded_bytes),
            human_duration(self.download_elapsed),
        );
        let width = rows.keys().map(String::len).max().unwrap_or(0).max(13);
        let _ = writeln!(
            out,
            "\n  {:<width$}  {:>6}  {:>11}  {:>12}",
            "resource type", "files", "resources", "bytes"
        );
        for (name, row) in rows
            .iter()
            .chain(std::iter::once((&"total".to_owned(), &total)))
        {
            let _ = writeln!(
                out,
                "  {name:<width$}  {:>6}  {:>11}  {:>12}",
                thousands(row.files),
                thousands(row.resources),
                HumanBytes(row.bytes).to_string()
            );
        }
        out.push('\n');
        let issues = self.issues.describe();
        let _ = writeln!(
            out,
            "  error files:     {} ({}{})",
            errors.files,
            count(errors.resources, "OperationOutcome"),
            if issues.is_empty() {
                String::new()
            } else {
                format!("; issues: {issues}")
            }
        );
        let _ = writeln!(
            out,
            "  deleted files:   {} ({})",
            deleted.files,
            count(deleted.resources, "Bundle")
        );
        if let Some(time) = self.transaction_time {
            if Timestamp::parse(time.trim()).is_some() {
                let time = server_text(time);
                let _ = writeln!(
                    out,
                    "  transactionTime: {time}  (next incremental export: --since {time})"
                );
            } else {
                let _ = writeln!(
                    out,
                    "  transactionTime: {}  (not a FHIR instant: the server's value cannot be \
                     the next --since)",
                    server_text(time)
                );
            }
        }
        let _ = writeln!(out, "  files in:        {}", self.output_dir.display());
        if let Some(note) = &self.job_note {
            let _ = writeln!(out, "  job:             {note}");
        }
        let errors = self.issues.errors();
        if errors > 0 {
            let _ = writeln!(
                out,
                "  result:          all the data is here, but the server reported {} in its \
                 error files (exit code 3)",
                count(errors, "error/fatal issue")
            );
        } else {
            let _ = writeln!(out, "  result:          complete (exit code 0)");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: FileKind, t: Option<&str>, resources: u64, bytes: u64) -> FileRecord {
        FileRecord {
            kind,
            resource_type: t.map(str::to_owned),
            url: crate::state::UrlId::of("http://127.0.0.1/f"),
            resources,
            bytes,
            data_bytes: bytes,
        }
    }

    #[test]
    fn renders_types_totals_and_next_since() {
        let mut files = BTreeMap::new();
        files.insert(
            "Patient.1.ndjson".into(),
            record(FileKind::Output, Some("Patient"), 10, 2048),
        );
        files.insert(
            "Observation.1.ndjson".into(),
            record(FileKind::Output, Some("Observation"), 80, 4096),
        );
        files.insert(
            "Observation.2.ndjson".into(),
            record(FileKind::Output, Some("Observation"), 20, 1024),
        );
        files.insert(
            "error/OperationOutcome.1.ndjson".into(),
            record(FileKind::Error, None, 2, 100),
        );
        let summary = Summary {
            files: &files,
            issues: IssueCounts {
                warning: 2,
                ..IssueCounts::default()
            },
            elapsed: Duration::from_secs(3),
            downloaded_bytes: 4096,
            download_elapsed: Duration::from_secs(2),
            transaction_time: Some("2024-03-01T17:35:02Z"),
            output_dir: Path::new("out"),
            job_note: Some("deleted on the server".into()),
        };
        let text = summary.render();
        assert!(
            text.contains("Export complete: 4 files, 112 resources, 7.10 KiB of NDJSON"),
            "{text}"
        );
        assert!(
            text.contains(
                "output: 2 resource types in 3 files, 110 resources; 1 error file; 0 deleted files"
            ),
            "{text}"
        );
        assert!(
            text.contains("result:          complete (exit code 0)"),
            "{text}"
        );
        assert!(text.contains("(2.00 KiB/s)"), "{text}");
        let obs = text.lines().find(|l| l.contains("Observation")).unwrap();
        assert!(
            obs.contains(" 2 ") && obs.contains("100") && obs.contains("5.00 KiB"),
            "{obs}"
        );
        assert!(text.contains("error files:     1 (2 OperationOutcomes; issues: 2 warning)"));
        assert!(text.contains("deleted files:   0 (0 Bundles)"), "{text}");
        assert!(text.contains("--since 2024-03-01T17:35:02Z"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn errors_exit_3_and_a_garbage_transaction_time_is_no_since() {
        let files = BTreeMap::new();
        let summary = Summary {
            files: &files,
            issues: IssueCounts {
                error: 1,
                ..IssueCounts::default()
            },
            elapsed: Duration::from_secs(1),
            downloaded_bytes: 0,
            download_elapsed: Duration::from_secs(1),
            transaction_time: Some("yesterday\x1b[2J"),
            output_dir: Path::new("out"),
            job_note: None,
        };
        let text = summary.render();
        assert!(!text.contains("--since yesterday"), "{text}");
        assert!(
            text.contains("yesterday\\x1b[2J  (not a FHIR instant"),
            "{text}"
        );
        assert!(
            text.contains("reported 1 error/fatal issue in its error files (exit code 3)"),
            "{text}"
        );
        assert!(
            text.contains("Export complete: 0 files, 0 resources"),
            "{text}"
        );
    }

    #[test]
    fn organized_output_counts_under_its_file_name() {
        let r = record(FileKind::Output, None, 1, 1);
        assert_eq!(type_of("Patient.3.ndjson.gz", &r), "Patient");
    }
}
