//! The SMART reference bulk-data-server profile, replayed from what the spec digest and
//! prior-art.md record: every 202 carries `Retry-After: 1`, and a DELETE of a finished or gone
//! job answers 400 (bulk-data-server #64).
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::{BulkClient, DeleteOutcome, ExportRequest, ServerProfile};
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(server: &MockServer, sleeps: &Sleeps) -> BulkClient {
    BulkClient::builder(format!("{}/fhir", server.uri()))
        .bearer_token("test-token")
        .sleep_fn(sleeps.sleep_fn())
        .server_profile(ServerProfile::SmartReference)
        .build()
        .unwrap()
}

#[tokio::test]
async fn retry_after_one_second_is_followed_and_a_400_delete_means_gone() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/fhir/Patient/$export"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{base}/fhir/bulkstatus/abc")),
        )
        .expect(1)
        .mount(&server)
        .await;
    // Six in-progress answers, then the manifest.
    Mock::given(method("GET"))
        .and(path("/fhir/bulkstatus/abc"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Retry-After", "1")
                .insert_header("X-Progress", "50% complete"),
        )
        .up_to_n_times(6)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/bulkstatus/abc"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "2024-05-01T00:00:00.000Z",
            "request": format!("{base}/fhir/Patient/$export"),
            "requiresAccessToken": true,
            "output": [{"type": "Patient", "url": format!("{base}/fhir/bulkfiles/1.Patient.ndjson"), "count": 100}],
            "error": []
        })))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/bulkstatus/abc"))
        .respond_with(ResponseTemplate::new(400).set_body_json(common::outcome(
            "error",
            "processing",
            "The requested job has already been completed",
        )))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let job = client
        .kick_off(&ExportRequest::all_patients())
        .await
        .unwrap();
    let export = job.wait().await.unwrap();
    assert_eq!(export.all_files().len(), 1);
    // One second each time, not a schedule growing to 2, 3, 5, 8, ... s.
    assert_eq!(sleeps.taken(), vec![Duration::from_secs(1); 6]);
    let report = job.delete().await.unwrap();
    assert_eq!(report.outcome, DeleteOutcome::AlreadyGone);
    assert!(report.operation_outcome.is_some());
}

#[tokio::test]
async fn without_the_profile_the_400_is_a_failure() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&server)
        .await;
    let client = common::client(&server, &Sleeps::default());
    let job = client
        .job_at(&format!("{}/fhir/bulkstatus/abc", server.uri()))
        .unwrap();
    assert!(job.delete().await.is_err());
}
