//! Resume edge cases a real server can produce, played by a scripted HTTP/1.1 server on
//! 127.0.0.1: a body cut mid-line, then a `206` whose `Content-Range` does not start where the
//! transfer broke off. The client must not splice it in: it reads the file again from the
//! start and skips what it already delivered.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::Sleeps;
use fhir_bulk::resource::Resource;
use fhir_bulk::{BulkClient, DownloadOptions, RetryPolicy};
use futures::TryStreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

fn body() -> String {
    (1..=40)
        .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n"))
        .collect()
}

/// Answers each connection with the next scripted reply; records the request heads.
async fn scripted(replies: Vec<Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        for reply in replies {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_lowercase());
            let _ = socket.write_all(&reply).await;
            let _ = socket.shutdown().await;
        }
    });
    (format!("http://{addr}"), heads)
}

#[tokio::test]
async fn a_range_that_does_not_continue_the_transfer_is_not_spliced() {
    let full = body();
    let len = full.len();
    let cut = 100; // mid-line
    let headers = |status: &str, extra: &str, length: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/fhir+ndjson\r\nAccept-Ranges: bytes\r\n\
             ETag: \"v1\"\r\nConnection: close\r\n{extra}Content-Length: {length}\r\n\r\n"
        )
    };
    // 1: the whole file announced, cut after 100 bytes.
    let mut first = headers("200 OK", "", len).into_bytes();
    first.extend_from_slice(&full.as_bytes()[..cut]);
    // 2: a 206 that starts at 50, not at 100.
    let mut second = headers(
        "206 Partial Content",
        &format!("Content-Range: bytes 50-{}/{len}\r\n", len - 1),
        len - 50,
    )
    .into_bytes();
    second.extend_from_slice(&full.as_bytes()[50..]);
    // 3: the whole file.
    let mut third = headers("200 OK", "", len).into_bytes();
    third.extend_from_slice(full.as_bytes());
    let (base, heads) = scripted(vec![first, second, third]).await;

    let manifest = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": false,
        "output": [{"type": "Patient", "url": format!("{base}/files/1"), "count": 40}],
        "error": []
    });
    let pages =
        vec![fhir_bulk::Manifest::from_slice(manifest.to_string().as_bytes(), "test").unwrap()];
    let export = fhir_bulk::CompletedExport::from_manifests(Url::parse(&base).unwrap(), pages);
    let sleeps = Sleeps::default();
    let client = BulkClient::builder(format!("{base}/fhir"))
        .sleep_fn(sleeps.sleep_fn())
        .retry_policy(RetryPolicy::default().with_min_delay(Duration::from_millis(1)))
        .build()
        .unwrap();
    let ids: Vec<String> = client
        .download_resources::<Resource>(&export, &DownloadOptions::default())
        .map_ok(|r| r.id().unwrap().to_owned())
        .try_collect()
        .await
        .unwrap();
    let want: Vec<String> = (1..=40).map(|i| format!("p{i}")).collect();
    assert_eq!(ids, want, "every line once, nothing spliced");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads[1].contains(&format!("range: bytes={cut}-")),
        "{}",
        heads[1]
    );
    assert!(heads[1].contains("if-range: \"v1\""), "{}", heads[1]);
    assert!(
        !heads[2].contains("range:"),
        "the third request reads from the start"
    );
}

// ---------------------------------------------------------------------------
// Across processes: a save killed (its future dropped) part-way continues in a new run with a
// fresh client, from the `.part` and its sidecar.

/// A file of `lines` lines of varied length, with CRLF line ends and blank lines here and
/// there; and the NDJSON a save writes from it (LF ends, no blank lines).
fn messy_file(lines: usize) -> (Vec<u8>, String) {
    let mut raw = Vec::new();
    let mut saved = String::new();
    for i in 0..lines {
        let line = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"note\":\"{}\"}}",
            "x".repeat(i % 97)
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

/// Serves `body` at any path: with `ranges`, `Accept-Ranges`, a strong ETag and `206`s for
/// `Range: bytes=N-` pinned by a matching `If-Range`; without, always the whole file.
async fn file_server(body: Vec<u8>, ranges: bool) -> fhir_bulk_test_server::raw::RawServer {
    use fhir_bulk_test_server::raw::{RawReply, RawServer};
    let body = Arc::new(body);
    RawServer::start(move |request, _| {
        let len = body.len();
        let start = request
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|_| ranges && request.header("if-range") == Some("\"v1\""));
        let mut headers = vec![("Content-Type", "application/fhir+ndjson".to_owned())];
        if ranges {
            headers.push(("Accept-Ranges", "bytes".to_owned()));
            headers.push(("ETag", "\"v1\"".to_owned()));
        }
        match start {
            Some(n) if n < len => {
                headers.push(("Content-Range", format!("bytes {n}-{}/{len}", len - 1)));
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                RawReply::framed(206, &headers, &body[n..])
            }
            _ => {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                RawReply::framed(200, &headers, &body)
            }
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
    path: &std::path::Path,
    kill_at: Option<u64>,
) -> Option<fhir_bulk::download::SavedFile> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let client = BulkClient::builder(format!("{base}/fhir"))
        .sleep_fn(Sleeps::default().sleep_fn())
        .retry_policy(RetryPolicy::default().with_min_delay(Duration::from_millis(1)))
        .build()
        .unwrap();
    let kill = Arc::new(AtomicBool::new(false));
    let flag = kill.clone();
    let options = fhir_bulk::download::SaveOptions::default().with_progress(move |_, _, bytes| {
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

fn sidecar_offset(path: &std::path::Path) -> Option<u64> {
    let mut name = path.as_os_str().to_owned();
    name.push(".part.resume");
    let text = std::fs::read(std::path::PathBuf::from(name)).ok()?;
    serde_json::from_slice::<serde_json::Value>(&text).ok()?["offset"].as_u64()
}

/// Each run is a "process" of its own: a fresh runtime and client, dropped after the kill, so
/// file operations it had in flight end with it (as they do when a process dies) instead of
/// racing the next run.
fn run_in_process(
    base: &str,
    file: &fhir_bulk::ExportFile,
    path: &std::path::Path,
    kill_at: Option<u64>,
) -> Option<fhir_bulk::download::SavedFile> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(run_once(base, file, path, kill_at));
    drop(runtime); // waits for its blocking file operations
    result
}

fn survives_kills(kills: Vec<u64>, ranges: bool) {
    let lines = 6_000;
    let (raw, want) = messy_file(lines);
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime.block_on(file_server(raw.clone(), ranges));
    let base = server.url("");
    let file = one_file_export(&server.url("/files/1"), lines);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Patient.1.ndjson");
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = std::path::PathBuf::from(part);
    let mut offsets = Vec::new();
    let mut finished = None;
    for &at in &kills {
        finished = run_in_process(&base, &file, &path, Some(at));
        if finished.is_some() || (path.exists() && !part.exists()) {
            break; // finished before the kill point, or killed as it renamed the file
        }
        offsets.push(sidecar_offset(&path));
    }
    if finished.is_none() && (part.exists() || !path.exists()) {
        finished = run_in_process(&base, &file, &path, None);
        assert!(finished.is_some(), "a run without a kill point finishes");
    }
    let got = std::fs::read_to_string(&path).unwrap();
    assert!(got == want, "byte-identical file after kills at {kills:?}");
    assert!(!part.exists());
    let Some(saved) = finished else {
        return; // the last kill came as the file was renamed: nothing more to check
    };
    assert_eq!(saved.lines, lines as u64);
    assert_eq!(saved.data_bytes, want.len() as u64);
    // Each run after a kill that left a sidecar asked for the rest of the file only.
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        offsets.len() + 1,
        "one request per run: {kills:?}"
    );
    for (request, offset) in requests.iter().skip(1).zip(&offsets) {
        let range = request.header("range");
        match offset {
            Some(n) if ranges && *n > 0 => {
                assert_eq!(range, Some(format!("bytes={n}-").as_str()));
                assert_eq!(request.header("if-range"), Some("\"v1\""));
                assert_eq!(request.header("accept-encoding"), Some("identity"));
            }
            _ => assert_eq!(range, None),
        }
    }
    if ranges && offsets.last().copied().flatten().is_some_and(|n| n > 0) {
        assert!(saved.resumed_bytes > 0);
    }
}

#[test]
fn a_killed_save_resumes_with_range_in_a_new_run() {
    survives_kills(vec![300_000, 520_000], true);
}

#[test]
fn a_killed_save_resumes_by_skipping_without_range() {
    survives_kills(vec![280_000], false);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, .. Default::default() })]

    /// Killed at any points, with or without Range: the file ends byte-identical, every line
    /// once.
    #[test]
    fn killed_saves_resume_exactly(
        kills in proptest::collection::vec(1u64..700_000, 1..4),
        ranges in proptest::prelude::any::<bool>(),
    ) {
        survives_kills(kills, ranges);
    }
}
