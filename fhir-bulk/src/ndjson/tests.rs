use super::*;
use proptest::prelude::*;

/// What the framer hands out, in a comparable form.
type Item = Result<(Vec<u8>, u64, u64), FrameError>;

fn item(result: Result<Line, FrameError>) -> Item {
    result.map(|line| (line.bytes().to_vec(), line.number(), line.offset()))
}

fn ok(content: &[u8], number: u64, offset: u64) -> Item {
    Ok((content.to_vec(), number, offset))
}

fn too_long(line: u64, offset: u64, limit: usize) -> Item {
    Err(FrameError::LineTooLong {
        line,
        offset,
        limit,
    })
}

/// Pushes the chunks one by one, draining after each, then finishes. Checks
/// the memory bound on the way.
fn run(mut framer: LineFramer, chunks: &[&[u8]]) -> (Vec<Item>, LineFramer) {
    let mut out = Vec::new();
    for chunk in chunks {
        framer.push(Bytes::copy_from_slice(chunk));
        while let Some(result) = framer.next_line() {
            out.push(item(result));
            assert_memory_bound(&framer);
        }
        assert_memory_bound(&framer);
    }
    while let Some(result) = framer.finish() {
        out.push(item(result));
    }
    assert!(framer.finish().is_none());
    (out, framer)
}

fn assert_memory_bound(framer: &LineFramer) {
    assert!(
        framer.partial.capacity() <= framer.max_line_len.saturating_add(1),
        "partial buffer capacity {} over limit {}",
        framer.partial.capacity(),
        framer.max_line_len
    );
}

fn frame(chunks: &[&[u8]]) -> Vec<Item> {
    run(LineFramer::new(), chunks).0
}

fn frame_limit(limit: usize, chunks: &[&[u8]]) -> Vec<Item> {
    run(LineFramer::new().with_max_line_len(limit), chunks).0
}

#[test]
fn lf_crlf_blank_lines_numbers_and_offsets() {
    let data = b"{\"a\":1}\n\r\n{\"b\":2}\r\n  \t \n\n{\"c\":3}\n";
    assert_eq!(
        frame(&[data]),
        [
            ok(b"{\"a\":1}", 1, 0),
            ok(b"{\"b\":2}", 3, 10),
            ok(b"{\"c\":3}", 6, 25),
        ]
    );
}

#[test]
fn only_one_cr_is_stripped_and_inner_cr_is_kept() {
    assert_eq!(
        frame(&[b"a\r\r\nb\rc\n"]),
        [ok(b"a\r", 1, 0), ok(b"b\rc", 2, 4)]
    );
}

#[test]
fn missing_final_newline() {
    assert_eq!(
        frame(&[b"{}\n{\"x\":1}"]),
        [ok(b"{}", 1, 0), ok(b"{\"x\":1}", 2, 3)]
    );
    // A trailing blank line without newline is still blank.
    assert_eq!(frame(&[b"{}\n  "]), [ok(b"{}", 1, 0)]);
    // A lone CR at the very end is dropped like a CRLF.
    assert_eq!(frame(&[b"{}\r"]), [ok(b"{}", 1, 0)]);
    assert_eq!(frame(&[b"{}\r\n{}\r"]), [ok(b"{}", 1, 0), ok(b"{}", 2, 4)]);
}

#[test]
fn next_line_does_not_hand_out_unterminated_line() {
    let mut framer = LineFramer::new();
    framer.push(&b"{}"[..]);
    assert!(framer.next_line().is_none());
    assert_eq!(framer.bytes_consumed(), 2);
    assert_eq!(framer.complete_offset(), 0);
    assert_eq!(item(framer.finish().unwrap()), ok(b"{}", 1, 0));
    assert!(framer.finish().is_none());
    assert!(framer.next_line().is_none());
    assert_eq!(framer.complete_offset(), 2);
    assert_eq!(framer.next_line_number(), 2);
}

#[test]
fn empty_input() {
    assert_eq!(frame(&[]), []);
    assert_eq!(frame(&[b""]), []);
    assert_eq!(frame(&[b"\n\n\r\n"]), []);
}

#[test]
fn finish_hands_out_all_pending_lines() {
    let mut framer = LineFramer::new();
    framer.push(&b"1\n2\n3"[..]);
    let all: Vec<_> = std::iter::from_fn(|| framer.finish()).map(item).collect();
    assert_eq!(all, [ok(b"1", 1, 0), ok(b"2", 2, 2), ok(b"3", 3, 4)]);
}

#[test]
fn push_after_finish_starts_a_new_line() {
    let mut framer = LineFramer::new();
    framer.push(&b"1"[..]);
    assert_eq!(item(framer.finish().unwrap()), ok(b"1", 1, 0));
    framer.push(&b"2\n"[..]);
    assert_eq!(item(framer.next_line().unwrap()), ok(b"2", 2, 1));
}

#[test]
fn cr_at_end_of_chunk_lf_at_start_of_next() {
    assert_eq!(
        frame(&[b"{\"a\":1}\r", b"\n{\"b\":2}\r", b"\n"]),
        [ok(b"{\"a\":1}", 1, 0), ok(b"{\"b\":2}", 2, 9)]
    );
    // A CR alone in a chunk.
    assert_eq!(
        frame(&[b"{}", b"\r", b"\n", b"{}"]),
        [ok(b"{}", 1, 0), ok(b"{}", 2, 4)]
    );
}

#[test]
fn bom_is_stripped() {
    let data = b"\xEF\xBB\xBF{\"a\":1}\n{\"b\":2}\n";
    let expected = [ok(b"{\"a\":1}", 1, 3), ok(b"{\"b\":2}", 2, 11)];
    assert_eq!(frame(&[data]), expected);
    // Split across chunks in every possible way.
    for cut1 in 0..=5 {
        for cut2 in cut1..=5 {
            let chunks = [&data[..cut1], &data[cut1..cut2], &data[cut2..]];
            assert_eq!(frame(&chunks), expected, "cuts {cut1} {cut2}");
        }
    }
    // Byte by byte.
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(frame(&bytes), expected);
}

#[test]
fn bom_followed_by_blank_line_or_nothing() {
    assert_eq!(frame(&[b"\xEF\xBB\xBF"]), []);
    assert_eq!(frame(&[b"\xEF", b"\xBB\xBF\n{}"]), [ok(b"{}", 2, 4)]);
}

#[test]
fn partial_bom_is_content() {
    // Looks like a BOM at first, but is not one.
    assert_eq!(frame(&[b"\xEF\xBBx\n"]), [ok(b"\xEF\xBBx", 1, 0)]);
    assert_eq!(frame(&[b"\xEF", b"\xBB", b"x\n"]), [ok(b"\xEF\xBBx", 1, 0)]);
    assert_eq!(frame(&[b"\xEF", b"\n"]), [ok(b"\xEF", 1, 0)]);
    // The input ends inside the would-be BOM.
    assert_eq!(frame(&[b"\xEF", b"\xBB"]), [ok(b"\xEF\xBB", 1, 0)]);
    assert_eq!(frame(&[b"\xEF"]), [ok(b"\xEF", 1, 0)]);
}

#[test]
fn bom_only_at_the_very_start() {
    // Not at the start of the file: kept (the JSON parser will reject it).
    assert_eq!(
        frame(&[b"{}\n\xEF\xBB\xBF{}\n"]),
        [ok(b"{}", 1, 0), ok(b"\xEF\xBB\xBF{}", 2, 3)]
    );
    // Not stripped when resuming in the middle of a file either.
    let mut framer = LineFramer::resume_at(Checkpoint {
        offset: 10,
        line: 4,
        lines_delivered: 2,
    });
    framer.push(&b"\xEF\xBB\xBF{}\n"[..]);
    assert_eq!(
        item(framer.next_line().unwrap()),
        ok(b"\xEF\xBB\xBF{}", 4, 10)
    );
    assert_eq!(framer.lines_delivered(), 3);
}

#[test]
fn line_spanning_many_chunks() {
    let line = vec![b'x'; 1000];
    let mut data = line.clone();
    data.extend_from_slice(b"\r\n{}\n");
    let chunks: Vec<&[u8]> = data.chunks(7).collect();
    assert_eq!(frame(&chunks), [ok(&line, 1, 0), ok(b"{}", 2, 1002)]);
}

#[test]
fn whole_line_inside_a_chunk_is_not_copied() {
    let chunk = Bytes::from_static(b"{\"a\":1}\r\n{\"b\":2}\n{\"c\"");
    let range = chunk.as_ptr_range();
    let mut framer = LineFramer::new();
    framer.push(chunk.clone());
    for _ in 0..2 {
        let line = framer.next_line().unwrap().unwrap();
        assert!(range.contains(&line.bytes().as_ptr()));
    }
    assert!(framer.next_line().is_none());
    framer.push(&b":3}\n"[..]);
    assert_eq!(item(framer.next_line().unwrap()), ok(b"{\"c\":3}", 3, 17));
}

#[test]
fn line_of_exactly_the_limit_is_accepted() {
    assert_eq!(frame_limit(4, &[b"1234\n"]), [ok(b"1234", 1, 0)]);
    assert_eq!(frame_limit(4, &[b"1234\r\n"]), [ok(b"1234", 1, 0)]);
    assert_eq!(
        frame_limit(4, &[b"12", b"34", b"\r", b"\n"]),
        [ok(b"1234", 1, 0)]
    );
    assert_eq!(frame_limit(4, &[b"12", b"34\r"]), [ok(b"1234", 1, 0)]);
    assert_eq!(frame_limit(4, &[b"1234"]), [ok(b"1234", 1, 0)]);
    assert_eq!(frame_limit(0, &[b"\n\r\n"]), []);
}

#[test]
fn line_over_the_limit_is_an_error() {
    assert_eq!(frame_limit(4, &[b"12345\n"]), [too_long(1, 0, 4)]);
    assert_eq!(frame_limit(4, &[b"12345\r\n"]), [too_long(1, 0, 4)]);
    assert_eq!(frame_limit(4, &[b"123", b"45\n"]), [too_long(1, 0, 4)]);
    assert_eq!(frame_limit(4, &[b"1234", b"5"]), [too_long(1, 0, 4)]);
    assert_eq!(frame_limit(4, &[b"12345"]), [too_long(1, 0, 4)]);
    assert_eq!(frame_limit(4, &[b"1234\r", b"\r\n"]), [too_long(1, 0, 4)]);
    assert_eq!(frame_limit(0, &[b"{\n"]), [too_long(1, 0, 0)]);
    let error = FrameError::LineTooLong {
        line: 7,
        offset: 100,
        limit: 4,
    };
    assert_eq!(error.line(), 7);
    assert_eq!(
        error.to_string(),
        "line 7 (starting at byte 100) is longer than the limit of 4 bytes"
    );
}

#[test]
fn framing_continues_after_an_overlong_line() {
    let data = b"{}\n\n123456789\n{\"a\"}\n";
    let expected = [ok(b"{}", 1, 0), too_long(3, 4, 5), ok(b"{\"a\"}", 4, 14)];
    assert_eq!(frame_limit(5, &[data]), expected);
    for size in 1..data.len() {
        let chunks: Vec<&[u8]> = data.chunks(size).collect();
        assert_eq!(frame_limit(5, &chunks), expected, "chunk size {size}");
    }
}

#[test]
fn overlong_line_is_reported_once_and_counted_once() {
    let mut framer = LineFramer::new().with_max_line_len(3);
    framer.push(&b"{\"a\""[..]);
    // Four bytes may still be three and a CR.
    assert!(framer.next_line().is_none());
    framer.push(&b":1"[..]);
    assert_eq!(item(framer.next_line().unwrap()), too_long(1, 0, 3));
    assert_eq!(framer.partial.capacity(), 0);
    // Still discarding: the checkpoint points at the start of the line.
    assert_eq!(framer.checkpoint(), Checkpoint::START);
    framer.push(&b"}"[..]);
    assert!(framer.next_line().is_none());
    framer.push(&b"\n{}\n"[..]);
    assert_eq!(item(framer.next_line().unwrap()), ok(b"{}", 2, 8));
    assert_eq!(
        framer.checkpoint(),
        Checkpoint {
            offset: 11,
            line: 3,
            lines_delivered: 2
        }
    );
}

#[test]
fn overlong_line_ended_by_eof() {
    let mut framer = LineFramer::new().with_max_line_len(3);
    framer.push(&b"{}\n{\"a\":1}"[..]);
    assert_eq!(item(framer.finish().unwrap()), ok(b"{}", 1, 0));
    assert_eq!(item(framer.finish().unwrap()), too_long(2, 3, 3));
    assert!(framer.finish().is_none());
    assert_eq!(framer.lines_delivered(), 2);
    assert_eq!(framer.complete_offset(), 10);
}

#[test]
fn memory_stays_under_the_limit_for_a_huge_line() {
    let limit = 1000;
    let mut framer = LineFramer::new().with_max_line_len(limit);
    let chunk = Bytes::from(vec![b'x'; 7]);
    let mut errors = 0;
    for _ in 0..10_000 {
        framer.push(chunk.clone());
        while let Some(result) = framer.next_line() {
            assert!(result.is_err());
            errors += 1;
        }
        assert!(framer.partial.capacity() <= limit + 1);
    }
    assert_eq!(errors, 1);
    framer.push(&b"\n{}\n"[..]);
    assert_eq!(item(framer.next_line().unwrap()), ok(b"{}", 2, 70_001));
}

#[test]
fn long_line_in_one_byte_chunks_is_linear() {
    // 300 KB in 1-byte chunks: quadratic rescanning would take minutes.
    let mut framer = LineFramer::new();
    let n = 300_000;
    for _ in 0..n {
        framer.push(&b"x"[..]);
        assert!(framer.next_line().is_none());
    }
    framer.push(&b"\n"[..]);
    let line = framer.next_line().unwrap().unwrap();
    assert_eq!(line.len(), n);
}

#[test]
fn counters() {
    let mut framer = LineFramer::new();
    framer.push(&b"{}\n\n{}\n{"[..]);
    assert_eq!(framer.pending_len(), 8);
    assert!(framer.next_line().is_some());
    assert_eq!(framer.pending_len(), 5);
    assert_eq!(framer.bytes_consumed(), 3);
    assert!(framer.next_line().is_some());
    assert!(framer.next_line().is_none());
    assert_eq!(framer.bytes_consumed(), 8);
    assert_eq!(framer.pending_len(), 0);
    assert_eq!(framer.lines_delivered(), 2);
    assert_eq!(framer.complete_offset(), 7);
    assert_eq!(framer.next_line_number(), 4);
    assert_eq!(
        framer.checkpoint(),
        Checkpoint {
            offset: 7,
            line: 4,
            lines_delivered: 2
        }
    );
}

#[test]
fn resume_at_a_checkpoint() {
    let data = b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}";
    let mut framer = LineFramer::new();
    framer.push(&data[..14]);
    assert_eq!(item(framer.next_line().unwrap()), ok(b"{\"a\":1}", 1, 0));
    assert!(framer.next_line().is_none());
    let checkpoint = framer.checkpoint();
    assert_eq!(
        checkpoint,
        Checkpoint {
            offset: 9,
            line: 3,
            lines_delivered: 1
        }
    );
    let offset = usize::try_from(checkpoint.offset).unwrap();
    let (items, framer) = run(LineFramer::resume_at(checkpoint), &[&data[offset..]]);
    assert_eq!(items, [ok(b"{\"b\":2}", 3, 9), ok(b"{\"c\":3}", 4, 18)]);
    assert_eq!(framer.lines_delivered(), 3);

    let (items, framer) = run(LineFramer::skip_to(checkpoint), &[data]);
    assert_eq!(items, [ok(b"{\"b\":2}", 3, 9), ok(b"{\"c\":3}", 4, 18)]);
    assert_eq!(framer.lines_delivered(), 3);
}

#[test]
fn skipped_lines_are_not_checked_for_length() {
    let checkpoint = Checkpoint {
        offset: 12,
        line: 3,
        lines_delivered: 2,
    };
    let data = b"1234567890\n\n{}\n";
    let (items, _) = run(
        LineFramer::skip_to(checkpoint).with_max_line_len(3),
        &[&data[..5], &data[5..]],
    );
    assert_eq!(items, [ok(b"{}", 3, 12)]);
}

#[test]
fn skip_to_with_bom() {
    let data = b"\xEF\xBB\xBF{}\n{}\n";
    let mut framer = LineFramer::new();
    framer.push(&data[..6]);
    assert_eq!(item(framer.next_line().unwrap()), ok(b"{}", 1, 3));
    let checkpoint = framer.checkpoint();
    assert_eq!(checkpoint.offset, 6);
    let (items, _) = run(LineFramer::skip_to(checkpoint), &[&data[..1], &data[1..]]);
    assert_eq!(items, [ok(b"{}", 2, 6)]);
    // Skipping the first line also skips a partial BOM.
    let (items, _) = run(LineFramer::skip_to(checkpoint), &[b"\xEF\xBB{}\n{}\n"]);
    assert_eq!(items, [ok(b"{}", 2, 5)]);
}

#[test]
fn line_accessors() {
    let line = Line::new(&b"{}"[..], 3, 10);
    assert_eq!(&line[..], b"{}");
    assert_eq!(line.as_ref(), b"{}");
    assert_eq!(line.number(), 3);
    assert_eq!(line.offset(), 10);
    assert_eq!(line.into_bytes(), Bytes::from_static(b"{}"));
}

#[test]
fn into_lines_iterates_to_the_end() {
    let lines = LineFramer::new().into_lines(&b"{}\n\n{}"[..]);
    let items: Vec<_> = lines.map(item).collect();
    assert_eq!(items, [ok(b"{}", 1, 0), ok(b"{}", 3, 4)]);
}

// ---------------------------------------------------------------------------
// Property tests against a straightforward model.

const BOM_BYTES: &[u8] = b"\xEF\xBB\xBF";

/// Frames a whole file the obvious way.
fn model(file: &[u8], limit: usize) -> Vec<Item> {
    let mut start = if file.starts_with(BOM_BYTES) { 3 } else { 0 };
    let mut number = 1;
    let mut out = Vec::new();
    while start < file.len() {
        let rest = &file[start..];
        let (mut content, consumed) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        if let Some(stripped) = content.strip_suffix(b"\r") {
            content = stripped;
        }
        if content.len() > limit {
            out.push(too_long(number, start as u64, limit));
        } else if !content.iter().all(u8::is_ascii_whitespace) {
            out.push(ok(content, number, start as u64));
        }
        start += consumed;
        number += 1;
    }
    out
}

const TERMINATORS: &[&[u8]] = &[b"\n", b"\r\n"];
const LAST_TERMINATORS: &[&[u8]] = &[b"\n", b"\r\n", b"", b"\r"];

const ALPHABET: &[u8] = b"ab{}\" \t\r\xC3\xA9\xEF\xBB\xBF\x0C";

fn file_strategy(max_content: usize) -> impl Strategy<Value = Vec<u8>> {
    let line = (
        prop::collection::vec(prop::sample::select(ALPHABET), 0..max_content),
        prop::sample::select(TERMINATORS),
    );
    (
        any::<bool>(),
        prop::collection::vec(line, 0..12),
        prop::sample::select(LAST_TERMINATORS),
    )
        .prop_map(|(bom, lines, last_terminator)| {
            let mut file = Vec::new();
            if bom {
                file.extend_from_slice(BOM_BYTES);
            }
            let count = lines.len();
            for (i, (content, terminator)) in lines.into_iter().enumerate() {
                file.extend_from_slice(&content);
                if i + 1 == count {
                    file.extend_from_slice(last_terminator);
                } else {
                    file.extend_from_slice(terminator);
                }
            }
            file
        })
}

/// Cuts `data` at the given (arbitrary) points.
fn split<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&data[start..point]);
        start = point;
    }
    chunks.push(&data[start..]);
    chunks
}

fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunking_does_not_matter(file in file_strategy(12), cuts in cuts()) {
        let expected = model(&file, usize::MAX);
        let whole = frame(&[&file]);
        prop_assert_eq!(&whole, &expected);
        let chunked = frame(&split(&file, &cuts));
        prop_assert_eq!(&chunked, &expected);
        // Every delivered line is non-blank.
        for line in chunked.iter().flatten() {
            prop_assert!(!line.0.iter().all(u8::is_ascii_whitespace));
        }
    }

    #[test]
    fn overlong_lines_are_reported_and_skipped(
        file in file_strategy(20),
        cuts in cuts(),
        limit in 0usize..12,
    ) {
        let expected = model(&file, limit);
        prop_assert_eq!(&frame_limit(limit, &[&file]), &expected);
        prop_assert_eq!(&frame_limit(limit, &split(&file, &cuts)), &expected);
    }

    #[test]
    fn resuming_from_any_checkpoint(
        file in file_strategy(16),
        cuts in cuts(),
        resume_cuts in cuts(),
        limit in 4usize..20,
        pick in any::<prop::sample::Index>(),
    ) {
        let expected = model(&file, limit);
        // Run over the chunks and remember a checkpoint after every call.
        let mut framer = LineFramer::new().with_max_line_len(limit);
        let mut checkpoints = vec![framer.checkpoint()];
        let mut items = Vec::new();
        for chunk in split(&file, &cuts) {
            framer.push(Bytes::copy_from_slice(chunk));
            while let Some(result) = framer.next_line() {
                items.push(item(result));
                checkpoints.push(framer.checkpoint());
            }
            checkpoints.push(framer.checkpoint());
        }
        while let Some(result) = framer.finish() {
            items.push(item(result));
            checkpoints.push(framer.checkpoint());
        }
        checkpoints.push(framer.checkpoint());
        prop_assert_eq!(&items, &expected);

        let checkpoint = checkpoints[pick.index(checkpoints.len())];
        let number_of = |item: &Item| match item {
            Ok((_, number, _)) => *number,
            Err(error) => error.line(),
        };
        let before = expected.iter().filter(|i| number_of(i) < checkpoint.line).count();
        prop_assert_eq!(checkpoint.lines_delivered, before as u64);
        let rest: Vec<Item> = expected.iter().filter(|i| number_of(i) >= checkpoint.line).cloned().collect();

        let offset = usize::try_from(checkpoint.offset).unwrap();
        prop_assert!(offset <= file.len());
        let (resumed, framer) = run(
            LineFramer::resume_at(checkpoint).with_max_line_len(limit),
            &split(&file[offset..], &resume_cuts),
        );
        prop_assert_eq!(&resumed, &rest);
        prop_assert_eq!(framer.lines_delivered(), expected.len() as u64);

        let (skipped, framer) = run(
            LineFramer::skip_to(checkpoint).with_max_line_len(limit),
            &split(&file, &resume_cuts),
        );
        prop_assert_eq!(&skipped, &rest);
        prop_assert_eq!(framer.lines_delivered(), expected.len() as u64);
    }
}
