//! Kick-off: levels, GET and POST encodings, headers, validation before sending, and every
//! kind of answer.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::{Sleeps, builder, client, fixture, fixture_json, outcome};
use fhir_bulk::{Error, ExportRequest, JobHandle, ListEncoding, ServerProfile};
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{body_json, header, headers, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn accepted(location: &str) -> ResponseTemplate {
    ResponseTemplate::new(202).insert_header("Content-Location", location)
}

async fn only_request(server: &MockServer) -> wiremock::Request {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.into_iter().next().unwrap()
}

#[tokio::test]
async fn system_level_get_sends_exact_headers_and_query() {
    let server = MockServer::start().await;
    let status = format!("{}/fhir/jobs/1", server.uri());
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .and(header("accept", "application/fhir+json"))
        .and(header("prefer", "respond-async"))
        .and(header("authorization", "Bearer test-token"))
        .and(header("epic-client-id", "client-123"))
        .respond_with(accepted(&status).insert_header("X-Request-Id", "req-1"))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = builder(&server, &sleeps)
        .header("Epic-Client-ID", "client-123")
        .user_agent("pipeline/1.0")
        .build()
        .unwrap();
    let request = ExportRequest::system()
        .types(["Patient", "Observation"])
        .since("2024-01-01T00:00:00+02:00")
        .type_filter("Observation?category=laboratory&status=final")
        .output_format("application/fhir+ndjson");
    let job = client.kick_off(&request).await.unwrap();
    assert_eq!(job.status_url().as_str(), status);
    assert_eq!(
        job.handle().request_ids.x_request_id.as_deref(),
        Some("req-1")
    );
    let req = only_request(&server).await;
    assert_eq!(
        req.url.query(),
        Some(
            "_type=Patient,Observation\
             &_typeFilter=Observation%3Fcategory%3Dlaboratory%26status%3Dfinal\
             &_since=2024-01-01T00:00:00%2B02:00\
             &_outputFormat=application/fhir%2Bndjson"
        )
    );
    assert_eq!(req.headers.get("user-agent").unwrap(), "pipeline/1.0");
    assert!(req.body.is_empty());
    assert!(req.headers.get("content-type").is_none());
}

#[tokio::test]
async fn group_and_patient_levels() {
    let server = MockServer::start().await;
    let status = format!("{}/fhir/jobs/1", server.uri());
    Mock::given(method("GET"))
        .and(path(
            "/fhir/Group/11ec-d16a-c763b73e-98e8-a31715e6a2bf/$export",
        ))
        .respond_with(accepted(&status))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/Patient/$export"))
        .respond_with(accepted(&status))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    client
        .kick_off(&ExportRequest::group(
            "11ec-d16a-c763b73e-98e8-a31715e6a2bf",
        ))
        .await
        .unwrap();
    client
        .kick_off(&ExportRequest::all_patients())
        .await
        .unwrap();
}

#[tokio::test]
async fn repeated_list_encoding() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(accepted(&format!("{}/fhir/jobs/1", server.uri())))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let request = ExportRequest::system()
        .types(["Patient", "Observation"])
        .list_encoding(ListEncoding::Repeated)
        .type_filter("Observation?status=final")
        .type_filter("Patient?active=true");
    client.kick_off(&request).await.unwrap();
    let req = only_request(&server).await;
    assert_eq!(
        req.url.query(),
        Some(
            "_type=Patient&_type=Observation\
             &_typeFilter=Observation%3Fstatus%3Dfinal&_typeFilter=Patient%3Factive%3Dtrue"
        )
    );
}

/// Seed 001: Oracle's POST Patient/$export, body compared with the documented example.
#[tokio::test]
async fn oracle_patient_post_body_matches_the_documented_example() {
    let server = MockServer::start().await;
    let base = server.uri();
    let expected = fixture_json("oracle/patient-export-body.json", &base);
    Mock::given(method("POST"))
        .and(path("/fhir/Patient/$export"))
        .and(header("content-type", "application/fhir+json"))
        .and(header("accept", "application/fhir+json"))
        .and(header("prefer", "respond-async"))
        .and(body_json(&expected))
        .respond_with(
            accepted(&format!(
                "{base}/r4/ec2458f2-1e24-41c8-b71b-0e701af7583d/bulk-export/jobs/9f1e"
            ))
            .insert_header("X-Request-Id", "x-42")
            .insert_header("opc-request-id", "opc-42"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = builder(&server, &Sleeps::default())
        .server_profile(ServerProfile::OracleHealth)
        .build()
        .unwrap();
    let request = ExportRequest::all_patients()
        .post()
        .patients(["Patient/12783127", "Patient/12783128", "12783129"])
        .types(["Condition", "Provenance"])
        .type_filter("Condition?category=problem-list-item")
        .include_associated_data("RelevantProvenanceResources")
        .since("2021-03-18T19:19:42.000Z")
        .output_format("application/fhir+ndjson");
    let job = client.kick_off(&request).await.unwrap();
    assert!(job.status_url().path().ends_with("/bulk-export/jobs/9f1e"));
    assert_eq!(
        job.handle().request_ids.opc_request_id.as_deref(),
        Some("opc-42")
    );
    let req = only_request(&server).await;
    assert_eq!(
        req.url.query(),
        None,
        "POST carries its parameters in the body only"
    );
}

#[tokio::test]
async fn stu4_post_body() {
    let server = MockServer::start().await;
    let expected = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
            {"name": "_type", "valueString": "Patient"},
            {"name": "_type", "valueString": "Observation"},
            {"name": "includeAssociatedData", "valueCoding": {
                "system": "http://hl7.org/fhir/uv/bulkdata/CodeSystem/include-associated-data",
                "code": "LatestProvenanceResources"}},
            {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"},
            {"name": "allowPartialManifests", "valueBoolean": true}
        ]
    });
    Mock::given(method("POST"))
        .and(path("/fhir/Group/g1/$export"))
        .and(body_json(&expected))
        .and(headers(
            "prefer",
            vec![
                "respond-async",
                "separate-export-status",
                "handling=lenient",
            ],
        ))
        .respond_with(accepted(&format!("{}/fhir/jobs/1", server.uri())))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let request = ExportRequest::group("g1")
        .stu4()
        .patient("p1")
        .types(["Patient", "Observation"])
        .include_associated_data("LatestProvenanceResources")
        .since("2024-01-01T00:00:00Z")
        .allow_partial_manifests(true)
        .separate_export_status(true)
        .lenient(true);
    let job = client.kick_off(&request).await.unwrap();
    assert!(job.handle().separate_export_status);
}

#[tokio::test]
async fn invalid_requests_send_nothing() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let cases = [
        (ExportRequest::system().post().patient("1"), "patient"),
        (ExportRequest::all_patients().patient("1"), "patient"),
        (ExportRequest::system().since("2024-01-01"), "_since"),
        (
            ExportRequest::system().output_format("text/csv"),
            "_outputFormat",
        ),
        (ExportRequest::system().resource_type("patient"), "_type"),
        (
            ExportRequest::system()
                .types(["Patient"])
                .type_filter("Observation?x=1"),
            "_typeFilter",
        ),
    ];
    for (request, parameter) in cases {
        match client.kick_off(&request).await {
            Err(Error::InvalidRequest {
                parameter: p,
                message,
            }) => {
                assert_eq!(p, parameter, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("{request:?}: {other:?}"),
        }
    }
    // The server profile's limits are checked before sending too.
    let oracle = builder(&server, &Sleeps::default())
        .server_profile(ServerProfile::OracleHealth)
        .build()
        .unwrap();
    let request = ExportRequest::group("g").type_filter("Condition?x=1");
    match oracle.kick_off(&request).await {
        Err(Error::InvalidRequest { parameter, message }) => {
            assert_eq!(parameter, "_typeFilter");
            assert!(message.contains("Oracle Health"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn relative_content_location_is_resolved_against_the_base() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(accepted("bulk-export/jobs/77"))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let job = client.kick_off(&ExportRequest::system()).await.unwrap();
    assert_eq!(
        job.status_url().as_str(),
        format!("{}/fhir/bulk-export/jobs/77", server.uri())
    );
}

/// Seed 003: Google answers with an operations resource name relative to the API root.
#[tokio::test]
async fn google_operations_content_location() {
    let server = MockServer::start().await;
    let store = "projects/demo/locations/us-central1/datasets/ds/fhirStores/store";
    Mock::given(method("GET"))
        .and(path(format!("/v1/{store}/fhir/Group/g-1/$export")))
        .and(header("accept", "application/fhir+json"))
        .and(header("prefer", "respond-async"))
        .respond_with(accepted(&format!("{store}/operations/8791")))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = fhir_bulk::BulkClient::builder(format!("{}/v1/{store}/fhir", server.uri()))
        .sleep_fn(sleeps.sleep_fn())
        .build()
        .unwrap();
    let job = client
        .kick_off(&ExportRequest::group("g-1").organize_output_by("Patient"))
        .await
        .unwrap();
    assert_eq!(
        job.status_url().as_str(),
        format!("{}/v1/{store}/operations/8791", server.uri())
    );
    assert_eq!(
        only_request(&server).await.url.query(),
        Some("organizeOutputBy=Patient")
    );
}

/// Seed 001: one export per client and tenant; the second kick-off gets 429.
#[tokio::test]
async fn second_export_gets_its_own_error_with_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/Group/g/$export"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "120")
                .insert_header("opc-request-id", "opc-429")
                .set_body_raw(
                    fixture("oracle/kickoff-429.json", ""),
                    "application/fhir+json",
                ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = client
        .kick_off(&ExportRequest::group("g"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ExportInProgress(_)), "{err:?}");
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(err.request_id(), Some("opc-429"));
    assert_eq!(err.operation_outcome().unwrap().issue[0].code, "throttled");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("already in progress"), "{text}");
    assert!(text.contains("opc-request-id: opc-429"), "{text}");
}

#[tokio::test]
async fn rejection_carries_status_outcome_and_request_ids() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("X-Request-Id", "rid-1")
                .insert_header("opc-request-id", "opc-1")
                .set_body_json(outcome(
                    "error",
                    "not-supported",
                    "_elements is not supported",
                )),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = client
        .kick_off(&ExportRequest::system().elements(["id"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KickoffRejected(_)), "{err:?}");
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.request_id(), Some("rid-1"));
    let report = err.error_response().unwrap();
    assert_eq!(report.request_ids.opc_request_id.as_deref(), Some("opc-1"));
    let text = err.to_string();
    assert!(text.contains("HTTP 400"), "{text}");
    assert!(text.contains("_elements is not supported"), "{text}");
    assert!(text.contains("X-Request-Id: rid-1"), "{text}");
    assert!(!text.contains("test-token"));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn non_fhir_error_bodies_are_kept() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(415).set_body_string("Unsupported Accept header"))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = client.kick_off(&ExportRequest::system()).await.unwrap_err();
    assert_eq!(
        err.error_response().unwrap().body.as_deref(),
        Some("Unsupported Accept header")
    );
}

#[tokio::test]
async fn accepted_without_content_location_is_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = client.kick_off(&ExportRequest::system()).await.unwrap_err();
    assert!(matches!(err, Error::KickoffRejected(_)), "{err:?}");
    assert!(err.to_string().contains("Content-Location"), "{err}");
}

#[tokio::test]
async fn a_synchronous_200_is_not_accepted_as_a_kickoff() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"resourceType": "Bundle"})))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = client.kick_off(&ExportRequest::system()).await.unwrap_err();
    assert_eq!(err.status(), Some(200));
}

#[tokio::test]
async fn transient_kickoff_failures_are_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "7"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500).set_body_json(outcome(
            "error",
            "transient",
            "database busy",
        )))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(accepted("jobs/1"))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    client.kick_off(&ExportRequest::system()).await.unwrap();
    // 7 s from Retry-After (longer than the schedule's 1 s), then the schedule's 2 s.
    assert_eq!(sleeps.taken(), [7, 2].map(Duration::from_secs));
}

#[tokio::test]
async fn fatal_kickoff_failures_are_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500).set_body_json(outcome(
            "fatal",
            "processing",
            "export failed",
        )))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = client.kick_off(&ExportRequest::system()).await.unwrap_err();
    assert!(matches!(err, Error::KickoffRejected(_)), "{err:?}");
}

#[tokio::test]
async fn unauthorized_kickoff_is_an_auth_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403).set_body_json(outcome(
            "error",
            "forbidden",
            "scope system/Observation.read missing",
        )))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = client
        .kick_off(&ExportRequest::system().types(["Observation"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("scope"), "{err}");
}

#[tokio::test]
async fn job_handle_serializes_and_resumes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(accepted("jobs/5").set_body_json(outcome(
            "information",
            "informational",
            "queued behind 2 jobs",
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/5"))
        .respond_with(ResponseTemplate::new(202).insert_header("X-Progress", "queued"))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let job = client
        .kick_off(&ExportRequest::system().types(["Patient"]))
        .await
        .unwrap();
    assert_eq!(
        job.kickoff_outcome().unwrap().issue[0]
            .diagnostics
            .as_deref(),
        Some("queued behind 2 jobs")
    );
    let saved = serde_json::to_string(job.handle()).unwrap();
    let restored: JobHandle = serde_json::from_str(&saved).unwrap();
    assert_eq!(&restored, job.handle());
    assert!(restored.kicked_off_at.is_some());
    assert_eq!(
        restored.request.as_ref().unwrap().query_pairs(),
        [("_type".to_string(), "Patient".to_string())]
    );
    // A new client (another process) polls the restored job.
    let other = common::client(&server, &sleeps);
    match other.job(restored).poll().await.unwrap() {
        fhir_bulk::PollStatus::InProgress(p) => assert_eq!(p.text.as_deref(), Some("queued")),
        other => panic!("{other:?}"),
    }
}
