//! `--attachments` end to end against the test server: DocumentReference and DiagnosticReport
//! attachments (relative and absolute Binary URLs) saved beside the data or inlined, the counts
//! in `log.ndjson` and on the terminal, and a download killed mid-attachment that the next
//! process continues with a range.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[path = "cli/support.rs"]
#[allow(dead_code)] // each test file uses some of the helpers
mod support;

use fhir_bulk_test_server::{Fault, TestServer};
use std::path::Path;
use std::time::Duration;
use support::*;

async fn attachment_server(fault: Option<Fault>) -> TestServer {
    let mut builder = TestServer::builder()
        .patients(2)
        .resource_types(["Patient"])
        .attachments(2)
        .require_bearer(TOKEN);
    if let Some(fault) = fault {
        builder = builder.fault(fault);
    }
    server(builder).await
}

fn export_complete(dir: &Path) -> serde_json::Value {
    events(dir)
        .into_iter()
        .rev()
        .find(|e| e["eventId"] == "export_complete")
        .expect("export_complete logged")["eventDetail"]
        .clone()
}

fn binary_gets(server: &TestServer, id: &str) -> Vec<fhir_bulk_test_server::RecordedRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&format!("/Binary/{id}")))
        .collect()
}

#[tokio::test]
async fn attachments_are_saved_logged_and_counted() {
    let srv = attachment_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--output-dir",
        s(&out),
        FAST,
        "--token",
        TOKEN,
        "--attachments",
        "save",
    ])
    .await;
    assert_code(&r, 0);
    assert!(
        r.all().contains("attachments: 6 saved, 0 inlined"),
        "{}",
        r.all()
    );
    assert_eq!(export_complete(&out)["attachments"], 6);
    let done = events(&out)
        .into_iter()
        .find(|e| e["eventId"] == "attachments_complete")
        .unwrap();
    assert_eq!(done["eventDetail"]["saved"], 6);
    assert_eq!(done["eventDetail"]["failed"], 0);
    for b in srv.dataset().binaries() {
        let owner = b.resource.split('/').next().unwrap();
        let id = b.resource.rsplit('/').next().unwrap();
        let ext = match b.content_type.as_str() {
            "application/pdf" => "pdf",
            "text/html" => "html",
            _ => "txt",
        };
        let path = out.join(format!("attachments/{owner}/{id}.0.{ext}"));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            srv.dataset().binary_content(&b.id).unwrap(),
            "{}",
            path.display()
        );
    }
    let docs = read(&out.join("DocumentReference.1.ndjson"));
    assert!(docs.contains("\"url\":\"attachments/DocumentReference/doc-1.0.txt\""));
    assert!(!docs.contains("Binary/"));
    assert_absent(&read(&out.join("log.ndjson")), TOKEN, "log.ndjson");
    // The rewritten files' sizes are recorded: the export is complete, nothing to redo.
    let again = run(&[
        "export",
        &base,
        "--output-dir",
        s(&out),
        FAST,
        "--token",
        TOKEN,
        "--attachments",
        "save",
    ])
    .await;
    assert_code(&again, 0);
    assert!(again.all().contains("already complete"), "{}", again.all());
}

#[tokio::test]
async fn inline_mode_puts_small_text_into_the_resources() {
    let srv = attachment_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--output-dir",
        s(&out),
        FAST,
        "--token",
        TOKEN,
        "--attachments",
        "inline",
        "--inline-attachment-types",
        "text/plain,text/html",
    ])
    .await;
    assert_code(&r, 0);
    // Three text notes and two HTML reports inlined; the PDF left as it was.
    assert!(
        r.all()
            .contains("attachments: 0 saved, 5 inlined, 0 already in place, 1 skipped"),
        "{}",
        r.all()
    );
    assert_eq!(export_complete(&out)["attachments"], 5);
    let docs = read(&out.join("DocumentReference.1.ndjson"));
    assert_eq!(docs.matches("\"data\":").count(), 3);
    assert!(
        !out.join("attachments/DocumentReference/doc-1.0.txt")
            .exists()
    );
}

#[tokio::test]
async fn an_attachment_cut_by_a_killed_process_is_continued_by_the_next() {
    // The PDF trickles, so the first process is still on it when it is killed.
    let srv = attachment_server(Some(
        Fault::trickle(8 * 1024, Duration::from_millis(100)).on_binary("b-doc-4"),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let args = [
        "export",
        &base,
        "--output-dir",
        s(&out),
        FAST,
        "--token",
        TOKEN,
        "--attachments",
        "save",
    ];
    let mut first = command(&args).spawn().unwrap();
    let sidecar = out.join("attachments/DocumentReference/doc-4.0.pdf.part.resume");
    wait_until("the PDF is partly saved", || {
        std::fs::read(&sidecar)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some()
    })
    .await;
    first.start_kill().unwrap();
    let killed = wait(first).await;
    assert_ne!(killed.code, Some(0));
    assert!(
        !out.join("attachments/DocumentReference/doc-4.0.pdf")
            .exists()
    );

    let second = run(&args).await;
    assert_code(&second, 0);
    let gets = binary_gets(&srv, "b-doc-4");
    assert_eq!(gets.len(), 2, "one cut, one continued");
    let range = gets[1]
        .header("range")
        .expect("the second asks for a range");
    let offset: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(offset >= 64 * 1024, "{range}");
    assert_eq!(
        std::fs::read(out.join("attachments/DocumentReference/doc-4.0.pdf")).unwrap(),
        srv.dataset().binary_content("b-doc-4").unwrap()
    );
    assert_eq!(export_complete(&out)["attachments"], 6);
    // Each other attachment was downloaded once, across both processes.
    for id in ["b-doc-1", "b-doc-2", "b-doc-3"] {
        assert_eq!(binary_gets(&srv, id).len(), 1, "{id}");
    }
}
