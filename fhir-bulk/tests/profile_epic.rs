//! The Epic profile, replayed from the spec digest and prior-art.md: a Group export whose
//! `_typeFilter` values are comma-joined with their own commas backslash-escaped, the
//! `Epic-Client-ID` header, slow polling (no Retry-After), and a DELETE when done.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::{BulkClient, DeleteOutcome, ExportRequest, ServerProfile};
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn escaped_type_filter_client_id_and_slow_polls() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/fhir/Group/e1/$export"))
        .and(header("epic-client-id", "epic-app-1"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{base}/fhir/BulkRequest/B1")),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/BulkRequest/B1"))
        .respond_with(ResponseTemplate::new(202))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/BulkRequest/B1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "2024-04-01T00:00:00Z",
            "requiresAccessToken": true,
            "output": [{"type": "Observation", "url": format!("{base}/fhir/BulkRequest/B1/1")}],
            "error": []
        })))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/BulkRequest/B1"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = BulkClient::builder(format!("{base}/fhir"))
        .bearer_token("t")
        .header("Epic-Client-ID", "epic-app-1")
        .sleep_fn(sleeps.sleep_fn())
        .server_profile(ServerProfile::Epic)
        .build()
        .unwrap();
    let request = ExportRequest::group("e1")
        .types(["Observation", "Patient"])
        .type_filter("Observation?category=laboratory,vital-signs")
        .type_filter("Patient?active=true");
    let url = client.kickoff_url(&request).unwrap();
    let job = client.kick_off(&request).await.unwrap();
    let sent = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        (sent.url.path(), sent.url.query()),
        (url.path(), url.query()),
        "kickoff_url is the URL sent"
    );
    assert_eq!(
        sent.url.query(),
        Some(
            "_type=Observation,Patient&_typeFilter=Observation%3Fcategory%3Dlaboratory%5C,\
             vital-signs,Patient%3Factive%3Dtrue"
        )
    );
    job.wait().await.unwrap();
    // Epic's guidance: minutes between polls, growing (profile defaults, ±20% jitter).
    let waits = sleeps.taken();
    assert_eq!(waits.len(), 2);
    assert!(
        (Duration::from_secs(48)..=Duration::from_secs(72)).contains(&waits[0]),
        "{waits:?}"
    );
    assert!(waits[1] > Duration::from_secs(60), "{waits:?}");
    assert_eq!(job.delete().await.unwrap().outcome, DeleteOutcome::Deleted);
}
