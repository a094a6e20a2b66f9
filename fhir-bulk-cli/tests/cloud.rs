//! Where the data lives, from the command line: `download --shard K/N` (three workers at
//! once give the single-machine result), `--output-dir` URLs (refused without the `cloud`
//! feature, written to S3 through the AWS_* variables with it), `file://` directories, and
//! `--google-credentials`, and a Google-shaped export read from fake-gcs-server through
//! `STORAGE_EMULATOR_HOST`.
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

/// A Google service-account key whose `token_uri` is `token_uri`.
fn google_key(dir: &Path, token_uri: &str) -> std::path::PathBuf {
    let pem = std::fs::read_to_string(format!(
        "{}/../fixtures/keys/rsa-private.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "exporter@demo.iam.gserviceaccount.com",
        "token_uri": token_uri,
    });
    let path = dir.join("key.json");
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

#[tokio::test]
async fn a_google_shaped_export_is_read_from_cloud_storage_through_the_emulator_host() {
    use fhir_bulk_test_server::GoogleShape;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let Some(gcs) = emulators::fake_gcs() else {
        return;
    };
    emulators::gcs_bucket(&gcs, "store-exports").await;
    let google_token = "ya29.cli-google-SECRET";
    let tokens = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": google_token, "expires_in": 3600, "token_type": "Bearer"
        })))
        .mount(&tokens)
        .await;
    let server = TestServer::builder()
        .patients(15)
        .resource_types(["Patient", "Observation", "Encounter"])
        .max_resources_per_file(60)
        .polls_before_complete(1)
        .x_progress(["in progress"])
        .require_bearer(google_token)
        .google_shaped(GoogleShape::new(&gcs.url(), "gs://store-exports/bulk").unwrap())
        .start()
        .await
        .unwrap();
    // Reads go through a proxy that cuts the first answer.
    let (proxy, sent) = emulators::cutting_proxy_then(gcs.port, 6000, None).await;
    let work = tempfile::tempdir().unwrap();
    let key = google_key(work.path(), &format!("{}/token", tokens.uri()));
    let out_dir = work.path().join("out");
    let base = server.base_url();
    let output = command(&[
        "export",
        base.as_str(),
        "--group",
        "g-1",
        "--server-profile",
        "google",
        "--google-credentials",
        s(&key),
        "--output-dir",
        s(&out_dir),
        FAST,
    ])
    .env("STORAGE_EMULATOR_HOST", proxy.trim_start_matches("http://"))
    .output()
    .await
    .unwrap();
    let out = finished(output);
    assert_code(&out, 0);
    assert_absent(&out.all(), google_token, "the output");
    // Every file, byte for byte, under the name one machine gives it.
    let manifest = std::fs::read(out_dir.join("manifest.json")).unwrap();
    let page = fhir_bulk::Manifest::from_slice(&manifest, "manifest.json").unwrap();
    assert_eq!(page.output_organized_by.as_deref(), Some("Patient"));
    let export = fhir_bulk::CompletedExport::from_manifests(base.clone(), vec![page]);
    let names: Vec<_> = fhir_bulk::download::file_names(&export, false).collect();
    assert!(names.len() >= 2, "{names:?}");
    for (file, relative) in names {
        let gs = file.file.url.expose().to_owned();
        assert!(gs.starts_with("gs://store-exports/bulk/"), "{gs}");
        let expected: String = server.file_lines(&gs).unwrap().map(|l| l + "\n").collect();
        assert_eq!(
            std::fs::read_to_string(out_dir.join(&relative)).unwrap(),
            expected,
            "{gs}"
        );
    }
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).to_lowercase();
    assert!(
        sent.contains("get /storage/v1/b/store-exports/o/bulk%2f"),
        "{sent}"
    );
    assert!(sent.contains(&format!(
        "authorization: bearer {}",
        google_token.to_lowercase()
    )));
    assert!(
        sent.contains("range: bytes="),
        "resumed after the cut: {sent}"
    );
    // The FHIR server saw the Google token on every request, the Group export organized by
    // Patient, and the relative operations URL was polled.
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {google_token}")))
    );
    assert!(requests.iter().any(|r| {
        r.path.ends_with("/Group/g-1/$export")
            && r.query_pairs()
                .contains(&("organizeOutputBy".into(), "Patient".into()))
    }));
    assert!(
        requests
            .iter()
            .any(|r| r.path.starts_with("/fhir/operations/"))
    );
}

/// The NDJSON lines of a set of files.
#[cfg(feature = "cloud")]
fn lines_in(files: &BTreeMap<String, Vec<u8>>) -> usize {
    files
        .values()
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .sum()
}

/// `N files written, M already complete` (or `downloaded`) of a run's output.
fn written_and_skipped(out: &str, verb: &str) -> (usize, usize) {
    let at = out
        .find(&format!(" files {verb}, "))
        .unwrap_or_else(|| panic!("no `files {verb}` in {out}"));
    let before = out[..at].rsplit([' ', ':']).next().unwrap();
    let after = &out[at + verb.len() + 9..];
    let skipped = after.split(' ').next().unwrap();
    (before.parse().unwrap(), skipped.parse().unwrap())
}

#[tokio::test]
async fn an_interrupted_shard_is_finished_by_a_rerun_with_records_a_log_and_a_summary() {
    let work = tempfile::tempdir().unwrap();
    let (server, manifest) = saved_manifest(work.path()).await;
    let single = work.path().join("single");
    assert_code(
        &run(&["download", s(&manifest), "--output-dir", s(&single)]).await,
        0,
    );
    let expected = data_files(&single);
    let shared = work.path().join("shared");
    // One file fails once: its shard stops, with the files it finished kept.
    server.add_fault(fhir_bulk_test_server::Fault::http_status(410).on_file("Condition.1.ndjson"));
    let mut failed = Vec::new();
    for k in 0..2 {
        let shard = format!("{k}/2");
        let out = run(&[
            "download",
            s(&manifest),
            "--output-dir",
            s(&shared),
            "--shard",
            &shard,
            "--concurrency",
            "1",
        ])
        .await;
        if out.code != Some(0) {
            assert!(out.all().contains("run the same command again"), "{out:#?}");
            failed.push(shard);
        }
    }
    assert_eq!(failed.len(), 1, "the shard with Condition.1.ndjson fails");
    let again = run(&[
        "download",
        s(&manifest),
        "--output-dir",
        s(&shared),
        "--shard",
        &failed[0],
    ])
    .await;
    assert_code(&again, 0);
    assert!(
        data_files(&shared) == expected,
        "the shards' files differ from one machine's"
    );
    // Every file has its record, the log holds each file's completion once, and the
    // summary of the rerun counts the shard's files of both runs.
    let records = std::fs::read_dir(shared.join("_fhir-bulk/files"))
        .unwrap()
        .count();
    assert_eq!(records, expected.len());
    let log = std::fs::read_to_string(shared.join("log.ndjson")).unwrap();
    let events = |id: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"eventId\":\"{id}\"")))
            .count()
    };
    // Both shards' first runs and the rerun; the interrupted one logged its error.
    assert_eq!(events("manifest_complete"), 3, "{log}");
    assert_eq!(events("download_error"), 1, "{log}");
    assert_eq!(events("export_complete"), 2, "{log}");
    assert!(events("download_complete") >= 1, "{log}");
    assert!(again.stdout.contains("Export complete: "), "{again:#?}");
    assert!(again.stdout.contains("Condition"), "{again:#?}");
    let (downloaded, skipped) = written_and_skipped(&again.all(), "downloaded");
    assert!(downloaded >= 1, "{again:#?}");
    let summary_files = again
        .stdout
        .split("Export complete: ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap()
        .parse::<usize>()
        .unwrap();
    assert_eq!(summary_files, downloaded + skipped);
}

#[cfg(feature = "cloud")]
#[tokio::test]
async fn an_interrupted_cloud_run_is_finished_by_a_rerun_with_records_a_log_and_a_summary() {
    let Some(moto) = emulators::moto() else {
        return;
    };
    let made = reqwest::Client::new()
        .put(format!("{}/resume", moto.url()))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success());
    let work = tempfile::tempdir().unwrap();
    let (server, manifest) = saved_manifest(work.path()).await;
    let single = work.path().join("single");
    assert_code(
        &run(&["download", s(&manifest), "--output-dir", s(&single)]).await,
        0,
    );
    let expected = data_files(&single);
    let aws = |mut cmd: tokio::process::Command| {
        cmd.env("AWS_ENDPOINT_URL", moto.url())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing-SECRET")
            .env("AWS_REGION", "us-east-1");
        cmd
    };
    let args = [
        "download",
        s(&manifest),
        "--output-dir",
        "s3://resume/fhir/run-1",
        "--concurrency",
        "1",
    ];
    server.add_fault(fhir_bulk_test_server::Fault::http_status(410).on_file("Condition.1.ndjson"));
    let first = finished(aws(command(&args)).output().await.unwrap());
    assert!(first.code != Some(0), "{first:#?}");
    assert!(
        first.all().contains("run the same command again"),
        "{first:#?}"
    );
    let second = finished(aws(command(&args)).output().await.unwrap());
    assert_code(&second, 0);
    assert_absent(&second.all(), "testing-SECRET", "the output");
    let (written, skipped) = written_and_skipped(&second.all(), "written");
    assert!(written > 0 && skipped > 0, "{second:#?}");
    assert_eq!(written + skipped, expected.len());
    let resources = lines_in(&expected);
    assert!(
        second.stdout.contains(&format!(
            "Export complete: {} files, {resources} resources",
            expected.len()
        )),
        "{second:#?}"
    );
    let object = |name: String| {
        let url = format!("{}/resume/fhir/run-1/{name}", moto.url());
        async move {
            let got = reqwest::get(url).await.unwrap();
            assert!(got.status().is_success(), "{name}: {}", got.status());
            got.bytes().await.unwrap().to_vec()
        }
    };
    // The summary's resource count above comes from the records, the first run's included;
    // each file has one.
    let listing = reqwest::get(format!(
        "{}/resume?list-type=2&prefix=fhir/run-1/_fhir-bulk/files/",
        moto.url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    for (name, bytes) in &expected {
        assert_eq!(&object(name.clone()).await, bytes, "{name}");
        assert!(
            listing.contains(&format!(
                "<Key>fhir/run-1/_fhir-bulk/files/{name}.json</Key>"
            )),
            "{listing}"
        );
    }
    // The log is beside the data (its lines are checked by the library's tests; moto does
    // not serve single-PUT objects to an unsigned GET).
    let logs = reqwest::get(format!(
        "{}/resume?list-type=2&prefix=fhir/run-1/log",
        moto.url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(logs.contains("<Key>fhir/run-1/log.ndjson</Key>"), "{logs}");
}
