//! Where the data lives, from the command line: `download --shard K/N` (three workers at
//! once give the single-machine result), `--output-dir` URLs (refused without the `cloud`
//! feature, written to S3 through the AWS_* variables with it), `file://` directories, and
//! `--google-credentials`.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

#[allow(dead_code)]
#[path = "cli/support.rs"]
mod support;

use fhir_bulk::{BulkClient, ExportRequest};
use fhir_bulk_test_server::TestServer;
use std::collections::BTreeMap;
use std::path::Path;
use support::*;

/// An export of the test server, its manifest saved as `manifest.json` in `dir`.
async fn saved_manifest(dir: &Path) -> (TestServer, std::path::PathBuf) {
    let server = TestServer::builder()
        .patients(20)
        .resource_types(["Patient", "Observation", "Condition", "Encounter"])
        .max_resources_per_file(40)
        .polls_before_complete(0)
        .start()
        .await
        .unwrap();
    let client = BulkClient::builder(server.base_url().as_str())
        .build()
        .unwrap();
    let export = client
        .kick_off(&ExportRequest::system())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let path = dir.join("manifest.json");
    std::fs::write(&path, export.manifests[0].raw()).unwrap();
    (server, path)
}

/// Every data file under `dir` (manifests and logs aside): relative name → bytes.
fn data_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let data = rel.ends_with(".ndjson") || rel.ends_with(".ndjson.gz");
            if data && !rel.starts_with("log") {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn three_shards_at_once_give_the_single_machine_result() {
    let work = tempfile::tempdir().unwrap();
    let (_server, manifest) = saved_manifest(work.path()).await;
    let single = work.path().join("single");
    let run_one = run(&["download", s(&manifest), "--output-dir", s(&single)]).await;
    assert_code(&run_one, 0);
    let shared = work.path().join("shared");
    let shards: Vec<_> = (0..3)
        .map(|k| {
            let shard = format!("{k}/3");
            command(&[
                "download",
                s(&manifest),
                "--output-dir",
                s(&shared),
                "--shard",
                &shard,
            ])
            .spawn()
            .unwrap()
        })
        .collect();
    for child in shards {
        let run = wait(child).await;
        assert_code(&run, 0);
        assert!(run.all().contains("shard"), "{run:#?}");
    }
    let expected = data_files(&single);
    assert!(expected.len() >= 5, "{:?}", expected.keys());
    let got = data_files(&shared);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert!(
        got == expected,
        "the shards' files differ from the single machine's"
    );
    assert_eq!(
        std::fs::read(shared.join("manifest.json")).unwrap(),
        std::fs::read(&manifest).unwrap()
    );
    // A rerun of one shard finds its files complete.
    let again = run(&[
        "download",
        s(&manifest),
        "--output-dir",
        s(&shared),
        "--shard",
        "1/3",
    ])
    .await;
    assert_code(&again, 0);
    assert!(again.all().contains("0 files downloaded"), "{again:#?}");
}

#[tokio::test]
async fn bad_shards_and_destinations_are_usage_errors() {
    let work = tempfile::tempdir().unwrap();
    let bad = run(&[
        "download",
        "m.json",
        "--output-dir",
        "out",
        "--shard",
        "3/3",
    ])
    .await;
    assert_code(&bad, 2);
    assert!(bad.all().contains("--shard"), "{bad:#?}");
    let run_ftp = run(&["download", "m.json", "--output-dir", "ftp://host/dir"]).await;
    assert_code(&run_ftp, 2);
    assert!(run_ftp.all().contains("--output-dir"), "{run_ftp:#?}");
    // `export` never creates a folder named `s3:`.
    let export = command(&[
        "export",
        "http://127.0.0.1:9/fhir",
        "--output-dir",
        "s3://bucket/x",
    ])
    .current_dir(work.path())
    .output()
    .await
    .unwrap();
    let export = finished(export);
    assert_code(&export, 2);
    assert!(export.all().contains("--output-dir"), "{export:#?}");
    assert!(!work.path().join("s3:").exists());
}

#[cfg(not(feature = "cloud"))]
#[tokio::test]
async fn object_storage_needs_the_cloud_feature() {
    let work = tempfile::tempdir().unwrap();
    let (_server, manifest) = saved_manifest(work.path()).await;
    let out = command(&["download", s(&manifest), "--output-dir", "s3://bucket/x"])
        .current_dir(work.path())
        .output()
        .await
        .unwrap();
    let out = finished(out);
    assert_code(&out, 2);
    assert!(out.all().contains("`cloud` feature"), "{out:#?}");
    assert!(!work.path().join("s3:").exists());
}

#[tokio::test]
async fn a_file_url_names_a_local_directory() {
    let work = tempfile::tempdir().unwrap();
    let (_server, manifest) = saved_manifest(work.path()).await;
    let dir = work.path().join("via-url");
    let url = format!("file://{}", dir.display());
    let out = run(&["download", s(&manifest), "--output-dir", &url]).await;
    assert_code(&out, 0);
    assert!(!data_files(&dir).is_empty());
}

#[tokio::test]
async fn google_credentials_must_be_a_readable_key() {
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("key.json");
    std::fs::write(&key, r#"{"type":"service_account","client_email":"a@b"}"#).unwrap();
    let out = run(&[
        "status",
        "http://127.0.0.1:9/jobs/1",
        "--google-credentials",
        s(&key),
    ])
    .await;
    assert_code(&out, 2);
    assert!(
        out.all().contains("--google-credentials") && out.all().contains("private_key"),
        "{out:#?}"
    );
    let both = run(&[
        "status",
        "http://127.0.0.1:9/jobs/1",
        "--google-credentials",
        s(&key),
        "--token",
        "t",
    ])
    .await;
    assert_code(&both, 2);
}

#[cfg(feature = "cloud")]
#[path = "../../fhir-bulk/tests/emulators/mod.rs"]
mod emulators;

#[cfg(feature = "cloud")]
#[tokio::test]
async fn download_into_s3_through_the_aws_variables() {
    let Some(moto) = emulators::moto() else {
        return;
    };
    let made = reqwest::Client::new()
        .put(format!("{}/landing", moto.url()))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success());
    let work = tempfile::tempdir().unwrap();
    let (_server, manifest) = saved_manifest(work.path()).await;
    let single = work.path().join("single");
    assert_code(
        &run(&["download", s(&manifest), "--output-dir", s(&single)]).await,
        0,
    );
    let out = command(&[
        "download",
        s(&manifest),
        "--output-dir",
        "s3://landing/fhir/run-1",
    ])
    .env("AWS_ENDPOINT_URL", moto.url())
    .env("AWS_ALLOW_HTTP", "true")
    .env("AWS_ACCESS_KEY_ID", "testing")
    .env("AWS_SECRET_ACCESS_KEY", "testing-SECRET")
    .env("AWS_REGION", "us-east-1")
    .output()
    .await
    .unwrap();
    let out = finished(out);
    assert_code(&out, 0);
    assert_absent(&out.all(), "testing-SECRET", "the output");
    let expected = data_files(&single);
    assert!(!expected.is_empty());
    for (name, bytes) in expected {
        let got = reqwest::get(format!("{}/landing/fhir/run-1/{name}", moto.url()))
            .await
            .unwrap();
        assert!(got.status().is_success(), "{name}: {}", got.status());
        assert_eq!(got.bytes().await.unwrap().as_ref(), &bytes[..], "{name}");
    }
}
