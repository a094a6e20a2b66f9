//! The CLI at scale: connections are reused across many files, memory grows with the manifest
//! and no more, and with partial manifests the files are downloaded while the job runs.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[path = "cli/support.rs"]
#[allow(dead_code)] // each test file uses some of the helpers
mod support;

use fhir_bulk_test_server::TestServer;
use std::path::Path;
use support::*;

/// GNU time (Debian package `time`), which reports a child's peak RSS unmixed with its own.
const GNU_TIME: &str = "/usr/bin/time";

/// Runs `fhir-bulk download <manifest> --output-dir <out>` to completion under GNU time;
/// returns its peak resident set size in bytes. Not measured from this process with `wait4`:
/// a child's `ru_maxrss` is at least the RSS of the process that spawned it (at `exec` the
/// kernel keeps the high-water mark of the memory it replaces), and this test process holds
/// a server and the manifests.
#[cfg(target_os = "linux")]
fn download_peak_rss(manifest: &Path, out: &Path) -> u64 {
    let report = out.with_extension("rss");
    let status = std::process::Command::new(GNU_TIME)
        .args(["-f", "%M", "-o", s(&report), BIN])
        .args(["download", s(manifest), "--output-dir", s(out), "--quiet"])
        .env_remove("FHIR_BULK_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "download failed: {status}");
    let kib: u64 = read(&report)
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no RSS in {}", read(&report)));
    kib * 1024
}

/// Many files over few connections: the client keeps its connections alive from one file to
/// the next (at most one per download slot, plus slack for a connection the server closes),
/// and reports them as aggregate progress, not a line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_across_files() {
    let files = FileServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("in").join("manifest.json");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, files.manifest(300)).unwrap();
    let out = dir.path().join("out");
    let r = run(&[
        "download",
        s(&manifest),
        "--output-dir",
        s(&out),
        "--concurrency",
        "4",
    ])
    .await;
    assert_code(&r, 0);
    assert_eq!(files.requests(), 300);
    assert!(
        files.connections() <= 8,
        "{} TCP connections for 300 files at concurrency 4",
        files.connections()
    );
    assert_eq!(
        read(&out.join("Patient.300.ndjson")),
        "{\"resourceType\":\"Patient\",\"id\":\"p299\"}\n"
    );
    // Many files: aggregate progress (a line every tenth of the files off a terminal), not a
    // line per file.
    assert!(!r.stderr.contains("saved Patient."), "{}", r.stderr);
    let progress = r
        .stderr
        .lines()
        .filter(|l| l.contains("downloaded ") && l.contains(" of 300 files"))
        .count();
    assert!(
        (5..=10).contains(&progress),
        "{progress} lines:\n{}",
        r.stderr
    );
}

/// Peak memory grows with the manifest, not faster: the growth from 500 to 5,000 files
/// stays under 4 KiB per added entry (about 20 times the entry's size in the manifest, which
/// is read whole, parsed, named and recorded).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_grows_with_the_manifest_and_no_faster() {
    if !Path::new(GNU_TIME).exists() {
        eprintln!(
            "SKIPPED: {GNU_TIME} is missing (Debian package `time`, which .ci/run installs): \
             the memory-growth test did not run"
        );
        return;
    }
    let files = FileServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for n in [500usize, 5_000] {
        let manifest = dir.path().join(format!("in{n}")).join("manifest.json");
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        std::fs::write(&manifest, files.manifest(n)).unwrap();
        let out = dir.path().join(format!("out{n}"));
        let peak = tokio::task::spawn_blocking(move || download_peak_rss(&manifest, &out))
            .await
            .unwrap();
        peaks.push((n, peak));
    }
    let (small, large) = (peaks[0], peaks[1]);
    let per_entry = large.1.saturating_sub(small.1) / (large.0 - small.0) as u64;
    eprintln!("peak RSS: {peaks:?}; {per_entry} bytes per added manifest entry");
    assert!(
        per_entry < 4096,
        "{per_entry} bytes per manifest entry: {peaks:?}"
    );
    assert_eq!(files.requests(), 5_500);
}

/// Every file of the complete manifest (the last page saved: the partial manifests come
/// first) is saved with exactly the lines the server served; returns how many.
fn assert_all_pages_saved(server: &TestServer, dir: &Path) -> usize {
    let mut n = 1;
    while dir.join(format!("manifest.{}.json", n + 1)).exists() {
        n += 1;
    }
    assert!(n > 1, "the partial manifests are saved as pages");
    let last = if n == 1 {
        "manifest.json".to_owned()
    } else {
        format!("manifest.{n}.json")
    };
    let manifest: serde_json::Value = serde_json::from_str(&read(&dir.join(last))).unwrap();
    let files = expected_files(&manifest, false);
    for (relative, url) in &files {
        let expected: String = server
            .file_lines(url)
            .expect("served file")
            .map(|l| l + "\n")
            .collect();
        assert!(
            read(&dir.join(relative)) == expected,
            "{} differs from what the server sent",
            relative.display()
        );
    }
    files.len()
}

/// Index of the last status poll (the one that found the job complete) in the server's log.
fn last_poll(server: &TestServer) -> usize {
    server
        .requests()
        .iter()
        .rposition(|r| r.method == "GET" && r.path.contains("/jobs/"))
        .expect("polled")
}

/// With `--allow-partial-manifests` (or `--param allowPartialManifests=true`) the files of
/// the partial manifests are downloaded while the job still runs, each once, and the result
/// is the same export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_manifests_are_downloaded_while_the_job_runs() {
    for flag in [
        "--allow-partial-manifests",
        "--param=allowPartialManifests=true",
    ] {
        let srv = server(
            TestServer::builder()
                .patients(6)
                .max_resources_per_file(6)
                .polls_before_complete(10)
                .retry_after("0")
                .partial_manifests(true),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let base = srv.base_url().to_string();
        let r = run(&["export", &base, "--output-dir", s(dir.path()), flag, FAST]).await;
        assert_code(&r, 0);
        let kickoff = &kickoffs(&srv)[0];
        assert!(
            kickoff
                .query
                .as_deref()
                .is_some_and(|q| q.contains("allowPartialManifests=true")),
            "{kickoff:?}"
        );
        let done = last_poll(&srv);
        let requests = srv.requests();
        let early = requests[..done]
            .iter()
            .filter(|r| r.path.contains("/files/"))
            .count();
        assert!(
            early > 0,
            "{flag}: no file was downloaded before the job completed"
        );
        assert!(
            r.stderr.contains("while the export runs"),
            "{flag}: {}",
            r.stderr
        );
        let saved = assert_all_pages_saved(&srv, dir.path());
        let file_requests = requests
            .iter()
            .filter(|r| r.path.contains("/files/"))
            .count();
        assert_eq!(file_requests, saved, "{flag}: each file downloaded once");
        assert_eq!(deletes(&srv), 1);
    }
}
