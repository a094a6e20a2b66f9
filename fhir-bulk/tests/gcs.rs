//! `gs://` export files (Google Cloud Healthcare's manifests) read through the Cloud Storage
//! JSON API of a real fake-gcs-server: byte-exact, resumed with `Range` + `If-Range` after a
//! cut, gzip objects (decompressive transcoding) included; the storage token goes to the
//! storage endpoint and to no other origin.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod emulators;

use fhir_bulk::download::SaveOptions;
use fhir_bulk::{
    BulkClient, CompletedExport, DownloadOptions, Error, FileKind, GoogleStorage, Manifest,
    RetryPolicy, SleepFn,
};
use futures::TryStreamExt;
use std::io::Write;
use std::sync::{Arc, Mutex};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BUCKET: &str = "fhir-export-bucket";

fn instant_sleep() -> SleepFn {
    Arc::new(|_| Box::pin(async {}))
}

fn ndjson(kind: &str, n: usize) -> Vec<u8> {
    (1..=n)
        .map(|i| {
            format!(
                "{{\"resourceType\":\"{kind}\",\"id\":\"{kind}-{i}\",\"note\":\"ünïcødé {}\"}}\n",
                "x".repeat(i % 37)
            )
        })
        .collect::<String>()
        .into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A manifest as Google writes it: `gs://bucket/dir/{export_id}_{Type}.ndjson`.
fn google_manifest(objects: &[(&str, &str)]) -> CompletedExport {
    let output: Vec<serde_json::Value> = objects
        .iter()
        .map(|(kind, name)| serde_json::json!({"type": kind, "url": format!("gs://{BUCKET}/{name}")}))
        .collect();
    let body = serde_json::json!({
        "transactionTime": "2024-05-01T10:00:00.000+00:00",
        "request": "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/fhirStores/s/fhir/Group/g/$export",
        "requiresAccessToken": true,
        "output": output,
        "error": []
    });
    let page = Manifest::from_slice(body.to_string().as_bytes(), "manifest").unwrap();
    CompletedExport::from_manifests(
        url::Url::parse("https://healthcare.googleapis.com/v1/operations/1").unwrap(),
        vec![page],
    )
}

use emulators::{Hook, cutting_proxy_then};

/// A proxy in front of `upstream` that cuts its first answer after `cut_after` bytes.
async fn cutting_proxy(upstream: u16, cut_after: usize) -> (String, Arc<Mutex<Vec<u8>>>) {
    cutting_proxy_then(upstream, cut_after, None).await
}

fn client(storage: GoogleStorage) -> BulkClient {
    BulkClient::builder("http://127.0.0.1:9/fhir")
        .bearer_token("ya29.storage-token")
        .google_storage(storage)
        .sleep_fn(instant_sleep())
        .retry_policy(RetryPolicy::default().with_jitter(false))
        .build()
        .unwrap()
}

#[tokio::test]
async fn gs_objects_download_byte_exactly_with_resume_after_a_cut() {
    let Some(gcs) = emulators::fake_gcs() else {
        return;
    };
    emulators::gcs_bucket(&gcs, BUCKET).await;
    let patients = ndjson("Patient", 300);
    let observations = ndjson("Observation", 500);
    let patient_object = "exports/run 1/8c1e_Patient.ndjson";
    let observation_object = "exports/run 1/8c1e_Observation ü.ndjson";
    emulators::gcs_put(&gcs, BUCKET, patient_object, patients.clone(), false).await;
    emulators::gcs_put(&gcs, BUCKET, observation_object, gzip(&observations), true).await;
    // The first answer breaks off mid-body (headers are about 450 bytes).
    let (proxy, sent) = cutting_proxy(gcs.port, 2000).await;
    let client = client(GoogleStorage::new().endpoint(&proxy));
    let export = google_manifest(&[
        ("Patient", patient_object),
        ("Observation", observation_object),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let options =
        SaveOptions::default().with_download(DownloadOptions::default().with_concurrency(1));
    let report = client
        .save_export(&export, dir.path(), &options)
        .await
        .unwrap();
    assert_eq!(report.files.len(), 2);
    assert_eq!(
        std::fs::read(dir.path().join("Patient.1.ndjson")).unwrap(),
        patients
    );
    assert_eq!(
        std::fs::read(dir.path().join("Observation.1.ndjson")).unwrap(),
        observations
    );
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).to_lowercase();
    assert!(
        sent.contains("get /storage/v1/b/fhir-export-bucket/o/exports%2frun%201%2f8c1e_patient.ndjson?alt=media"),
        "{sent}"
    );
    assert!(sent.contains("%c3%bc.ndjson?alt=media"), "{sent}");
    assert!(
        sent.contains("authorization: bearer ya29.storage-token"),
        "{sent}"
    );
    assert!(
        sent.contains("range: bytes="),
        "resumed with a range: {sent}"
    );
    assert!(sent.contains("if-range: \""), "pinned to the ETag: {sent}");
    assert!(
        sent.contains("?alt=media&generation="),
        "pinned to the generation: {sent}"
    );
    assert!(!sent.contains("range: bytes=0-"), "{sent}");
}

#[tokio::test]
async fn gzip_objects_are_decoded_as_they_stream() {
    let Some(gcs) = emulators::fake_gcs() else {
        return;
    };
    emulators::gcs_bucket(&gcs, BUCKET).await;
    let observations = ndjson("Observation", 50);
    emulators::gcs_put(
        &gcs,
        BUCKET,
        "d/e_Observation.ndjson",
        gzip(&observations),
        true,
    )
    .await;
    let client = client(GoogleStorage::new().endpoint(gcs.url()));
    let export = google_manifest(&[("Observation", "d/e_Observation.ndjson")]);
    let records: Vec<serde_json::Value> = client
        .download_resources(&export, &DownloadOptions::default())
        .map_ok(|r| r.resource)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(records.len(), 50);
    assert_eq!(records[49]["id"], "Observation-50");
}

#[tokio::test]
async fn gs_files_are_refused_until_google_storage_is_enabled() {
    let client = BulkClient::builder("https://ehr.example/fhir")
        .bearer_token("t")
        .build()
        .unwrap();
    let export = google_manifest(&[("Patient", "x/1_Patient.ndjson")]);
    let file = &export.files(FileKind::Output)[0];
    let err = client
        .download_lines(file, &DownloadOptions::default())
        .try_next()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedFileUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("google_storage"), "{err}");
}

#[tokio::test]
async fn the_storage_token_never_reaches_another_origin() {
    let storage = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    // The storage endpoint redirects the object elsewhere: the token must not follow.
    Mock::given(method("GET"))
        .and(path(
            "/storage/v1/b/fhir-export-bucket/o/d%2F1_Patient.ndjson",
        ))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/object", elsewhere.uri())),
        )
        .mount(&storage)
        .await;
    Mock::given(method("GET"))
        .and(path("/object"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("{\"resourceType\":\"Patient\",\"id\":\"1\"}\n"),
        )
        .mount(&elsewhere)
        .await;
    let client = client(GoogleStorage::new().endpoint(storage.uri()));
    let export = google_manifest(&[("Patient", "d/1_Patient.ndjson")]);
    let lines: Vec<_> = client
        .download_lines(
            &export.files(FileKind::Output)[0],
            &DownloadOptions::default(),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
    let at_storage = storage.received_requests().await.unwrap();
    assert_eq!(
        at_storage[0].headers.get("authorization").unwrap(),
        "Bearer ya29.storage-token"
    );
    assert_eq!(
        at_storage[0].url.path(),
        "/storage/v1/b/fhir-export-bucket/o/d%2F1_Patient.ndjson"
    );
    let at_elsewhere = elsewhere.received_requests().await.unwrap();
    assert_eq!(at_elsewhere.len(), 1);
    assert!(at_elsewhere[0].headers.get("authorization").is_none());

    // A manifest naming an https file on another origin does not get the token either.
    let other = serde_json::json!({
        "transactionTime": "2024-05-01T10:00:00Z", "request": "x", "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": format!("{}/object", elsewhere.uri())}], "error": []
    });
    let page = Manifest::from_slice(other.to_string().as_bytes(), "m").unwrap();
    let export =
        CompletedExport::from_manifests(url::Url::parse("https://x/1").unwrap(), vec![page]);
    let err = client
        .download_lines(
            &export.files(FileKind::Output)[0],
            &DownloadOptions::default(),
        )
        .try_next()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UntrustedOrigin { .. }), "{err:?}");
    assert_eq!(elsewhere.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_object_overwritten_between_the_cut_and_the_resume_is_never_spliced() {
    let Some(gcs) = emulators::fake_gcs() else {
        return;
    };
    emulators::gcs_bucket(&gcs, BUCKET).await;
    let object = "exports/9_Patient.ndjson";
    let first = ndjson("Patient", 300);
    emulators::gcs_put(&gcs, BUCKET, object, first.clone(), false).await;
    // Between the cut and the resume, the object is written again (another export into the
    // same destination): fake-gcs-server, like a proxy, does not check If-Range, so only the
    // generation tells the versions apart.
    let overwrite: Hook = {
        let url = gcs.url();
        Box::pin(async move {
            let mut second = ndjson("Patient", 300);
            second.iter_mut().for_each(|b| {
                if *b == b'x' {
                    *b = b'y';
                }
            });
            let mut upload =
                reqwest::Url::parse(&format!("{url}/upload/storage/v1/b/{BUCKET}/o")).unwrap();
            upload
                .query_pairs_mut()
                .append_pair("uploadType", "media")
                .append_pair("name", object);
            let answer = reqwest::Client::new()
                .post(upload)
                .body(second)
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "{}", answer.status());
        })
    };
    let (proxy, sent) = cutting_proxy_then(gcs.port, 4000, Some(overwrite)).await;
    let client = client(GoogleStorage::new().endpoint(&proxy));
    let export = google_manifest(&[("Patient", object)]);
    let mut lines = client.download_lines(
        &export.files(FileKind::Output)[0],
        &DownloadOptions::default(),
    );
    let mut delivered = Vec::new();
    let err = loop {
        match lines.try_next().await {
            Ok(Some(line)) => {
                delivered.extend_from_slice(&line.resource);
                delivered.push(b'\n');
            }
            Ok(None) => panic!("the read of a replaced object ended as if complete"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("replaced"), "{text}");
    assert!(!text.contains("ya29"), "{text}");
    // What was delivered is a prefix of the first version only.
    assert!(!delivered.is_empty());
    assert!(first.starts_with(&delivered), "spliced two versions");
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).to_lowercase();
    assert!(sent.contains("&generation="), "{sent}");
}

#[tokio::test]
async fn a_google_shaped_export_is_read_from_cloud_storage_with_resume_and_subjects() {
    use fhir_bulk::{ExportRequest, ServerProfile};
    use fhir_bulk_test_server::{GoogleShape, TestServer};

    let Some(gcs) = emulators::fake_gcs() else {
        return;
    };
    emulators::gcs_bucket(&gcs, "healthcare-exports").await;
    let token = "ya29.google-shaped-token";
    let server = TestServer::builder()
        .patients(12)
        .resource_types(["Patient", "Observation", "Condition"])
        .polls_before_complete(2)
        .x_progress(["in progress"])
        .require_bearer(token)
        .google_shaped(GoogleShape::new(&gcs.url(), "gs://healthcare-exports/stores/s1/").unwrap())
        .start()
        .await
        .unwrap();
    let base = server.base_url();
    // Without organizeOutputBy=Patient the server refuses the Group export with an outcome.
    let plain = BulkClient::builder(base.as_str())
        .bearer_token(token)
        .sleep_fn(instant_sleep())
        .build()
        .unwrap();
    let refused = plain
        .kick_off(&ExportRequest::group("g-1"))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::KickoffRejected(_)), "{refused:?}");
    assert!(
        refused.to_string().contains("organizeOutputBy"),
        "{refused}"
    );

    // The Google profile sends it; the files are read through a proxy that cuts the first
    // answer, in front of fake-gcs-server.
    let (proxy, sent) = cutting_proxy(gcs.port, 5000).await;
    let client = BulkClient::builder(base.as_str())
        .bearer_token(token)
        .server_profile(ServerProfile::GoogleCloudHealthcare)
        .google_storage(GoogleStorage::new().endpoint(&proxy))
        .sleep_fn(instant_sleep())
        .retry_policy(RetryPolicy::default().with_jitter(false))
        .build()
        .unwrap();
    let job = client.kick_off(&ExportRequest::group("g-1")).await.unwrap();
    assert!(
        job.status_url().path().starts_with("/fhir/operations/"),
        "{}",
        job.status_url()
    );
    let export = job.wait().await.unwrap();
    let files = export.files(FileKind::Output);
    assert!(!files.is_empty());
    for file in &files {
        let url = file.file.url.expose();
        assert!(
            url.starts_with("gs://healthcare-exports/stores/s1/job-") && url.ends_with(".ndjson"),
            "{url}"
        );
        assert_eq!(file.organized_by.as_deref(), Some("Patient"));
    }
    let dir = tempfile::tempdir().unwrap();
    let options =
        SaveOptions::default().with_download(DownloadOptions::default().with_concurrency(1));
    let report = client
        .save_export(&export, dir.path(), &options)
        .await
        .unwrap();
    assert_eq!(report.files.len(), files.len());
    for saved in &report.files {
        let gs = files
            .iter()
            .find(|f| f.file.url.redacted() == saved.url)
            .unwrap()
            .file
            .url
            .expose()
            .to_owned();
        let expected: String = server.file_lines(&gs).unwrap().map(|l| l + "\n").collect();
        assert_eq!(
            // `path` is where the file is (joining keeps an absolute one).
            std::fs::read_to_string(dir.path().join(&saved.path)).unwrap(),
            expected,
            "{gs}"
        );
    }
    // Each resource comes with the subject of its Patient block.
    let records: Vec<fhir_bulk::download::Record<serde_json::Value>> = client
        .download_resources(&export, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert!(records.len() > 12);
    for record in &records {
        let block = record.block.as_deref().unwrap();
        match record.resource["resourceType"].as_str().unwrap() {
            "Patient" => assert_eq!(
                format!("Patient/{}", record.resource["id"].as_str().unwrap()),
                block
            ),
            _ => assert_eq!(record.resource["subject"]["reference"], block),
        }
    }
    // The token went to the FHIR server (which demands it) and the storage endpoint.
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).to_lowercase();
    assert!(
        sent.contains(&format!("authorization: bearer {token}")),
        "{sent}"
    );
    assert!(
        sent.contains("range: bytes="),
        "resumed after the cut: {sent}"
    );
    assert!(sent.contains("&generation="), "{sent}");
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {token}")))
    );
}
