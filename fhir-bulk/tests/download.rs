//! Downloads against the in-process bulk data server: every line exactly once through broken
//! connections (with and without Range, with and without gzip), typed and raw streams, error
//! and deleted files, organizeOutputBy blocks, expiry, and saving to a directory.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::Sleeps;
use fhir_bulk::resource::Resource;
use fhir_bulk::{
    BulkClient, CompletedExport, DownloadOptions, Error, ExportRequest, FileKind, PollPolicy,
    RetryPolicy, download::SaveOptions,
};
use fhir_bulk_test_server::{Fault, TestServer, TestServerBuilder};
use futures::TryStreamExt;
use proptest::prelude::*;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

const TOKEN: &str = "download-token";

async fn server(builder: TestServerBuilder) -> TestServer {
    builder
        .require_bearer(TOKEN)
        .retry_after("0")
        .start()
        .await
        .unwrap()
}

fn client(server: &TestServer, sleeps: &Sleeps) -> BulkClient {
    BulkClient::builder(server.base_url().as_str())
        .bearer_token(TOKEN)
        .sleep_fn(sleeps.sleep_fn())
        .poll_policy(PollPolicy::default().with_jitter(0.0))
        .retry_policy(
            RetryPolicy::default()
                .with_jitter(false)
                .with_max_retries(4)
                .with_min_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap()
}

async fn export(client: &BulkClient, request: ExportRequest) -> CompletedExport {
    client.export(&request).await.unwrap()
}

/// Lines per file URL as the server generates them.
fn expected(
    server: &TestServer,
    export: &CompletedExport,
    kind: FileKind,
) -> HashMap<String, Vec<String>> {
    export
        .files(kind)
        .into_iter()
        .map(|f| {
            let lines = server.file_lines(f.file.url.expose()).unwrap().collect();
            (f.file.url.expose().to_owned(), lines)
        })
        .collect()
}

/// Lines per file URL as delivered (raw), in delivery order.
async fn delivered_lines(
    client: &BulkClient,
    export: &CompletedExport,
    options: &DownloadOptions,
) -> HashMap<String, Vec<String>> {
    let mut by_file: HashMap<String, Vec<String>> = HashMap::new();
    for file in export.files(FileKind::Output) {
        let lines: Vec<_> = client
            .download_lines(&file, options)
            .try_collect()
            .await
            .unwrap();
        let texts = lines
            .iter()
            .map(|r| String::from_utf8(r.resource.to_vec()).unwrap())
            .collect();
        by_file.insert(file.file.url.expose().to_owned(), texts);
    }
    by_file
}

#[tokio::test]
async fn whole_export_as_default_resources() {
    let server = server(TestServer::builder().patients(6).max_resources_per_file(10)).await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let export = export(&client, ExportRequest::system()).await;
    let want = expected(&server, &export, FileKind::Output);
    assert!(want.len() > 4, "types split over several files");
    let records: Vec<_> = client
        .download_resources::<Resource>(&export, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    let mut got: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for r in &records {
        let url = &r.file.url;
        assert_eq!(r.file.resource_type.as_deref(), Some(r.resource_type()));
        assert!(r.id().is_some());
        assert!(r.last_updated().is_some());
        got.entry(url.clone())
            .or_default()
            .push((r.line, r.raw().to_string()));
    }
    assert_eq!(got.len(), want.len());
    for (url, lines) in want {
        let delivered = &got[&url];
        let texts: Vec<String> = delivered.iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(texts, lines, "{url}: every line once, in order");
        let numbers: Vec<u64> = delivered.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (1..=lines.len() as u64).collect::<Vec<_>>());
    }
    // Files were fetched with the token, Accept and gzip.
    let file_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/files/"))
        .collect();
    assert!(!file_requests.is_empty());
    for r in file_requests {
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
        assert_eq!(r.header("accept"), Some("application/fhir+ndjson"));
        assert_eq!(r.header("accept-encoding"), Some("gzip"));
    }
}

#[derive(Debug, Deserialize)]
struct Narrow {
    id: String,
    status: Option<String>,
    subject: Option<Reference>,
}

#[derive(Debug, Deserialize)]
struct Reference {
    reference: String,
}

#[tokio::test]
async fn own_struct_and_value() {
    let server = server(TestServer::builder().patients(3)).await;
    let client = client(&server, &Sleeps::default());
    let export = export(&client, ExportRequest::system().types(["Observation"])).await;
    let file = &export.files(FileKind::Output)[0];
    let narrow: Vec<_> = client
        .download_file::<Narrow>(file, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(narrow.len() as u64, file.file.count.unwrap());
    assert!(
        narrow
            .iter()
            .all(|o| !o.id.is_empty() && o.status.is_some())
    );
    assert!(
        narrow[0]
            .subject
            .as_ref()
            .unwrap()
            .reference
            .starts_with("Patient/")
    );
    let values: Vec<_> = client
        .download_file::<serde_json::Value>(file, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(values[0]["resourceType"], "Observation");
    assert_eq!(values[0]["id"], narrow[0].id.as_str());
}

/// Cuts the connection at the given byte offsets (one per request) and compares what was
/// delivered with the file.
async fn survives_cuts(offsets: Vec<u64>, ranges: bool, gzip: bool) -> usize {
    let builder = TestServer::builder()
        .patients(8)
        .resource_types(["Observation"])
        .accept_ranges(ranges)
        .gzip(gzip);
    let server = server(builder).await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let export = export(&client, ExportRequest::system()).await;
    for &n in &offsets {
        server.add_fault(Fault::drop_after(n).on_all_files().times(1));
    }
    let got = delivered_lines(&client, &export, &DownloadOptions::default()).await;
    let want = expected(&server, &export, FileKind::Output);
    assert_eq!(
        got, want,
        "cuts at {offsets:?}, ranges {ranges}, gzip {gzip}"
    );
    // A cut past the end of what a response carries does not happen, so count the retries.
    let file_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/files/"))
        .collect();
    let retries = file_requests.len() - 1;
    assert!(retries <= offsets.len());
    let ranged = file_requests
        .iter()
        .filter(|r| r.header("range").is_some())
        .count();
    if ranges {
        assert_eq!(ranged, retries, "every retry resumed with Range");
        for r in file_requests.iter().filter(|r| r.header("range").is_some()) {
            let validator = r
                .header("if-range")
                .expect("If-Range pins the resumed range");
            assert!(validator.starts_with('"'), "a strong ETag: {validator}");
        }
    } else {
        assert_eq!(ranged, 0);
    }
    retries
}

#[tokio::test]
async fn resumes_with_range() {
    assert_eq!(survives_cuts(vec![1000, 5000, 17], true, false).await, 3);
}

#[tokio::test]
async fn resumes_gzip_with_range() {
    assert_eq!(survives_cuts(vec![300, 2000], true, true).await, 2);
}

#[tokio::test]
async fn restarts_and_skips_without_range() {
    assert_eq!(survives_cuts(vec![1500, 9000, 4], false, false).await, 3);
}

#[tokio::test]
async fn restarts_gzip_without_range() {
    assert_eq!(survives_cuts(vec![700, 3], false, true).await, 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Any cuts, any Range support, any encoding: every line exactly once.
    #[test]
    fn exactly_once_through_random_cuts(
        offsets in prop::collection::vec(1u64..20_000, 1..4),
        ranges in any::<bool>(),
        gzip in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(survives_cuts(offsets, ranges, gzip));
    }
}

#[tokio::test]
async fn server_errors_and_throttling_on_files_are_retried() {
    let server = server(
        TestServer::builder()
            .patients(2)
            .resource_types(["Patient"]),
    )
    .await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let export = export(&client, ExportRequest::system()).await;
    server.add_fault(Fault::http_status(503).times(1));
    server.add_fault(Fault::too_many_requests(Some("3")).times(1));
    let got = delivered_lines(&client, &export, &DownloadOptions::default()).await;
    assert_eq!(got, expected(&server, &export, FileKind::Output));
    let waits = sleeps.taken();
    assert!(
        waits.contains(&Duration::from_secs(3)),
        "Retry-After honoured: {waits:?}"
    );
}

#[tokio::test]
async fn a_stalled_body_times_out_and_resumes() {
    let server = server(
        TestServer::builder()
            .patients(2)
            .resource_types(["Patient"]),
    )
    .await;
    let sleeps = Sleeps::default();
    let client = BulkClient::builder(server.base_url().as_str())
        .bearer_token(TOKEN)
        .sleep_fn(sleeps.sleep_fn())
        .read_timeout(Duration::from_millis(300))
        .retry_policy(RetryPolicy::default().with_min_delay(Duration::from_millis(1)))
        .build()
        .unwrap();
    let export = client.export(&ExportRequest::system()).await.unwrap();
    server.add_fault(Fault::stall(Duration::from_secs(30)).times(1));
    let got = delivered_lines(&client, &export, &DownloadOptions::default()).await;
    assert_eq!(got, expected(&server, &export, FileKind::Output));
}

#[tokio::test]
async fn expired_links_are_reported_and_refreshed() {
    let server = server(
        TestServer::builder()
            .patients(2)
            .resource_types(["Patient"]),
    )
    .await;
    let client = client(&server, &Sleeps::default());
    let job = client.kick_off(&ExportRequest::system()).await.unwrap();
    let first = job.wait().await.unwrap();
    server.expire_files();
    let file = &first.files(FileKind::Output)[0];
    let err = client
        .download_lines(file, &DownloadOptions::default())
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FileExpired { .. }), "{err:?}");
    assert!(err.to_string().contains("refresh_manifest"), "{err}");
    let fresh = job.refresh_manifest().await.unwrap();
    let got = delivered_lines(&client, &fresh, &DownloadOptions::default()).await;
    assert_eq!(got, expected(&server, &fresh, FileKind::Output));
}

#[tokio::test]
async fn capability_urls_get_no_token() {
    let server = TestServer::builder()
        .patients(2)
        .resource_types(["Patient"])
        .requires_access_token(false)
        .start()
        .await
        .unwrap();
    let client = client(&server, &Sleeps::default());
    let export = export(&client, ExportRequest::system()).await;
    delivered_lines(&client, &export, &DownloadOptions::default()).await;
    let files: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/files/"))
        .collect();
    assert!(!files.is_empty());
    assert!(files.iter().all(|r| r.header("authorization").is_none()));
}

#[tokio::test]
async fn error_and_deleted_files() {
    let server = server(
        TestServer::builder()
            .patients(2)
            .resource_types(["Patient"])
            .error_file(["error", "warning", "information"])
            .deleted_file(3),
    )
    .await;
    let client = client(&server, &Sleeps::default());
    let export = export(&client, ExportRequest::system()).await;
    let outcomes: Vec<_> = client
        .download_outcomes(&export, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    let severities: Vec<String> = outcomes
        .iter()
        .map(|o| o.issue[0].severity.as_str().to_owned())
        .collect();
    assert_eq!(severities, ["error", "warning", "information"]);
    assert!(outcomes[0].has_errors() && !outcomes[1].has_errors());
    let deleted: Vec<_> = client
        .download_deleted(&export, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(deleted.len(), 3);
    assert!(
        deleted
            .iter()
            .all(|d| !d.resource_type.is_empty() && !d.id.is_empty())
    );
}

#[tokio::test]
async fn organized_output_carries_block_subjects_across_split_files() {
    let server = server(TestServer::builder().patients(4).max_resources_per_file(7)).await;
    let client = client(&server, &Sleeps::default());
    let export = export(
        &client,
        ExportRequest::group("g").organize_output_by("Patient"),
    )
    .await;
    let files = export.files(FileKind::Output);
    assert!(files.len() > 1);
    assert!(files.iter().any(|f| f.file.continues_in_file.is_some()));
    let records: Vec<_> = client
        .download_resources::<Resource>(&export, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    // Files chained by continuesInFile are read in order, one chain after another per
    // concurrent slot: within a chain each block is contiguous and starts with its Patient.
    let mut chain_of: HashMap<String, usize> = HashMap::new();
    for (n, f) in files.iter().enumerate() {
        let chain = *chain_of.entry(fhir_url(f.file.url.expose())).or_insert(n);
        if let Some(next) = &f.file.continues_in_file {
            chain_of.insert(fhir_url(next.expose()), chain);
        }
    }
    let mut per_chain: HashMap<usize, Vec<&fhir_bulk::Record<Resource>>> = HashMap::new();
    for r in &records {
        per_chain.entry(chain_of[&r.file.url]).or_default().push(r);
    }
    let mut seen_subjects: Vec<String> = Vec::new();
    for chain in per_chain.values() {
        let mut last: Option<String> = None;
        for r in chain {
            let subject = r.block.as_deref().unwrap().to_owned();
            if last.as_ref() != Some(&subject) {
                assert!(
                    !seen_subjects.contains(&subject),
                    "{subject} block interrupted"
                );
                assert_eq!(
                    r.resource_type(),
                    "Patient",
                    "block starts with its Patient"
                );
                assert_eq!(format!("Patient/{}", r.id().unwrap()), subject);
                seen_subjects.push(subject.clone());
                last = Some(subject);
            }
        }
    }
    assert_eq!(seen_subjects.len(), 4);
    assert!(
        records.iter().all(|r| r.resource_type() != "Parameters"),
        "headers not yielded"
    );
}

#[tokio::test]
async fn saves_files_to_a_directory() {
    let server = server(
        TestServer::builder()
            .patients(3)
            .max_resources_per_file(5)
            .resource_types(["Patient", "Observation"])
            .error_file(["warning"]),
    )
    .await;
    let client = client(&server, &Sleeps::default());
    let export = export(&client, ExportRequest::system()).await;
    for gzip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let report = client
            .save_export(&export, dir.path(), &SaveOptions::default().with_gzip(gzip))
            .await
            .unwrap();
        assert_eq!(report.files.len(), export.all_files().len());
        let ext = if gzip { "ndjson.gz" } else { "ndjson" };
        assert!(dir.path().join(format!("Patient.1.{ext}")).exists());
        assert!(dir.path().join(format!("Observation.2.{ext}")).exists());
        assert!(
            dir.path()
                .join(format!("error/OperationOutcome.1.{ext}"))
                .exists()
        );
        for saved in &report.files {
            let bytes = std::fs::read(&saved.path).unwrap();
            assert_eq!(bytes.len() as u64, saved.bytes);
            let text = if gzip {
                let mut out = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(&bytes[..]),
                    &mut out,
                )
                .unwrap();
                out
            } else {
                String::from_utf8(bytes).unwrap()
            };
            let want: Vec<String> = server
                .file_lines(
                    export
                        .all_files()
                        .iter()
                        .find(|f| f.file.url == saved.url)
                        .unwrap()
                        .file
                        .url
                        .expose(),
                )
                .unwrap()
                .collect();
            assert_eq!(
                text,
                want.iter().map(|l| format!("{l}\n")).collect::<String>()
            );
            assert_eq!(saved.lines, want.len() as u64);
        }
        let leftovers: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| p.ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Saving again with skip_existing leaves everything alone.
        let again = client
            .save_export(
                &export,
                dir.path(),
                &SaveOptions::default()
                    .with_gzip(gzip)
                    .with_skip_existing(true),
            )
            .await
            .unwrap();
        assert!(again.files.iter().all(|f| f.skipped));
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// A manifest URL as `Record::file.url` shows it (the query string redacted).
fn fhir_url(url: &str) -> String {
    match url.split_once('?') {
        Some((head, _)) => format!("{head}?[redacted]"),
        None => url.to_owned(),
    }
}

/// Files download concurrently: while the first file's body stalls, the others deliver. With
/// concurrency 1 the files come one after another, in manifest order.
#[tokio::test]
async fn files_download_concurrently() {
    let server = server(
        TestServer::builder()
            .patients(10)
            .resource_types(["Patient"])
            .max_resources_per_file(2),
    )
    .await;
    let client = client(&server, &Sleeps::default());
    let export = export(&client, ExportRequest::system()).await;
    let files: Vec<String> = export
        .files(FileKind::Output)
        .into_iter()
        .map(|f| f.file.url.expose().to_owned())
        .collect();
    assert_eq!(files.len(), 5);
    let stalled = Fault::stall(Duration::from_secs(2)).on_file_index(0);

    server.add_fault(stalled.clone());
    let order: Vec<String> = client
        .download_resources::<Resource>(&export, &DownloadOptions::default())
        .map_ok(|r| r.file.url.clone())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(order.len(), 10);
    assert_ne!(
        order[0], files[0],
        "the stalled first file did not hold the others up"
    );
    let at_once = server
        .requests()
        .iter()
        .filter(|r| r.path.contains("/files/"))
        .take(4)
        .map(|r| r.path.clone())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(at_once, 4, "four different files requested first");

    server.clear_requests();
    server.add_fault(stalled);
    let order: Vec<String> = client
        .download_resources::<Resource>(&export, &DownloadOptions::default().with_concurrency(1))
        .map_ok(|r| r.file.url.clone())
        .try_collect()
        .await
        .unwrap();
    let expected: Vec<String> = files.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
    assert_eq!(order, expected, "one file at a time, in manifest order");
}
