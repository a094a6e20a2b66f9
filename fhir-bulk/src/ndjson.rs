//! Line framing for NDJSON export files.
//!
//! A [`LineFramer`] is fed byte chunks as they arrive from the network (or a
//! file) and hands out complete [`Line`]s. It does no I/O and never parses
//! JSON: invalid UTF-8 or JSON is detected later, when a line is parsed (see
//! [`crate::resource`]).
//!
//! Framing rules:
//!
//! * lines end with LF or CRLF; the terminator (and a single CR before the
//!   LF) is not part of the line;
//! * blank lines (empty, or only ASCII whitespace) are skipped but still count
//!   for line numbers;
//! * a missing final newline is tolerated: [`LineFramer::finish`] hands out
//!   the last line (a lone trailing CR at the end of the input is dropped too);
//! * a UTF-8 byte order mark at the very start of the file is dropped, even
//!   when it arrives split over several chunks;
//! * line numbers are 1-based physical line numbers in the file, and every
//!   line knows the byte offset of its first byte in the file;
//! * a line longer than the configured maximum (64 MiB by default, counted
//!   without the terminator) is reported as [`FrameError::LineTooLong`]; the
//!   framer never buffers more than `max_line_len + 1` bytes of a line.
//!
//! When a whole line sits inside one pushed [`Bytes`] chunk, the line is a
//! zero-copy slice of that chunk; lines that span chunks are copied once.
//!
//! ```
//! use fhir_bulk::ndjson::LineFramer;
//!
//! let mut framer = LineFramer::new();
//! framer.push(&b"{\"resourceType\":\"Patient\"}\r\n\n{\"resourceType\":"[..]);
//! let first = framer.next_line().unwrap().unwrap();
//! assert_eq!(&first[..], b"{\"resourceType\":\"Patient\"}");
//! assert_eq!((first.number(), first.offset()), (1, 0));
//! // The rest of line 3 has not arrived yet.
//! assert!(framer.next_line().is_none());
//!
//! framer.push(&b"\"Patient\"}"[..]); // no final newline
//! assert!(framer.next_line().is_none());
//! let last = framer.finish().unwrap().unwrap();
//! assert_eq!(&last[..], b"{\"resourceType\":\"Patient\"}");
//! assert_eq!((last.number(), last.offset()), (3, 29));
//! assert!(framer.finish().is_none());
//! ```
//!
//! # Resuming a broken transfer
//!
//! [`LineFramer::checkpoint`] describes how far the framer got: the byte
//! offset just past the last complete line, the number of the line that
//! starts there, and how many lines have been handed out. A downloader whose
//! transfer breaks can either
//!
//! * ask the server for the rest of the file from `checkpoint.offset` (an HTTP
//!   `Range` request) and frame it with [`LineFramer::resume_at`], or
//! * download the whole file again and frame it with
//!   [`LineFramer::skip_to`], which silently drops every line before
//!   `checkpoint.line`.
//!
//! Either way the lines handed out afterwards carry the same numbers and
//! offsets as in an uninterrupted run, and nothing is handed out twice.
//!
//! ```
//! use fhir_bulk::ndjson::LineFramer;
//!
//! let file = b"{\"a\":1}\n\n{\"b\":2}\n{\"c\":3}\n";
//! let mut framer = LineFramer::new();
//! framer.push(&file[..12]); // the transfer breaks in the middle of line 3
//! assert_eq!(framer.next_line().unwrap().unwrap().number(), 1);
//! assert!(framer.next_line().is_none());
//! let checkpoint = framer.checkpoint();
//! assert_eq!((checkpoint.offset, checkpoint.line, checkpoint.lines_delivered), (9, 3, 1));
//!
//! // Either with a range request for the rest of the file ...
//! let mut resumed = LineFramer::resume_at(checkpoint);
//! resumed.push(&file[9..]);
//! let line = resumed.next_line().unwrap().unwrap();
//! assert_eq!((&line[..], line.number(), line.offset()), (&b"{\"b\":2}"[..], 3, 9));
//!
//! // ... or by reading the whole file again.
//! let mut again = LineFramer::skip_to(checkpoint);
//! again.push(&file[..]);
//! let line = again.next_line().unwrap().unwrap();
//! assert_eq!((&line[..], line.number(), line.offset()), (&b"{\"b\":2}"[..], 3, 9));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// The default maximum length of a line: 64 MiB.
pub const DEFAULT_MAX_LINE_LEN: usize = 64 * 1024 * 1024;

/// The UTF-8 byte order mark.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Smallest allocation made for a line that spans chunks.
const MIN_PARTIAL_CAPACITY: usize = 8 * 1024;

/// One non-blank line of an NDJSON file, without its line terminator.
///
/// Dereferences to `[u8]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Line {
    bytes: Bytes,
    number: u64,
    offset: u64,
}

impl Line {
    /// Creates a line from its bytes (without terminator), its 1-based line
    /// number and the byte offset of its first byte in the file.
    pub fn new(bytes: impl Into<Bytes>, number: u64, offset: u64) -> Self {
        Self {
            bytes: bytes.into(),
            number,
            offset,
        }
    }

    /// The bytes of the line, without the line terminator.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Takes the bytes of the line.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The 1-based physical line number in the file (blank lines count).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The byte offset of the first byte of the line in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Deref for Line {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for Line {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// An error found while framing lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A line is longer than the framer's maximum line length.
    ///
    /// The framer stops buffering the line. If the caller keeps calling
    /// [`LineFramer::next_line`] (or [`LineFramer::finish`]), the rest of the
    /// line is discarded and framing continues with the next line; to give up
    /// instead, simply stop using the framer.
    #[error("line {line} (starting at byte {offset}) is longer than the limit of {limit} bytes")]
    LineTooLong {
        /// The 1-based line number.
        line: u64,
        /// The byte offset of the start of the line in the file.
        offset: u64,
        /// The maximum line length in bytes.
        limit: usize,
    },
}

impl FrameError {
    /// The 1-based number of the line the error is about.
    pub fn line(&self) -> u64 {
        match self {
            FrameError::LineTooLong { line, .. } => *line,
        }
    }
}

/// How far a [`LineFramer`] got through a file: enough to resume a broken
/// transfer without losing or repeating lines.
///
/// See [`LineFramer::checkpoint`], [`LineFramer::resume_at`] and
/// [`LineFramer::skip_to`]. The fields are public so that a checkpoint can be
/// stored anywhere.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// Byte offset in the file just past the terminator of the last complete
    /// line (delivered, blank or discarded), or just past the byte order
    /// mark, or 0 at the start. It always sits at the start of a line (or at
    /// the end of the file).
    pub offset: u64,
    /// The 1-based number of the line that starts at `offset`.
    pub line: u64,
    /// The number of non-blank lines before `offset`: lines handed out as
    /// `Ok` plus lines reported as [`FrameError::LineTooLong`].
    pub lines_delivered: u64,
}

impl Checkpoint {
    /// A checkpoint from its parts, e.g. one stored earlier (see the fields).
    pub fn new(offset: u64, line: u64, lines_delivered: u64) -> Checkpoint {
        Checkpoint {
            offset,
            line,
            lines_delivered,
        }
    }

    /// The start of a file: offset 0, line 1, nothing delivered.
    pub const START: Checkpoint = Checkpoint {
        offset: 0,
        line: 1,
        lines_delivered: 0,
    };
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self::START
    }
}

/// Progress of the byte order mark check at the start of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// `n` bytes of the BOM have been seen (and consumed) so far.
    Checking(usize),
    /// Done: either the BOM was dropped or the file does not start with one.
    Done,
}

/// Splits a stream of byte chunks into NDJSON lines.
///
/// Feed chunks with [`push`](Self::push) and take lines with
/// [`next_line`](Self::next_line) until it returns `None`; at the end of the
/// input call [`finish`](Self::finish) until it returns `None` to get the
/// remaining lines, including a last line without newline. See the
/// [module documentation](self) for the framing rules and an example.
///
/// Pushed chunks are kept (not copied) until they have been framed, so drain
/// `next_line` before pushing more if memory matters. Apart from those
/// chunks, the framer holds at most one partial line of at most
/// `max_line_len + 1` bytes.
pub struct LineFramer {
    max_line_len: usize,
    /// Chunks pushed but not yet examined (the front one may be partly
    /// examined: examined bytes are split off it).
    pending: VecDeque<Bytes>,
    /// Bytes of the current line that arrived in earlier chunks. Never
    /// contains a LF and never holds more than `max_line_len + 1` bytes.
    partial: Vec<u8>,
    /// Absolute file offset of the next byte to examine.
    pos: u64,
    /// Absolute file offset of the first byte of the current line.
    line_start: u64,
    /// Number of the current line.
    line_number: u64,
    /// Non-blank lines completed so far (see [`Checkpoint::lines_delivered`]).
    lines_delivered: u64,
    /// Lines numbered below this are discarded without a look.
    skip_before: u64,
    /// The current line was reported as too long and is being discarded.
    overlong: bool,
    bom: Bom,
}

impl fmt::Debug for LineFramer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineFramer")
            .field("max_line_len", &self.max_line_len)
            .field("pending_len", &self.pending_len())
            .field("partial_len", &self.partial.len())
            .field("pos", &self.pos)
            .field("line_start", &self.line_start)
            .field("line_number", &self.line_number)
            .field("lines_delivered", &self.lines_delivered)
            .field("skip_before", &self.skip_before)
            .field("overlong", &self.overlong)
            .field("bom", &self.bom)
            .finish()
    }
}

impl Default for LineFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineFramer {
    /// A framer for a whole file, with the default maximum line length
    /// ([`DEFAULT_MAX_LINE_LEN`]).
    pub fn new() -> Self {
        Self::resume_at(Checkpoint::START)
    }

    /// A framer for the part of a file that starts at `checkpoint.offset`
    /// (for example the body of an HTTP `Range` request): the first byte
    /// pushed is taken to be at that offset and the first line is numbered
    /// `checkpoint.line`. A byte order mark is only looked for when the
    /// offset is 0.
    ///
    /// A `line` of 0 is treated as 1.
    pub fn resume_at(checkpoint: Checkpoint) -> Self {
        Self {
            max_line_len: DEFAULT_MAX_LINE_LEN,
            pending: VecDeque::new(),
            partial: Vec::new(),
            pos: checkpoint.offset,
            line_start: checkpoint.offset,
            line_number: checkpoint.line.max(1),
            lines_delivered: checkpoint.lines_delivered,
            skip_before: 0,
            overlong: false,
            bom: if checkpoint.offset == 0 {
                Bom::Checking(0)
            } else {
                Bom::Done
            },
        }
    }

    /// A framer for a whole file that silently drops every line numbered
    /// below `checkpoint.line` (blank, overlong or not) and then carries on
    /// as if it had been resumed from `checkpoint`:
    /// [`lines_delivered`](Self::lines_delivered) starts at
    /// `checkpoint.lines_delivered`.
    ///
    /// Use it to re-read a file from the start after a broken transfer when
    /// the server does not support range requests. Dropped lines are not
    /// buffered, whatever their length. The framer does not check that the
    /// file is the same as before.
    pub fn skip_to(checkpoint: Checkpoint) -> Self {
        let mut framer = Self::resume_at(Checkpoint::START);
        framer.skip_before = checkpoint.line;
        framer.lines_delivered = checkpoint.lines_delivered;
        framer
    }

    /// Sets the maximum length of a line in bytes, not counting the line
    /// terminator (LF or CRLF). A line of exactly `max_line_len` bytes is
    /// accepted; a longer one is reported as [`FrameError::LineTooLong`].
    ///
    /// ```
    /// use fhir_bulk::ndjson::{FrameError, LineFramer};
    ///
    /// let mut framer = LineFramer::new().with_max_line_len(4);
    /// framer.push(&b"1234\r\n12345\n{}\n"[..]);
    /// assert_eq!(&framer.next_line().unwrap().unwrap()[..], b"1234");
    /// assert_eq!(
    ///     framer.next_line().unwrap().unwrap_err(),
    ///     FrameError::LineTooLong { line: 2, offset: 6, limit: 4 },
    /// );
    /// // Carry on: the overlong line is skipped.
    /// assert_eq!(framer.next_line().unwrap().unwrap().number(), 3);
    /// ```
    pub fn with_max_line_len(mut self, max_line_len: usize) -> Self {
        self.max_line_len = max_line_len;
        self
    }

    /// The maximum length of a line in bytes (without terminator).
    pub fn max_line_len(&self) -> usize {
        self.max_line_len
    }

    /// Adds a chunk of input. Cheap: the chunk is kept, not copied; lines
    /// that lie entirely inside it are handed out as slices of it.
    ///
    /// Pushing after [`finish`](Self::finish) has handed out a last line
    /// without newline starts a new line.
    pub fn push(&mut self, chunk: impl Into<Bytes>) {
        let chunk = chunk.into();
        if !chunk.is_empty() {
            self.pending.push_back(chunk);
        }
    }

    /// Adds a chunk of input given as a borrowed slice (which is copied).
    pub fn push_slice(&mut self, chunk: &[u8]) {
        if !chunk.is_empty() {
            self.pending.push_back(Bytes::copy_from_slice(chunk));
        }
    }

    /// The next complete non-blank line, or an error for an overlong line,
    /// or `None` when more input is needed.
    ///
    /// After an error, calling `next_line` again discards the rest of the
    /// overlong line and continues with the next one.
    pub fn next_line(&mut self) -> Option<Result<Line, FrameError>> {
        self.advance(false)
    }

    /// Like [`next_line`](Self::next_line), but treats the input pushed so
    /// far as the whole rest of the file: once the pushed chunks hold no more
    /// complete lines, a last line without newline is handed out. Call it
    /// until it returns `None` after the last chunk.
    pub fn finish(&mut self) -> Option<Result<Line, FrameError>> {
        self.advance(true)
    }

    /// Pushes `data` as the whole rest of the input and returns an iterator
    /// over the lines (calling [`finish`](Self::finish) until it returns
    /// `None`).
    ///
    /// ```
    /// use fhir_bulk::ndjson::LineFramer;
    ///
    /// let numbers: Vec<u64> = LineFramer::new()
    ///     .into_lines(&b"{}\n\n{}"[..])
    ///     .map(|line| line.unwrap().number())
    ///     .collect();
    /// assert_eq!(numbers, [1, 3]);
    /// ```
    pub fn into_lines(mut self, data: impl Into<Bytes>) -> Lines {
        self.push(data);
        Lines { framer: self }
    }

    /// Where the framer stands: the offset just past the last complete line,
    /// the number of the line starting there and the lines delivered so far.
    ///
    /// Pass it to [`resume_at`](Self::resume_at) or
    /// [`skip_to`](Self::skip_to) to continue after a broken transfer.
    ///
    /// While an overlong line is being discarded (after
    /// [`FrameError::LineTooLong`] was returned but before its end was seen),
    /// the checkpoint still points at the start of that line, so a resumed
    /// framer reports it again.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            offset: self.complete_offset(),
            line: self.line_number,
            lines_delivered: self.lines_delivered,
        }
    }

    /// The byte offset in the file just past the terminator of the last
    /// complete line (delivered, blank or discarded). It always sits at the
    /// start of a line.
    pub fn complete_offset(&self) -> u64 {
        self.line_start
    }

    /// The number of the line that starts at
    /// [`complete_offset`](Self::complete_offset).
    pub fn next_line_number(&self) -> u64 {
        self.line_number
    }

    /// Non-blank lines completed so far: lines handed out as `Ok` plus
    /// overlong lines reported as errors, including those counted by the
    /// checkpoint this framer was resumed from.
    pub fn lines_delivered(&self) -> u64 {
        self.lines_delivered
    }

    /// The absolute offset in the file of the next byte to examine: the
    /// starting offset plus every byte examined so far, including bytes of an
    /// unfinished line held in the framer's buffer. Bytes pushed but not yet
    /// examined are counted by [`pending_len`](Self::pending_len).
    pub fn bytes_consumed(&self) -> u64 {
        self.pos
    }

    /// Bytes pushed but not yet examined.
    pub fn pending_len(&self) -> usize {
        self.pending.iter().map(Bytes::len).sum()
    }

    fn advance(&mut self, eof: bool) -> Option<Result<Line, FrameError>> {
        loop {
            if let Bom::Checking(matched) = self.bom {
                if self.pending.is_empty() && !eof {
                    return None;
                }
                self.check_bom(matched, eof);
                continue;
            }
            let Some(chunk) = self.pending.front_mut() else {
                if eof && self.pos > self.line_start {
                    // A last line without newline.
                    match self.end_line(Bytes::new()) {
                        Some(item) => return Some(item),
                        None => continue,
                    }
                }
                return None;
            };
            // memchr: about six times the speed of a byte loop (0.1 instead of 0.7
            // CPU-seconds per GB).
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    let mut content = chunk.split_to(i + 1);
                    if chunk.is_empty() {
                        self.pending.pop_front();
                    }
                    content.truncate(i);
                    self.pos += (i + 1) as u64;
                    if let Some(item) = self.end_line(content) {
                        return Some(item);
                    }
                }
                None => {
                    // The whole chunk belongs to the current line.
                    let Some(chunk) = self.pending.pop_front() else {
                        continue;
                    };
                    self.pos += chunk.len() as u64;
                    if self.overlong || self.line_number < self.skip_before {
                        continue;
                    }
                    // Allow one byte more than the limit: it may be the CR of
                    // a CRLF.
                    let new_len = self.partial.len().saturating_add(chunk.len());
                    if new_len > self.max_line_len.saturating_add(1) {
                        self.overlong = true;
                        self.release_partial();
                        return Some(Err(self.too_long(self.line_number, self.line_start)));
                    }
                    self.append_partial(&chunk);
                }
            }
        }
    }

    /// Looks for a byte order mark at the start of the file; `matched` bytes
    /// of it have already been consumed.
    fn check_bom(&mut self, matched: usize, eof: bool) {
        let rest = BOM.get(matched..).unwrap_or_default();
        let Some(chunk) = self.pending.front_mut() else {
            if eof {
                // The input ended inside what looked like a BOM: those bytes
                // are the content of the (only) line.
                self.give_back_bom(matched);
            }
            return;
        };
        let n = rest.len().min(chunk.len());
        if chunk.get(..n) == rest.get(..n) {
            let _ = chunk.split_to(n);
            if chunk.is_empty() {
                self.pending.pop_front();
            }
            self.pos += n as u64;
            if matched + n == BOM.len() {
                self.bom = Bom::Done;
                self.line_start = self.pos;
            } else {
                self.bom = Bom::Checking(matched + n);
            }
        } else {
            self.give_back_bom(matched);
        }
    }

    /// The first `matched` bytes of the file looked like a BOM but are not
    /// one: they belong to the first line.
    fn give_back_bom(&mut self, matched: usize) {
        self.bom = Bom::Done;
        if self.line_number >= self.skip_before {
            self.append_partial(BOM.get(..matched).unwrap_or_default());
        }
    }

    /// Ends the current line, whose last bytes (after `partial`, before the
    /// LF) are `tail`. Returns what to hand out, if anything.
    fn end_line(&mut self, tail: Bytes) -> Option<Result<Line, FrameError>> {
        let number = self.line_number;
        let offset = self.line_start;
        self.line_number += 1;
        self.line_start = self.pos;

        if self.overlong {
            // The error was reported when the line grew too long.
            self.overlong = false;
            self.lines_delivered += 1;
            return None;
        }
        if number < self.skip_before {
            return None;
        }

        let total = self.partial.len().saturating_add(tail.len());
        let last = tail.last().or(self.partial.last()).copied();
        let len = if last == Some(b'\r') {
            total - 1
        } else {
            total
        };
        if len > self.max_line_len {
            self.lines_delivered += 1;
            self.release_partial();
            return Some(Err(self.too_long(number, offset)));
        }

        let bytes = if self.partial.is_empty() {
            let mut bytes = tail;
            bytes.truncate(len);
            bytes
        } else {
            self.partial.reserve_exact(tail.len());
            self.partial.extend_from_slice(&tail);
            self.partial.truncate(len);
            Bytes::from(std::mem::take(&mut self.partial))
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        self.lines_delivered += 1;
        Some(Ok(Line {
            bytes,
            number,
            offset,
        }))
    }

    /// Appends to the partial line, growing the buffer geometrically but
    /// never past `max_line_len + 1` bytes of capacity (callers check the
    /// length first).
    fn append_partial(&mut self, data: &[u8]) {
        let new_len = self.partial.len() + data.len();
        if new_len > self.partial.capacity() {
            let cap_limit = self.max_line_len.saturating_add(1);
            let target = self
                .partial
                .capacity()
                .saturating_mul(2)
                .max(MIN_PARTIAL_CAPACITY)
                .min(cap_limit)
                .max(new_len);
            self.partial.reserve_exact(target - self.partial.len());
        }
        self.partial.extend_from_slice(data);
    }

    /// Drops the partial line and its memory.
    fn release_partial(&mut self) {
        self.partial = Vec::new();
    }

    fn too_long(&self, line: u64, offset: u64) -> FrameError {
        FrameError::LineTooLong {
            line,
            offset,
            limit: self.max_line_len,
        }
    }
}

/// Iterator over the lines of a complete input, returned by
/// [`LineFramer::into_lines`].
#[derive(Debug)]
pub struct Lines {
    framer: LineFramer,
}

impl Lines {
    /// The framer, for its counters.
    pub fn framer(&self) -> &LineFramer {
        &self.framer
    }
}

impl Iterator for Lines {
    type Item = Result<Line, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.framer.finish()
    }
}

#[cfg(test)]
mod tests;
