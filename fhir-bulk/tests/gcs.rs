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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

/// A TCP proxy to `upstream` whose first connection's answer is cut after `cut_after`
/// bytes; records what clients sent.
async fn cutting_proxy(upstream: u16, cut_after: usize) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let limit = if first { Some(cut_after) } else { None };
            first = false;
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut left = limit.unwrap_or(usize::MAX);
                while left > 0 {
                    let Ok(n) = server_read.read(&mut buf).await else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    let n = n.min(left);
                    left -= n;
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = client_write.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), sent)
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
