//! The Oracle Health profile, replayed from seeds 000 and 004: the sandbox Group export
//! `GET …/Group/{id}/$export?_type=Patient,Condition`, status at `/bulk-export/jobs/{id}` with
//! `Retry-After: 600` honoured in full, and the documented limits refused before sending.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::{Sleeps, fixture_json};
use fhir_bulk::{BulkClient, Error, ExportRequest, ServerProfile};
use std::time::Duration;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TENANT: &str = "/r4/ec2458f2-1e24-41c8-b71b-0e701af7583d";
const GROUP: &str = "11ec-d16a-c763b73e-98e8-a31715e6a2bf";

#[tokio::test]
async fn sandbox_group_export_waits_the_600_seconds_oracle_asks() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path(format!("{TENANT}/Group/{GROUP}/$export")))
        .and(query_param("_type", "Patient,Condition"))
        .and(header("accept", "application/fhir+json"))
        .and(header("prefer", "respond-async"))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Content-Location",
            format!("{base}{TENANT}/bulk-export/jobs/0d5b7c2e"),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{TENANT}/bulk-export/jobs/0d5b7c2e")))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("X-Progress", "in-progress")
                .insert_header("Retry-After", "600"),
        )
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{TENANT}/bulk-export/jobs/0d5b7c2e")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture_json("oracle/manifest.json", &base)),
        )
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    // No poll policy of its own: the profile's defaults apply.
    let client = BulkClient::builder(format!("{base}{TENANT}"))
        .bearer_token("t")
        .sleep_fn(sleeps.sleep_fn())
        .server_profile(ServerProfile::OracleHealth)
        .build()
        .unwrap();
    assert_eq!(client.poll_policy().max_interval, Duration::from_secs(600));
    let request = ExportRequest::group(GROUP).types(["Patient", "Condition"]);
    let export = client
        .kick_off(&request)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(export.all_files().len(), 2);
    assert_eq!(sleeps.taken(), vec![Duration::from_secs(600); 2]);
}

#[tokio::test]
async fn documented_limits_are_refused_before_sending() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let client = common::builder(&server, &Sleeps::default())
        .server_profile(ServerProfile::OracleHealth)
        .build()
        .unwrap();
    for (request, parameter) in [
        (ExportRequest::system(), "level"),
        (
            ExportRequest::group(GROUP).types(["Patient", "Binary"]),
            "_type",
        ),
        (ExportRequest::group(GROUP).types(["Practitioner"]), "_type"),
        (ExportRequest::group(GROUP).elements(["id"]), "_elements"),
    ] {
        match client.kick_off(&request).await {
            Err(Error::InvalidRequest {
                parameter: p,
                message,
            }) => {
                assert_eq!(p, parameter, "{message}");
                assert!(message.contains("Oracle Health"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
