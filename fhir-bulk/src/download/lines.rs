//! From a file's decoded bytes to its NDJSON lines, each exactly once: framing, the skip of
//! already-delivered lines after a restart, `organizeOutputBy` block headers, the proof that
//! the last line is whole, and the bound on a file that overruns the manifest's `count`.
//!
//! Like the byte source, the reader is a small state machine ([`State`]) driven by
//! `futures::stream::unfold`.

use super::body::{BodyEvent, FileRequest, body_stream};
use super::{DownloadOptions, FileInfo};
use crate::client::Inner;
use crate::error::{Error, LineErrorKind, Result};
use crate::ndjson::{Checkpoint, FrameError, Line, LineFramer};
use crate::resource::{block_header_reference, check_line};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use std::sync::Arc;

/// One line of a file, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct SourcedLine {
    pub(crate) line: Line,
    /// The subject of the `organizeOutputBy` block the line is in.
    pub(crate) subject: Option<Arc<str>>,
    /// The line is an `organizeOutputBy` block header (already checked whole): streams of
    /// resources skip it, a saved file keeps it.
    pub(crate) header: bool,
    /// The framer's state just after this line, and the lines counted so far (this one
    /// included): where a later run resumes after the line.
    pub(crate) after: Checkpoint,
    pub(crate) counted: u64,
}

/// What the line reader yields.
#[derive(Debug)]
pub(crate) enum LineEvent {
    /// The next line.
    Line(SourcedLine),
    /// A new representation of the file starts (its first or a full re-read): how a later
    /// process could resume it with a range request, if it can.
    Representation {
        /// The validator for `If-Range`, when identity byte ranges are offered.
        resumable: Option<reqwest::header::HeaderValue>,
    },
    /// The file ended after this many lines (block headers and bad lines included, as servers
    /// and the SMART reference client count them). The consumer checks the manifest's `count`.
    End {
        /// Lines read.
        counted: u64,
    },
}

/// Where a file's reading starts: at its beginning, or (resuming a saved `.part`) after the
/// lines already stored.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LineStart {
    /// The framer's state after the stored lines.
    pub(crate) checkpoint: Option<Checkpoint>,
    /// The body starts with a range request at the checkpoint's offset (a `206` continues
    /// there; a `200` is announced by a restart and skipped up to it).
    pub(crate) ranged: bool,
    /// Lines already counted against `count` (those stored).
    pub(crate) counted: u64,
}

/// The most lines a file whose manifest says `count` may bring before reading stops with an
/// error: clearly over, whatever small disagreement servers have about what they count.
pub(crate) fn overrun_limit(count: u64) -> u64 {
    count.saturating_add(count / 10).saturating_add(1_000)
}

/// The reason a last line without a line end is refused, or `None` when it is accepted: only a
/// body whose end its framing proved may end without a newline.
pub(crate) fn unterminated_last_line(framed: bool) -> Option<&'static str> {
    (!framed).then_some(
        "the last line has no line end and the transfer's end was not proven by its framing \
         (no Content-Length, chunked encoding or gzip end): the line may be cut",
    )
}

fn too_long(file: &FileInfo, err: &FrameError, limit: usize) -> Error {
    Error::InvalidLine {
        file: file.url.clone(),
        line: err.line(),
        kind: LineErrorKind::TooLong,
        message: format!(
            "longer than the maximum line length of {limit} bytes (raise \
             DownloadOptions::max_line_bytes if the file is right)"
        ),
    }
}

/// The lines of one file from its start. Errors of single lines (too long, a last line that
/// may be cut) are yielded and the stream goes on; any other error ends it.
pub(crate) fn line_stream(
    inner: Arc<Inner>,
    request: FileRequest,
    file: Arc<FileInfo>,
    options: DownloadOptions,
) -> impl Stream<Item = Result<LineEvent>> + Send + 'static {
    line_stream_from(inner, request, file, options, LineStart::default())
}

/// The lines of one file after `start`.
pub(crate) fn line_stream_from(
    inner: Arc<Inner>,
    request: FileRequest,
    file: Arc<FileInfo>,
    options: DownloadOptions,
    start: LineStart,
) -> impl Stream<Item = Result<LineEvent>> + Send + 'static {
    let reader = line_reader_from(inner, request, file, options, start);
    futures::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((event, reader))
    })
}

/// [`line_stream_from`] as the reader itself, for a consumer that takes every event in one
/// loop (a save): [`LineReader::next`] borrows it, where a stream moves the reader in and out
/// of a new future for every line.
pub(crate) fn line_reader_from(
    inner: Arc<Inner>,
    request: FileRequest,
    file: Arc<FileInfo>,
    options: DownloadOptions,
    start: LineStart,
) -> LineReader {
    let limit = options.max_line_bytes;
    let initial = start.checkpoint.unwrap_or(Checkpoint::START);
    let framer = if start.ranged {
        LineFramer::resume_at(initial).with_max_line_len(limit)
    } else {
        fresh_framer(initial, limit)
    };
    LineReader {
        body: body_stream(inner, request).boxed(),
        state: State::Body,
        framer,
        limit,
        organized: file.organized_by.is_some(),
        cap: file
            .count
            .filter(|_| options.check_count)
            .map(|count| (count, overrun_limit(count))),
        file,
        delivered: initial,
        subject: None,
        counted: start.counted,
        framed: false,
    }
}

/// A framer that starts at `at` (skipping up to it when that is not the file's start).
fn fresh_framer(at: Checkpoint, limit: usize) -> LineFramer {
    if at == Checkpoint::START {
        LineFramer::new().with_max_line_len(limit)
    } else {
        LineFramer::skip_to(at).with_max_line_len(limit)
    }
}

/// Where the line reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the byte source's next event.
    Body,
    /// Handing out the lines the last bytes completed; `finished`: the body has ended, so a
    /// last line without a line end comes out too, and then the end.
    Lines {
        /// The body has ended.
        finished: bool,
    },
    /// The end (or an error that ends the file) was handed out.
    Done,
}

/// The line reader of one file: the byte source, the framer, and what it has counted.
pub(crate) struct LineReader {
    body: BoxStream<'static, Result<BodyEvent>>,
    state: State,
    framer: LineFramer,
    limit: usize,
    organized: bool,
    /// The manifest's `count` and the overrun limit, when counts are checked.
    cap: Option<(u64, u64)>,
    file: Arc<FileInfo>,
    /// Where the last line handed out ended, to skip up to after a restart.
    delivered: Checkpoint,
    subject: Option<Arc<str>>,
    counted: u64,
    /// The body's end was proven by its framing.
    framed: bool,
}

impl LineReader {
    /// The next event, or `None` after the end.
    pub(crate) async fn next(&mut self) -> Option<Result<LineEvent>> {
        loop {
            if let Some(event) = self.ready() {
                return Some(event);
            }
            match self.state {
                State::Done => return None,
                State::Lines { .. } => {}
                State::Body => match self.body.next().await {
                    Some(Ok(BodyEvent::Data(data))) => {
                        self.framer.push(data);
                        self.state = State::Lines { finished: false };
                    }
                    Some(Ok(BodyEvent::Restart)) => {
                        self.framer = fresh_framer(self.delivered, self.limit);
                    }
                    Some(Ok(BodyEvent::End { framed })) => self.framed = framed,
                    Some(Ok(BodyEvent::Representation { resumable })) => {
                        return Some(Ok(LineEvent::Representation { resumable }));
                    }
                    Some(Err(e)) => {
                        self.state = State::Done;
                        return Some(Err(e));
                    }
                    None => self.state = State::Lines { finished: true },
                },
            }
        }
    }

    /// The next event the bytes already read hold, without waiting: a consumer's loop takes
    /// these first and awaits [`next`](Self::next) only when there are none (most lines of
    /// a big file come out of the last chunk read, so they cost no trip through a future).
    /// `None` when the reader needs more of the body or has ended.
    pub(crate) fn ready(&mut self) -> Option<Result<LineEvent>> {
        let State::Lines { finished } = self.state else {
            return None;
        };
        // Lines of the last pushed bytes first; then, at the end, a last line without a
        // line end.
        let mut unterminated = false;
        let next = match self.framer.next_line() {
            Some(next) => Some(next),
            None if finished => {
                unterminated = self.framer.bytes_consumed() > self.framer.complete_offset();
                self.framer.finish()
            }
            None => None,
        };
        match next {
            Some(next) => Some(self.line(next, unterminated)),
            None if finished => {
                self.state = State::Done;
                Some(Ok(LineEvent::End {
                    counted: self.counted,
                }))
            }
            None => {
                self.state = State::Body;
                None
            }
        }
    }

    /// What one framed line (or framing error) becomes.
    fn line(
        &mut self,
        next: std::result::Result<Line, FrameError>,
        unterminated: bool,
    ) -> Result<LineEvent> {
        self.delivered = self.framer.checkpoint();
        self.counted += 1;
        let line = match next {
            Ok(line) => line,
            Err(e) => return Err(too_long(&self.file, &e, self.limit)),
        };
        if let Some((expected, cap)) = self.cap
            && self.counted > cap
        {
            self.state = State::Done;
            return Err(Error::CountMismatch {
                file: self.file.url.clone(),
                expected,
                actual: self.counted,
            });
        }
        if unterminated && let Some(problem) = unterminated_last_line(self.framed) {
            return Err(Error::InvalidLine {
                file: self.file.url.clone(),
                line: line.number(),
                kind: LineErrorKind::Parse,
                message: problem.to_owned(),
            });
        }
        let mut header = false;
        if self.organized
            && let Some(reference) = block_header_reference(line.bytes())
            && check_line(line.bytes()).is_ok()
        {
            self.subject = Some(Arc::from(reference));
            header = true;
        }
        Ok(LineEvent::Line(SourcedLine {
            line,
            subject: self.subject.clone(),
            header,
            after: self.delivered,
            counted: self.counted,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrun_limit_is_clearly_over() {
        assert_eq!(overrun_limit(0), 1_000);
        assert_eq!(overrun_limit(10_000), 12_000);
        assert_eq!(overrun_limit(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_last_line_without_newline_needs_a_proven_end() {
        assert!(unterminated_last_line(true).is_none());
        assert!(
            unterminated_last_line(false)
                .unwrap()
                .contains("may be cut")
        );
    }
}
