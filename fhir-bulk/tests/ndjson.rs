//! End-to-end use of the NDJSON reading API from outside the crate, the way
//! a downloader would: chunks in, resources (or located errors) out.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

use bytes::Bytes;
use fhir_bulk::ndjson::{Checkpoint, FrameError, Line, LineFramer};
use fhir_bulk::outcome::OperationOutcome;
use fhir_bulk::resource::{
    ParseError, Resource, block_header_reference, deleted_resources, parse_line,
};
use proptest::prelude::*;

#[derive(Debug)]
enum Item {
    Resource(u64, Resource),
    Frame(FrameError),
    Parse(u64, ParseError),
}

fn handle(out: &mut Vec<Item>, result: Result<Line, FrameError>, expected_type: &str) {
    match result {
        Ok(line) => match parse_line::<Resource>(&line, Some(expected_type)) {
            Ok(resource) => out.push(Item::Resource(line.number(), resource)),
            Err(error) => out.push(Item::Parse(line.number(), error)),
        },
        Err(error) => out.push(Item::Frame(error)),
    }
}

/// Feeds `chunks` through a framer and parses every line.
fn download(
    mut framer: LineFramer,
    chunks: impl IntoIterator<Item = Bytes>,
    expected_type: &str,
) -> (Vec<Item>, Checkpoint) {
    let mut out = Vec::new();
    for chunk in chunks {
        framer.push(chunk);
        while let Some(result) = framer.next_line() {
            handle(&mut out, result, expected_type);
        }
    }
    while let Some(result) = framer.finish() {
        handle(&mut out, result, expected_type);
    }
    (out, framer.checkpoint())
}

#[test]
fn a_file_with_every_kind_of_line() {
    let file = concat!(
        "\u{FEFF}{\"resourceType\":\"Patient\",\"id\":\"p-1\",\"meta\":{\"lastUpdated\":\"2024-01-01T00:00:00Z\"}}\r\n",
        "\n",
        "{\"resourceType\":\"Observation\",\"id\":\"o-1\"}\n",
        "{\"resourceType\":\"Patient\",\"id\":\"p-2\",\"text\":\"",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "\"}\n",
        "{\"resourceType\":\"Patient\",\"id\":\"p-3\"\n",
        "  \t\n",
        "{\"resourceType\":\"Patient\",\"id\":\"p-4\"}",
    );
    let bytes = Bytes::from_static(file.as_bytes());
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(7)
        .map(|start| bytes.slice(start..(start + 7).min(bytes.len())))
        .collect();
    let (items, checkpoint) = download(LineFramer::new().with_max_line_len(100), chunks, "Patient");

    let summary: Vec<String> = items
        .iter()
        .map(|item| match item {
            Item::Resource(n, r) => format!("{n}: {}/{}", r.resource_type(), r.id().unwrap_or("-")),
            Item::Frame(e) => format!("{}: frame: {e}", e.line()),
            Item::Parse(n, e) => format!("{n}: parse: {e}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "1: Patient/p-1",
            "3: parse: expected resourceType \"Patient\", found \"Observation\"",
            "4: frame: line 4 (starting at byte 131) is longer than the limit of 100 bytes",
            "5: parse: EOF while parsing an object at line 1 column 36",
            "7: Patient/p-4",
        ]
    );
    assert_eq!(checkpoint, Checkpoint::new(file.len() as u64, 8, 5));
}

#[test]
fn organize_output_by_blocks_and_deleted_files() {
    let file = b"{\"resourceType\": \"Parameters\", \"parameter\": [{\"name\": \"header\", \"valueReference\": {\"reference\": \"Patient/p-1\"}}]}\n\
{\"id\": \"p-1\", \"resourceType\": \"Patient\"}\n\
{\"id\": \"c-1\", \"resourceType\": \"Condition\", \"subject\":{\"reference\": \"Patient/p-1\"}}\n\
{\"resourceType\": \"Parameters\", \"parameter\": [{\"name\": \"header\", \"valueReference\": {\"reference\": \"Patient/p-2\"}}]}\n\
{\"id\": \"p-2\", \"resourceType\": \"Patient\"}\n";
    let mut block = None;
    let mut seen = Vec::new();
    for line in LineFramer::new().into_lines(&file[..]) {
        let line = line.unwrap();
        if let Some(reference) = block_header_reference(&line) {
            block = Some(reference);
            continue;
        }
        let resource = Resource::from_line(&line).unwrap();
        seen.push(format!(
            "{} in {}",
            resource.resource_type(),
            block.as_deref().unwrap_or("?")
        ));
    }
    assert_eq!(
        seen,
        [
            "Patient in Patient/p-1",
            "Condition in Patient/p-1",
            "Patient in Patient/p-2"
        ]
    );

    let deleted = b"{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{\"request\":{\"method\":\"DELETE\",\"url\":\"Patient/p-9\"}}]}\n";
    let names: Vec<String> = LineFramer::new()
        .into_lines(&deleted[..])
        .flat_map(|line| deleted_resources(&line.unwrap()).unwrap())
        .map(|d| d.to_string())
        .collect();
    assert_eq!(names, ["Patient/p-9"]);
}

#[test]
fn error_file_lines_are_operation_outcomes() {
    let file = b"{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"not-found\",\"diagnostics\":\"Patient/x is gone\"}]}\n";
    let line = LineFramer::new()
        .into_lines(&file[..])
        .next()
        .unwrap()
        .unwrap();
    let outcome = OperationOutcome::parse(&line).unwrap();
    assert_eq!(outcome.summary(), "error/not-found: Patient/x is gone");
    assert!(!outcome.is_transient());
    let typed: OperationOutcome = parse_line(&line, Some("OperationOutcome")).unwrap();
    assert_eq!(typed, outcome);
}

proptest! {
    /// A download broken at any point and resumed (by range request or by
    /// re-reading) yields the same items as an unbroken one.
    #[test]
    fn broken_and_resumed_downloads(
        ids in prop::collection::vec("[a-z0-9]{1,40}", 1..20),
        blank_every in 2usize..5,
        break_at in any::<prop::sample::Index>(),
        chunk in 1usize..50,
        range_request in any::<bool>(),
    ) {
        let mut file = String::new();
        for (i, id) in ids.iter().enumerate() {
            if i % blank_every == 0 {
                file.push_str("\r\n");
            }
            file.push_str(&format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\"}}\n"));
        }
        let bytes = Bytes::from(file.into_bytes());
        let chunks = |data: Bytes| -> Vec<Bytes> {
            (0..data.len()).step_by(chunk).map(|s| data.slice(s..(s + chunk).min(data.len()))).collect()
        };
        let ids_of = |items: &[Item]| -> Vec<(u64, String)> {
            items.iter().map(|item| match item {
                Item::Resource(n, r) => (*n, r.id().unwrap().to_owned()),
                other => panic!("{other:?}"),
            }).collect()
        };

        let (all, _) = download(LineFramer::new(), chunks(bytes.clone()), "Patient");
        let all = ids_of(&all);
        prop_assert_eq!(all.len(), ids.len());

        // First attempt: the connection drops after `cut` bytes.
        let cut = break_at.index(bytes.len());
        let mut framer = LineFramer::new();
        let mut first = Vec::new();
        for piece in chunks(bytes.slice(..cut)) {
            framer.push(piece);
            while let Some(result) = framer.next_line() {
                handle(&mut first, result, "Patient");
            }
        }
        let checkpoint = framer.checkpoint();
        prop_assert_eq!(checkpoint.lines_delivered as usize, first.len());

        let (rest, end) = if range_request {
            let offset = usize::try_from(checkpoint.offset).unwrap();
            download(LineFramer::resume_at(checkpoint), chunks(bytes.slice(offset..)), "Patient")
        } else {
            download(LineFramer::skip_to(checkpoint), chunks(bytes.clone()), "Patient")
        };
        let mut joined = ids_of(&first);
        joined.extend(ids_of(&rest));
        prop_assert_eq!(&joined, &all);
        prop_assert_eq!(end.lines_delivered as usize, ids.len());
    }
}
