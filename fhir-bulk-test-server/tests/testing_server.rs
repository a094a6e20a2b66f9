//! Exercises the in-process bulk data server with real HTTP requests.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

use std::io::Read as _;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fhir_bulk_test_server::{Fault, TestServer};
use futures::StreamExt as _;
use reqwest::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, EXPIRES, IF_RANGE, RANGE, RETRY_AFTER,
};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

/// A client that shows raw bytes (no transparent gzip decoding).
fn raw_client() -> Client {
    Client::builder()
        .no_gzip()
        .no_proxy()
        .build()
        .expect("client")
}

async fn kickoff(client: &Client, server: &TestServer, path_and_query: &str) -> Response {
    client
        .get(server.base_url().join(path_and_query).expect("url"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off")
}

fn content_location(response: &Response) -> String {
    response
        .headers()
        .get("content-location")
        .expect("Content-Location")
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Kicks off and polls (ignoring Retry-After) until the manifest arrives.
async fn export(client: &Client, server: &TestServer, path_and_query: &str) -> (String, Value) {
    let response = kickoff(client, server, path_and_query).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let status_url = content_location(&response);
    loop {
        let response = client.get(&status_url).send().await.expect("status");
        match response.status() {
            StatusCode::ACCEPTED => continue,
            StatusCode::OK => return (status_url, response.json().await.expect("manifest")),
            other => panic!("unexpected status {other}"),
        }
    }
}

async fn get_bytes(client: &Client, url: &str) -> Bytes {
    let response = client.get(url).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.bytes().await.expect("body")
}

fn header(response: &Response, name: impl reqwest::header::AsHeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn as_lines(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "NDJSON ends with a newline"
    );
    text.lines().map(str::to_owned).collect()
}

async fn assert_outcome(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(header(&response, CONTENT_TYPE), "application/fhir+json");
    let outcome: Value = response.json().await.expect("OperationOutcome");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(outcome["issue"][0]["severity"].is_string());
    assert!(outcome["issue"][0]["code"].is_string());
    outcome
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// Reads a body until it ends or fails; returns the bytes and whether it failed.
async fn read_until_error(response: Response) -> (Vec<u8>, bool) {
    let mut stream = response.bytes_stream();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

#[tokio::test]
async fn full_export_flow() {
    let server = TestServer::builder()
        .polls_before_complete(2)
        .x_progress(["25% complete", "50% complete"])
        .retry_after("120")
        .start()
        .await
        .expect("server");
    let base = server.base_url();
    assert_eq!(base.as_str(), format!("http://{}/fhir/", server.addr()));
    let client = raw_client();

    let response = kickoff(&client, &server, "$export").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let status_url = content_location(&response);
    assert!(
        status_url.starts_with(&format!("{base}jobs/")),
        "{status_url}"
    );
    assert!(!header(&response, "x-request-id").is_empty());

    for progress in ["25% complete", "50% complete"] {
        let response = client.get(&status_url).send().await.expect("status");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&response, "x-progress"), progress);
        assert_eq!(header(&response, RETRY_AFTER), "120");
    }
    let response = client.get(&status_url).send().await.expect("status");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, CONTENT_TYPE), "application/json");
    let expires = httpdate::parse_http_date(header(&response, EXPIRES)).expect("HTTP-date");
    assert!(expires > SystemTime::now());
    let manifest: Value = response.json().await.expect("manifest");

    assert_eq!(manifest["request"], format!("{base}$export"));
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(
        manifest["transactionTime"]
            .as_str()
            .expect("instant")
            .ends_with('Z')
    );
    assert_eq!(manifest["error"], serde_json::json!([]));
    let output = manifest["output"].as_array().expect("output");
    let types: Vec<&str> = output
        .iter()
        .map(|o| o["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["Patient", "Observation", "Condition", "Encounter"]);

    let dataset = server.dataset();
    assert_eq!(dataset.patients(), 10);
    for entry in output {
        let resource_type = entry["type"].as_str().expect("type");
        let url = entry["url"].as_str().expect("url");
        assert_eq!(
            url,
            format!(
                "{base}files/{}/{resource_type}.1.ndjson",
                status_url.rsplit('/').next().expect("id")
            )
        );

        let response = client.get(url).send().await.expect("file");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, CONTENT_TYPE), "application/fhir+ndjson");
        assert_eq!(header(&response, ACCEPT_RANGES), "bytes");
        assert!(header(&response, ETAG).starts_with('"'));
        let length: usize = header(&response, CONTENT_LENGTH).parse().expect("length");
        let body = response.bytes().await.expect("body");
        assert_eq!(body.len(), length);

        let lines = as_lines(&body);
        let expected: Vec<String> = server.file_lines(url).expect("known file").collect();
        assert_eq!(lines, expected);
        let from_dataset: Vec<String> = dataset
            .type_file_lines(resource_type, 1)
            .expect("file")
            .collect();
        assert_eq!(lines, from_dataset);
        assert_eq!(entry["count"], lines.len() as u64);
        assert_eq!(lines.len() as u64, dataset.resource_count(resource_type));

        for line in &lines {
            assert!(
                (640..1100).contains(&line.len()),
                "line length {}",
                line.len()
            );
            let resource: Value = serde_json::from_str(line).expect("JSON line");
            assert_eq!(resource["resourceType"], resource_type);
            assert!(resource["id"].is_string());
            assert!(
                resource["meta"]["lastUpdated"]
                    .as_str()
                    .expect("instant")
                    .ends_with('Z')
            );
            match resource_type {
                "Patient" => {
                    assert!(resource["name"][0]["family"].is_string());
                    assert!(resource["gender"].is_string());
                    assert_eq!(resource["birthDate"].as_str().expect("date").len(), 10);
                }
                "Observation" => {
                    assert_eq!(resource["status"], "final");
                    assert_eq!(resource["code"]["coding"][0]["system"], "http://loinc.org");
                    assert!(
                        resource["subject"]["reference"]
                            .as_str()
                            .expect("ref")
                            .starts_with("Patient/p-")
                    );
                    assert!(resource["valueQuantity"]["value"].is_number());
                    assert!(resource["effectiveDateTime"].is_string());
                }
                "Condition" => {
                    assert_eq!(
                        resource["code"]["coding"][0]["system"],
                        "http://snomed.info/sct"
                    );
                    assert!(resource["subject"]["reference"].is_string());
                }
                "Encounter" => {
                    assert_eq!(resource["status"], "finished");
                    assert!(resource["period"]["start"].is_string());
                }
                other => panic!("unexpected type {other}"),
            }
        }
    }
    // Observations reference their patient in order: 8 per patient.
    let observations: Vec<Value> = dataset
        .type_file_lines("Observation", 1)
        .expect("file")
        .map(|l| serde_json::from_str(&l).expect("JSON"))
        .collect();
    assert_eq!(observations.len(), 80);
    assert_eq!(observations[0]["subject"]["reference"], "Patient/p-1");
    assert_eq!(observations[79]["subject"]["reference"], "Patient/p-10");
}

#[tokio::test]
async fn data_is_deterministic() {
    let a = TestServer::builder().seed(7).start().await.expect("server");
    let b = TestServer::builder().seed(7).start().await.expect("server");
    let c = TestServer::builder().seed(8).start().await.expect("server");
    let lines = |s: &TestServer| -> Vec<String> {
        s.dataset().all_lines("Encounter").expect("type").collect()
    };
    assert_eq!(lines(&a), lines(&b));
    assert_ne!(lines(&a), lines(&c));
}

#[tokio::test]
async fn kickoff_validation_and_type_filter() {
    let server = TestServer::start_default().await.expect("server");
    let client = raw_client();

    // No Prefer: respond-async.
    let response = client
        .get(server.base_url().join("$export").expect("url"))
        .send()
        .await
        .expect("send");
    assert_outcome(response, StatusCode::BAD_REQUEST).await;

    // Unknown type.
    let response = kickoff(&client, &server, "$export?_type=Patient,MedicationRequest").await;
    let outcome = assert_outcome(response, StatusCode::BAD_REQUEST).await;
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .expect("text")
            .contains("MedicationRequest")
    );

    // Unsupported output format.
    let response = kickoff(&client, &server, "$export?_outputFormat=text/csv").await;
    assert_outcome(response, StatusCode::BAD_REQUEST).await;

    // _type comma-joined and repeated; output in server order.
    let (_, manifest) = export(
        &client,
        &server,
        "Patient/$export?_type=Observation,Condition&_type=Patient",
    )
    .await;
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .map(|o| o["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["Patient", "Observation", "Condition"]);

    // Group level, percent-encoded `$`.
    let (_, manifest) = export(&client, &server, "Group/g-1/%24export?_type=Encounter").await;
    assert_eq!(manifest["output"].as_array().expect("output").len(), 1);
    assert_eq!(manifest["output"][0]["type"], "Encounter");
    assert!(
        manifest["request"]
            .as_str()
            .expect("request")
            .ends_with("/fhir/Group/g-1/%24export?_type=Encounter")
    );

    // POST with a Parameters body.
    let parameters = serde_json::json!({
        "resourceType": "Parameters",
        "parameter": [
            { "name": "_type", "valueString": "Condition" },
            { "name": "_outputFormat", "valueString": "application/fhir+ndjson" }
        ]
    });
    let response = client
        .post(server.base_url().join("$export").expect("url"))
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(parameters.to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let status_url = content_location(&response);
    let manifest: Value = loop {
        let response = client.get(&status_url).send().await.expect("status");
        if response.status() == StatusCode::OK {
            break response.json().await.expect("manifest");
        }
    };
    assert_eq!(manifest["output"].as_array().expect("output").len(), 1);
    assert_eq!(manifest["output"][0]["type"], "Condition");

    // A body that is not Parameters.
    let response = client
        .post(server.base_url().join("$export").expect("url"))
        .header("Prefer", "respond-async")
        .body("{\"resourceType\":\"Patient\"}")
        .send()
        .await
        .expect("POST");
    assert_outcome(response, StatusCode::BAD_REQUEST).await;

    // Unknown job and unknown endpoint.
    let response = client
        .get(server.base_url().join("jobs/nope").expect("url"))
        .send()
        .await
        .expect("send");
    assert_outcome(response, StatusCode::NOT_FOUND).await;
    let response = client
        .get(server.base_url().join("Patient/123").expect("url"))
        .send()
        .await
        .expect("send");
    assert_outcome(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn files_are_split_by_max_resources() {
    let server = TestServer::builder()
        .patients(10)
        .resource_types(["Patient", "Observation"])
        .max_resources_per_file(7)
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export?_type=Observation").await;
    let output = manifest["output"].as_array().expect("output");
    assert_eq!(output.len(), 12);
    assert_eq!(server.dataset().type_file_count("Observation"), 12);
    let mut all = Vec::new();
    for (i, entry) in output.iter().enumerate() {
        let url = entry["url"].as_str().expect("url");
        assert!(url.ends_with(&format!("/Observation.{}.ndjson", i + 1)));
        let lines = as_lines(&get_bytes(&client, url).await);
        assert_eq!(entry["count"], lines.len() as u64);
        assert_eq!(lines.len(), if i < 11 { 7 } else { 3 });
        all.extend(lines);
    }
    let expected: Vec<String> = server
        .dataset()
        .all_lines("Observation")
        .expect("type")
        .collect();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn range_requests_resume_identity_bodies() {
    let server = TestServer::start_default().await.expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export?_type=Observation").await;
    let url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned();

    let full_response = client.get(&url).send().await.expect("GET");
    let etag = header(&full_response, ETAG).to_owned();
    let full = full_response.bytes().await.expect("body");
    let len = full.len();

    for offset in [0, 1, 12_345, len / 2, len - 1] {
        let response = client
            .get(&url)
            .header(RANGE, format!("bytes={offset}-"))
            .header(IF_RANGE, &etag)
            .send()
            .await
            .expect("range");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            header(&response, CONTENT_RANGE),
            format!("bytes {offset}-{}/{len}", len - 1)
        );
        assert_eq!(
            header(&response, CONTENT_LENGTH),
            (len - offset).to_string()
        );
        assert_eq!(header(&response, ETAG), etag);
        let body = response.bytes().await.expect("body");
        assert_eq!(&body[..], &full[offset..], "suffix from {offset}");
    }

    // Closed range and suffix range.
    let response = client
        .get(&url)
        .header(RANGE, "bytes=100-199")
        .send()
        .await
        .expect("range");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&response, CONTENT_RANGE),
        format!("bytes 100-199/{len}")
    );
    assert_eq!(&response.bytes().await.expect("body")[..], &full[100..200]);
    let response = client
        .get(&url)
        .header(RANGE, "bytes=-10")
        .send()
        .await
        .expect("range");
    assert_eq!(
        &response.bytes().await.expect("body")[..],
        &full[len - 10..]
    );

    // If-Range with another ETag: the whole file, 200.
    let response = client
        .get(&url)
        .header(RANGE, "bytes=500-")
        .header(IF_RANGE, "\"something-else\"")
        .send()
        .await
        .expect("range");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(CONTENT_RANGE).is_none());
    assert_eq!(response.bytes().await.expect("body"), full);

    // Unsatisfiable.
    let response = client
        .get(&url)
        .header(RANGE, format!("bytes={len}-"))
        .send()
        .await
        .expect("range");
    assert_eq!(header(&response, CONTENT_RANGE), format!("bytes */{len}"));
    assert_outcome(response, StatusCode::RANGE_NOT_SATISFIABLE).await;
}

#[tokio::test]
async fn ranges_can_be_disabled() {
    let server = TestServer::builder()
        .accept_ranges(false)
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export?_type=Patient").await;
    let url = manifest["output"][0]["url"].as_str().expect("url");
    let response = client
        .get(url)
        .header(RANGE, "bytes=10-")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(ACCEPT_RANGES).is_none());
    assert!(response.headers().get(ETAG).is_none());
    let lines = as_lines(&response.bytes().await.expect("body"));
    assert_eq!(
        lines,
        server.file_lines(url).expect("file").collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn gzip_bodies_and_gzip_ranges() {
    let server = TestServer::builder()
        .patients(40)
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export?_type=Observation").await;
    let url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned();

    let identity_response = client.get(&url).send().await.expect("GET");
    let identity_etag = header(&identity_response, ETAG).to_owned();
    let identity = identity_response.bytes().await.expect("body");

    let response = client
        .get(&url)
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, CONTENT_ENCODING), "gzip");
    assert_eq!(header(&response, "vary"), "Accept-Encoding");
    let gzip_etag = header(&response, ETAG).to_owned();
    assert_ne!(gzip_etag, identity_etag);
    let compressed = response.bytes().await.expect("body");
    assert!(compressed.len() < identity.len() / 2);
    assert_eq!(gunzip(&compressed), identity);
    let expected: Vec<String> = server.file_lines(&url).expect("file").collect();
    assert_eq!(as_lines(&gunzip(&compressed)), expected);

    // The same representation again: byte-identical.
    let again = get_bytes_with(&client, &url, &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(again, compressed);

    // Resume the gzip representation.
    let total = compressed.len();
    for offset in [1, total / 3, total - 1] {
        let response = client
            .get(&url)
            .header(ACCEPT_ENCODING, "gzip")
            .header(RANGE, format!("bytes={offset}-"))
            .header(IF_RANGE, &gzip_etag)
            .send()
            .await
            .expect("range");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(header(&response, CONTENT_ENCODING), "gzip");
        assert_eq!(
            header(&response, CONTENT_RANGE),
            format!("bytes {offset}-{}/{total}", total - 1)
        );
        assert_eq!(
            header(&response, CONTENT_LENGTH),
            (total - offset).to_string()
        );
        assert_eq!(
            &response.bytes().await.expect("body")[..],
            &compressed[offset..]
        );
    }

    // The identity ETag does not validate a gzip range: full gzip body.
    let response = client
        .get(&url)
        .header(ACCEPT_ENCODING, "gzip")
        .header(RANGE, "bytes=10-")
        .header(IF_RANGE, &identity_etag)
        .send()
        .await
        .expect("range");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.expect("body"), compressed);

    // A client that decodes gzip transparently sees the lines.
    let decoding = Client::builder().no_proxy().build().expect("client");
    let lines = as_lines(
        &decoding
            .get(&url)
            .send()
            .await
            .expect("GET")
            .bytes()
            .await
            .expect("body"),
    );
    assert_eq!(lines, expected);

    // gzip can be switched off.
    let plain = TestServer::builder()
        .gzip(false)
        .start()
        .await
        .expect("server");
    let (_, manifest) = export(&client, &plain, "$export?_type=Patient").await;
    let url = manifest["output"][0]["url"].as_str().expect("url");
    let response = client
        .get(url)
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET");
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
    assert!(response.headers().get(CONTENT_LENGTH).is_some());
}

async fn get_bytes_with(
    client: &Client,
    url: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
) -> Bytes {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body")
}

#[tokio::test]
async fn drop_after_cuts_the_body_after_exactly_n_bytes() {
    let server = TestServer::builder()
        .patients(600)
        .fault(Fault::drop_after(1000).on_file("Patient.1.ndjson"))
        .fault(Fault::drop_after(3 << 20).on_file("Observation.1.ndjson"))
        .fault(Fault::drop_after(5000).on_file("Encounter.1.ndjson"))
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export").await;
    let url = |i: usize| {
        manifest["output"][i]["url"]
            .as_str()
            .expect("url")
            .to_owned()
    };

    for (index, cut) in [(0usize, 1000usize), (1, 3 << 20)] {
        let expected: Vec<u8> = server
            .file_lines(&url(index))
            .expect("file")
            .flat_map(|l| (l + "\n").into_bytes())
            .collect();
        assert!(expected.len() > cut);
        let response = client.get(url(index)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, CONTENT_LENGTH),
            expected.len().to_string()
        );
        let (got, failed) = read_until_error(response).await;
        assert!(failed, "the body must end with an error, not cleanly");
        assert_eq!(got.len(), cut);
        assert_eq!(&got[..], &expected[..cut]);

        // The fault fired once: the next download is complete.
        let body = get_bytes(&client, &url(index)).await;
        assert_eq!(&body[..], &expected[..]);
    }

    // Through gzip the cut applies to the compressed bytes.
    let response = client
        .get(url(3))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET");
    assert_eq!(header(&response, CONTENT_ENCODING), "gzip");
    let (got, failed) = read_until_error(response).await;
    assert!(failed);
    assert_eq!(got.len(), 5000);
    let full = get_bytes_with(&client, &url(3), &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(&got[..], &full[..5000]);
    assert!(server.faults().iter().all(|f| f.remaining() == 0));
}

#[tokio::test]
async fn status_and_kickoff_faults_fire_exactly_their_count() {
    let server = TestServer::builder()
        .fault(Fault::export_in_progress())
        .fault(Fault::http_status(503).on_status().times(2))
        .fault(Fault::too_many_requests(Some("7")).on_status())
        .start()
        .await
        .expect("server");
    let client = raw_client();

    let response = kickoff(&client, &server, "$export").await;
    let outcome = assert_outcome(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(outcome["issue"][0]["code"], "throttled");
    let response = kickoff(&client, &server, "$export").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let status_url = content_location(&response);

    let mut statuses = Vec::new();
    let mut retry_afters = Vec::new();
    loop {
        let response = client.get(&status_url).send().await.expect("status");
        let status = response.status();
        statuses.push(status.as_u16());
        retry_afters.push(header(&response, RETRY_AFTER).to_owned());
        if status != StatusCode::ACCEPTED && status.is_success() {
            break;
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            assert_outcome(response, status).await;
        }
    }
    assert_eq!(statuses, [503, 503, 429, 202, 200]);
    assert_eq!(retry_afters[2], "7");
    assert_eq!(retry_afters[3], "1");
    assert!(server.faults().iter().all(|f| f.remaining() == 0));
}

#[tokio::test]
async fn file_faults_fire_exactly_their_count() {
    let server = TestServer::builder()
        .fault(Fault::http_status(500).on_file_index(0).times(2))
        .fault(Fault::too_many_requests(Some("3")).on_file("Condition.1.ndjson"))
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export").await;
    let patients = manifest["output"][0]["url"].as_str().expect("url");
    let conditions = manifest["output"][2]["url"].as_str().expect("url");

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .get(patients)
                .send()
                .await
                .expect("GET")
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 500, 200]);

    let response = client.get(conditions).send().await.expect("GET");
    assert_eq!(header(&response, RETRY_AFTER), "3");
    assert_outcome(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        client.get(conditions).send().await.expect("GET").status(),
        StatusCode::OK
    );

    // Faults can be added at runtime too.
    server.add_fault(Fault::http_status(502).on_all_files());
    assert_eq!(
        client.get(conditions).send().await.expect("GET").status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        client.get(conditions).send().await.expect("GET").status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn trickle_and_stall_still_deliver_the_file() {
    let server = TestServer::builder()
        .patients(2)
        .fault(Fault::trickle(200, Duration::from_millis(2)).on_file("Patient.1.ndjson"))
        .fault(Fault::stall(Duration::from_millis(300)).on_file("Condition.1.ndjson"))
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export").await;

    let url = manifest["output"][0]["url"].as_str().expect("url");
    let started = Instant::now();
    let body = get_bytes(&client, url).await;
    let pieces = body.len().div_ceil(200) as u32;
    assert!(started.elapsed() >= Duration::from_millis(2) * (pieces - 1));
    assert_eq!(
        as_lines(&body),
        server.file_lines(url).expect("file").collect::<Vec<_>>()
    );

    let url = manifest["output"][2]["url"].as_str().expect("url");
    let response = client.get(url).send().await.expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    let headers_at = Instant::now();
    let body = response.bytes().await.expect("body");
    assert!(headers_at.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        as_lines(&body),
        server.file_lines(url).expect("file").collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn bearer_token_is_required_everywhere() {
    let server = TestServer::builder()
        .require_bearer("s3cret")
        .start()
        .await
        .expect("server");
    let client = raw_client();

    let response = kickoff(&client, &server, "$export").await;
    assert_eq!(
        header(&response, "www-authenticate").split(' ').next(),
        Some("Bearer")
    );
    assert_outcome(response, StatusCode::UNAUTHORIZED).await;

    let send = |url: String, token: Option<&str>| {
        let mut request = client.get(url).header("Prefer", "respond-async");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let kickoff_url = server.base_url().join("$export").expect("url").to_string();
    let response = send(kickoff_url.clone(), Some("wrong"))
        .await
        .expect("send");
    assert_outcome(response, StatusCode::UNAUTHORIZED).await;
    let response = send(kickoff_url, Some("s3cret")).await.expect("send");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let status_url = content_location(&response);

    assert_outcome(
        send(status_url.clone(), None).await.expect("send"),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let manifest: Value = loop {
        let response = send(status_url.clone(), Some("s3cret"))
            .await
            .expect("send");
        if response.status() == StatusCode::OK {
            break response.json().await.expect("manifest");
        }
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    };
    assert_eq!(manifest["requiresAccessToken"], true);
    let url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert_outcome(
        send(url.clone(), None).await.expect("send"),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        send(url, Some("s3cret")).await.expect("send").status(),
        StatusCode::OK
    );

    let response = client.delete(&status_url).send().await.expect("send");
    assert_outcome(response, StatusCode::UNAUTHORIZED).await;

    // What the client sent is on record.
    let requests = server.requests();
    let authorizations: Vec<Option<&str>> =
        requests.iter().map(|r| r.header("authorization")).collect();
    assert_eq!(authorizations[0], None);
    assert_eq!(authorizations[1], Some("Bearer wrong"));
    assert_eq!(authorizations[2], Some("Bearer s3cret"));
}

#[tokio::test]
async fn requests_are_recorded() {
    let server = TestServer::builder()
        .requires_access_token(false)
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let body =
        r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"}]}"#;
    let response = client
        .post(
            server
                .base_url()
                .join("Patient/$export?_since=2024-01-01T00:00:00Z")
                .expect("url"),
        )
        .header("Prefer", "respond-async")
        .header("X-Custom", "Value")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/fhir/Patient/$export");
    assert_eq!(
        request.query.as_deref(),
        Some("_since=2024-01-01T00:00:00Z")
    );
    assert_eq!(
        request.query_pairs(),
        [("_since".to_owned(), "2024-01-01T00:00:00Z".to_owned())]
    );
    assert_eq!(request.header("prefer"), Some("respond-async"));
    assert!(
        request
            .headers
            .iter()
            .any(|(n, v)| n == "x-custom" && v == "Value")
    );
    assert_eq!(&request.body[..], body.as_bytes());

    let (_, manifest) = export(&client, &server, "$export").await;
    assert_eq!(manifest["requiresAccessToken"], false);
    assert!(server.requests().len() >= 4);
    server.clear_requests();
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn deleted_jobs_are_gone() {
    let server = TestServer::start_default().await.expect("server");
    let client = raw_client();
    let (status_url, manifest) = export(&client, &server, "$export").await;
    let file = manifest["output"][0]["url"].as_str().expect("url");
    assert_eq!(
        client.get(file).send().await.expect("GET").status(),
        StatusCode::OK
    );

    let response = client.delete(&status_url).send().await.expect("DELETE");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_outcome(
        client.get(&status_url).send().await.expect("GET"),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_outcome(
        client.get(file).send().await.expect("GET"),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_outcome(
        client.delete(&status_url).send().await.expect("DELETE"),
        StatusCode::NOT_FOUND,
    )
    .await;
    // Expected lines stay available for assertions.
    assert!(server.file_lines(file).is_some());
}

#[tokio::test]
async fn expired_links_are_renewed_by_polling_again() {
    let server = TestServer::start_default().await.expect("server");
    let client = raw_client();
    let (status_url, manifest) = export(&client, &server, "$export").await;
    let old = manifest["output"][1]["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let before = get_bytes(&client, &old).await;

    server.expire_files();
    let outcome = assert_outcome(
        client.get(&old).send().await.expect("GET"),
        StatusCode::GONE,
    )
    .await;
    assert_eq!(outcome["issue"][0]["code"], "expired");

    let response = client.get(&status_url).send().await.expect("status");
    assert_eq!(response.status(), StatusCode::OK);
    let manifest: Value = response.json().await.expect("manifest");
    let fresh = manifest["output"][1]["url"].as_str().expect("url");
    assert_ne!(fresh, old);
    assert_eq!(get_bytes(&client, fresh).await, before);
    assert_eq!(
        server.file_lines(fresh).expect("file").collect::<Vec<_>>(),
        as_lines(&before)
    );
}

#[tokio::test]
async fn organize_output_by_patient() {
    let server = TestServer::builder()
        .patients(3)
        .resources_per_patient("Observation", 2)
        .resources_per_patient("Condition", 1)
        .resources_per_patient("Encounter", 1)
        .max_resources_per_file(6)
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(
        &client,
        &server,
        "$export?organizeOutputBy=Patient&_type=Patient,Observation,Condition",
    )
    .await;
    assert_eq!(manifest["outputOrganizedBy"], "Patient");
    let output = manifest["output"].as_array().expect("output");
    assert_eq!(output.len(), 2);
    assert!(output.iter().all(|o| o.get("type").is_none()));
    let (first, second) = (&output[0], &output[1]);
    assert_eq!(first["continuesInFile"], second["url"]);
    assert!(second.get("continuesInFile").is_none());

    let header = |n: u32| {
        format!(
            r#"{{"resourceType":"Parameters","parameter":[{{"name":"header","valueReference":{{"reference":"Patient/p-{n}"}}}}]}}"#
        )
    };
    let mut layouts = Vec::new();
    for entry in output {
        let url = entry["url"].as_str().expect("url");
        let lines = as_lines(&get_bytes(&client, url).await);
        assert_eq!(
            lines,
            server.file_lines(url).expect("file").collect::<Vec<_>>()
        );
        assert_eq!(entry["count"], lines.len() as u64);
        // Each line described as header(n) / Type(patient n).
        let mut current = None;
        let mut layout = Vec::new();
        for line in &lines {
            if line.starts_with(r#"{"resourceType":"Parameters""#) {
                let value: Value = serde_json::from_str(line).expect("JSON");
                let reference = value["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .expect("ref");
                let n: u32 = reference
                    .trim_start_matches("Patient/p-")
                    .parse()
                    .expect("number");
                assert_eq!(line, &header(n));
                current = Some(n);
                layout.push(format!("H{n}"));
            } else {
                let value: Value = serde_json::from_str(line).expect("JSON");
                let owner = match value["resourceType"].as_str().expect("type") {
                    "Patient" => value["id"].as_str().expect("id").to_owned(),
                    _ => value["subject"]["reference"]
                        .as_str()
                        .expect("ref")
                        .trim_start_matches("Patient/")
                        .to_owned(),
                };
                let n = current.expect("resources follow a header");
                assert_eq!(owner, format!("p-{n}"));
                layout.push(format!(
                    "{}{n}",
                    &value["resourceType"].as_str().expect("type")[..3]
                ));
            }
        }
        layouts.push(layout.join(" "));
    }
    assert_eq!(layouts[0], "H1 Pat1 Obs1 Obs1 Con1 H2 Pat2 Obs2");
    assert_eq!(layouts[1], "H2 Obs2 Con2 H3 Pat3 Obs3 Obs3 Con3");

    // The same through a POST Parameters body, without splitting.
    let server = TestServer::builder()
        .patients(4)
        .start()
        .await
        .expect("server");
    let response = client
        .post(server.base_url().join("Group/all/$export").expect("url"))
        .header("Prefer", "respond-async")
        .body(r#"{"resourceType":"Parameters","parameter":[{"name":"organizeOutputBy","valueString":"Patient"}]}"#)
        .send()
        .await
        .expect("POST");
    let status_url = content_location(&response);
    let manifest: Value = loop {
        let response = client.get(&status_url).send().await.expect("status");
        if response.status() == StatusCode::OK {
            break response.json().await.expect("manifest");
        }
    };
    assert_eq!(manifest["outputOrganizedBy"], "Patient");
    assert_eq!(manifest["output"].as_array().expect("output").len(), 1);
    // 4 patients x (1 header + 1 + 8 + 2 + 3)
    assert_eq!(manifest["output"][0]["count"], 4 * 15);
}

#[tokio::test]
async fn error_and_deleted_files() {
    let server = TestServer::builder()
        .error_file(["error", "warning", "fatal"])
        .deleted_file(4)
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export?_type=Patient,Observation").await;

    let errors = manifest["error"].as_array().expect("error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["type"], "OperationOutcome");
    assert_eq!(errors[0]["count"], 3);
    let lines = as_lines(&get_bytes(&client, errors[0]["url"].as_str().expect("url")).await);
    let severities: Vec<String> = lines
        .iter()
        .map(|l| {
            let outcome: Value = serde_json::from_str(l).expect("JSON");
            assert_eq!(outcome["resourceType"], "OperationOutcome");
            outcome["issue"][0]["severity"]
                .as_str()
                .expect("severity")
                .to_owned()
        })
        .collect();
    assert_eq!(severities, ["error", "warning", "fatal"]);

    let deleted = manifest["deleted"].as_array().expect("deleted");
    assert_eq!(deleted[0]["type"], "Bundle");
    assert_eq!(deleted[0]["count"], 4);
    let url = deleted[0]["url"].as_str().expect("url");
    let lines = as_lines(&get_bytes(&client, url).await);
    assert_eq!(
        lines,
        server.file_lines(url).expect("file").collect::<Vec<_>>()
    );
    for line in &lines {
        let bundle: Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "transaction");
        let request = &bundle["entry"][0]["request"];
        assert_eq!(request["method"], "DELETE");
        let target = request["url"].as_str().expect("url");
        assert!(
            target.starts_with("Patient/") || target.starts_with("Observation/"),
            "{target}"
        );
    }
}

#[tokio::test]
async fn large_file_is_streamed() {
    const SIZE: u64 = 50 << 20;
    let server = TestServer::builder()
        .resource_types(["Patient", "Observation"])
        .file_bytes("Observation", SIZE)
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export?_type=Observation").await;
    let entry = &manifest["output"][0];
    assert_eq!(manifest["output"].as_array().expect("output").len(), 1);
    let url = entry["url"].as_str().expect("url");
    assert!(url.ends_with("/Observation.1.ndjson"));

    let response = client.get(url).send().await.expect("GET");
    let length: u64 = header(&response, CONTENT_LENGTH).parse().expect("length");
    assert!((SIZE..SIZE + 1100).contains(&length), "{length}");
    let mut stream = response.bytes_stream();
    let (mut bytes, mut newlines, mut last_line) = (0u64, 0u64, Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        bytes += chunk.len() as u64;
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        // Keep only the tail, to check the last line.
        last_line.extend_from_slice(&chunk);
        let keep = last_line.len().saturating_sub(2048);
        last_line.drain(..keep);
    }
    assert_eq!(bytes, length);
    assert_eq!(entry["count"], newlines);
    assert_eq!(server.dataset().resource_count("Observation"), newlines);
    let tail = String::from_utf8(last_line).expect("UTF-8");
    let expected_last = server.file_lines(url).expect("file").last().expect("lines");
    assert!(tail.ends_with(&format!("{expected_last}\n")));

    // Resuming near the end of the big file is cheap and exact.
    let response = client
        .get(url)
        .header(RANGE, format!("bytes={}-", length - 100))
        .send()
        .await
        .expect("range");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let end = response.bytes().await.expect("body");
    assert_eq!(end.len(), 100);
    assert!(tail.as_bytes().ends_with(&end));
}

#[tokio::test]
async fn invalid_configuration_is_rejected() {
    let error = TestServer::builder()
        .resource_types(["Patient", "Medication"])
        .start()
        .await
        .expect_err("unsupported type");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let error = TestServer::builder()
        .file_bytes("Encounter", 1 << 20)
        .resource_types(["Patient"])
        .start()
        .await
        .expect_err("not exported");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let error = TestServer::builder()
        .max_resources_per_file(0)
        .start()
        .await
        .expect_err("zero");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let client = raw_client();
    let server = TestServer::start_default().await.expect("server");
    let url = server.base_url().join("jobs/x").expect("url");
    assert_eq!(
        client.get(url.clone()).send().await.expect("GET").status(),
        StatusCode::NOT_FOUND
    );
    server.shutdown().await;
    assert!(
        Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(url)
            .send()
            .await
            .is_err()
    );

    let server = TestServer::builder()
        .fault(Fault::stall(Duration::from_secs(3600)))
        .start()
        .await
        .expect("server");
    let (_, manifest) = export(&client, &server, "$export").await;
    let response = client
        .get(manifest["output"][0]["url"].as_str().expect("url"))
        .send()
        .await
        .expect("headers");
    let url = server.base_url().join("jobs/x").expect("url");
    drop(server);
    // The stalled body is cut instead of hanging for an hour.
    let (_, failed) = read_until_error(response).await;
    assert!(failed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client.get(url).send().await.is_err());
}

/// The cut is exact even when the client reads slowly (the server's socket
/// buffer fills up and the last bytes are still queued when the fault fires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_is_exact_with_a_slow_reader() {
    const CUT: usize = 2 << 20;
    let server = TestServer::builder()
        .patients(400)
        .fault(Fault::drop_after(CUT as u64).on_file_index(1))
        .start()
        .await
        .expect("server");
    let client = raw_client();
    let (_, manifest) = export(&client, &server, "$export?_type=Patient,Observation").await;
    let url = manifest["output"][1]["url"].as_str().expect("url");
    let response = client.get(url).send().await.expect("GET");
    let mut stream = response.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(_) => {
                failed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(failed);
    assert_eq!(got.len(), CUT);
    let expected: Vec<u8> = server
        .file_lines(url)
        .expect("file")
        .flat_map(|l| (l + "\n").into_bytes())
        .take(CUT)
        .collect();
    assert_eq!(got, expected);
}
