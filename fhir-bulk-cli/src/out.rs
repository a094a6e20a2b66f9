//! Writing to stdout and stderr without panicking when they are closed (e.g. piped into
//! `head`): a lost line is not worth a crash.

use std::io::Write;

/// Writes `text` to stdout as is.
pub(crate) fn text(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes `line` and a newline to stdout.
pub(crate) fn line(line: &str) {
    text(&format!("{line}\n"));
}

/// Writes `line` and a newline to stderr.
pub(crate) fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
