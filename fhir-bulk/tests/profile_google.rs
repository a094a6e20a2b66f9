//! The Google Cloud Healthcare API profile, replayed from seed 003: a Group export sent as
//! GET with `organizeOutputBy=Patient` and `Accept: application/fhir+json`, a relative
//! operations name as Content-Location, `X-Progress: in progress`, a manifest of `gs://` files,
//! and an error for a DELETE of a finished operation.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::{Sleeps, fixture_json};
use fhir_bulk::{BulkClient, DeleteOutcome, Error, ExportRequest, FileKind, ServerProfile};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const STORE: &str = "/v1/projects/demo/locations/us-central1/datasets/ds/fhirStores/store";

#[tokio::test]
async fn group_export_is_organized_by_patient_and_lists_gs_files() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path(format!("{STORE}/fhir/Group/g-1/$export")))
        .and(query_param("organizeOutputBy", "Patient"))
        .and(query_param("_type", "Patient,Encounter"))
        .and(header("accept", "application/fhir+json"))
        .and(header("prefer", "respond-async"))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Content-Location",
            "projects/demo/locations/us-central1/datasets/ds/fhirStores/store/operations/8791",
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{STORE}/operations/8791")))
        .and(header("accept", "application/fhir+json"))
        .respond_with(ResponseTemplate::new(202).insert_header("X-Progress", "in progress"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{STORE}/operations/8791")))
        .and(header("accept", "application/fhir+json"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture_json("google/manifest.json", &base)),
        )
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("{STORE}/operations/8791")))
        .respond_with(ResponseTemplate::new(400).set_body_json(common::outcome(
            "error",
            "processing",
            "operation is already done",
        )))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = BulkClient::builder(format!("{base}{STORE}/fhir"))
        .bearer_token("google-token")
        .sleep_fn(sleeps.sleep_fn())
        .server_profile(ServerProfile::GoogleCloudHealthcare)
        .build()
        .unwrap();
    let request = ExportRequest::group("g-1").types(["Patient", "Encounter"]);
    let job = client.kick_off(&request).await.unwrap();
    let sent = job.handle().request.clone().unwrap();
    assert_eq!(sent.query_pairs().last().unwrap().1, "Patient");
    let export = job.wait().await.unwrap();
    let files = export.files(FileKind::Output);
    assert_eq!(files[0].organized_by.as_deref(), Some("Patient"));
    assert!(files[0].file.url.expose().starts_with("gs://"));
    match files[0].file.http_url() {
        Err(Error::UnsupportedFileUrl { message, .. }) => {
            assert!(message.contains("Google Cloud Storage"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let advice = ServerProfile::GoogleCloudHealthcare
        .file_url_advice(files[0].file.url.expose())
        .unwrap();
    assert!(advice.contains("bulkExportGcsDestination"), "{advice}");
    assert_eq!(
        job.delete().await.unwrap().outcome,
        DeleteOutcome::AlreadyGone
    );
}

#[tokio::test]
async fn another_organize_output_by_is_refused_before_sending() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let client = common::builder(&server, &Sleeps::default())
        .server_profile(ServerProfile::GoogleCloudHealthcare)
        .build()
        .unwrap();
    for (request, parameter) in [
        (
            ExportRequest::group("g").organize_output_by("Encounter"),
            "organizeOutputBy",
        ),
        (ExportRequest::all_patients(), "level"),
        (ExportRequest::group("g").post(), "method"),
    ] {
        match client.kick_off(&request).await {
            Err(Error::InvalidRequest { parameter: p, .. }) => assert_eq!(p, parameter),
            other => panic!("{other:?}"),
        }
    }
}
