//! What the user sees while a command runs. On a terminal: a spinner with the server's
//! X-Progress while the job runs, then a bar per active download (bytes, resources, rate) and
//! an overall bar, on stderr; with more than [`MAX_FILE_BARS`] files, only the overall bar
//! with counts (and no line per file unless `-v`). Not on a terminal, or with `--quiet`:
//! plain timestamped lines on stderr, no escape codes. Warnings are coloured on a terminal
//! unless `NO_COLOR` is set. Server text is escaped and cut ([`crate::escape`]).

use crate::args::OutputArgs;
use crate::escape::{escape, server_text};
use crate::plural::{count, thousands};
use crate::{out, time};
use fhir_bulk::Progress;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verbosity {
    /// `--quiet`: milestones, warnings and the summary.
    Quiet,
    /// The default: also progress changes and finished files.
    Normal,
    /// `-v`: also every poll and every file started.
    Verbose,
    /// `-vv`: also the library's debug events (redirects).
    Debug,
}

impl Verbosity {
    /// The verbosity `--quiet` and `-v` ask for.
    pub(crate) fn of(output: &OutputArgs) -> Verbosity {
        match (output.quiet, output.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Debug,
        }
    }
}

/// With more files than this, no bar per file: one overall bar with counts.
pub(crate) const MAX_FILE_BARS: usize = 8;

/// The bars of the running command, so lines from elsewhere (the tracing layer) are printed
/// above them instead of through them.
static PRINTER: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Prints one line on stderr: above the progress bars when they are shown, else as a plain
/// timestamped line.
pub(crate) fn print_line(message: &str) {
    let message = escape(message);
    let printer = lock(&PRINTER).clone();
    match printer {
        Some(multi) if multi.println(message.as_ref()).is_ok() => {}
        _ => out::err(&format!("{} {message}", time::now())),
    }
}

/// The terminal's bars.
#[derive(Debug)]
struct Bars {
    multi: MultiProgress,
    spinner: Mutex<Option<ProgressBar>>,
    overall: Mutex<Option<ProgressBar>>,
}

/// Reports progress on stderr, as bars or as plain lines.
#[derive(Debug)]
pub(crate) struct Reporter {
    bars: Option<Bars>,
    verbosity: Verbosity,
    last_progress: Mutex<Option<String>>,
    totals: Arc<Totals>,
    /// Whether there are too many files for a bar each.
    aggregate: std::sync::atomic::AtomicBool,
    /// Files to download in this run, and files done.
    files: (AtomicU64, AtomicU64),
}

/// Download totals shared by the file bars and the overall bar.
#[derive(Debug)]
struct Totals {
    /// When the downloads began.
    started: Mutex<Instant>,
    data_bytes: AtomicU64,
    resources: AtomicU64,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reporter {
    /// Bars when stderr is a terminal and `--quiet` is not given, plain lines otherwise.
    pub(crate) fn new(output: &OutputArgs) -> Reporter {
        let verbosity = Verbosity::of(output);
        let terminal = !output.quiet
            && std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        Reporter::with(terminal, verbosity)
    }

    /// A reporter with bars or without.
    pub(crate) fn with(terminal: bool, verbosity: Verbosity) -> Reporter {
        let bars = terminal.then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            spinner: Mutex::new(None),
            overall: Mutex::new(None),
        });
        if let Some(bars) = &bars {
            *lock(&PRINTER) = Some(bars.multi.clone());
        }
        Reporter {
            bars,
            verbosity,
            aggregate: std::sync::atomic::AtomicBool::new(false),
            files: (AtomicU64::new(0), AtomicU64::new(0)),
            last_progress: Mutex::new(None),
            totals: Arc::new(Totals {
                started: Mutex::new(Instant::now()),
                data_bytes: AtomicU64::new(0),
                resources: AtomicU64::new(0),
            }),
        }
    }

    fn line(&self, message: &str) {
        let message = escape(message);
        match &self.bars {
            Some(bars) => {
                if bars.multi.println(message.as_ref()).is_err() {
                    out::err(&message);
                }
            }
            None => out::err(&format!("{} {message}", time::now())),
        }
    }

    /// A milestone: always shown.
    pub(crate) fn milestone(&self, message: &str) {
        self.line(message);
    }

    /// Shown unless `--quiet`.
    pub(crate) fn info(&self, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.line(message);
        }
    }

    /// Shown with `-v`.
    pub(crate) fn detail(&self, message: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.line(message);
        }
    }

    /// A warning: always shown.
    pub(crate) fn warn(&self, message: &str) {
        let label = out::paint("warning:", out::Tone::Warning, out::colour_on_stderr());
        let message = escape(message);
        match &self.bars {
            Some(bars) => {
                if bars.multi.println(format!("{label} {message}")).is_err() {
                    out::err_toned("warning:", &message, out::Tone::Warning);
                }
            }
            None => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr().lock(),
                    format!("{} {label} {message}\n", time::now()).as_bytes(),
                );
            }
        }
    }

    /// The job is running: start the spinner.
    pub(crate) fn polling(&self) {
        if let Some(bars) = &self.bars {
            let spinner = bars.multi.add(ProgressBar::new_spinner());
            spinner.set_style(style("{spinner} {elapsed:>4} {msg}"));
            spinner.set_message("waiting for the server to prepare the export");
            spinner.enable_steady_tick(Duration::from_millis(120));
            *lock(&bars.spinner) = Some(spinner);
        }
    }

    /// One in-progress answer.
    pub(crate) fn poll(&self, progress: &Progress, polls: u32) {
        let text = progress
            .text
            .as_deref()
            .map_or_else(|| "in progress".to_owned(), server_text);
        let text = text.as_str();
        let wait = progress
            .retry_after
            .map(|d| format!(" (Retry-After {})", time::human_duration(d)))
            .unwrap_or_default();
        if let Some(bars) = &self.bars {
            if let Some(spinner) = lock(&bars.spinner).as_ref() {
                spinner.set_message(format!("export in progress: {text}{wait} (poll {polls})"));
            }
            self.detail(&format!("poll {polls}: {text}{wait}"));
            return;
        }
        let changed = {
            let mut last = lock(&self.last_progress);
            let changed = last.as_deref() != Some(text);
            *last = Some(text.to_owned());
            changed
        };
        if self.verbosity >= Verbosity::Verbose {
            self.line(&format!("poll {polls}: export in progress: {text}{wait}"));
        } else if changed {
            self.info(&format!("export in progress: {text}"));
        }
    }

    /// The job is complete: stop the spinner.
    pub(crate) fn polling_done(&self) {
        if let Some(bars) = &self.bars
            && let Some(spinner) = lock(&bars.spinner).take()
        {
            spinner.finish_and_clear();
            bars.multi.remove(&spinner);
        }
    }

    /// Downloads begin: `files` to fetch in this run.
    pub(crate) fn downloads(&self, files: usize) {
        *lock(&self.totals.started) = Instant::now();
        let aggregate = files > MAX_FILE_BARS;
        self.aggregate.store(aggregate, Ordering::Relaxed);
        self.files.0.store(files as u64, Ordering::Relaxed);
        self.files.1.store(0, Ordering::Relaxed);
        if let Some(bars) = &self.bars {
            let overall = bars.multi.add(ProgressBar::new(files as u64));
            overall.set_style(style(if aggregate {
                "{prefix} [{bar:30}] {human_pos}/{human_len} files  {msg}  {elapsed}"
            } else {
                "{prefix} [{bar:30}] {pos}/{len} files  {msg}  {elapsed}"
            }));
            overall.set_prefix("downloading");
            overall.enable_steady_tick(Duration::from_millis(250));
            *lock(&bars.overall) = Some(overall);
        }
    }

    /// One file starts downloading.
    pub(crate) fn file(&self, name: &str, count: Option<u64>, size: Option<u64>) -> FileProgress {
        self.detail(&format!("downloading {name}"));
        let aggregate = self.aggregate.load(Ordering::Relaxed);
        let bar = self.bars.as_ref().filter(|_| !aggregate).map(|bars| {
            let bar = match size {
                Some(size) => {
                    let bar = ProgressBar::new(size);
                    bar.set_style(style(
                        "  {spinner} {prefix:<30} [{bar:20}] {bytes:>10}/{total_bytes:<10} \
                         {binary_bytes_per_sec:>12}  {msg}",
                    ));
                    bar
                }
                None => {
                    let bar = ProgressBar::no_length();
                    bar.set_style(style(
                        "  {spinner} {prefix:<30} {bytes:>10} {binary_bytes_per_sec:>12}  {msg}",
                    ));
                    bar
                }
            };
            bar.set_prefix(escape(name).into_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            let overall = lock(&bars.overall).clone();
            match overall {
                Some(overall) => bars.multi.insert_before(&overall, bar),
                None => bars.multi.add(bar),
            }
        });
        let overall = self
            .bars
            .as_ref()
            .and_then(|bars| lock(&bars.overall).clone());
        FileProgress {
            bar,
            overall,
            count,
            totals: self.totals.clone(),
            seen: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
        }
    }

    /// A file is complete.
    pub(crate) fn file_done(
        &self,
        progress: &FileProgress,
        name: &str,
        resources: u64,
        bytes: u64,
    ) {
        if let Some(bar) = &progress.bar {
            bar.finish_and_clear();
            if let Some(bars) = &self.bars {
                bars.multi.remove(bar);
            }
        }
        if let Some(overall) = &progress.overall {
            overall.inc(1);
        }
        let done = self.files.1.fetch_add(1, Ordering::Relaxed) + 1;
        let message = format!(
            "saved {name}: {}, {}",
            count(resources, "resource"),
            HumanBytes(bytes)
        );
        if !self.aggregate.load(Ordering::Relaxed) {
            self.info(&message);
            return;
        }
        // Many files: a line each only with -v; without bars, a line every tenth.
        self.detail(&message);
        let total = self.files.0.load(Ordering::Relaxed).max(1);
        if self.bars.is_none()
            && self.verbosity == Verbosity::Normal
            && (done * 10 / total) > ((done - 1) * 10 / total)
        {
            self.info(&format!(
                "downloaded {} of {} ({} resources so far)",
                thousands(done),
                count(total, "file"),
                thousands(self.totals.resources.load(Ordering::Relaxed))
            ));
        }
    }

    /// A file failed.
    pub(crate) fn file_failed(&self, progress: &FileProgress, name: &str, message: &str) {
        if let Some(bar) = &progress.bar {
            bar.abandon();
            if let Some(bars) = &self.bars {
                bars.multi.remove(bar);
            }
        }
        self.warn(&format!("{name} failed: {message}"));
    }

    /// Removes every bar (before the summary is printed).
    pub(crate) fn finish(&self) {
        if let Some(bars) = &self.bars {
            {
                let mut printer = lock(&PRINTER);
                if printer.is_some() {
                    *printer = None;
                }
            }
            for slot in [&bars.spinner, &bars.overall] {
                if let Some(bar) = lock(slot).take() {
                    bar.finish_and_clear();
                    bars.multi.remove(&bar);
                }
            }
            let _ = bars.multi.clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The progress of one file, updated from the download's progress callback.
#[derive(Debug, Clone)]
pub(crate) struct FileProgress {
    bar: Option<ProgressBar>,
    overall: Option<ProgressBar>,
    count: Option<u64>,
    totals: Arc<Totals>,
    /// The resources and bytes already added to the totals.
    seen: Arc<(AtomicU64, AtomicU64)>,
}

impl FileProgress {
    /// `lines` written and `data_bytes` received so far.
    pub(crate) fn update(&self, lines: u64, data_bytes: u64) {
        let new_lines = lines.saturating_sub(self.seen.0.swap(lines, Ordering::Relaxed));
        let new_bytes = data_bytes.saturating_sub(self.seen.1.swap(data_bytes, Ordering::Relaxed));
        let total_bytes = self
            .totals
            .data_bytes
            .fetch_add(new_bytes, Ordering::Relaxed)
            + new_bytes;
        self.totals
            .resources
            .fetch_add(new_lines, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(data_bytes);
            bar.set_message(match self.count {
                Some(count) => format!("{lines}/{count} resources"),
                None => format!("{lines} resources"),
            });
        }
        if let Some(overall) = &self.overall {
            let secs = lock(&self.totals.started)
                .elapsed()
                .as_secs_f64()
                .max(0.001);
            overall.set_message(format!(
                "{} resources, {} at {}/s",
                thousands(self.totals.resources.load(Ordering::Relaxed)),
                HumanBytes(total_bytes),
                HumanBytes((total_bytes as f64 / secs) as u64)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reporter_runs_without_a_terminal() {
        let r = Reporter::with(false, Verbosity::Verbose);
        r.polling();
        r.poll(&Progress::default(), 1);
        r.polling_done();
        r.downloads(1);
        let f = r.file("Patient.1.ndjson", Some(3), None);
        f.update(2, 100);
        f.update(3, 150);
        r.file_done(&f, "Patient.1.ndjson", 3, 150);
        assert_eq!(r.totals.data_bytes.load(Ordering::Relaxed), 150);
        assert_eq!(r.totals.resources.load(Ordering::Relaxed), 3);
        r.finish();
    }

    #[test]
    fn many_files_get_one_bar_and_no_line_each() {
        let r = Reporter::with(true, Verbosity::Normal);
        r.downloads(MAX_FILE_BARS + 1);
        let f = r.file("Observation.1.ndjson", None, Some(1000));
        assert!(f.bar.is_none(), "no bar per file");
        assert!(f.overall.is_some());
        f.update(4, 1000);
        r.file_done(&f, "Observation.1.ndjson", 4, 1000);
        assert_eq!(r.files.1.load(Ordering::Relaxed), 1);
        r.finish();
        let r = Reporter::with(true, Verbosity::Normal);
        r.downloads(MAX_FILE_BARS);
        assert!(r.file("Patient.1.ndjson", None, None).bar.is_some());
        r.finish();
        assert!(lock(&PRINTER).is_none(), "finish unregisters the bars");
    }

    #[test]
    fn bars_work_when_hidden() {
        let r = Reporter::with(true, Verbosity::Normal);
        r.polling();
        r.polling_done();
        r.downloads(2);
        let f = r.file("Observation.1.ndjson", None, Some(1000));
        f.update(1, 500);
        r.file_failed(&f, "Observation.1.ndjson", "cut");
        r.finish();
    }
}
