//! From a file's decoded bytes to its NDJSON lines, each exactly once: framing, the skip of
//! already-delivered lines after a restart, `organizeOutputBy` block headers, and the
//! manifest's `count`.

use super::body::{BodyEvent, FileRequest, body_stream};
use super::{DownloadOptions, FileInfo};
use crate::client::Inner;
use crate::error::{Error, LineErrorKind, Result};
use crate::ndjson::{Checkpoint, FrameError, Line, LineFramer};
use crate::resource::block_header_reference;
use futures::{Stream, StreamExt};
use std::sync::Arc;

/// One line of a file, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct SourcedLine {
    pub(crate) line: Line,
    /// The subject of the `organizeOutputBy` block the line is in.
    pub(crate) subject: Option<Arc<str>>,
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

/// The lines of one file. Errors of single lines (too long) are yielded and the stream goes
/// on; any other error ends it.
pub(crate) fn line_stream(
    inner: Arc<Inner>,
    request: FileRequest,
    file: Arc<FileInfo>,
    options: DownloadOptions,
) -> impl Stream<Item = Result<SourcedLine>> + Send + 'static {
    async_stream::stream! {
        let limit = options.max_line_bytes;
        let organized = file.organized_by.is_some();
        let mut framer = LineFramer::new().with_max_line_len(limit);
        // Where the last line handed out ended, to skip up to after a restart.
        let mut delivered = Checkpoint::START;
        let mut subject: Option<Arc<str>> = None;
        // Lines counted against the manifest's `count`: block headers too, as servers (and
        // the SMART reference client) count them.
        let mut counted: u64 = 0;
        let body = body_stream(inner, request);
        futures::pin_mut!(body);
        let mut finished = false;
        while !finished {
            match body.next().await {
                Some(Ok(BodyEvent::Data(data))) => framer.push(data),
                Some(Ok(BodyEvent::Restart)) => {
                    framer = LineFramer::skip_to(delivered).with_max_line_len(limit);
                    continue;
                }
                Some(Err(e)) => {
                    yield Err(e);
                    return;
                }
                None => finished = true,
            }
            loop {
                let next = if finished { framer.finish() } else { framer.next_line() };
                let Some(next) = next else { break };
                match next {
                    Ok(line) => {
                        delivered = framer.checkpoint();
                        counted += 1;
                        if organized
                            && let Some(reference) = block_header_reference(line.bytes()) {
                                subject = Some(Arc::from(reference));
                                continue;
                            }
                        yield Ok(SourcedLine { line, subject: subject.clone() });
                    }
                    Err(e) => {
                        delivered = framer.checkpoint();
                        yield Err(too_long(&file, &e, limit));
                    }
                }
            }
        }
        if let Some(expected) = file.count.filter(|_| options.check_count)
            && expected != counted {
                yield Err(Error::CountMismatch {
                    file: file.url.clone(),
                    expected,
                    actual: counted,
                });
            }
    }
}
