//! The server profile the CapabilityStatement's software matches is suggested in one line at
//! the default verbosity when no `--server-profile` is given, and not when one is.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[path = "cli/support.rs"]
#[allow(dead_code)] // each test file uses some of the helpers
mod support;

use serde_json::json;
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn epic_like_server() -> MockServer {
    let mock = MockServer::start().await;
    let uri = mock.uri();
    Mock::given(method("GET"))
        .and(path("/fhir/metadata"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "resourceType": "CapabilityStatement",
            "software": {"name": "Epic", "version": "2026"},
            "fhirVersion": "4.0.1"
        })))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{uri}/fhir/jobs/1")),
        )
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "2026-03-01T17:35:02.000Z",
            "requiresAccessToken": false,
            "output": [],
            "error": []
        })))
        .mount(&mock)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/jobs/1"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&mock)
        .await;
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capability_statement_suggests_a_profile_once_without_the_flag() {
    let mock = epic_like_server().await;
    let base = format!("{}/fhir", mock.uri());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let r = run(&["export", &base, "--output-dir", s(&out), FAST]).await;
    assert_code(&r, 0);
    assert_eq!(
        r.stderr.matches("consider --server-profile epic").count(),
        1,
        "{r:#?}"
    );

    let out = dir.path().join("b");
    let r = run(&[
        "export",
        &base,
        "--server-profile",
        "generic",
        "--output-dir",
        s(&out),
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    assert!(!r.all().contains("consider --server-profile"), "{r:#?}");
}
