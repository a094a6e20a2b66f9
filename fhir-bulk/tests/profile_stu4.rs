//! The STU4 profile, replayed from the spec digest (IG STU4 ballot): a POST kick-off with every
//! list repeated and `includeAssociatedData` as `valueCoding`, and the STU4 manifest shape
//! (`outcome`, array `extension`, `link`).
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::{Sleeps, fixture_json};
use fhir_bulk::{ExportRequest, FileKind, INCLUDE_ASSOCIATED_DATA_SYSTEM, ServerProfile};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn post_body_is_repeated_and_coded() {
    let server = MockServer::start().await;
    let base = format!("{}/fhir", server.uri());
    Mock::given(method("POST"))
        .and(path("/fhir/$export"))
        .and(header("content-type", "application/fhir+json"))
        .and(body_json(
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueString": "Patient"},
                {"name": "_type", "valueString": "Observation"},
                {"name": "_typeFilter", "valueString": "Observation?status=final"},
                {"name": "_typeFilter", "valueString": "Patient?active=true"},
                {"name": "includeAssociatedData", "valueCoding": {
                    "system": INCLUDE_ASSOCIATED_DATA_SYSTEM, "code": "LatestProvenanceResources"}}
            ]}),
        ))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{base}/jobs/stu4")),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/stu4"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture_json("stu4/manifest.json", &base)),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/stu4/manifest"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture_json("stu4/manifest-page2.json", &base)),
        )
        .mount(&server)
        .await;
    let client = common::builder(&server, &Sleeps::default())
        .server_profile(ServerProfile::Stu4)
        .build()
        .unwrap();
    // A plain request: the profile makes it STU4.
    let request = ExportRequest::system()
        .types(["Patient", "Observation"])
        .type_filter("Observation?status=final")
        .type_filter("Patient?active=true")
        .include_associated_data("LatestProvenanceResources");
    let export = client
        .kick_off(&request)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(export.manifests.len() >= 2, "the next page was followed");
    assert!(!export.files(FileKind::Error).is_empty());
}
