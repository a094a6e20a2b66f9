//! `save_export` and `save_file` futures are `Send`: they run inside `tokio::spawn` on a
//! multi-thread runtime. A regression fails to compile.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

use fhir_bulk::download::{SaveEvent, SaveOptions};
use fhir_bulk::{BulkClient, CompletedExport, Manifest};
use fhir_bulk_test_server::raw::{RawReply, RawServer};
use std::sync::{Arc, Mutex};
use url::Url;

fn assert_send_static<T: Send + 'static>(value: T) -> T {
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_export_and_save_file_can_be_spawned() {
    let line = r#"{"resourceType":"Patient","id":"a"}"#;
    let body = format!("{line}\n");
    let server = RawServer::start(move |_, _| RawReply::framed(200, &[], body.as_bytes()))
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": false,
        "output": [
            {"type": "Patient", "url": server.url("/files/1"), "count": 1},
            {"type": "Patient", "url": server.url("/files/2"), "count": 1}
        ],
        "error": []
    });
    let page = Manifest::from_slice(manifest.to_string().as_bytes(), "test").unwrap();
    let export = CompletedExport::from_manifests(Url::parse(&server.url("/")).unwrap(), vec![page]);
    let client = BulkClient::builder(server.url("/fhir")).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let options = SaveOptions::default().with_on_file(move |event| {
        let name = match event {
            SaveEvent::Started { .. } => "started",
            SaveEvent::Finished(_) => "finished",
            SaveEvent::Failed { .. } => "failed",
            _ => "other",
        };
        seen.lock().unwrap().push(name);
    });

    let path = dir.path().to_owned();
    let (c, e, o) = (client.clone(), export.clone(), options.clone());
    let report = tokio::spawn(assert_send_static(async move {
        c.save_export(&e, &path, &o).await
    }))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.files.len(), 2);
    assert!(
        report
            .files
            .iter()
            .all(|f| f.lines == 1 && f.warnings.is_empty())
    );
    let mut events = events.lock().unwrap().clone();
    events.sort_unstable();
    assert_eq!(events, ["finished", "finished", "started", "started"]);

    let file = export.all_files().remove(0);
    let target = dir.path().join("again.ndjson");
    let saved = tokio::spawn(assert_send_static(async move {
        client
            .save_file(&file, &target, &SaveOptions::default())
            .await
    }))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(saved.lines, 1);
}
