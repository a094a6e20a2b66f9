//! Attachments: DocumentReference and DiagnosticReport content downloaded beside the data or
//! inlined, against the test server (relative and absolute Binary URLs, a Binary JSON answer,
//! a body cut by a fault) and wiremock (size and hash mismatches, a foreign origin).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use base64::Engine;
use fhir_bulk::attachment::{AttachmentError, AttachmentOptions, SkipReason, find_attachments};
use fhir_bulk::download::SaveOptions;
use fhir_bulk::{BulkClient, ExportRequest, SleepFn};
use fhir_bulk_test_server::{Fault, TestServer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "attachment-token";

fn instant_sleep() -> SleepFn {
    Arc::new(|_| Box::pin(async {}))
}

async fn server(faults: Vec<Fault>) -> TestServer {
    let mut builder = TestServer::builder()
        .patients(2)
        .resource_types(["Patient"])
        .attachments(2)
        .require_bearer(TOKEN)
        .polls_before_complete(0);
    for fault in faults {
        builder = builder.fault(fault);
    }
    builder.start().await.unwrap()
}

fn client(base: &str) -> BulkClient {
    BulkClient::builder(base)
        .bearer_token(TOKEN)
        .sleep_fn(instant_sleep())
        .build()
        .unwrap()
}

/// Exports and saves the data; returns the saved DocumentReference and DiagnosticReport files.
async fn export(server: &TestServer, dir: &Path) -> (BulkClient, fhir_bulk::download::SaveReport) {
    let client = client(server.base_url().as_str());
    let export = client
        .kick_off(&ExportRequest::system())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let saved = client
        .save_export(&export, dir, &SaveOptions::default())
        .await
        .unwrap();
    (client, saved)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn binary_requests(server: &TestServer) -> Vec<fhir_bulk_test_server::RecordedRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/Binary/"))
        .collect()
}

#[tokio::test]
async fn relative_and_absolute_urls_are_saved_beside_the_data_and_a_rerun_skips_them() {
    let server = server(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, saved) = export(&server, dir.path()).await;
    let binaries = server.dataset().binaries();
    assert_eq!(
        binaries.len(),
        6,
        "4 DocumentReferences and 2 DiagnosticReports"
    );
    assert!(binaries.iter().any(|b| b.absolute) && binaries.iter().any(|b| !b.absolute));
    assert!(binaries.iter().any(|b| b.is_large()));
    let original = lines(&dir.path().join("DocumentReference.1.ndjson"));

    let report = client
        .save_export_attachments(&saved, &AttachmentOptions::save())
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.saved, 6);
    assert_eq!(report.inlined, 0);
    assert_eq!(report.files_rewritten, 2);
    let content_bytes: u64 = binaries.iter().map(|b| b.size).sum();
    assert_eq!(report.bytes, content_bytes);

    // Every Binary request carried the token (same origin as the FHIR base).
    let requests = binary_requests(&server);
    assert_eq!(requests.len(), 6);
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}")))
    );

    // The resources point at the saved files; the files hold the served bytes.
    let rewritten = lines(&dir.path().join("DocumentReference.1.ndjson"));
    assert_eq!(rewritten.len(), original.len());
    for (line, before) in rewritten.iter().zip(&original) {
        assert!(
            line.starts_with(r#"{"resourceType":"DocumentReference""#),
            "order kept"
        );
        let found = &find_attachments(line.as_bytes())[0];
        let was = &find_attachments(before.as_bytes())[0];
        let url = found.url.as_deref().unwrap();
        assert!(url.starts_with("attachments/DocumentReference/"), "{url}");
        assert_eq!((found.size, &found.hash), (was.size, &was.hash));
        let id = was.url.as_deref().unwrap().rsplit('/').next().unwrap();
        let bytes = std::fs::read(dir.path().join(url)).unwrap();
        assert_eq!(bytes, server.dataset().binary_content(id).unwrap(), "{id}");
        // Only the url changed.
        let mut a: serde_json::Value = serde_json::from_str(line).unwrap();
        let b: serde_json::Value = serde_json::from_str(before).unwrap();
        a["content"][0]["attachment"]["url"] = b["content"][0]["attachment"]["url"].clone();
        assert_eq!(a, b);
    }
    let report_line = &lines(&dir.path().join("DiagnosticReport.1.ndjson"))[0];
    let form = &find_attachments(report_line.as_bytes())[0];
    assert!(
        dir.path().join(form.url.as_deref().unwrap()).is_file(),
        "{form:?}"
    );
    // Nothing temporary is left.
    let leftovers: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A rerun downloads nothing and changes nothing.
    server.clear_requests();
    let again = client
        .save_export_attachments(&saved, &AttachmentOptions::save())
        .await
        .unwrap();
    assert_eq!(
        (again.saved, again.present, again.files_rewritten),
        (0, 6, 0)
    );
    assert!(binary_requests(&server).is_empty());
    assert_eq!(
        lines(&dir.path().join("DocumentReference.1.ndjson")),
        rewritten
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_binary_json_answer_is_unwrapped() {
    let server = server(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, saved) = export(&server, dir.path()).await;
    let options = AttachmentOptions::save().with_accept("application/fhir+json");
    let report = client
        .save_export_attachments(&saved, &options)
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.saved, 6);
    let requests = binary_requests(&server);
    assert!(
        requests
            .iter()
            .all(|r| r.header("accept") == Some("application/fhir+json"))
    );
    for b in server.dataset().binaries() {
        let owner = if b.resource.starts_with("Diag") {
            "DiagnosticReport"
        } else {
            "DocumentReference"
        };
        let id = b.resource.rsplit('/').next().unwrap();
        let ext = match b.content_type.as_str() {
            "application/pdf" => "pdf",
            "text/html" => "html",
            _ => "txt",
        };
        let saved = dir.path().join(format!("attachments/{owner}/{id}.0.{ext}"));
        assert_eq!(
            std::fs::read(&saved).unwrap(),
            server.dataset().binary_content(&b.id).unwrap()
        );
    }
}

#[tokio::test]
async fn inline_mode_inlines_allowed_types_under_the_limit_and_skips_the_rest() {
    let server = server(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, saved) = export(&server, dir.path()).await;
    let binaries = server.dataset().binaries();
    let limit = 1_000;
    let small_text = binaries
        .iter()
        .filter(|b| b.content_type != "application/pdf" && b.size < limit)
        .count() as u64;
    let big_text = binaries
        .iter()
        .filter(|b| b.content_type != "application/pdf" && b.size >= limit)
        .count();
    assert!(small_text > 0 && big_text > 0, "both cases are there");
    let options = AttachmentOptions::inline().with_inline_smaller_than(limit);
    let report = client
        .save_export_attachments(&saved, &options)
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.inlined, small_text);
    assert_eq!(report.saved, 0);
    let by = |reason: SkipReason| report.skipped.iter().filter(|s| s.reason == reason).count();
    assert_eq!(by(SkipReason::TypeNotInlined), 1, "the PDF");
    assert_eq!(by(SkipReason::TooLargeToInline), big_text);
    // The PDF (not allowed) and the big notes (their `size` says so) were not downloaded.
    assert_eq!(binary_requests(&server).len() as u64, small_text);
    let mut inlined = 0;
    for file in ["DocumentReference.1.ndjson", "DiagnosticReport.1.ndjson"] {
        for line in lines(&dir.path().join(file)) {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let attachment = value["content"][0]["attachment"]
                .as_object()
                .or_else(|| value["presentedForm"][0].as_object())
                .unwrap();
            let url = attachment["url"].as_str().unwrap();
            assert!(url.contains("Binary/"), "the url is kept: {url}");
            if let Some(data) = attachment.get("data") {
                inlined += 1;
                let id = url.rsplit('/').next().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.as_str().unwrap())
                    .unwrap();
                assert_eq!(bytes, server.dataset().binary_content(id).unwrap());
            }
        }
    }
    assert_eq!(inlined, small_text);
    // Inline mode leaves no files behind.
    let files: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("attachments"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test]
async fn a_cut_attachment_is_resumed_with_a_range() {
    let large = "b-doc-4";
    let server = server(vec![Fault::drop_after(50_000).on_binary(large)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, saved) = export(&server, dir.path()).await;
    let report = client
        .save_export_attachments(&saved, &AttachmentOptions::save())
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.saved, 6);
    let tries: Vec<_> = binary_requests(&server)
        .into_iter()
        .filter(|r| r.path.ends_with(large))
        .collect();
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[1].header("range"), Some("bytes=50000-"));
    assert_eq!(tries[1].header("if-range"), Some("\"b-doc-4-raw\""));
    let bytes =
        std::fs::read(dir.path().join("attachments/DocumentReference/doc-4.0.pdf")).unwrap();
    assert_eq!(bytes, server.dataset().binary_content(large).unwrap());
}

#[tokio::test]
async fn a_pass_resumes_a_part_left_by_an_earlier_process() {
    let server = server(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, saved) = export(&server, dir.path()).await;
    // What an interrupted process leaves: the first 100,000 bytes and a sidecar.
    let content = server.dataset().binary_content("b-doc-4").unwrap();
    let target = dir.path().join("attachments/DocumentReference/doc-4.0.pdf");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let part = PathBuf::from(format!("{}.part", target.display()));
    std::fs::write(&part, &content[..100_000]).unwrap();
    let url = format!("{}Binary/b-doc-4", server.base_url());
    std::fs::write(
        format!("{}.resume", part.display()),
        serde_json::json!({"version": 1, "url": url, "offset": 100_000, "validator": "\"b-doc-4-raw\""})
            .to_string(),
    )
    .unwrap();
    let report = client
        .save_export_attachments(&saved, &AttachmentOptions::save())
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let request = binary_requests(&server)
        .into_iter()
        .find(|r| r.path.ends_with("b-doc-4"))
        .unwrap();
    assert_eq!(request.header("range"), Some("bytes=100000-"));
    assert_eq!(std::fs::read(&target).unwrap(), content);
    assert!(!part.exists());
}

/// A data file with one DocumentReference per attachment, for the wiremock tests.
fn data_file(dir: &Path, attachments: &[serde_json::Value]) -> PathBuf {
    let text: String = attachments
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::json!({
                "resourceType": "DocumentReference",
                "id": format!("d{i}"),
                "content": [{"attachment": a}]
            })
            .to_string()
                + "\n"
        })
        .collect();
    let path = dir.join("DocumentReference.1.ndjson");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn size_and_hash_mismatches_are_typed_errors_and_keep_nothing() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/Binary/b"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"hello".to_vec()))
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let good_hash = "qvTGHdzF6KLavt4PO0gs2a6pQ00="; // SHA-1 of "hello"
    let file = data_file(
        dir.path(),
        &[
            serde_json::json!({"contentType": "text/plain", "url": "Binary/b", "size": 6}),
            serde_json::json!({"contentType": "text/plain", "url": "Binary/b", "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk="}),
            serde_json::json!({"contentType": "text/plain", "url": "Binary/b", "size": 5, "hash": good_hash}),
        ],
    );
    let before = lines(&file);
    let client = client(&format!("{}/fhir", mock.uri()));
    let report = client
        .save_attachments(&file, &AttachmentOptions::save())
        .await
        .unwrap();
    assert_eq!(report.saved, 1);
    assert_eq!(report.failed.len(), 2);
    assert!(matches!(
        report.failed[0].error,
        AttachmentError::SizeMismatch {
            expected: 6,
            actual: 5,
            ..
        }
    ));
    match &report.failed[1].error {
        AttachmentError::HashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, "2jmj7l5rSw0yVb/vlWAYkK/YBwk=");
            assert_eq!(actual, good_hash);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.failed[1].resource, "DocumentReference/d1");
    let after = lines(&file);
    assert_eq!(
        &after[..2],
        &before[..2],
        "failed attachments are left as they were"
    );
    assert!(after[2].contains("attachments/DocumentReference/d2.0.txt"));
    assert!(
        !dir.path()
            .join("attachments/DocumentReference/d0.0.txt")
            .exists()
    );
    assert!(
        !dir.path()
            .join("attachments/DocumentReference/d1.0.txt")
            .exists()
    );
}

#[tokio::test]
async fn the_token_goes_only_to_the_fhir_origin() {
    let fhir = MockServer::start().await;
    let foreign = MockServer::start().await;
    for server in [&fhir, &foreign] {
        Mock::given(method("GET"))
            .and(path("/Binary/x"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(b"doc".to_vec()))
            .mount(server)
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = data_file(
        dir.path(),
        &[
            serde_json::json!({"contentType": "text/plain", "url": "Binary/x"}),
            serde_json::json!({"contentType": "text/plain", "url": format!("{}/Binary/x?sig=abc", foreign.uri())}),
        ],
    );
    let client = client(&fhir.uri());
    let report = client
        .save_attachments(&file, &AttachmentOptions::save())
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.saved, 2);
    let auth = |requests: Vec<wiremock::Request>| -> Vec<Option<String>> {
        requests
            .iter()
            .map(|r| {
                r.headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned())
            })
            .collect()
    };
    assert_eq!(
        auth(fhir.received_requests().await.unwrap()),
        vec![Some(format!("Bearer {TOKEN}"))]
    );
    assert_eq!(auth(foreign.received_requests().await.unwrap()), vec![None]);
}

#[tokio::test]
async fn gzip_data_files_stay_gzip_and_unsupported_urls_are_skipped() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/Binary/y"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"text".to_vec()))
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let plain = data_file(
        dir.path(),
        &[
            serde_json::json!({"contentType": "text/plain", "url": "Binary/y"}),
            serde_json::json!({"contentType": "text/plain", "url": "urn:uuid:1"}),
        ],
    );
    let gz = dir.path().join("DocumentReference.1.ndjson.gz");
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        e.write_all(&std::fs::read(&plain).unwrap()).unwrap();
        e.finish().unwrap();
    }
    std::fs::remove_file(&plain).unwrap();
    let client = client(&mock.uri());
    let report = client
        .save_attachments(&gz, &AttachmentOptions::save())
        .await
        .unwrap();
    assert_eq!(report.saved, 1);
    assert!(matches!(
        report.skipped[0].reason,
        SkipReason::UnsupportedUrl(_)
    ));
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&gz).unwrap()),
        &mut text,
    )
    .unwrap();
    assert!(text.contains("attachments/DocumentReference/d0.0.txt"));
    assert!(text.contains("urn:uuid:1"));
}

#[test]
fn the_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let client = BulkClient::builder("http://127.0.0.1:1/fhir")
        .build()
        .unwrap();
    let options = AttachmentOptions::save();
    let saved = fhir_bulk::download::SaveReport::default();
    send(client.save_attachments(Path::new("x.ndjson"), &options));
    send(client.save_export_attachments(&saved, &options));
}
