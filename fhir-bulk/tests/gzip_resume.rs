//! gzip saves resumed across processes: a save killed (its future dropped, its runtime and
//! client gone) part-way continues in a new run with a fresh client, from the `.part` and its
//! sidecar. Two cases:
//! * our own gzip output ([`SaveOptions::with_gzip`]): the `.part` is multi-member gzip, cut
//!   back to its last member end and continued with new members;
//! * gzip on the wire (`Content-Encoding: gzip`, the way nginx compresses on the fly: weak
//!   `ETag`, no `Accept-Ranges` on the coded answer): resumed from the decoded offset with a
//!   `Range` over the identity representation pinned by `Last-Modified`, or, without it, by
//!   re-reading and skipping whole lines.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::Sleeps;
use fhir_bulk::download::{SaveOptions, SavedFile};
use fhir_bulk::{BulkClient, RetryPolicy};
use fhir_bulk_test_server::raw::{RawReply, RawServer};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use url::Url;

const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// A file of `lines` lines of varied length, with CRLF line ends and blank lines here and
/// there; and the NDJSON a save writes from it (LF ends, no blank lines).
fn messy_file(lines: usize) -> (Vec<u8>, String) {
    let mut raw = Vec::new();
    let mut saved = String::new();
    for i in 0..lines {
        let line = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"note\":\"{}{}\"}}",
            "x".repeat(i % 97),
            i.wrapping_mul(2_654_435_761) % 1_000_003
        );
        raw.extend_from_slice(line.as_bytes());
        raw.extend_from_slice(if i % 7 == 0 { b"\r\n" } else { b"\n" });
        if i % 50 == 0 {
            raw.extend_from_slice(b"\n");
        }
        saved.push_str(&line);
        saved.push('\n');
    }
    (raw, saved)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip_all(data: &[u8]) -> String {
    let mut out = String::new();
    MultiGzDecoder::new(data).read_to_string(&mut out).unwrap();
    out
}

/// How the file server answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Identity bytes, `Accept-Ranges`, a strong `ETag` pinning `206`s.
    IdentityRanges,
    /// Identity bytes, never a range.
    IdentityWhole,
    /// gzip-coded when asked (weak `ETag`, no `Accept-Ranges` on the coded answer, like
    /// nginx); identity ranges pinned by `If-Range: <Last-Modified>` when `last_modified`.
    WireGzip { last_modified: bool },
}

fn header_list<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn file_server(body: Vec<u8>, mode: Mode) -> RawServer {
    let packed = Arc::new(gzip(&body));
    let body = Arc::new(body);
    RawServer::start(move |request, _| {
        let len = body.len();
        let range = request
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        let if_range = request.header("if-range");
        let wants_gzip = request
            .header("accept-encoding")
            .is_some_and(|v| v.contains("gzip"));
        let mut headers = vec![("Content-Type", "application/fhir+ndjson".to_owned())];
        let start = match mode {
            Mode::IdentityRanges => {
                headers.push(("Accept-Ranges", "bytes".to_owned()));
                headers.push(("ETag", "\"v1\"".to_owned()));
                range.filter(|_| if_range == Some("\"v1\""))
            }
            Mode::IdentityWhole => None,
            Mode::WireGzip { last_modified } => {
                if last_modified {
                    headers.push(("Last-Modified", LAST_MODIFIED.to_owned()));
                }
                if wants_gzip && range.is_none() {
                    headers.push(("ETag", "W/\"v1\"".to_owned()));
                    headers.push(("Content-Encoding", "gzip".to_owned()));
                    return RawReply::framed(200, &header_list(&headers), &packed);
                }
                headers.push(("ETag", "\"v1\"".to_owned()));
                headers.push(("Accept-Ranges", "bytes".to_owned()));
                range.filter(|_| last_modified && if_range == Some(LAST_MODIFIED))
            }
        };
        match start {
            Some(n) if n < len => {
                headers.push(("Content-Range", format!("bytes {n}-{}/{len}", len - 1)));
                RawReply::framed(206, &header_list(&headers), &body[n..])
            }
            _ => RawReply::framed(200, &header_list(&headers), &body),
        }
    })
    .await
    .unwrap()
}

fn one_file_export(url: &str, count: usize) -> fhir_bulk::ExportFile {
    let manifest = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": false,
        "output": [{"type": "Patient", "url": url, "count": count}],
        "error": []
    });
    let pages =
        vec![fhir_bulk::Manifest::from_slice(manifest.to_string().as_bytes(), "test").unwrap()];
    fhir_bulk::CompletedExport::from_manifests(Url::parse(url).unwrap(), pages)
        .all_files()
        .remove(0)
}

/// Runs a save with a fresh client and drops it once `kill_at` NDJSON bytes were reported
/// (or lets it finish when `kill_at` is `None`).
async fn run_once(
    base: &str,
    file: &fhir_bulk::ExportFile,
    path: &Path,
    gzip_output: bool,
    kill_at: Option<u64>,
) -> Option<SavedFile> {
    let client = BulkClient::builder(format!("{base}/fhir"))
        .sleep_fn(Sleeps::default().sleep_fn())
        .retry_policy(RetryPolicy::default().with_min_delay(Duration::from_millis(1)))
        .build()
        .unwrap();
    let kill = Arc::new(AtomicBool::new(false));
    let flag = kill.clone();
    let options =
        SaveOptions::default()
            .with_gzip(gzip_output)
            .with_progress(move |_, _, bytes| {
                if kill_at.is_some_and(|at| bytes >= at) {
                    flag.store(true, Ordering::SeqCst);
                }
            });
    let save = client.save_file(file, path, &options);
    futures::pin_mut!(save);
    loop {
        if let std::task::Poll::Ready(result) = futures::poll!(save.as_mut()) {
            return Some(result.unwrap());
        }
        if kill.load(Ordering::SeqCst) {
            return None; // the process dies: the future is dropped mid-file
        }
        tokio::task::yield_now().await;
    }
}

/// Each run is a "process" of its own: a fresh runtime and client, dropped after the kill.
fn run_in_process(
    base: &str,
    file: &fhir_bulk::ExportFile,
    path: &Path,
    gzip_output: bool,
    kill_at: Option<u64>,
) -> Option<SavedFile> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(run_once(base, file, path, gzip_output, kill_at));
    drop(runtime);
    result
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The sidecar's decoded offset and `.part` length, if there is one.
fn sidecar(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read(with_suffix(path, ".part.resume")).ok()?;
    let value = serde_json::from_slice::<serde_json::Value>(&text).ok()?;
    Some((value["offset"].as_u64()?, value["part_bytes"].as_u64()?))
}

/// What [`survives_kills`] found.
struct Outcome {
    saved: Option<SavedFile>,
    /// The decoded size of what the file server serves.
    want: String,
    /// The saved file's bytes.
    file: Vec<u8>,
}

/// Saves one file of `lines` lines, killed at each of `kills` NDJSON bytes in turn (each run a
/// fresh process), then once more to the end; checks the result is the whole file, every line
/// once, and that each resumed run asked only for what it lacked.
fn survives_kills(kills: &[u64], lines: usize, mode: Mode, gzip_output: bool) -> Outcome {
    let (raw, want) = messy_file(lines);
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime.block_on(file_server(raw, mode));
    let base = server.url("");
    let file = one_file_export(&server.url("/files/1"), lines);
    let dir = tempfile::tempdir().unwrap();
    let ext = if gzip_output { "ndjson.gz" } else { "ndjson" };
    let path = dir.path().join(format!("Patient.1.{ext}"));
    let part = with_suffix(&path, ".part");
    let mut sidecars = Vec::new();
    let mut finished = None;
    for &at in kills {
        finished = run_in_process(&base, &file, &path, gzip_output, Some(at));
        if finished.is_some() || (path.exists() && !part.exists()) {
            break; // finished before the kill point, or killed as it renamed the file
        }
        let state = sidecar(&path);
        if let Some((_, part_bytes)) = state {
            assert!(
                std::fs::metadata(&part).unwrap().len() >= part_bytes,
                "the .part holds what its sidecar describes"
            );
        }
        sidecars.push(state);
    }
    if finished.is_none() && (part.exists() || !path.exists()) {
        finished = run_in_process(&base, &file, &path, gzip_output, None);
        assert!(finished.is_some(), "a run without a kill point finishes");
    }
    let bytes = std::fs::read(&path).unwrap();
    let got = if gzip_output {
        gunzip_all(&bytes)
    } else {
        String::from_utf8(bytes.clone()).unwrap()
    };
    assert!(
        got == want,
        "the whole file, every line once, after kills at {kills:?}"
    );
    assert!(!part.exists() && !with_suffix(&path, ".part.resume").exists());
    if let Some(saved) = &finished {
        assert_eq!(saved.lines, lines as u64);
        assert_eq!(saved.data_bytes, want.len() as u64);
        assert_eq!(saved.bytes, bytes.len() as u64);
        let requests = server.requests();
        assert_eq!(
            requests.len(),
            sidecars.len() + 1,
            "one request per run: {kills:?}"
        );
        for (request, state) in requests.iter().skip(1).zip(&sidecars) {
            let offset = state.map_or(0, |(offset, _)| offset);
            let ranged = match mode {
                Mode::IdentityRanges => Some("\"v1\""),
                Mode::WireGzip {
                    last_modified: true,
                } => Some(LAST_MODIFIED),
                _ => None,
            };
            match ranged.filter(|_| offset > 0) {
                Some(validator) => {
                    assert_eq!(request.header("range"), Some(&*format!("bytes={offset}-")));
                    assert_eq!(request.header("if-range"), Some(validator));
                    assert_eq!(request.header("accept-encoding"), Some("identity"));
                }
                None => assert_eq!(request.header("range"), None, "{mode:?}"),
            }
        }
        if sidecars
            .last()
            .copied()
            .flatten()
            .is_some_and(|(o, _)| o > 0)
        {
            assert!(saved.resumed_bytes > 0, "the kept part was used");
        }
    }
    Outcome {
        saved: finished,
        want,
        file: bytes,
    }
}

/// About 4.2 MB of NDJSON: four or five gzip members.
const LINES: usize = 40_000;

#[test]
fn a_killed_gzip_save_resumes_from_its_last_member_with_range() {
    let outcome = survives_kills(
        &[1_500_000, 2_200_000, 3_300_000],
        LINES,
        Mode::IdentityRanges,
        true,
    );
    let saved = outcome.saved.unwrap();
    assert!(saved.resumed_bytes > 0);
    // gunzip reads every member: more than one, since the kills came after member ends.
    let mut members = 0;
    let mut rest: &[u8] = &outcome.file;
    while !rest.is_empty() {
        let mut decoder = flate2::bufread::GzDecoder::new(rest);
        std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
        rest = decoder.into_inner();
        members += 1;
    }
    assert!(members >= 4, "{members} members");
}

#[test]
fn a_killed_gzip_save_resumes_by_skipping_without_range() {
    survives_kills(&[2_500_000], LINES, Mode::IdentityWhole, true);
}

#[test]
fn a_gzip_save_costs_little_compression_for_its_members() {
    let outcome = survives_kills(&[], LINES, Mode::IdentityRanges, true);
    let single = gzip(outcome.want.as_bytes()).len() as f64;
    let ours = outcome.file.len() as f64;
    let loss = ours / single - 1.0;
    println!(
        "one member: {single} bytes, ours: {ours} bytes, loss {:.3}%",
        loss * 100.0
    );
    // This synthetic file compresses 11x (more than FHIR data usually does), so the first
    // 32 KiB of each member, compressed without history, shows more than it would.
    assert!(loss < 0.02, "multi-member loss {:.3}%", loss * 100.0);
}

#[test]
fn gzip_on_the_wire_resumes_with_an_identity_range_pinned_by_last_modified() {
    let outcome = survives_kills(
        &[700_000, 2_000_000],
        LINES,
        Mode::WireGzip {
            last_modified: true,
        },
        false,
    );
    assert!(outcome.saved.unwrap().resumed_bytes > 0);
}

#[test]
fn gzip_on_the_wire_with_only_a_weak_etag_resumes_by_skipping() {
    survives_kills(
        &[900_000],
        LINES,
        Mode::WireGzip {
            last_modified: false,
        },
        false,
    );
}

#[test]
fn gzip_on_the_wire_into_a_gzip_save_resumes() {
    survives_kills(
        &[1_300_000, 3_000_000],
        LINES,
        Mode::WireGzip {
            last_modified: true,
        },
        true,
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 8, .. Default::default() })]

    /// Killed at any points, whatever the server does: the file ends whole, every line once.
    #[test]
    fn killed_gzip_saves_resume_exactly(
        kills in proptest::collection::vec(1u64..4_500_000, 1..4),
        mode in proptest::prop_oneof![
            proptest::strategy::Just(Mode::IdentityRanges),
            proptest::strategy::Just(Mode::IdentityWhole),
            proptest::strategy::Just(Mode::WireGzip { last_modified: true }),
            proptest::strategy::Just(Mode::WireGzip { last_modified: false }),
        ],
        gzip_output in proptest::prelude::any::<bool>(),
    ) {
        survives_kills(&kills, LINES, mode, gzip_output);
    }
}

/// The test server's gzip (a strong `ETag` of the coded representation, no `Last-Modified`)
/// with a body cut by a `Fault` in the first run: the cut is continued within the run (a range
/// over the compressed bytes), the kill after it is resumed in a fresh process by skipping
/// lines, into a multi-member gzip save.
#[test]
fn a_test_server_gzip_file_cut_then_killed_resumes_into_a_gzip_save() {
    use fhir_bulk_test_server::{Fault, TestServer};
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (server, file) = server_runtime.block_on(async {
        let (server, _client, export) = common::completed_export(
            TestServer::builder()
                .patients(10)
                .resource_types(["Observation"])
                .file_bytes("Observation", 3_000_000)
                .polls_before_complete(0)
                .fault(Fault::drop_after(40_000).on_all_files()),
        )
        .await;
        let file = export.all_files().remove(0);
        (server, file)
    });
    let want: String = server
        .file_lines(&file.file.url.redacted())
        .unwrap()
        .map(|line| line + "\n")
        .collect();
    assert!(want.len() > 2_500_000);
    let base = server.base_url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Observation.1.ndjson.gz");
    server.clear_requests();
    assert!(run_in_process(&base, &file, &path, true, Some(1_600_000)).is_none());
    let (offset, part_bytes) = sidecar(&path).unwrap();
    assert!(
        offset > 1_000_000 && part_bytes > 0,
        "{offset} {part_bytes}"
    );
    let first_run = server.requests().len();
    assert!(first_run >= 2, "the cut was retried");
    let saved = run_in_process(&base, &file, &path, true, None).unwrap();
    assert_eq!(saved.data_bytes, want.len() as u64);
    assert_eq!(saved.resumed_bytes, part_bytes);
    let got = gunzip_all(&std::fs::read(&path).unwrap());
    assert!(got == want, "the whole file, every line once");
    let requests = server.requests();
    let resumed = &requests[first_run..];
    assert_eq!(resumed.len(), 1, "one request for the rest");
    let header = |name: &str| {
        resumed[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // No Last-Modified: re-read (gzip-coded) and skip, no range.
    assert_eq!(header("range"), None);
    assert!(header("accept-encoding").unwrap().contains("gzip"));
}
