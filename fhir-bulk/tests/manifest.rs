//! Manifests: each vendor's shape, STU4's `outcome` and array `extension`, paging through
//! `link`, cloud-storage URLs, and broken bodies.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::{Sleeps, client, fixture};
use fhir_bulk::{Error, FileKind, JobHandle, PollStatus};
use url::Url;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn job(client: &fhir_bulk::BulkClient, server: &MockServer, p: &str) -> fhir_bulk::ExportJob {
    client.job(JobHandle::new(
        Url::parse(&format!("{}{p}", server.uri())).unwrap(),
    ))
}

#[tokio::test]
async fn stu4_manifest_pages_are_followed() {
    let server = MockServer::start().await;
    let base = server.uri();
    let first = fixture("stu4/manifest.json", &base);
    Mock::given(method("GET"))
        .and(path("/jobs/stu4"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(first.clone(), "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jobs/stu4/manifest"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            fixture("stu4/manifest-page2.json", &base),
            "application/json",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let export = job(&client, &server, "/jobs/stu4").wait().await.unwrap();
    assert_eq!(export.manifests.len(), 2);
    assert_eq!(export.manifests[0].raw(), first, "kept exactly as received");
    let first_page = &export.manifests[0];
    assert!(first_page.extension.as_ref().unwrap().is_array());
    assert_eq!(
        first_page.output_format.as_deref(),
        Some("application/fhir+ndjson")
    );
    assert!(
        first_page
            .manifest_type
            .as_deref()
            .unwrap()
            .ends_with("BulkDataManifest")
    );
    let outputs = export.files(FileKind::Output);
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0].file.file_size, Some(5120));
    assert!(outputs[0].requires_access_token);
    assert!(!outputs[1].requires_access_token, "page 2 says false");
    let errors = export.files(FileKind::Error);
    assert_eq!(errors.len(), 1, "STU4 `outcome` read as error files");
    assert_eq!(errors[0].file.extra["countSeverity"][0]["code"], "warning");
    let deleted = export.files(FileKind::Deleted);
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].file.resource_type, None);
    assert_eq!(export.all_files().len(), 4);
}

#[tokio::test]
async fn google_manifest_with_cloud_storage_urls() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            fixture("google/manifest.json", &server.uri()),
            "application/json",
        ))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let export = job(&client, &server, "/v1/projects/demo/operations/8791")
        .wait()
        .await
        .unwrap();
    let files = export.files(FileKind::Output);
    assert_eq!(files[0].organized_by.as_deref(), Some("Patient"));
    assert_eq!(files[0].file.resource_type, None);
    let err = files[0].file.http_url().unwrap_err();
    assert!(matches!(err, Error::UnsupportedFileUrl { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Google Cloud Storage"), "{text}");
    assert!(text.contains("not with the FHIR server's token"), "{text}");
}

#[tokio::test]
async fn oracle_manifest_urls_are_usable() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            fixture("oracle/manifest.json", &server.uri()),
            "application/json",
        ))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let status = job(&client, &server, "/jobs/1").poll().await.unwrap();
    let PollStatus::Complete(manifest) = status else {
        panic!("{status:?}");
    };
    assert!(manifest.request.as_deref().unwrap().contains("$export"));
    for f in &manifest.output {
        let url = f.http_url().unwrap();
        assert!(url.path().contains("/bulk-export/files/"));
    }
    assert!(manifest.error.is_empty());
}

#[tokio::test]
async fn broken_manifest_is_a_clear_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"output\": [}"))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = job(&client, &server, "/jobs/1").wait().await.unwrap_err();
    assert!(matches!(err, Error::BadManifest { .. }), "{err:?}");
    assert!(err.to_string().contains("/jobs/1"), "{err}");
}

#[tokio::test]
async fn a_failing_next_page_fails_the_wait() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/jobs/stu4"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(fixture("stu4/manifest.json", &base), "application/json"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jobs/stu4/manifest"))
        .respond_with(ResponseTemplate::new(400).set_body_json(common::outcome(
            "fatal",
            "processing",
            "job failed while paging",
        )))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = job(&client, &server, "/jobs/stu4")
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobFailed(_)), "{err:?}");
    assert!(err.to_string().contains("job failed while paging"));
}
