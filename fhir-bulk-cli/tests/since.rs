//! Incremental exports, end to end: `--since auto` keeps a history of dated runs under
//! `--output-dir` with `latest.json`; the second run's kick-off carries the first's
//! `transactionTime` as `_since`; another request does not reuse it; an interrupted run is
//! resumed in its own subdirectory, never taken as complete; `download --since` is refused.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[path = "cli/support.rs"]
#[allow(dead_code)] // each test file uses some of the helpers
mod support;

use fhir_bulk_test_server::{Fault, TestServer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

/// The run subdirectories of a history root, oldest first.
fn runs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

fn pointer(root: &Path) -> Value {
    serde_json::from_str(&read(&root.join("latest.json"))).unwrap()
}

/// The `_since` values of the kick-offs the server received, in order.
fn sinces(server: &TestServer) -> Vec<Option<String>> {
    kickoffs(server)
        .iter()
        .map(|k| {
            k.query_pairs()
                .into_iter()
                .find(|(n, _)| n == "_since")
                .map(|(_, v)| v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_auto_sends_the_last_complete_exports_transaction_time() {
    let srv = server(
        TestServer::builder()
            .patients(2)
            .polls_before_complete(0)
            .deleted_file(1),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("history");
    let base = srv.base_url().to_string();
    let args = [
        "export",
        &base,
        "--type",
        "Patient,Observation",
        "--since",
        "auto",
        "--output-dir",
        s(&root),
        FAST,
    ];
    let first = run(&args).await;
    assert_code(&first, 0);
    assert!(
        first.all().contains("no complete export of this request"),
        "the first run says it is a full export: {first:#?}"
    );
    let after_first = pointer(&root);
    let time = after_first["latest"]["transactionTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_dir = runs(&root);
    assert_eq!(first_dir.len(), 1, "{first_dir:?}");
    assert!(first_dir[0].join("manifest.json").exists());
    assert!(first_dir[0].join("deleted/Bundle.1.ndjson").exists());
    assert_eq!(
        after_first["latest"]["dir"].as_str().unwrap(),
        first_dir[0].file_name().unwrap().to_str().unwrap()
    );

    // The same command again: an incremental export from the first one's transactionTime,
    // in a subdirectory of its own (with its own deleted/).
    let second = run(&args).await;
    assert_code(&second, 0);
    assert_eq!(sinces(&srv), vec![None, Some(time.clone())], "{second:#?}");
    assert!(second.all().contains(&time), "{second:#?}");
    let both = runs(&root);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[1].join("deleted/Bundle.1.ndjson").exists());
    assert!(both[0].join("deleted/Bundle.1.ndjson").exists());
    let after_second = pointer(&root);
    assert_eq!(
        after_second["latest"]["dir"].as_str().unwrap(),
        both[1].file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(
        after_second["latest"]["since"].as_str(),
        Some(time.as_str())
    );
    assert_ne!(
        after_second["latest"]["transactionTime"].as_str(),
        Some(time.as_str())
    );

    // Another request (other types) has no history yet: a full export, and the first
    // request's entry stays.
    let other = run(&[
        "export",
        &base,
        "--type",
        "Patient",
        "--since",
        "auto",
        "--output-dir",
        s(&root),
        FAST,
    ])
    .await;
    assert_code(&other, 0);
    assert_eq!(sinces(&srv).last().unwrap(), &None, "{other:#?}");
    assert_eq!(pointer(&root)["requests"].as_object().unwrap().len(), 2);

    // A plain export into the history root is refused, naming the flags.
    let plain = run(&["export", &base, "--output-dir", s(&root), FAST]).await;
    assert_code(&plain, 2);
    assert!(plain.stderr.contains("--history"), "{plain:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_is_resumed_in_its_subdirectory_not_taken_as_complete() {
    let srv = server(
        TestServer::builder()
            .patients(2)
            .polls_before_complete(0)
            .fault(
                Fault::stall(Duration::from_secs(10))
                    .on_file("Patient.1.ndjson")
                    .times(1),
            ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("history");
    let base = srv.base_url().to_string();
    let args = [
        "export",
        &base,
        "--since",
        "auto",
        "--output-dir",
        s(&root),
        "--log-files",
        "all",
        FAST,
    ];
    // Stopped (SIGTERM) while the Patient file stalls.
    let child = command(&args).spawn().unwrap();
    wait_until("Patient is being downloaded", || {
        root.is_dir()
            && runs(&root).iter().any(|run| {
                std::fs::read_to_string(run.join("log.ndjson"))
                    .is_ok_and(|t| t.contains("download_request") && t.contains("Patient"))
            })
    })
    .await;
    signal(&child, "TERM");
    let first = wait(child).await;
    assert_code(&first, 130);
    assert!(
        !root.join("latest.json").exists(),
        "an incomplete run is not recorded: {first:#?}"
    );
    let interrupted = runs(&root);
    assert_eq!(interrupted.len(), 1);
    assert!(!interrupted[0].join("Patient.1.ndjson").exists());
    // The hint names the run's own job state.
    assert!(
        first
            .stderr
            .contains(s(&interrupted[0].join("fhir-bulk-job.json"))),
        "{first:#?}"
    );

    // The rerun resumes that run: no new kick-off, no new subdirectory, no _since.
    let second = run(&args).await;
    assert_code(&second, 0);
    assert_eq!(kickoffs(&srv).len(), 1, "{second:#?}");
    assert_eq!(runs(&root), interrupted);
    assert!(
        second.all().contains("resuming the interrupted run"),
        "{second:#?}"
    );
    assert!(interrupted[0].join("Patient.1.ndjson").exists());
    let time = pointer(&root)["latest"]["transactionTime"]
        .as_str()
        .unwrap()
        .to_owned();

    // Now complete: the next run is incremental, in a new subdirectory.
    let third = run(&args).await;
    assert_code(&third, 0);
    assert_eq!(sinces(&srv), vec![None, Some(time)]);
    assert_eq!(runs(&root).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_with_download_and_two_sinces_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(&[
        "download",
        "--since",
        "auto",
        "--output-dir",
        s(dir.path()),
        "http://127.0.0.1:9/jobs/1",
    ])
    .await;
    assert_code(&r, 2);
    assert!(
        r.stderr.contains("--since") && r.stderr.contains("fhir-bulk export --since auto"),
        "{r:#?}"
    );
    let r = run(&[
        "export",
        "http://127.0.0.1:9/fhir",
        "--since",
        "auto",
        "--param",
        "_since=2024-01-01T00:00:00Z",
        "--output-dir",
        s(dir.path()),
    ])
    .await;
    assert_code(&r, 2);
    assert!(r.stderr.contains("--param _since"), "{r:#?}");
}
