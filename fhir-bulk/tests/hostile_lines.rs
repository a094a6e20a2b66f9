//! A file is saved under its final name only if every line is a whole, valid line; a file
//! that overruns its manifest is stopped; a permanent failure leaves no `.part`; the server's
//! own error and deleted files are kept whatever their `count`. Every server here is a
//! scripted raw socket on 127.0.0.1 that sends exactly the bytes a broken server or proxy
//! would (see `fhir_bulk_test_server::raw`).
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::download::{SaveOptions, SaveWarning, SavedFile};
use fhir_bulk::resource::Resource;
use fhir_bulk::{
    BulkClient, CompletedExport, DownloadOptions, Error, ExportFile, FileKind, InvalidLines,
    LineErrorKind, Manifest, RetryPolicy,
};
use fhir_bulk_test_server::raw::{RawReply, RawServer};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

const A: &str = r#"{"resourceType":"Patient","id":"a"}"#;
const B: &str = r#"{"resourceType":"Patient","id":"b"}"#;

/// A server answering every request with `reply`.
async fn serve(reply: RawReply) -> RawServer {
    RawServer::start(move |_, _| reply.clone()).await.unwrap()
}

/// An export of one file at `/files/1` of `server`, listed under `kind` with this `count`.
fn export(server: &RawServer, kind: FileKind, resource_type: &str, count: u64) -> CompletedExport {
    let entry = serde_json::json!({
        "type": resource_type, "url": server.url("/files/1"), "count": count
    });
    let (output, error, deleted) = match kind {
        FileKind::Output => (vec![entry], vec![], vec![]),
        FileKind::Error => (vec![], vec![entry], vec![]),
        _ => (vec![], vec![], vec![entry]),
    };
    let mut manifest = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": false,
        "output": output,
        "error": error,
    });
    if !deleted.is_empty() {
        manifest["deleted"] = deleted.into();
    }
    let page = Manifest::from_slice(manifest.to_string().as_bytes(), "test").unwrap();
    CompletedExport::from_manifests(Url::parse(&server.url("/")).unwrap(), vec![page])
}

fn client(server: &RawServer) -> BulkClient {
    BulkClient::builder(server.url("/fhir"))
        .sleep_fn(Sleeps::default().sleep_fn())
        .retry_policy(
            RetryPolicy::default()
                .with_max_retries(2)
                .with_min_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap()
}

fn only_file(export: &CompletedExport) -> ExportFile {
    export.all_files().into_iter().next().unwrap()
}

fn part_of(path: &Path) -> PathBuf {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

/// Saves the export's only file under `policy`; returns the result and the final path.
async fn save(
    server: &RawServer,
    export: &CompletedExport,
    policy: InvalidLines,
    dir: &Path,
) -> (fhir_bulk::Result<SavedFile>, PathBuf) {
    let file = only_file(export);
    let path = dir.join("Patient.1.ndjson");
    let options =
        SaveOptions::default().with_download(DownloadOptions::default().with_invalid_lines(policy));
    let result = client(server).save_file(&file, &path, &options).await;
    (result, path)
}

/// Under `Stop` the file is refused (an invalid-line error, no final file, no `.part`);
/// under `Report` it is saved without the bad line, which is reported. Returns the error.
async fn refused(reply: RawReply, count: u64, good: &[&str], bad_line: u64) -> Error {
    let server = serve(reply).await;
    let export = export(&server, FileKind::Output, "Patient", count);
    let dir = tempfile::tempdir().unwrap();
    let (stopped, path) = save(&server, &export, InvalidLines::Stop, dir.path()).await;
    let error = match stopped {
        Err(e @ Error::InvalidLine { .. }) => e,
        other => panic!("expected an invalid line, got {other:?}"),
    };
    assert!(!path.exists(), "never saved under its final name");
    assert!(
        !part_of(&path).exists(),
        "a permanent failure leaves no .part"
    );

    let (reported, path) = save(&server, &export, InvalidLines::Report, dir.path()).await;
    let saved = reported.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let want: String = good.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(text, want, "only the whole lines are saved");
    assert_eq!(saved.lines, good.len() as u64);
    assert!(
        saved
            .warnings
            .iter()
            .any(|w| matches!(w, SaveWarning::InvalidLine { line, .. } if *line == bad_line)),
        "{:?}",
        saved.warnings
    );
    error
}

#[tokio::test]
async fn a_body_cut_mid_line_without_framing_is_not_saved() {
    // No Content-Length, no chunking: the end of the body is the connection's close.
    let body = format!("{A}\n{{\"resourceType\":\"Patient\",\"id\":\"b");
    let error = refused(RawReply::response(200, &[], body.as_bytes()), 2, &[A], 2).await;
    assert!(error.to_string().contains("line 2"), "{error}");
}

#[tokio::test]
async fn a_content_length_shorter_than_the_body_is_not_saved() {
    let body = format!("{A}\n{B}\n");
    let short = (A.len() + 1 + B.len() - 3).to_string();
    let reply = RawReply::response(200, &[("Content-Length", &short)], body.as_bytes());
    refused(reply, 2, &[A], 2).await;
}

#[tokio::test]
async fn invalid_utf8_is_not_saved() {
    let mut body = format!("{A}\n").into_bytes();
    body.extend_from_slice(b"{\"resourceType\":\"Patient\",\"id\":\"c\",\"name\":\"\xff\xfe\"}\n");
    body.extend_from_slice(format!("{B}\n").as_bytes());
    let error = refused(RawReply::framed(200, &[], &body), 3, &[A, B], 2).await;
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

#[tokio::test]
async fn a_raw_nul_in_a_string_is_not_saved() {
    let body = format!("{A}\n{{\"resourceType\":\"Patient\",\"id\":\"c\",\"x\":\"\0\"}}\n{B}\n");
    refused(RawReply::framed(200, &[], body.as_bytes()), 3, &[A, B], 2).await;
}

#[tokio::test]
async fn two_objects_on_one_line_are_not_saved() {
    let body = format!("{A}\n{A}{B}\n{B}\n");
    refused(RawReply::framed(200, &[], body.as_bytes()), 3, &[A, B], 2).await;
}

#[tokio::test]
async fn trailing_garbage_after_the_object_is_not_saved() {
    let body = format!("{A} trailing\n{B}\n");
    refused(RawReply::framed(200, &[], body.as_bytes()), 2, &[B], 1).await;
}

#[tokio::test]
async fn a_last_line_without_newline_needs_a_framed_end() {
    // Whole JSON, but nothing proves the transfer ended there.
    let body = format!("{A}\n{B}");
    let error = refused(RawReply::response(200, &[], body.as_bytes()), 2, &[A], 2).await;
    assert!(error.to_string().contains("may be cut"), "{error}");

    // With a Content-Length the same bytes are a complete file.
    let server = serve(RawReply::framed(200, &[], body.as_bytes())).await;
    let export = export(&server, FileKind::Output, "Patient", 2);
    let dir = tempfile::tempdir().unwrap();
    let (saved, path) = save(&server, &export, InvalidLines::Stop, dir.path()).await;
    assert_eq!(saved.unwrap().lines, 2);
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        format!("{A}\n{B}\n")
    );
}

#[tokio::test]
async fn the_typed_streams_check_the_unframed_last_line_too() {
    let body = format!("{A}\n{B}");
    let server = serve(RawReply::response(200, &[], body.as_bytes())).await;
    let export = export(&server, FileKind::Output, "Patient", 2);
    let got: Vec<_> = client(&server)
        .download_resources::<Resource>(&export, &DownloadOptions::default())
        .collect()
        .await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].as_ref().unwrap().id(), Some("a"));
    assert!(
        matches!(
            &got[1],
            Err(Error::InvalidLine {
                line: 2,
                kind: LineErrorKind::Parse,
                ..
            })
        ),
        "{:?}",
        got[1]
    );
}

#[tokio::test]
async fn a_file_far_over_its_count_is_stopped_and_removed() {
    // A decompression bomb of valid lines, played as plain lines: count says 10.
    let body: String = (0..5_000)
        .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n"))
        .collect();
    let server = serve(RawReply::framed(200, &[], body.as_bytes())).await;
    let export = export(&server, FileKind::Output, "Patient", 10);
    let dir = tempfile::tempdir().unwrap();
    let (result, path) = save(&server, &export, InvalidLines::Stop, dir.path()).await;
    match result {
        Err(Error::CountMismatch {
            expected: 10,
            actual,
            ..
        }) => assert_eq!(actual, 1_012, "stops once clearly over: 10 + 1 + 1,000 + 1"),
        other => panic!("{other:?}"),
    }
    assert!(!path.exists());
    assert!(!part_of(&path).exists());
}

#[tokio::test]
async fn an_expired_file_leaves_no_part_behind() {
    let server = serve(RawReply::framed(410, &[], b"gone")).await;
    let export = export(&server, FileKind::Output, "Patient", 1);
    let dir = tempfile::tempdir().unwrap();
    let report = client(&server)
        .save_export(&export, dir.path(), &SaveOptions::default())
        .await;
    assert!(
        matches!(report, Err(Error::FileExpired { .. })),
        "{report:?}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn an_interrupted_file_keeps_its_part() {
    // Every answer promises 4,000 bytes and closes before the first: the retries run out,
    // which is an interruption, not a verdict on the file.
    let reply = RawReply::response(200, &[("Content-Length", "4000")], b"");
    let server = serve(reply).await;
    let export = export(&server, FileKind::Output, "Patient", 2);
    let dir = tempfile::tempdir().unwrap();
    let (result, path) = save(&server, &export, InvalidLines::Stop, dir.path()).await;
    assert!(result.is_err());
    assert!(!path.exists());
    assert!(part_of(&path).exists(), "kept for the resume");
}

#[tokio::test]
async fn the_servers_error_file_is_saved_whatever_its_count() {
    // The SMART reference server: count 66 (resources exported), one OperationOutcome.
    let outcome = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"66 resources failed"}]}"#;
    let server = serve(RawReply::framed(
        200,
        &[],
        format!("{outcome}\n").as_bytes(),
    ))
    .await;
    let export = export(&server, FileKind::Error, "OperationOutcome", 66);
    let dir = tempfile::tempdir().unwrap();
    let report = client(&server)
        .save_export(&export, dir.path(), &SaveOptions::default())
        .await
        .unwrap();
    let saved = &report.files[0];
    assert_eq!(saved.lines, 1);
    assert_eq!(
        saved.warnings,
        [SaveWarning::CountMismatch {
            expected: 66,
            actual: 1
        }]
    );
    assert!(saved.warnings[0].to_string().contains("66"));
    assert_eq!(
        std::fs::read_to_string(&saved.path).unwrap(),
        format!("{outcome}\n")
    );
    // The stream of outcomes delivers it without an error.
    let outcomes: Vec<_> = client(&server)
        .download_outcomes(&export, &DownloadOptions::default())
        .collect()
        .await;
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
}

#[tokio::test]
async fn a_deleted_file_is_saved_whatever_its_count() {
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/1"}},{"request":{"method":"DELETE","url":"Patient/2"}}]}"#;
    let server = serve(RawReply::framed(200, &[], format!("{bundle}\n").as_bytes())).await;
    let export = export(&server, FileKind::Deleted, "Bundle", 2);
    let dir = tempfile::tempdir().unwrap();
    let report = client(&server)
        .save_export(&export, dir.path(), &SaveOptions::default())
        .await
        .unwrap();
    assert_eq!(
        report.files[0].warnings,
        [SaveWarning::CountMismatch {
            expected: 2,
            actual: 1
        }]
    );
}

#[tokio::test]
async fn an_output_file_short_of_its_count_is_refused_and_removed() {
    let body = format!("{A}\n");
    let server = serve(RawReply::framed(200, &[], body.as_bytes())).await;
    let export = export(&server, FileKind::Output, "Patient", 3);
    let dir = tempfile::tempdir().unwrap();
    let (result, path) = save(&server, &export, InvalidLines::Report, dir.path()).await;
    assert!(
        matches!(result, Err(Error::CountMismatch { .. })),
        "{result:?}"
    );
    assert!(!path.exists() && !part_of(&path).exists());
}
