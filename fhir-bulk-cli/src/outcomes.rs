//! Reading the saved error files: how many OperationOutcome issues of each severity they hold.
//! Exit code 1 when any is `error` or `fatal`; `information` and `warning` are fine.

use fhir_bulk::OperationOutcome;
use flate2::read::MultiGzDecoder;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Issue counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IssueCounts {
    /// `fatal`.
    pub(crate) fatal: u64,
    /// `error`.
    pub(crate) error: u64,
    /// `warning`.
    pub(crate) warning: u64,
    /// `information` (and unknown severities).
    pub(crate) information: u64,
    /// Lines that were not OperationOutcomes.
    pub(crate) unreadable: u64,
}

impl IssueCounts {
    /// `error` and `fatal` issues.
    pub(crate) fn errors(&self) -> u64 {
        self.fatal + self.error
    }

    /// `3 error, 1 warning` style text; empty when there are none.
    pub(crate) fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.fatal, "fatal"),
            (self.error, "error"),
            (self.warning, "warning"),
            (self.information, "information"),
            (self.unreadable, "unreadable line"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        parts.join(", ")
    }

    fn add(&mut self, outcome: &OperationOutcome) {
        let counts = outcome.counts();
        self.fatal += counts.fatal;
        self.error += counts.error;
        self.warning += counts.warning;
        self.information += counts.information + counts.other;
    }
}

/// Counts the issues of one saved error file (`.ndjson` or `.ndjson.gz`).
pub(crate) fn count_file(path: &Path, counts: &mut IssueCounts) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    for line in BufReader::new(reader).split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match OperationOutcome::parse(&line) {
            Some(outcome) => counts.add(&outcome),
            None => counts.unreadable += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LINES: &str = concat!(
        r#"{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"processing"}]}"#,
        "\n",
        r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing"},{"severity":"information","code":"informational"}]}"#,
        "\n\nnot json\n"
    );

    #[test]
    fn counts_plain_and_gzip_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("OperationOutcome.1.ndjson");
        std::fs::write(&plain, LINES).unwrap();
        let gz = dir.path().join("OperationOutcome.2.ndjson.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(LINES.as_bytes()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let mut counts = IssueCounts::default();
        count_file(&plain, &mut counts).unwrap();
        count_file(&gz, &mut counts).unwrap();
        assert_eq!(counts.error, 2);
        assert_eq!(counts.warning, 2);
        assert_eq!(counts.information, 2);
        assert_eq!(counts.unreadable, 2);
        assert_eq!(counts.errors(), 2);
        assert_eq!(
            counts.describe(),
            "2 error, 2 warning, 2 information, 2 unreadable line"
        );
    }
}
