//! [`Saver`]: saving files as they are offered (a whole export, or the files of partial
//! manifests while the job still runs), [`DownloadOptions::concurrency`] downloads at a time,
//! each on a task of its own, with the results handed back one by one.
//!
//! A download holds its slot only while it reads and writes: a file whose lines are all in
//! its `.part` has its data synced on the blocking pool ([`sync_written`], up to
//! [`SYNC_THREADS`] files at once, each as soon as it is written), then goes to the finisher,
//! a blocking task that renames the files to their final names and syncs each directory once
//! per batch of files (see [`finish_batch`]), while the next download already runs. A result
//! says `Ok` only once the file is final and (under the default
//! [`Durability::Synced`](super::Durability)) durable, so a tool that records completed files
//! (a journal) records nothing a power cut could take back.
//!
//! [`BulkClient::save_export`] is this saver fed with every file of a complete export.

use super::DownloadOptions;
use super::leftovers::Leftovers;
use super::save::{
    Downloaded, SaveEvent, SaveOptions, SavedFile, Synced, Written, download_one, finish_batch,
    skipped_file, sync_written,
};
use crate::client::BulkClient;
use crate::error::{Error, Result};
use crate::manifest::ExportFile;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::task::{JoinError, JoinHandle, JoinSet};

/// Written files waiting for the finisher (or being finished) at most, whatever the
/// concurrency: each holds an open file, so a disk slower to sync than the network is to
/// read pauses new downloads instead of opening files without bound.
const FINISH_BACKLOG: usize = 256;

/// Bytes of written files' tails (their last buffered lines, up to 256 KiB a file, written
/// by the trip that syncs or finishes them) held in memory at most: past it, new downloads
/// wait for syncs, so the backlog's memory is bounded by this, not by its file count times
/// the buffer size.
const TAILS_HELD: usize = 1024 * 1024;

/// Data syncs running at once, at most: a sync mostly waits for the disk, and disks complete
/// several flushes in about the time of one. They run on tokio's blocking pool, whose threads
/// are reused from file to file.
const SYNC_THREADS: usize = 8;

/// A batch of written files being finished on the blocking pool, one result per file.
type Batch = JoinHandle<Vec<Result<SavedFile>>>;

/// One file pushed to a [`Saver`].
#[derive(Debug)]
struct Job {
    index: usize,
    file: ExportFile,
    path: PathBuf,
    /// Bytes of its tail the saver holds (counted in [`Saver::held`]) until it is written.
    held: usize,
}

/// What one push to a [`Saver`] came to.
#[non_exhaustive]
#[derive(Debug)]
pub struct SaveResult {
    /// Its place among the files pushed, from 0.
    pub index: usize,
    /// The manifest entry.
    pub file: ExportFile,
    /// Where it is (or would have been) saved.
    pub path: PathBuf,
    /// The file saved or skipped, or why it failed. A failure keeps the `.part` for a resume
    /// when it was an interruption (network, disk), and removes it when it was permanent.
    pub result: Result<SavedFile>,
}

/// What one wait of [`Saver::next`] brought.
enum Step {
    Downloaded(std::result::Result<(tokio::task::Id, Result<Downloaded>), JoinError>),
    Synced(std::result::Result<(tokio::task::Id, Synced), JoinError>),
    Finished(std::result::Result<Vec<Result<SavedFile>>, JoinError>),
    /// A directory was looked at: files in it may now skip their look.
    Looked,
}

/// Saves files into a directory as they are pushed, [`DownloadOptions::concurrency`] at a
/// time, each written under a `.part` name and renamed once complete, checked and synced,
/// continuing the `.part` an interrupted earlier save left (in this process or another).
/// [`SaveOptions::on_file`] is told as each file starts, and as its result is handed back
/// by [`Saver::next`]; [`SaveOptions::skip`] and [`SaveOptions::skip_existing`] leave files
/// alone. Needs a tokio runtime (the downloads are spawned); dropping it aborts the downloads
/// (their `.part` files are kept for a resume).
///
/// ```no_run
/// use fhir_bulk::download::{SaveOptions, Saver, file_names};
/// # async fn run(client: fhir_bulk::BulkClient, export: fhir_bulk::CompletedExport) -> fhir_bulk::Result<()> {
/// let mut saver = Saver::new(&client, "out".as_ref(), SaveOptions::default());
/// let mut jobs = file_names(&export, false);
/// loop {
///     saver.feed(&mut jobs); // a few files ahead of the downloads, not the whole manifest
///     let Some(done) = saver.next().await else { break };
///     let saved = done.result?;
///     println!("{}: {} lines", saved.path.display(), saved.lines);
/// }
/// # Ok(()) }
/// ```
pub struct Saver {
    client: BulkClient,
    dir: PathBuf,
    options: SaveOptions,
    concurrency: usize,
    pushed: usize,
    queue: VecDeque<Job>,
    running: JoinSet<Result<Downloaded>>,
    in_flight: HashMap<tokio::task::Id, Job>,
    /// Written, waiting for a sync slot.
    to_sync: VecDeque<(Job, Written)>,
    /// Data syncs running, and their files.
    syncing: JoinSet<Synced>,
    syncing_jobs: HashMap<tokio::task::Id, Job>,
    /// Synced, waiting for the finisher.
    waiting: Vec<(Job, Synced)>,
    /// The batch being finished on the blocking pool.
    finishing: Option<(Vec<Job>, Batch)>,
    ready: VecDeque<SaveResult>,
    /// Bytes of tails held by written files not yet synced or finished ([`TAILS_HELD`]).
    held: usize,
    /// What is known of the `.part` files and sidecars in the directories saved into.
    leftovers: Leftovers,
}

impl fmt::Debug for Saver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saver")
            .field("dir", &self.dir)
            .field("concurrency", &self.concurrency)
            .field("queued", &self.queue.len())
            .field("running", &self.running.len())
            .field("syncing", &(self.to_sync.len() + self.syncing.len()))
            .field("finishing", &self.finishing_len())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl Saver {
    /// A saver writing into `dir` with `options` (its download options set the concurrency).
    pub fn new(client: &BulkClient, dir: &Path, options: SaveOptions) -> Saver {
        let DownloadOptions { concurrency, .. } = options.download;
        Saver {
            client: client.clone(),
            dir: dir.to_path_buf(),
            concurrency: concurrency.max(1),
            options,
            pushed: 0,
            queue: VecDeque::new(),
            running: JoinSet::new(),
            in_flight: HashMap::new(),
            to_sync: VecDeque::new(),
            syncing: JoinSet::new(),
            syncing_jobs: HashMap::new(),
            waiting: Vec::new(),
            finishing: None,
            ready: VecDeque::new(),
            held: 0,
            leftovers: Leftovers::default(),
        }
    }

    /// Queues `file`, saved as `path` (relative to the directory, e.g. from
    /// [`file_names`](super::file_names)); returns its [`SaveResult::index`]. Downloads start
    /// as slots free up, while [`Saver::next`] is awaited.
    pub fn push(&mut self, file: ExportFile, path: impl AsRef<Path>) -> usize {
        let index = self.pushed;
        self.pushed += 1;
        let path = self.dir.join(path);
        if let Some(skip) = &self.options.skip
            && skip(&file, &path)
        {
            let saved = skipped_file(&file, &path);
            self.ready.push_back(SaveResult {
                index,
                file,
                path,
                result: Ok(saved),
            });
        } else {
            self.queue.push_back(Job {
                index,
                file,
                path,
                held: 0,
            });
        }
        index
    }

    /// Whether the saver wants more files pushed to keep its download slots busy: fewer than
    /// twice [`DownloadOptions::concurrency`] (at least 8) are queued or ready. Pushing only
    /// while it says so (as [`Saver::feed`] does) keeps the memory of the files waiting
    /// bounded, whatever the number of files.
    pub fn wants_more(&self) -> bool {
        self.queue.len() + self.ready.len() < (2 * self.concurrency).max(8)
    }

    /// Pushes files from `jobs` (each with its path, as [`Saver::push`] takes them) while the
    /// saver [wants more](Saver::wants_more). Call it before each [`Saver::next`] (the
    /// example on [`Saver`]): once `next` is `None` after a feed, `jobs` is used up.
    pub fn feed<P: AsRef<Path>>(&mut self, jobs: &mut impl Iterator<Item = (ExportFile, P)>) {
        while self.wants_more() {
            let Some((file, path)) = jobs.next() else {
                return;
            };
            self.push(file, path);
        }
    }

    /// Files pushed whose results [`Saver::next`] has not handed back yet.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.running.len() + self.backlog() + self.ready.len()
    }

    /// Whether every file pushed has been handed back.
    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    fn finishing_len(&self) -> usize {
        self.finishing.as_ref().map_or(0, |(jobs, _)| jobs.len())
    }

    /// Written files not final yet: waiting for a sync, syncing, waiting for the finisher,
    /// being finished.
    fn backlog(&self) -> usize {
        self.to_sync.len() + self.syncing.len() + self.waiting.len() + self.finishing_len()
    }

    /// The next file saved, skipped or failed (in the order they end, not the order pushed),
    /// after [`SaveOptions::on_file`] was told; `None` once every file pushed was handed
    /// back. Cancel-safe: dropping the future loses no result (use it in `select!`).
    pub async fn next(&mut self) -> Option<SaveResult> {
        loop {
            self.fill();
            self.start_syncing();
            self.start_finishing();
            if let Some(result) = self.ready.pop_front() {
                self.tell(&result);
                return Some(result);
            }
            if self.running.is_empty() && self.syncing.is_empty() && self.finishing.is_none() {
                return None;
            }
            match poll_fn(|cx| self.poll_step(cx)).await {
                Step::Downloaded(joined) => self.downloaded(joined),
                Step::Synced(joined) => self.synced(joined),
                Step::Finished(done) => self.finished(done),
                Step::Looked => {}
            }
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if let Some((_, handle)) = &mut self.finishing
            && let Poll::Ready(done) = Pin::new(handle).poll(cx)
        {
            return Poll::Ready(Step::Finished(done));
        }
        if let Poll::Ready(Some(joined)) = self.syncing.poll_join_next_with_id(cx) {
            return Poll::Ready(Step::Synced(joined));
        }
        if let Poll::Ready(Some(joined)) = self.running.poll_join_next_with_id(cx) {
            return Poll::Ready(Step::Downloaded(joined));
        }
        if self.leftovers.poll_looked(cx).is_ready() {
            return Poll::Ready(Step::Looked);
        }
        Poll::Pending
    }

    /// Starts queued downloads while slots are free and the finisher keeps up.
    fn fill(&mut self) {
        while self.running.len() < self.concurrency
            && self.backlog() < FINISH_BACKLOG
            && self.held < TAILS_HELD
        {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            let client = self.client.clone();
            let file = job.file.clone();
            let path = job.path.clone();
            let options = self.options.clone();
            let nothing_left = self.leftovers.nothing_left(&path);
            let handle = self.running.spawn(async move {
                if let Some(hook) = &options.on_file {
                    hook(&SaveEvent::Started {
                        file: &file,
                        path: &path,
                    });
                }
                download_one(client, file, path, options, nothing_left).await
            });
            self.in_flight.insert(handle.id(), job);
        }
    }

    /// Starts data syncs of written files while sync slots are free.
    fn start_syncing(&mut self) {
        while self.syncing.len() < SYNC_THREADS {
            let Some((job, written)) = self.to_sync.pop_front() else {
                return;
            };
            let handle = self.syncing.spawn_blocking(move || sync_written(written));
            self.syncing_jobs.insert(handle.id(), job);
        }
    }

    /// Hands the synced files to the finisher unless it is busy (they wait for the next
    /// batch then).
    fn start_finishing(&mut self) {
        if self.finishing.is_some() || self.waiting.is_empty() {
            return;
        }
        let (jobs, synced): (Vec<Job>, Vec<Synced>) =
            std::mem::take(&mut self.waiting).into_iter().unzip();
        let handle = tokio::task::spawn_blocking(move || finish_batch(synced));
        self.finishing = Some((jobs, handle));
    }

    fn downloaded(
        &mut self,
        joined: std::result::Result<(tokio::task::Id, Result<Downloaded>), JoinError>,
    ) {
        let Some(mut job) = job_of(&mut self.in_flight, &joined) else {
            return;
        };
        if let Ok((_, Ok(Downloaded::Written(written)))) = &joined {
            job.held = written.tail_len();
            self.held += job.held;
        }
        match joined {
            // Nothing to sync: the finisher appends its tail (one trip fewer per file).
            Ok((_, Ok(Downloaded::Written(written)))) if !written.durable() => {
                self.waiting.push((job, Synced::later(written)));
            }
            Ok((_, Ok(Downloaded::Written(written)))) => self.to_sync.push_back((job, written)),
            Ok((_, Ok(Downloaded::Skipped(saved)))) => self.done(job, Ok(saved)),
            Ok((_, Err(error))) => self.done(job, Err(error)),
            Err(error) => {
                let error = abnormal(&job.path, &error.to_string());
                self.done(job, Err(error));
            }
        }
    }

    fn synced(&mut self, joined: std::result::Result<(tokio::task::Id, Synced), JoinError>) {
        let Some(mut job) = job_of(&mut self.syncing_jobs, &joined) else {
            return;
        };
        // The sync wrote the tail (or failed): its memory is free.
        self.held -= std::mem::take(&mut job.held);
        match joined {
            Ok((_, synced)) => self.waiting.push((job, synced)),
            Err(error) => {
                let error = abnormal(&job.path, &error.to_string());
                self.done(job, Err(error));
            }
        }
    }

    fn finished(&mut self, done: std::result::Result<Vec<Result<SavedFile>>, JoinError>) {
        let Some((jobs, _)) = self.finishing.take() else {
            return;
        };
        match done {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    self.done(job, result);
                }
            }
            Err(error) => {
                let message = error.to_string();
                for job in jobs {
                    let error = abnormal(&job.path, &message);
                    self.done(job, Err(error));
                }
            }
        }
    }

    fn done(&mut self, job: Job, result: Result<SavedFile>) {
        let Job {
            index,
            file,
            path,
            held,
        } = job;
        self.held -= held;
        if result.is_err() {
            self.leftovers.may_be_left(&path);
        }
        self.ready.push_back(SaveResult {
            index,
            file,
            path,
            result,
        });
    }

    fn tell(&self, result: &SaveResult) {
        let Some(hook) = &self.options.on_file else {
            return;
        };
        match &result.result {
            Ok(saved) => hook(&SaveEvent::Finished(saved)),
            Err(error) => hook(&SaveEvent::Failed {
                file: &result.file,
                path: &result.path,
                error,
            }),
        }
    }
}

/// Takes the job of a finished task (a download or a sync) from the map of its task set.
fn job_of<T>(
    jobs: &mut HashMap<tokio::task::Id, Job>,
    joined: &std::result::Result<(tokio::task::Id, T), JoinError>,
) -> Option<Job> {
    let id = match joined {
        Ok((id, _)) => *id,
        Err(error) => error.id(),
    };
    jobs.remove(&id)
}

/// The error for a file whose task panicked or was cancelled (a bug, or a runtime shutting
/// down): an interruption, so its `.part` is kept.
fn abnormal(path: &Path, message: &str) -> Error {
    Error::Io {
        action: "saving",
        path: path.display().to_string(),
        source: std::io::Error::other(format!("the task ended abnormally: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::file_names;
    use crate::test_support::completed_export;
    use fhir_bulk_test_server::TestServer;
    use std::sync::{Arc, Mutex};

    /// Written files' tails held in memory past [`TAILS_HELD`] pause new downloads (the
    /// backlog's memory is bounded in bytes, not only in files); the downloads start again
    /// once the held bytes fall below it.
    #[tokio::test]
    async fn held_tails_past_the_budget_pause_new_downloads() {
        let (_server, client, export) = completed_export(
            TestServer::builder()
                .patients(4)
                .resource_types(["Patient"])
                .max_resources_per_file(1)
                .polls_before_complete(0),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut saver = Saver::new(&client, dir.path(), SaveOptions::default());
        saver.feed(&mut file_names(&export, false));
        saver.held = TAILS_HELD;
        saver.fill();
        assert_eq!(saver.running.len(), 0, "started past the budget");
        saver.held = TAILS_HELD - 1;
        saver.fill();
        assert!(!saver.running.is_empty());
        saver.held = 0;
        let mut saved = 0;
        while let Some(done) = saver.next().await {
            done.result.unwrap();
            saved += 1;
        }
        assert_eq!(saved, 4);
        assert_eq!(saver.held, 0, "every tail held was let go");
    }

    /// Fed from an iterator, the saver queues at most its window of files (twice the
    /// concurrency, at least 8) and holds at most the window, the downloads and the finisher's
    /// backlog, whatever the number of files; it saves every one once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fed_saver_keeps_a_bounded_window_and_saves_everything() {
        let (_server, client, export) = completed_export(
            TestServer::builder()
                .patients(60)
                .resource_types(["Patient", "Observation"])
                .max_resources_per_file(2)
                .polls_before_complete(0),
        )
        .await;
        let total = file_names(&export, false).count();
        assert!(total > 40, "{total} files");
        let dir = tempfile::tempdir().unwrap();
        let options =
            SaveOptions::default().with_download(DownloadOptions::default().with_concurrency(2));
        let mut saver = Saver::new(&client, dir.path(), options);
        let mut jobs = file_names(&export, false);
        let mut saved = std::collections::HashSet::new();
        loop {
            saver.feed(&mut jobs);
            // Feeding stops at the window; results of a finished batch may wait beyond it,
            // bounded by the finisher's backlog.
            assert!(saver.queue.len() <= 8, "{} queued", saver.queue.len());
            assert!(
                saver.pending() <= 8 + 2 + FINISH_BACKLOG,
                "{} pending",
                saver.pending()
            );
            let Some(done) = saver.next().await else {
                break;
            };
            assert!(saved.insert(done.result.unwrap().path), "saved twice");
        }
        assert!(
            jobs.next().is_none(),
            "None from next only once the jobs are used up"
        );
        assert_eq!(saved.len(), total);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_pushed_while_others_run_are_all_saved_once_and_final() {
        let (server, client, export) = completed_export(
            TestServer::builder()
                .patients(30)
                .resource_types(["Patient", "Observation"])
                .max_resources_per_file(10)
                .polls_before_complete(0),
        )
        .await;
        let names: Vec<_> = file_names(&export, false).collect();
        assert!(names.len() > 4, "{} files", names.len());
        let dir = tempfile::tempdir().unwrap();
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = events.clone();
        let options = SaveOptions::default()
            .with_download(DownloadOptions::default().with_concurrency(2))
            .with_on_file(move |event| {
                let text = match event {
                    SaveEvent::Started { path, .. } => format!("start {}", path.display()),
                    SaveEvent::Finished(saved) => {
                        // Told only once the file is final.
                        assert!(saved.path.exists());
                        format!("done {}", saved.path.display())
                    }
                    SaveEvent::Failed { path, .. } => format!("failed {}", path.display()),
                };
                seen.lock().unwrap().push(text);
            });
        let mut saver = Saver::new(&client, dir.path(), options);
        let (first, later) = names.split_at(2);
        for (file, name) in first {
            saver.push(file.clone(), name);
        }
        let mut results = Vec::new();
        results.push(saver.next().await.unwrap());
        for (file, name) in later {
            saver.push(file.clone(), name);
        }
        assert_eq!(saver.pending(), names.len() - 1);
        while let Some(done) = saver.next().await {
            results.push(done);
        }
        assert!(saver.is_empty());
        assert_eq!(results.len(), names.len());
        let mut indexes: Vec<usize> = results.iter().map(|r| r.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..names.len()).collect::<Vec<_>>());
        for done in &results {
            let saved = done.result.as_ref().unwrap();
            assert_eq!(saved.path, done.path);
            let expected: Vec<String> = server.file_lines(&saved.url).unwrap().collect();
            let text = std::fs::read_to_string(&saved.path).unwrap();
            assert_eq!(text.lines().collect::<Vec<_>>(), expected);
            let mut part = saved.path.as_os_str().to_owned();
            part.push(".part");
            assert!(!Path::new(&part).exists());
        }
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 2 * names.len());
        assert_eq!(
            events.iter().filter(|e| e.starts_with("done")).count(),
            names.len()
        );
    }

    #[tokio::test]
    async fn a_skipped_file_comes_back_without_a_download() {
        let client = BulkClient::builder("http://127.0.0.1:9/").build().unwrap();
        let export = crate::CompletedExport::from_manifests(
            url::Url::parse("http://127.0.0.1:9/status").unwrap(),
            vec![
                crate::manifest::Manifest::from_slice(
                    br#"{"transactionTime":"2024-01-01T00:00:00Z","request":"http://127.0.0.1:9/$export","requiresAccessToken":false,"output":[{"type":"Patient","url":"http://127.0.0.1:9/f/1"}],"error":[]}"#,
                    "manifest.json",
                )
                .unwrap(),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let options = SaveOptions::default().with_skip(|_, _| true);
        let mut saver = Saver::new(&client, dir.path(), options);
        for (file, name) in file_names(&export, false) {
            saver.push(file, name);
        }
        let done = saver.next().await.unwrap();
        assert!(done.result.unwrap().skipped);
        assert!(saver.next().await.is_none());
    }
}
