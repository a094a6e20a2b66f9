//! Downloading export files as streams of resources, lines, error outcomes or deletions.
//!
//! Every stream is `Send + 'static` with one item type, [`Record`], which tells the file and
//! line each item came from. A transfer that breaks off is resumed (see the `body` module) and every
//! line is delivered exactly once. Memory stays bounded by the chunk size and the maximum line
//! length, whatever the file size. Parsing happens as the caller pulls items, one chunk at a
//! time, so no single poll of a stream blocks the runtime for long.

pub(crate) mod body;
mod decode;
mod expiry;
mod leftovers;
mod lines;
mod save;
mod saver;
mod write_behind;

pub use save::{
    Durability, FailedFile, SaveEvent, SaveHook, SaveOptions, SaveProgress, SaveReport,
    SaveWarning, SavedFile, SkipFn, file_names,
};
pub(crate) use save::{keeps_part, sync_dir, with_suffix};
pub use saver::{SaveResult, Saver};

use crate::client::BulkClient;
use crate::error::{Error, LineErrorKind, Result};
use crate::manifest::{CompletedExport, ExportFile, FileKind, FileUrl};
use crate::ndjson::DEFAULT_MAX_LINE_LEN;
use crate::outcome::OperationOutcome;
use crate::resource::{
    DeletedResource, ParseError, check_line, deleted_resources, is_valid_of_type, parse_line,
};
use crate::transport::TokenUse;
use body::FileRequest;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use lines::{LineEvent, SourcedLine, line_stream};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// What to do with a line that cannot be used (unparsable, wrong `resourceType`, too long).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidLines {
    /// Yield the error and end the file's stream.
    #[default]
    Stop,
    /// Yield the error as an `Err` item and go on with the next line.
    Report,
}

/// How files are downloaded and read.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Files downloaded at once by the whole-export streams. Default 4.
    pub concurrency: usize,
    /// The longest line accepted; memory per file never grows past it. Default 64 MiB.
    pub max_line_bytes: usize,
    /// What an unusable line does. Default [`InvalidLines::Stop`].
    pub invalid_lines: InvalidLines,
    /// Check each line's `resourceType` against the manifest entry's `type` (not for
    /// `organizeOutputBy` files, which mix types). Default true.
    pub check_resource_type: bool,
    /// Report a file whose number of lines differs from the manifest's `count`, and stop
    /// reading a file that is clearly over it (`count` + 10% + 1,000 lines: a runaway or
    /// decompression-bomb body). For error and deleted files, whose `count` servers fill in
    /// differently (the SMART reference server puts the number of resources exported there),
    /// a smaller number is not an error: streams end normally and
    /// [`save_export`](BulkClient::save_export) reports it as a warning. Default true.
    pub check_count: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            concurrency: 4,
            max_line_bytes: DEFAULT_MAX_LINE_LEN,
            invalid_lines: InvalidLines::Stop,
            check_resource_type: true,
            check_count: true,
        }
    }
}

impl DownloadOptions {
    /// Sets [`DownloadOptions::concurrency`] (at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets [`DownloadOptions::max_line_bytes`].
    #[must_use]
    pub fn with_max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n;
        self
    }

    /// Sets [`DownloadOptions::invalid_lines`].
    #[must_use]
    pub fn with_invalid_lines(mut self, policy: InvalidLines) -> Self {
        self.invalid_lines = policy;
        self
    }

    /// Sets [`DownloadOptions::check_resource_type`].
    #[must_use]
    pub fn with_check_resource_type(mut self, check: bool) -> Self {
        self.check_resource_type = check;
        self
    }

    /// Sets [`DownloadOptions::check_count`].
    #[must_use]
    pub fn with_check_count(mut self, check: bool) -> Self {
        self.check_count = check;
        self
    }
}

/// The file an item came from.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The file URL, without its query string.
    pub url: String,
    /// Output, error or deleted.
    pub kind: FileKind,
    /// The manifest entry's `type`.
    pub resource_type: Option<String>,
    /// The manifest entry's `count`.
    pub count: Option<u64>,
    /// The `outputOrganizedBy` of its manifest page.
    pub organized_by: Option<String>,
}

/// One item of a download stream and where it came from.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Record<T> {
    /// The item: a resource, a line's bytes, an `OperationOutcome`, a deletion.
    pub resource: T,
    /// The file it came from.
    pub file: Arc<FileInfo>,
    /// The 1-based line number in that file.
    pub line: u64,
    /// The subject reference of its `organizeOutputBy` block (e.g. `Patient/p-1`). Named
    /// `block`, not `subject`, so it does not hide a `subject` field of `T` through `Deref`.
    pub block: Option<Arc<str>>,
}

impl<T> std::ops::Deref for Record<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.resource
    }
}

/// A stream of download items.
pub type RecordStream<T> = BoxStream<'static, Result<Record<T>>>;

pub(crate) fn request_for(client: &BulkClient, file: &ExportFile) -> Result<FileRequest> {
    // gs:// files: read through the Cloud Storage JSON API, always with the (Google) token.
    if crate::storage::gcs::is_gs_url(file.file.url.expose()) {
        let endpoint = client.inner.gcs_endpoint.as_ref();
        return Ok(FileRequest {
            url: crate::storage::gcs::file_url(endpoint, file.file.url.expose())?,
            token: TokenUse::Required,
            expires: file.expires,
            resume: None,
            accept: None,
        });
    }
    Ok(FileRequest {
        url: file.file.http_url()?,
        token: if file.requires_access_token {
            TokenUse::Required
        } else {
            TokenUse::Never
        },
        expires: file.expires,
        resume: None,
        accept: None,
    })
}

pub(crate) fn info_for(file: &ExportFile) -> Arc<FileInfo> {
    Arc::new(FileInfo {
        url: file.file.url.redacted(),
        kind: file.kind,
        resource_type: file.file.resource_type.clone(),
        count: file.file.count,
        organized_by: file.organized_by.clone(),
    })
}

pub(crate) fn line_error(file: &FileInfo, line: u64, err: ParseError) -> Error {
    let kind = match err {
        ParseError::UnexpectedResourceType { .. } => LineErrorKind::WrongType,
        _ => LineErrorKind::Parse,
    };
    Error::InvalidLine {
        file: file.url.clone(),
        line,
        kind,
        message: err.to_string(),
    }
}

/// What one line gives: one item (no allocation per line), or several (a deleted file's
/// Bundle).
enum Items<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> IntoIterator for Items<T> {
    type Item = T;
    type IntoIter = either::Either<std::iter::Once<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Items::One(item) => either::Either::Left(std::iter::once(item)),
            Items::Many(items) => either::Either::Right(items.into_iter()),
        }
    }
}

/// A two-way iterator, to avoid a dependency for it.
mod either {
    /// One of two iterators.
    pub(super) enum Either<L, R> {
        Left(L),
        Right(R),
    }

    impl<T, L: Iterator<Item = T>, R: Iterator<Item = T>> Iterator for Either<L, R> {
        type Item = T;

        fn next(&mut self) -> Option<T> {
            match self {
                Either::Left(l) => l.next(),
                Either::Right(r) => r.next(),
            }
        }

        fn size_hint(&self) -> (usize, Option<usize>) {
            match self {
                Either::Left(l) => l.size_hint(),
                Either::Right(r) => r.size_hint(),
            }
        }
    }
}

/// Maps each line of one file with `parse`, applying the invalid-line policy.
fn map_lines<T, F>(
    client: &BulkClient,
    file: &ExportFile,
    options: &DownloadOptions,
    parse: F,
) -> RecordStream<T>
where
    T: Send + 'static,
    F: FnMut(&FileInfo, &SourcedLine) -> std::result::Result<Items<T>, ParseError> + Send + 'static,
{
    let info = info_for(file);
    let request = match request_for(client, file) {
        Ok(request) => request,
        Err(e) => return stream::once(async move { Err(e) }).boxed(),
    };
    let mapper = Mapper {
        lines: line_stream(client.inner.clone(), request, info.clone(), options.clone()).boxed(),
        state: MapState::Lines,
        info,
        policy: options.invalid_lines,
        check_count: options.check_count,
        parse,
    };
    stream::unfold(mapper, |mut mapper| async move {
        let item = mapper.next().await?;
        Some((item, mapper))
    })
    .boxed()
}

/// Where a line mapper is.
enum MapState<T> {
    /// Reading the next line.
    Lines,
    /// Handing out the further items of one line (a deleted file's Bundle).
    Items {
        items: <Items<T> as IntoIterator>::IntoIter,
        line: u64,
        block: Option<Arc<str>>,
    },
    /// The file's stream has ended.
    Done,
}

/// One file's lines mapped to records by `parse`, under the invalid-line policy.
struct Mapper<T, F> {
    lines: BoxStream<'static, Result<LineEvent>>,
    state: MapState<T>,
    info: Arc<FileInfo>,
    policy: InvalidLines,
    check_count: bool,
    parse: F,
}

impl<T, F> Mapper<T, F>
where
    F: FnMut(&FileInfo, &SourcedLine) -> std::result::Result<Items<T>, ParseError>,
{
    fn record(&self, resource: T, line: u64, block: Option<Arc<str>>) -> Record<T> {
        Record {
            resource,
            file: self.info.clone(),
            line,
            block,
        }
    }

    /// The next item, or `None` at the end of the file.
    async fn next(&mut self) -> Option<Result<Record<T>>> {
        loop {
            match std::mem::replace(&mut self.state, MapState::Lines) {
                MapState::Done => {
                    self.state = MapState::Done;
                    return None;
                }
                MapState::Items {
                    mut items,
                    line,
                    block,
                } => {
                    if let Some(resource) = items.next() {
                        let record = self.record(resource, line, block.clone());
                        self.state = MapState::Items { items, line, block };
                        return Some(Ok(record));
                    }
                }
                MapState::Lines => {
                    if let Some(item) = self.next_line().await {
                        return Some(item);
                    }
                }
            }
        }
    }

    /// Reads one line event: an item to hand out, or `None` to go on (the state says where).
    async fn next_line(&mut self) -> Option<Result<Record<T>>> {
        let line = match self.lines.next().await {
            None => {
                self.state = MapState::Done;
                return None;
            }
            Some(Ok(LineEvent::Line(line))) => line,
            Some(Ok(LineEvent::Representation { .. })) => return None,
            Some(Ok(LineEvent::End { counted })) => {
                self.state = MapState::Done;
                return count_error(&self.info, self.check_count, counted).map(Err);
            }
            Some(Err(e @ Error::InvalidLine { .. })) => {
                if self.policy == InvalidLines::Stop {
                    self.state = MapState::Done;
                }
                return Some(Err(e));
            }
            Some(Err(e)) => {
                self.state = MapState::Done;
                return Some(Err(e));
            }
        };
        if line.header {
            return None;
        }
        let number = line.line.number();
        match (self.parse)(&self.info, &line) {
            Ok(items) => {
                let mut items = items.into_iter();
                let first = items.next()?;
                if items.size_hint().1 == Some(0) {
                    // The usual one item per line: nothing to keep.
                    return Some(Ok(self.record(first, number, line.subject)));
                }
                let record = self.record(first, number, line.subject.clone());
                self.state = MapState::Items {
                    items,
                    line: number,
                    block: line.subject,
                };
                Some(Ok(record))
            }
            Err(err) => {
                if self.policy == InvalidLines::Stop {
                    self.state = MapState::Done;
                }
                Some(Err(line_error(&self.info, number, err)))
            }
        }
    }
}

/// What a file's line count means against its manifest entry: `Err` for an output file that
/// holds a different number of lines than its `count`, `Ok(Some(..))` (a warning) for an
/// error or deleted file that does, `Ok(None)` when it matches or is not checked.
pub(crate) fn check_count(
    info: &FileInfo,
    check: bool,
    counted: u64,
) -> std::result::Result<Option<Error>, Error> {
    let Some(expected) = info.count.filter(|_| check) else {
        return Ok(None);
    };
    if expected == counted {
        return Ok(None);
    }
    let mismatch = Error::CountMismatch {
        file: info.url.clone(),
        expected,
        actual: counted,
    };
    match info.kind {
        FileKind::Output => Err(mismatch),
        FileKind::Error | FileKind::Deleted => Ok(Some(mismatch)),
    }
}

/// The error a stream ends with for its line count, if any (warnings are not errors).
fn count_error(info: &FileInfo, check: bool, counted: u64) -> Option<Error> {
    check_count(info, check, counted).err()
}

/// Checks one line is whole, valid JSON and, when `expected` is given, of that
/// `resourceType`.
pub(crate) fn check_raw_line(
    bytes: &[u8],
    expected: Option<&str>,
) -> std::result::Result<(), ParseError> {
    if let Some(expected) = expected
        && is_valid_of_type(bytes, expected)
    {
        return Ok(());
    }
    let found = check_line(bytes)?;
    if let Some(expected) = expected
        && found.as_deref() != Some(expected)
    {
        return Err(ParseError::UnexpectedResourceType {
            expected: expected.to_owned(),
            found: found.map(|f| f.into_owned()),
        });
    }
    Ok(())
}

/// Downloads files one after another per `continuesInFile` chain, chains concurrently.
fn across_files<T, F>(files: Vec<ExportFile>, concurrency: usize, one: F) -> RecordStream<T>
where
    T: Send + 'static,
    F: Fn(&ExportFile) -> RecordStream<T>,
{
    let chains: Vec<RecordStream<T>> = chains(files)
        .into_iter()
        .map(|chain| {
            stream::iter(chain.iter().map(&one).collect::<Vec<_>>())
                .flatten()
                .boxed()
        })
        .collect();
    stream::iter(chains)
        .flatten_unordered(concurrency.max(1))
        .boxed()
}

/// Groups files so that a file named by another's `continuesInFile` follows it.
fn chains(files: Vec<ExportFile>) -> Vec<Vec<ExportFile>> {
    let continued: std::collections::HashSet<FileUrl> = files
        .iter()
        .filter_map(|f| f.file.continues_in_file.clone())
        .collect();
    let mut by_url: std::collections::HashMap<FileUrl, ExportFile> = files
        .iter()
        .map(|f| (f.file.url.clone(), f.clone()))
        .collect();
    let mut out = Vec::new();
    for file in &files {
        if continued.contains(&file.file.url) {
            continue;
        }
        let mut chain = Vec::new();
        let mut next = by_url.remove(&file.file.url);
        while let Some(f) = next {
            next = f
                .file
                .continues_in_file
                .as_ref()
                .and_then(|u| by_url.remove(u));
            chain.push(f);
        }
        if !chain.is_empty() {
            out.push(chain);
        }
    }
    // Files only reachable through a cycle of continuesInFile: download them on their own.
    for file in files {
        if let Some(f) = by_url.remove(&file.file.url) {
            out.push(vec![f]);
        }
    }
    out
}

impl BulkClient {
    /// The resources of one file, parsed as `T`: [`Resource`](crate::resource::Resource) (the
    /// cheap default), your own `Deserialize` struct, or `serde_json::Value`.
    pub fn download_file<T>(&self, file: &ExportFile, options: &DownloadOptions) -> RecordStream<T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let check = options.check_resource_type && file.organized_by.is_none();
        map_lines(self, file, options, move |info, line| {
            let expected = info.resource_type.as_deref().filter(|_| check);
            Ok(Items::One(parse_line::<T>(line.line.bytes(), expected)?))
        })
    }

    /// The lines of one file, unparsed (each line's bytes without its line end). Each line is
    /// still checked whole (one JSON object, valid UTF-8, nothing after it) by a validating
    /// scan that builds no values, and its `resourceType` against the manifest's `type`.
    pub fn download_lines(
        &self,
        file: &ExportFile,
        options: &DownloadOptions,
    ) -> RecordStream<Bytes> {
        let check = options.check_resource_type && file.organized_by.is_none();
        map_lines(self, file, options, move |info, line| {
            let bytes = line.line.bytes();
            check_raw_line(bytes, info.resource_type.as_deref().filter(|_| check))?;
            Ok(Items::One(bytes.clone()))
        })
    }

    /// The resources of every output file of an export (all manifest pages), downloaded
    /// [`DownloadOptions::concurrency`] files at a time, each file's order preserved.
    pub fn download_resources<T>(
        &self,
        export: &CompletedExport,
        options: &DownloadOptions,
    ) -> RecordStream<T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let files = export.files(FileKind::Output);
        across_files(files, options.concurrency, |f| {
            self.download_file::<T>(f, options)
        })
    }

    /// The `OperationOutcome`s of the export's error (`outcome`) files. Informational and
    /// warning outcomes are there too: look at each issue's severity.
    pub fn download_outcomes(
        &self,
        export: &CompletedExport,
        options: &DownloadOptions,
    ) -> RecordStream<OperationOutcome> {
        let files = export.files(FileKind::Error);
        across_files(files, options.concurrency, |f| {
            self.download_file::<OperationOutcome>(
                f,
                &options.clone().with_check_resource_type(false),
            )
        })
    }

    /// The deleted resources listed in the export's `deleted` files (one record per
    /// `DELETE` entry of each transaction Bundle).
    pub fn download_deleted(
        &self,
        export: &CompletedExport,
        options: &DownloadOptions,
    ) -> RecordStream<DeletedResource> {
        let files = export.files(FileKind::Deleted);
        across_files(files, options.concurrency, |f| {
            map_lines(self, f, options, |_, line| {
                deleted_resources(line.line.bytes()).map(Items::Many)
            })
        })
    }
}
