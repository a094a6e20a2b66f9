//! From a file's decoded bytes to its NDJSON lines, each exactly once: framing, the skip of
//! already-delivered lines after a restart, `organizeOutputBy` block headers, the proof that
//! the last line is whole, and the bound on a file that overruns the manifest's `count`.

use super::body::{BodyEvent, FileRequest, body_stream};
use super::{DownloadOptions, FileInfo};
use crate::client::Inner;
use crate::error::{Error, LineErrorKind, Result};
use crate::ndjson::{Checkpoint, FrameError, Line, LineFramer};
use crate::resource::{block_header_reference, check_line};
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
    async_stream::stream! {
        let limit = options.max_line_bytes;
        let organized = file.organized_by.is_some();
        let initial = start.checkpoint.unwrap_or(Checkpoint::START);
        let fresh = |at: Checkpoint| {
            if at == Checkpoint::START {
                LineFramer::new().with_max_line_len(limit)
            } else {
                LineFramer::skip_to(at).with_max_line_len(limit)
            }
        };
        let mut framer = if start.ranged {
            LineFramer::resume_at(initial).with_max_line_len(limit)
        } else {
            fresh(initial)
        };
        // Where the last line handed out ended, to skip up to after a restart.
        let mut delivered = initial;
        let mut subject: Option<Arc<str>> = None;
        let mut counted: u64 = start.counted;
        let cap = file
            .count
            .filter(|_| options.check_count)
            .map(|count| (count, overrun_limit(count)));
        let body = body_stream(inner, request);
        futures::pin_mut!(body);
        let mut finished = false;
        let mut framed = false;
        while !finished {
            match body.next().await {
                Some(Ok(BodyEvent::Data(data))) => framer.push(data),
                Some(Ok(BodyEvent::Restart)) => {
                    framer = fresh(delivered);
                    continue;
                }
                Some(Ok(BodyEvent::End { framed: proven })) => {
                    framed = proven;
                    continue;
                }
                Some(Ok(BodyEvent::Representation { resumable })) => {
                    yield Ok(LineEvent::Representation { resumable });
                    continue;
                }
                Some(Err(e)) => {
                    yield Err(e);
                    return;
                }
                None => finished = true,
            }
            loop {
                // Lines of the last pushed bytes first; then, at the end, a last line without
                // a line end.
                let mut unterminated = false;
                let next = match framer.next_line() {
                    Some(next) => Some(next),
                    None if finished => {
                        unterminated = framer.bytes_consumed() > framer.complete_offset();
                        framer.finish()
                    }
                    None => None,
                };
                let Some(next) = next else { break };
                match next {
                    Ok(line) => {
                        delivered = framer.checkpoint();
                        counted += 1;
                        if let Some((expected, cap)) = cap
                            && counted > cap
                        {
                            yield Err(Error::CountMismatch {
                                file: file.url.clone(),
                                expected,
                                actual: counted,
                            });
                            return;
                        }
                        if unterminated && let Some(problem) = unterminated_last_line(framed) {
                            yield Err(Error::InvalidLine {
                                file: file.url.clone(),
                                line: line.number(),
                                kind: LineErrorKind::Parse,
                                message: problem.to_owned(),
                            });
                            continue;
                        }
                        let mut header = false;
                        if organized
                            && let Some(reference) = block_header_reference(line.bytes())
                            && check_line(line.bytes()).is_ok()
                        {
                            subject = Some(Arc::from(reference));
                            header = true;
                        }
                        yield Ok(LineEvent::Line(SourcedLine {
                            line,
                            subject: subject.clone(),
                            header,
                            after: delivered,
                            counted,
                        }));
                    }
                    Err(e) => {
                        delivered = framer.checkpoint();
                        counted += 1;
                        yield Err(too_long(&file, &e, limit));
                    }
                }
            }
        }
        yield Ok(LineEvent::End { counted });
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
