//! What the user sees while a command runs. On a terminal: a spinner with the server's
//! X-Progress while the job runs, then one overall bar with a line per active download
//! (bytes, rate, resources, the full file name), all drawn as one multi-line progress bar on
//! stderr, so nothing is left behind when it is cleared; with more than [`MAX_FILE_BARS`]
//! files, only the overall bar with counts (and no line per saved file unless `-v`). Not on a
//! terminal, or with `--quiet`: plain timestamped lines on stderr, no escape codes. Warnings
//! are coloured on a terminal unless `NO_COLOR` is set. Server text is escaped and cut
//! ([`crate::escape`]).

use crate::args::OutputArgs;
use crate::escape::{escape, server_text};
use crate::plural::{count, thousands};
use crate::{out, time};
use fhir_bulk::Progress;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verbosity {
    /// `--quiet`: milestones, warnings and the summary.
    Quiet,
    /// The default: also progress changes, retries and finished files.
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

/// With more files than this, no line per file: one overall bar with counts.
pub(crate) const MAX_FILE_BARS: usize = 8;

/// The bar of the running command, so lines from elsewhere (the tracing layer) are printed
/// above it instead of through it.
static PRINTER: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints one line on stderr: above the progress bar when one is shown, else as a plain
/// timestamped line.
pub(crate) fn print_line(message: &str) {
    let message = escape(message);
    let printer = lock(&PRINTER).clone();
    match printer {
        Some(bar) => bar.suspend(|| out::err(&message)),
        None => out::err(&format!("{} {message}", time::now())),
    }
}

/// One download in flight, as the bar shows it.
#[derive(Debug, Clone)]
struct Active {
    id: u64,
    name: String,
    size: Option<u64>,
    count: Option<u64>,
    bytes: u64,
    lines: u64,
    started: Instant,
}

/// What the bar shows.
#[derive(Debug, Default)]
struct Board {
    /// The poll headline, while the job runs.
    polling: Option<String>,
    /// Files in flight, oldest first (none in aggregate mode).
    active: Vec<Active>,
    next_id: u64,
}

/// The terminal's bar.
#[derive(Debug)]
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    board: Mutex<Board>,
    /// When the bar's text was last rebuilt, in ms since `epoch`.
    last_render: AtomicU64,
    epoch: Instant,
}

/// Reports progress on stderr, as a bar or as plain lines.
#[derive(Debug)]
pub(crate) struct Reporter {
    bars: Option<Arc<Bars>>,
    verbosity: Verbosity,
    last_progress: Mutex<Option<String>>,
    totals: Arc<Totals>,
}

/// Download totals.
#[derive(Debug)]
struct Totals {
    /// When the downloads began.
    started: Mutex<Instant>,
    data_bytes: AtomicU64,
    resources: AtomicU64,
    /// Whether there are too many files for a line each.
    aggregate: AtomicBool,
    /// Files to download in this run.
    files: AtomicU64,
    /// Files done in this run.
    done: AtomicU64,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The line of one download: bytes (of the size, when known), rate, resources (of the
/// manifest's count), then the full file name.
fn file_line(file: &Active, now: Instant) -> String {
    let secs = now.duration_since(file.started).as_secs_f64().max(0.001);
    let bytes = match file.size {
        Some(size) => format!(
            "{:>10} / {:<10}",
            HumanBytes(file.bytes).to_string(),
            HumanBytes(size).to_string()
        ),
        None => format!("{:>10}", HumanBytes(file.bytes).to_string()),
    };
    let resources = match file.count {
        Some(c) => format!("{}/{}", thousands(file.lines), count(c, "resource")),
        None => count(file.lines, "resource"),
    };
    format!(
        "  {bytes} {:>12}/s  {resources:<22} {}",
        HumanBytes((file.bytes as f64 / secs) as u64).to_string(),
        file.name
    )
}

impl Reporter {
    /// A bar when stderr is a terminal and `--quiet` is not given, plain lines otherwise.
    pub(crate) fn new(output: &OutputArgs) -> Reporter {
        let verbosity = Verbosity::of(output);
        let terminal = !output.quiet
            && std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        Reporter::with(terminal, verbosity)
    }

    /// A reporter with a bar or without.
    pub(crate) fn with(terminal: bool, verbosity: Verbosity) -> Reporter {
        let bars = terminal.then(|| {
            Arc::new(Bars {
                bar: Mutex::new(None),
                board: Mutex::new(Board::default()),
                last_render: AtomicU64::new(0),
                epoch: Instant::now(),
            })
        });
        Reporter {
            bars,
            verbosity,
            last_progress: Mutex::new(None),
            totals: Arc::new(Totals {
                started: Mutex::new(Instant::now()),
                data_bytes: AtomicU64::new(0),
                resources: AtomicU64::new(0),
                aggregate: AtomicBool::new(false),
                files: AtomicU64::new(0),
                done: AtomicU64::new(0),
            }),
        }
    }

    fn line(&self, message: &str) {
        line_on(self.bars.as_ref(), message);
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

    /// A warning: always shown, `warning:` coloured on a terminal.
    pub(crate) fn warn(&self, message: &str) {
        let label = out::paint("warning:", out::Tone::Warning, out::colour_on_stderr());
        let message = escape(message);
        let write = |prefix: &str| {
            let _ = writeln!(std::io::stderr().lock(), "{prefix}{label} {message}");
        };
        match self.bars.as_ref().and_then(|bars| lock(&bars.bar).clone()) {
            Some(bar) => bar.suspend(|| write("")),
            None if self.bars.is_some() => write(""),
            None => write(&format!("{} ", time::now())),
        }
    }

    /// Shows a new bar (the one before it is cleared first).
    fn show(&self, bar: ProgressBar) {
        if let Some(bars) = &self.bars {
            if let Some(old) = lock(&bars.bar).replace(bar.clone()) {
                old.finish_and_clear();
            }
            *lock(&PRINTER) = Some(bar);
        }
    }

    /// The job is running: start the spinner.
    pub(crate) fn polling(&self) {
        if let Some(bars) = &self.bars {
            let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            spinner.set_style(style("{spinner} {elapsed:>4} {msg}"));
            spinner.set_message("waiting for the server to prepare the export");
            spinner.enable_steady_tick(Duration::from_millis(120));
            lock(&bars.board).polling = Some(String::new());
            self.show(spinner);
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
            if let Some(bar) = lock(&bars.bar).as_ref() {
                bar.set_message(format!("export in progress: {text}{wait} (poll {polls})"));
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
        if let Some(bars) = &self.bars {
            lock(&bars.board).polling = None;
            self.clear_bar();
        }
    }

    fn clear_bar(&self) {
        if let Some(bars) = &self.bars
            && let Some(bar) = lock(&bars.bar).take()
        {
            *lock(&PRINTER) = None;
            bar.finish_and_clear();
        }
    }

    /// Downloads begin: `files` to fetch in this run.
    pub(crate) fn downloads(&self, files: usize) {
        *lock(&self.totals.started) = Instant::now();
        self.totals
            .aggregate
            .store(files > MAX_FILE_BARS, Ordering::Relaxed);
        self.totals.files.store(files as u64, Ordering::Relaxed);
        self.totals.done.store(0, Ordering::Relaxed);
        if self.bars.is_some() {
            let overall =
                ProgressBar::with_draw_target(Some(files as u64), ProgressDrawTarget::stderr());
            overall.set_style(style(
                "{spinner} downloading [{bar:30}] {human_pos}/{human_len} files  {msg}",
            ));
            overall.enable_steady_tick(Duration::from_millis(200));
            self.show(overall);
            self.render(true);
        }
    }

    /// Rebuilds the bar's text.
    fn render(&self, force: bool) {
        if let Some(bars) = &self.bars {
            render(bars, &self.totals, force);
        }
    }

    /// One file starts downloading.
    #[cfg(test)]
    pub(crate) fn file(&self, name: &str, count: Option<u64>, size: Option<u64>) -> FileProgress {
        self.starter().file(name, count, size)
    }

    /// What starts file lines from the library's per-file hook (`'static`, unlike the
    /// reporter).
    pub(crate) fn starter(&self) -> FileStarter {
        FileStarter {
            bars: self.bars.clone(),
            totals: self.totals.clone(),
            verbose: self.verbosity >= Verbosity::Verbose,
        }
    }

    fn forget(&self, progress: Option<&FileProgress>) {
        if let (Some(bars), Some(id)) = (&self.bars, progress.and_then(|p| p.id)) {
            lock(&bars.board).active.retain(|f| f.id != id);
        }
    }

    /// A file is complete.
    pub(crate) fn file_done(
        &self,
        progress: Option<&FileProgress>,
        name: &str,
        resources: u64,
        bytes: u64,
    ) {
        self.forget(progress);
        if let Some(bar) = self.bars.as_ref().and_then(|b| lock(&b.bar).clone()) {
            bar.inc(1);
        }
        self.render(true);
        let done = self.totals.done.fetch_add(1, Ordering::Relaxed) + 1;
        let message = format!(
            "saved {name}: {}, {}",
            count(resources, "resource"),
            HumanBytes(bytes)
        );
        if !self.totals.aggregate.load(Ordering::Relaxed) {
            self.info(&message);
            return;
        }
        // Many files: a line each only with -v; without a bar, a line every tenth.
        self.detail(&message);
        let total = self.totals.files.load(Ordering::Relaxed).max(1);
        if self.bars.is_none()
            && self.verbosity == Verbosity::Normal
            && (done * 10 / total) > ((done - 1) * 10 / total)
        {
            self.info(&format!(
                "downloaded {} of {} ({} so far)",
                thousands(done),
                count(total, "file"),
                count(self.totals.resources.load(Ordering::Relaxed), "resource")
            ));
        }
    }

    /// A file failed.
    pub(crate) fn file_failed(&self, progress: Option<&FileProgress>, name: &str, message: &str) {
        self.forget(progress);
        self.render(true);
        self.warn(&format!("{name} failed: {message}"));
    }

    /// Removes the bar (before the summary is printed).
    pub(crate) fn finish(&self) {
        if let Some(bars) = &self.bars {
            lock(&bars.board).active.clear();
        }
        self.clear_bar();
    }
}

/// Prints a line above the bar when there is one, else as a plain timestamped line.
fn line_on(bars: Option<&Arc<Bars>>, message: &str) {
    let message = escape(message);
    match bars.and_then(|bars| lock(&bars.bar).clone()) {
        Some(bar) => bar.suspend(|| out::err(&message)),
        None if bars.is_some() => out::err(&message),
        None => out::err(&format!("{} {message}", time::now())),
    }
}

/// Rebuilds the bar's text: the totals, then a line per file in flight (at most every 100 ms
/// unless `force`; indicatif counts wrapped lines, so long names are safe).
fn render(bars: &Bars, totals: &Totals, force: bool) {
    let now_ms = bars.epoch.elapsed().as_millis() as u64;
    let last = bars.last_render.load(Ordering::Relaxed);
    if !force && now_ms.saturating_sub(last) < 100 {
        return;
    }
    bars.last_render.store(now_ms, Ordering::Relaxed);
    let Some(bar) = lock(&bars.bar).clone() else {
        return;
    };
    let total_bytes = totals.data_bytes.load(Ordering::Relaxed);
    let secs = lock(&totals.started).elapsed().as_secs_f64().max(0.001);
    let mut text = format!(
        "{}, {} at {}/s",
        count(totals.resources.load(Ordering::Relaxed), "resource"),
        HumanBytes(total_bytes),
        HumanBytes((total_bytes as f64 / secs) as u64)
    );
    let now = Instant::now();
    for file in &lock(&bars.board).active {
        text.push('\n');
        text.push_str(&file_line(file, now));
    }
    bar.set_message(text);
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Starts the progress of files as the library starts them: a clone of the reporter's bar and
/// totals.
#[derive(Debug, Clone)]
pub(crate) struct FileStarter {
    bars: Option<Arc<Bars>>,
    totals: Arc<Totals>,
    /// `-v`: a line per file started.
    verbose: bool,
}

impl FileStarter {
    /// One file starts downloading: its line on the bar (unless there are too many files).
    pub(crate) fn file(&self, name: &str, count: Option<u64>, size: Option<u64>) -> FileProgress {
        if self.verbose {
            line_on(self.bars.as_ref(), &format!("downloading {name}"));
        }
        let aggregate = self.totals.aggregate.load(Ordering::Relaxed);
        let id = self.bars.as_ref().filter(|_| !aggregate).map(|bars| {
            let mut board = lock(&bars.board);
            board.next_id += 1;
            let id = board.next_id;
            board.active.push(Active {
                id,
                name: escape(name).into_owned(),
                size,
                count,
                bytes: 0,
                lines: 0,
                started: Instant::now(),
            });
            id
        });
        FileProgress {
            bars: self.bars.clone(),
            totals: self.totals.clone(),
            id,
            seen: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
        }
    }
}

/// The progress of one file, updated from the download's progress callback.
#[derive(Debug, Clone)]
pub(crate) struct FileProgress {
    bars: Option<Arc<Bars>>,
    totals: Arc<Totals>,
    /// Its line on the bar, if it has one.
    id: Option<u64>,
    /// The resources and bytes already added to the totals.
    seen: Arc<(AtomicU64, AtomicU64)>,
}

impl FileProgress {
    /// `lines` written and `data_bytes` received so far.
    pub(crate) fn update(&self, lines: u64, data_bytes: u64) {
        let new_lines = lines.saturating_sub(self.seen.0.swap(lines, Ordering::Relaxed));
        let new_bytes = data_bytes.saturating_sub(self.seen.1.swap(data_bytes, Ordering::Relaxed));
        let totals = &self.totals;
        totals.data_bytes.fetch_add(new_bytes, Ordering::Relaxed);
        totals.resources.fetch_add(new_lines, Ordering::Relaxed);
        let Some(bars) = &self.bars else {
            return;
        };
        if let Some(id) = self.id
            && let Some(file) = lock(&bars.board).active.iter_mut().find(|f| f.id == id)
        {
            file.lines = lines;
            file.bytes = data_bytes;
        }
        render(bars, totals, false);
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
        r.file_done(Some(&f), "Patient.1.ndjson", 3, 150);
        assert_eq!(r.totals.data_bytes.load(Ordering::Relaxed), 150);
        assert_eq!(r.totals.resources.load(Ordering::Relaxed), 3);
        r.finish();
    }

    #[test]
    fn many_files_get_one_bar_and_no_line_each() {
        let r = Reporter::with(true, Verbosity::Normal);
        r.downloads(MAX_FILE_BARS + 1);
        let f = r.file("Observation.1.ndjson", None, Some(1000));
        assert!(f.id.is_none(), "no line per file");
        f.update(4, 1000);
        r.file_done(Some(&f), "Observation.1.ndjson", 4, 1000);
        assert_eq!(r.totals.done.load(Ordering::Relaxed), 1);
        r.finish();
        let r = Reporter::with(true, Verbosity::Normal);
        r.downloads(MAX_FILE_BARS);
        let f = r.file("Patient.1.ndjson", None, None);
        assert!(f.id.is_some());
        let bars = r.bars.as_ref().unwrap();
        assert_eq!(lock(&bars.board).active.len(), 1);
        r.file_failed(Some(&f), "Patient.1.ndjson", "cut");
        assert!(lock(&bars.board).active.is_empty());
        r.finish();
        assert!(lock(&bars.bar).is_none(), "finish clears the bar");
    }

    #[test]
    fn a_file_line_shows_the_full_name_last() {
        let started = Instant::now();
        let file = Active {
            id: 1,
            name: "Observation.with-a-very-long-name-indeed.12.ndjson".into(),
            size: Some(2048),
            count: Some(10),
            bytes: 1024,
            lines: 4,
            started,
        };
        let line = file_line(&file, started + Duration::from_secs(1));
        assert!(line.contains("1.00 KiB / 2.00 KiB"), "{line}");
        assert!(line.contains("1.00 KiB/s"), "{line}");
        assert!(line.contains("4/10 resources"), "{line}");
        assert!(line.ends_with("Observation.with-a-very-long-name-indeed.12.ndjson"));
    }

    #[test]
    fn bars_work_when_hidden() {
        let r = Reporter::with(true, Verbosity::Normal);
        r.polling();
        r.poll(&Progress::default(), 1);
        r.polling_done();
        r.downloads(2);
        let f = r.file("Observation.1.ndjson", None, Some(1000));
        f.update(1, 500);
        r.file_failed(Some(&f), "Observation.1.ndjson", "cut");
        r.finish();
    }
}
