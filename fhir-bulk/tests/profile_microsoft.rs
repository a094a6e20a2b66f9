//! The Microsoft (Azure Health Data Services FHIR service) profile, replayed from the spec
//! digest: GET kick-off with `_till`, `[base]/_operations/export/{id}` status answers with no
//! `Retry-After` but `x-ms-retry-after-ms` when throttled, and a cancel answered with 200 and
//! the manifest of what was written.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::{DeleteOutcome, Error, ExportRequest, PollStatus, ServerProfile};
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn till_ms_retry_after_and_a_manifest_after_cancel() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .and(header("accept", "application/fhir+json"))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Content-Location",
            format!("{base}/fhir/_operations/export/41"),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/_operations/export/41"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Retry-After", "2")
                .insert_header("x-ms-retry-after-ms", "1500"),
        )
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/_operations/export/41"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "2024-02-01T10:00:00.000+00:00",
            "request": format!("{base}/fhir/$export?_type=Patient"),
            "requiresAccessToken": false,
            "output": [{"type": "Patient",
                        "url": "https://acct.blob.core.windows.net/exports/Patient-1-1.ndjson",
                        "count": 5000}],
            "error": []
        })))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = common::builder(&server, &sleeps)
        .server_profile(ServerProfile::Microsoft)
        .build()
        .unwrap();
    let request = ExportRequest::system()
        .types(["Patient"])
        .since("2024-01-01T00:00:00Z")
        .until("2024-02-01T00:00:00Z")
        .param("_container", "exports");
    let job = client.kick_off(&request).await.unwrap();
    let sent = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        sent.url.query(),
        Some(
            "_type=Patient&_since=2024-01-01T00:00:00Z&_till=2024-02-01T00:00:00Z&_container=exports"
        )
    );
    match job.poll().await.unwrap() {
        PollStatus::InProgress(p) => {
            assert_eq!(p.retry_after, Some(Duration::from_millis(1500)));
        }
        other => panic!("{other:?}"),
    }
    let report = job.cancel().await.unwrap();
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    let partial = report
        .partial_manifest
        .expect("the manifest of the cancelled job");
    assert_eq!(partial.output.len(), 1);
    let advice = ServerProfile::Microsoft
        .file_url_advice(partial.output[0].url.expose())
        .unwrap();
    assert!(advice.contains("Azure Storage"), "{advice}");
}

#[tokio::test]
async fn post_and_unknown_parameters_are_refused_before_sending() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let client = common::builder(&server, &Sleeps::default())
        .server_profile(ServerProfile::Microsoft)
        .build()
        .unwrap();
    for (request, parameter) in [
        (ExportRequest::system().post(), "method"),
        (
            ExportRequest::system().param("_format", "x").lenient(true),
            "_format",
        ),
        (
            ExportRequest::system()
                .param("_exportId", "x")
                .lenient(true),
            "_exportId",
        ),
        (
            ExportRequest::system().organize_output_by("Patient"),
            "organizeOutputBy",
        ),
    ] {
        match client.kick_off(&request).await {
            Err(Error::InvalidRequest { parameter: p, .. }) => assert_eq!(p, parameter),
            other => panic!("{other:?}"),
        }
    }
}

/// A poll after the DELETE that answers 200 with the manifest of what was written (the OSS
/// server's cancelled job) is a cancelled job with partial output, not a completed export;
/// before any DELETE the same answer is a completed export.
#[tokio::test]
async fn a_200_with_a_partial_manifest_after_cancel_is_a_cancelled_job() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Content-Location",
            format!("{base}/fhir/_operations/export/42"),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/_operations/export/42"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "2024-02-01T10:00:00.000+00:00",
            "request": format!("{base}/fhir/$export"),
            "requiresAccessToken": false,
            "output": [{"type": "Patient",
                        "url": "https://acct.blob.core.windows.net/exports/Patient-1-1.ndjson",
                        "count": 12}],
            "error": []
        })))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/_operations/export/42"))
        .respond_with(ResponseTemplate::new(202))
        .expect(2)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = common::builder(&server, &sleeps)
        .server_profile(ServerProfile::Microsoft)
        .build()
        .unwrap();
    let job = client.kick_off(&ExportRequest::system()).await.unwrap();
    // Not cancelled yet: the same answer is a completed export.
    assert!(matches!(job.poll().await.unwrap(), PollStatus::Complete(_)));

    let report = job.cancel().await.unwrap();
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    match job.poll().await.unwrap() {
        PollStatus::Cancelled(partial) => assert_eq!(partial.output.len(), 1),
        other => panic!("expected a cancelled job, got {other:?}"),
    }
    // A clone of the job knows it too, and a wait reports the cancel, typed.
    match job.clone().wait().await {
        Err(Error::JobCancelled {
            status_url,
            partial,
        }) => {
            assert!(
                status_url.ends_with("/fhir/_operations/export/42"),
                "{status_url}"
            );
            assert_eq!(partial.unwrap().output[0].count, Some(12));
        }
        other => panic!("expected JobCancelled, got {other:?}"),
    }

    // The generic profile keeps the standard reading (a 200 is a complete export).
    let generic = common::builder(&server, &sleeps).build().unwrap();
    let job = generic.kick_off(&ExportRequest::system()).await.unwrap();
    let _ = job.cancel().await;
    assert!(matches!(job.poll().await.unwrap(), PollStatus::Complete(_)));
}
