//! Cloud destinations (feature `cloud`): one export written to S3 (moto), Azure Blob
//! (Azurite) and a local directory, each read back byte-exactly (Cloud Storage writes are not
//! tested: object_store writes through the XML API, which the fake-gcs-server of the PyPI
//! wheel answers with 400); a rerun skips what is complete; three shards at once into one bucket give
//! the single-machine result; another export's prefix is refused.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]
#![cfg(feature = "cloud")]

mod common;
mod emulators;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fhir_bulk::download::{SaveOptions, file_names};
use fhir_bulk::storage::Shard;
use fhir_bulk::storage::cloud::Destination;
use fhir_bulk::{BulkClient, CompletedExport};
use fhir_bulk_test_server::TestServer;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

async fn export() -> (TestServer, BulkClient, CompletedExport) {
    common::completed_export(
        TestServer::builder()
            .patients(30)
            .resource_types(["Patient", "Observation", "Condition", "Encounter"])
            .polls_before_complete(0),
    )
    .await
}

/// What one machine writes locally: relative name → bytes.
async fn single_machine(
    client: &BulkClient,
    export: &CompletedExport,
) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    client
        .save_export(export, dir.path(), &SaveOptions::default())
        .await
        .unwrap();
    file_names(export, false)
        .map(|(_, rel)| {
            let name = rel.to_string_lossy().replace('\\', "/");
            (name, std::fs::read(dir.path().join(&rel)).unwrap())
        })
        .collect()
}

/// The data objects under `prefix` (manifest and logs aside).
async fn read_back(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    use futures::TryStreamExt;
    let prefix_path = ObjectPath::from(prefix);
    let metas: Vec<_> = store.list(Some(&prefix_path)).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for meta in metas {
        let key = meta.location.as_ref().to_owned();
        let rel = key
            .strip_prefix(&format!("{prefix}/"))
            .unwrap_or(&key)
            .to_owned();
        if rel.starts_with("manifest") || rel.starts_with("log") {
            continue;
        }
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.insert(rel, bytes.to_vec());
    }
    out
}

/// Writes the export to `store`, reads it back, reruns (all skipped), and checks the
/// manifest and log are beside the data.
async fn round_trip(store: Arc<dyn ObjectStore>, name: &str) {
    let (_server, client, export) = self::export().await;
    let expected = single_machine(&client, &export).await;
    let destination = Destination::new(store.clone(), "exports/run-1").unwrap();
    assert!(!format!("{destination:?}").contains("secret"));
    let report = destination
        .save_export(&client, &export, &SaveOptions::default(), Shard::all())
        .await
        .unwrap();
    assert_eq!(report.files.len(), expected.len(), "{name}");
    assert!(report.files.iter().all(|f| !f.skipped && f.lines > 0));
    assert_eq!(read_back(&store, "exports/run-1").await, expected, "{name}");
    let manifest = store
        .get(&ObjectPath::from("exports/run-1/manifest.json"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(manifest.as_ref(), export.manifests[0].raw().as_bytes());
    let log = store
        .get(&ObjectPath::from("exports/run-1/log.ndjson"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(),
        expected.len()
    );
    // A rerun finds every object complete.
    let again = destination
        .save_export(&client, &export, &SaveOptions::default(), Shard::all())
        .await
        .unwrap();
    assert!(again.files.iter().all(|f| f.skipped), "{name}");
    // gzip: `.ndjson.gz` objects that decompress to the same data.
    let gz = Destination::new(store.clone(), "exports/run-1-gz").unwrap();
    gz.save_export(
        &client,
        &export,
        &SaveOptions::default().with_gzip(true),
        Shard::all(),
    )
    .await
    .unwrap();
    let compressed = read_back(&store, "exports/run-1-gz").await;
    assert_eq!(compressed.len(), expected.len());
    for (rel, data) in compressed {
        let plain = rel.strip_suffix(".gz").unwrap();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(&out, &expected[plain], "{name} {rel}");
    }
    // Another export into the same prefix is refused.
    let (_other_server, other_client, other_export) = self::export().await;
    let err = destination
        .save_export(
            &other_client,
            &other_export,
            &SaveOptions::default(),
            Shard::all(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another export"), "{err}");
}

fn s3_store(moto: &emulators::Emulator, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(moto.url())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap(),
    )
}

async fn s3_bucket(moto: &emulators::Emulator, bucket: &str) {
    let response = reqwest::Client::new()
        .put(format!("{}/{bucket}", moto.url()))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Creates an Azurite container (SharedKey-signed, as the emulator requires).
async fn azure_container(azurite: &emulators::Emulator, container: &str) {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &STANDARD.decode(AZURITE_KEY).unwrap(),
    );
    let signature = STANDARD.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let response = reqwest::Client::new()
        .put(format!(
            "{}/{AZURITE_ACCOUNT}/{container}?restype=container",
            azurite.url()
        ))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("content-length", "0")
        .header(
            "authorization",
            format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
        )
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
}

fn azure_store(azurite: &emulators::Emulator, container: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(AZURITE_ACCOUNT)
            .with_access_key(AZURITE_KEY)
            .with_container_name(container)
            .with_endpoint(format!("{}/{AZURITE_ACCOUNT}", azurite.url()))
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn s3_round_trip_in_moto() {
    let Some(moto) = emulators::moto() else {
        return;
    };
    s3_bucket(&moto, "exports").await;
    round_trip(s3_store(&moto, "exports"), "s3").await;
}

#[tokio::test]
async fn azure_round_trip_in_azurite() {
    let Some(azurite) = emulators::azurite() else {
        return;
    };
    azure_container(&azurite, "exports").await;
    round_trip(azure_store(&azurite, "exports"), "azure").await;
}

#[tokio::test]
async fn local_round_trip_through_a_file_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(dir.path()).unwrap();
    let destination = Destination::from_url(url.as_str()).unwrap();
    let (_server, client, export) = export().await;
    let expected = single_machine(&client, &export).await;
    destination
        .save_export(&client, &export, &SaveOptions::default(), Shard::all())
        .await
        .unwrap();
    for (rel, data) in &expected {
        assert_eq!(&std::fs::read(dir.path().join(rel)).unwrap(), data, "{rel}");
    }
    assert!(dir.path().join("manifest.json").exists());
    assert!(dir.path().join("log.ndjson").exists());
}

#[tokio::test]
async fn three_shards_at_once_into_one_bucket_give_the_single_machine_result() {
    let Some(moto) = emulators::moto() else {
        return;
    };
    s3_bucket(&moto, "shared").await;
    let (_server, client, export) = export().await;
    let expected = single_machine(&client, &export).await;
    let store = s3_store(&moto, "shared");
    let workers: Vec<_> = (0..3)
        .map(|k| {
            let store = store.clone();
            let client = client.clone();
            let export = export.clone();
            tokio::spawn(async move {
                let destination = Destination::new(store, "big-export").unwrap();
                destination
                    .save_export(
                        &client,
                        &export,
                        &SaveOptions::default(),
                        Shard::new(k, 3).unwrap(),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut written = 0;
    for worker in workers {
        let report = worker.await.unwrap();
        assert!(report.files.iter().all(|f| !f.skipped));
        written += report.files.len();
    }
    assert_eq!(
        written,
        expected.len(),
        "each file written by exactly one shard"
    );
    assert_eq!(read_back(&store, "big-export").await, expected);
    for k in 0..3 {
        let log = ObjectPath::from(format!("big-export/log.{k}-of-3.ndjson"));
        store.head(&log).await.unwrap();
    }
}
