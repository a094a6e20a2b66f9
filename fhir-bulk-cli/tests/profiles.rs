//! `--server-profile` and the encoding flags: what reaches the wire, what `log.ndjson` records
//! as `exportUrl`, and what is refused before any request.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[path = "cli/support.rs"]
#[allow(dead_code)]
mod support;

use fhir_bulk_test_server::TestServer;
use serde_json::Value;
use support::*;

#[tokio::test]
async fn microsoft_profile_sends_till_and_logs_the_url_sent() {
    let srv = server(TestServer::builder().patients(2).polls_before_complete(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--server-profile",
        "microsoft",
        "--type",
        "Patient",
        "--until",
        "2024-06-01T00:00:00Z",
        "--separate-export-status",
        "--token",
        TOKEN,
        "--output-dir",
        s(dir.path()),
        FAST,
        "-v",
    ])
    .await;
    assert_code(&r, 0);
    let kickoff = &kickoffs(&srv)[0];
    assert_eq!(kickoff.method, "GET");
    let query = kickoff.query.clone().unwrap_or_default();
    assert_eq!(query, "_type=Patient&_till=2024-06-01T00:00:00Z");
    let prefer = kickoff.header("prefer").unwrap();
    assert!(prefer.contains("separate-export-status"), "{prefer}");
    // The log's exportUrl is exactly the URL the kick-off went to.
    let log = events(dir.path());
    let url = log[0]["eventDetail"]["exportUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.ends_with(&format!("{}?{query}", kickoff.path)), "{url}");
    assert_eq!(
        log[0]["eventDetail"]["requestParameters"]["_till"],
        "2024-06-01T00:00:00Z"
    );
    assert!(r.all().contains("server profile: microsoft"), "{}", r.all());
}

#[tokio::test]
async fn stu4_profile_and_encoding_flags_shape_the_body() {
    let srv = server(TestServer::builder().patients(2).polls_before_complete(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--server-profile",
        "stu4",
        "--type",
        "Patient,Observation",
        "--include-associated-data",
        "LatestProvenanceResources",
        "--list-encoding",
        "repeated",
        "--token",
        TOKEN,
        "--output-dir",
        s(dir.path()),
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    let kickoff = &kickoffs(&srv)[0];
    assert_eq!(kickoff.method, "POST");
    let body: Value = serde_json::from_slice(&kickoff.body).unwrap();
    let params = body["parameter"].as_array().unwrap();
    let types: Vec<&str> = params
        .iter()
        .filter(|p| p["name"] == "_type")
        .map(|p| p["valueString"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient", "Observation"]);
    let associated = params
        .iter()
        .find(|p| p["name"] == "includeAssociatedData")
        .unwrap();
    assert_eq!(
        associated["valueCoding"]["code"],
        "LatestProvenanceResources"
    );
}

#[tokio::test]
async fn epic_escapes_type_filter_commas_and_a_flag_overrides_it() {
    let srv = server(TestServer::builder().patients(1).polls_before_complete(0)).await;
    let base = srv.base_url().to_string();
    for (extra, expected) in [
        (None, "Observation%3Fcategory%3Dlaboratory%5C,vital-signs"),
        (
            Some("--type-filter-encoding=repeated"),
            "Observation%3Fcategory%3Dlaboratory,vital-signs",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "export",
            &base,
            "--server-profile",
            "epic",
            "--group",
            "g-1",
            "--type",
            "Observation",
            "--type-filter",
            "Observation?category=laboratory,vital-signs",
            "--token",
            TOKEN,
            "--output-dir",
            s(dir.path()),
            FAST,
        ];
        args.extend(extra);
        let r = run(&args).await;
        assert_code(&r, 0);
        let kickoffs = kickoffs(&srv);
        let query = kickoffs.last().unwrap().query.clone().unwrap_or_default();
        assert!(
            query.contains(&format!("_typeFilter={expected}")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn profile_limits_and_bad_names_are_usage_errors_before_any_request() {
    let srv = server(TestServer::builder().patients(1)).await;
    let base = srv.base_url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let r = run(&[
        "export",
        &base,
        "--server-profile",
        "hapi",
        "--token",
        TOKEN,
        "--output-dir",
        s(dir.path()),
    ])
    .await;
    assert_code(&r, 2);
    assert!(r.all().contains("--server-profile"), "{}", r.all());
    assert!(r.all().contains("oracle"), "{}", r.all());
    let r = run(&[
        "export",
        &base,
        "--server-profile",
        "oracle",
        "--group",
        "g-1",
        "--type",
        "Patient,Binary",
        "--token",
        TOKEN,
        "--output-dir",
        s(dir.path()),
    ])
    .await;
    assert_code(&r, 2);
    assert!(r.all().contains("--type"), "{}", r.all());
    assert!(r.all().contains("Binary"), "{}", r.all());
    let r = run(&[
        "export",
        &base,
        "--server-profile",
        "google",
        "--group",
        "g-1",
        "--organize-output-by",
        "Encounter",
        "--token",
        TOKEN,
        "--output-dir",
        s(dir.path()),
    ])
    .await;
    assert_code(&r, 2);
    assert!(r.all().contains("Patient"), "{}", r.all());
    assert!(srv.requests().is_empty(), "{:?}", srv.requests());
}
