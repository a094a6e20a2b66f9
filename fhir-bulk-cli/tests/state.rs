//! The job state on a messy disk, end to end: the journal survives SIGKILL at any moment (a
//! torn last record included), the state's bytes stay proportional to the files, a state that
//! names paths outside the output directory is refused, one process per directory, files of an
//! unrecorded export are never mixed in, and `--max-poll-interval` caps a 429's Retry-After.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[path = "cli/support.rs"]
#[allow(dead_code)] // each test file uses some of the helpers
mod support;

use fhir_bulk_test_server::{Fault, TestServer};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use support::*;

/// Every file under its final name holds exactly what the server sent: a kill never leaves a
/// partial file under a final name.
fn assert_final_files_whole(server: &TestServer, dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else {
        return;
    };
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (relative, url) in expected_files(&manifest, false) {
        let path = dir.join(&relative);
        if !path.exists() {
            continue;
        }
        let expected: String = server
            .file_lines(&url)
            .expect("served file")
            .map(|l| l + "\n")
            .collect();
        assert!(
            read(&path) == expected,
            "{} is under its final name but differs from what the server sent",
            relative.display()
        );
    }
}

/// SIGKILL at random moments, again and again, with a torn record appended to the journal
/// once; the last run completes with byte-identical files, one kick-off, and every file
/// downloaded in full at most once after it was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_moment_then_a_torn_journal_record_and_the_rerun_completes() {
    let srv = server(
        TestServer::builder()
            .patients(60)
            .resource_types(["Patient", "Observation"])
            .resources_per_patient("Observation", 10)
            .max_resources_per_file(20)
            .polls_before_complete(1)
            .fault(
                Fault::trickle(700, Duration::from_millis(20))
                    .on_all_files()
                    .times(u32::MAX),
            ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let args = ["export", &base, "--output-dir", s(&out), FAST];
    let journal = out.join("fhir-bulk-job.journal");
    let mut torn = false;
    for round in 0..8 {
        let mut child = command(&args).spawn().unwrap();
        let delay = 150 + fastrand::u64(..600) + round * 50;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.start_kill().unwrap();
        let killed = wait(child).await;
        if killed.code == Some(0) {
            break;
        }
        assert_final_files_whole(&srv, &out);
        // A torn record: the first half of a line claiming a file that is not complete.
        if !torn && out.join("manifest.json").exists() {
            let record = json!({
                "key": "Observation.30.ndjson", "kind": "Output", "resource_type": "Observation",
                "url": format!("{base}files/x"), "resources": 20, "bytes": 7000, "data_bytes": 7000
            })
            .to_string();
            let mut bytes = std::fs::read(&journal).unwrap_or_default();
            bytes.extend_from_slice(&record.as_bytes()[..record.len() / 2]);
            std::fs::write(&journal, bytes).unwrap();
            torn = true;
        }
    }
    assert!(torn, "no kill landed after the manifest");
    let r = run(&args).await;
    assert_code(&r, 0);
    assert_eq!(kickoffs(&srv).len(), 1, "no second kick-off");
    let files = assert_files_match(&srv, &out, false);
    assert_eq!(files, 30 + 3);
    let st = state(&out);
    assert_eq!(st["phase"], "complete");
    // The journal is whole again (the torn record was dropped by a rewrite) and lists every
    // file once.
    assert_eq!(recorded_files(&out).len(), files);
    let lines = std::fs::read_to_string(&journal).unwrap();
    let records = lines.lines().filter(|l| l.starts_with('[')).count();
    assert_eq!(records, files, "{lines}");
}

/// The bytes a finished process passed to `write`, read from `/proc/<pid>/io` while it is a
/// zombie (exited, not yet reaped).
fn bytes_written_by(child: &mut std::process::Child) -> u64 {
    let pid = child.id();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().trim_start().chars().next();
        if state == Some('Z') {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let wchar = io
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(child.wait().unwrap().success());
    wchar
}

/// Runs an export of `srv` with `extra` arguments and checks that everything the CLI passed to
/// `write` (data, manifest, state, journal, log, terminal, and the HTTP requests on its
/// sockets) stays within the data (NDJSON and manifest) + 1% + 1 MB. Returns the output
/// directory's events in `log.ndjson` by id, how many files there are and the size of the job
/// state (header and journal).
async fn export_within_the_byte_budget(
    srv: &TestServer,
    extra: &[&str],
) -> (std::collections::HashMap<String, usize>, usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let mut child = std::process::Command::new(BIN)
        .args(["export", &base, "--output-dir", s(&out), FAST])
        .args(extra)
        .env_remove("FHIR_BULK_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let written = tokio::task::spawn_blocking(move || bytes_written_by(&mut child))
        .await
        .unwrap();
    let files = assert_files_match(srv, &out, false);
    let data: u64 = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.ends_with(".ndjson") && name != "log.ndjson") || name == "manifest.json"
        })
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let budget = data + data / 100 + 1_000_000;
    eprintln!("wrote {written} bytes for {data} bytes of data in {files} files (budget {budget})");
    assert!(
        written <= budget,
        "wrote {written} bytes for {data} bytes of data in {files} files (budget {budget})"
    );
    let mut events = std::collections::HashMap::new();
    for id in event_ids(&out) {
        *events.entry(id).or_insert(0) += 1;
    }
    let state_bytes = ["fhir-bulk-job.json", "fhir-bulk-job.journal"]
        .iter()
        .map(|name| std::fs::metadata(out.join(name)).unwrap().len())
        .sum();
    assert_eq!(recorded_files(&out).len(), files);
    (events, files, state_bytes)
}

/// 400 files of about 89 KB: everything the CLI writes stays within the data + 1% + 1 MB;
/// rewriting the whole state after each file (as before the journal) wrote about
/// 400 * 400 * 200 bytes = 32 MB of state alone. The log has one `download_complete` per file
/// and, by default, no `download_request`.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_stay_within_the_data_plus_one_percent_and_a_megabyte() {
    let srv = server(
        TestServer::builder()
            .patients(400)
            .resource_types(["Observation"])
            .resources_per_patient("Observation", 100)
            .max_resources_per_file(100)
            .polls_before_complete(0)
            .gzip(false),
    )
    .await;
    let (events, files, _) = export_within_the_byte_budget(&srv, &[]).await;
    assert_eq!(files, 400);
    assert_eq!(events.get("download_complete"), Some(&400));
    assert_eq!(events.get("download_request"), None);
}

/// 2,000 files of one resource each: with `--log-files errors` the CLI's own bytes per file (a
/// journal line of about 35 bytes, the HTTP request) stay within the budget, and the job
/// state is one short record a file (the header, of constant size, holds none; the journal is
/// written once). With the default `--log-files done` a `download_complete` line of about
/// 260 bytes more per file goes to the log: files under about 26 KB need `--log-files errors`
/// to stay within 1%.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_files_with_log_files_errors_stay_within_the_megabyte() {
    let srv = server(
        TestServer::builder()
            .patients(2_000)
            .resource_types(["Patient"])
            .max_resources_per_file(1)
            .polls_before_complete(0)
            .gzip(false),
    )
    .await;
    let (events, files, state_bytes) =
        export_within_the_byte_budget(&srv, &["--log-files", "errors", "--no-sync"]).await;
    assert_eq!(files, 2_000);
    // Format 3 wrote about 70 bytes a file to the journal and as many again to the header.
    assert!(
        state_bytes < 4_096 + 40 * files as u64,
        "{state_bytes} bytes of job state for {files} files"
    );
    assert_eq!(events.get("download_complete"), None);
    assert_eq!(events.get("export_complete"), Some(&1));
}

/// A state file whose keys leave the output directory (`../..`, an absolute path) is refused
/// on load, with or without `--fresh`: nothing outside the directory is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_naming_paths_outside_the_directory_is_refused_and_fresh_deletes_nothing() {
    let srv = server(TestServer::builder().patients(2).polls_before_complete(0)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a").join("out");
    std::fs::create_dir_all(&out).unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let absolute = dir.path().join("absolute.txt");
    std::fs::write(&absolute, "keep me too").unwrap();
    let record = json!({
        "kind": "Output", "resource_type": "Patient", "url": "http://127.0.0.1:1/f",
        "resources": 1, "bytes": 7, "data_bytes": 7
    });
    let base = srv.base_url().to_string();
    for (key, in_journal) in [
        ("../../victim.txt".to_owned(), false),
        (s(&absolute).to_owned(), false),
        ("../../victim.txt".to_owned(), true),
    ] {
        let mut files = serde_json::Map::new();
        let mut header_files = serde_json::Map::new();
        files.insert(key.clone(), record.clone());
        if !in_journal {
            header_files = files.clone();
        }
        let state = json!({
            "format": 1, "export_id": "00112233445566778899", "phase": "downloading",
            "files": header_files,
        });
        std::fs::write(out.join("fhir-bulk-job.json"), state.to_string()).unwrap();
        let journal = out.join("fhir-bulk-job.journal");
        if in_journal {
            let mut line = record.clone();
            line["key"] = json!(key);
            std::fs::write(&journal, format!("{line}\n")).unwrap();
        } else {
            let _ = std::fs::remove_file(&journal);
        }
        for fresh in [false, true] {
            let mut args = vec!["export", &base, "--output-dir", s(&out), FAST];
            if fresh {
                args.push("--fresh");
            }
            let r = run(&args).await;
            assert_code(&r, 2);
            assert!(
                r.stderr.contains(&key) && r.stderr.contains("not a path inside"),
                "{}",
                r.stderr
            );
            assert!(
                victim.exists() && absolute.exists(),
                "nothing outside is deleted"
            );
        }
    }
    assert_eq!(kickoffs(&srv).len(), 0);
    assert_eq!(read(&victim), "keep me");
}

/// A second run on a directory in use fails at once, naming the first run's pid; the first
/// is not disturbed and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_directory_is_refused_naming_the_first() {
    let srv = server(
        TestServer::builder()
            .patients(3)
            .polls_before_complete(0)
            .fault(Fault::stall(Duration::from_secs(2)).on_file("Patient.1.ndjson")),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let args = ["export", &base, "--output-dir", s(&out), FAST];
    let first = command(&args).spawn().unwrap();
    let pid = first.id().unwrap();
    wait_until("the first run kicked off", || {
        out.join("fhir-bulk-job.json").exists()
    })
    .await;
    for second in [
        vec!["export", &base, "--output-dir", s(&out), FAST],
        vec!["export", &base, "--output-dir", s(&out), FAST, "--fresh"],
        vec![
            "download",
            "http://127.0.0.1:1/jobs/x",
            "--output-dir",
            s(&out),
        ],
    ] {
        let r = run(&second).await;
        assert_code(&r, 2);
        assert!(
            r.stderr.contains(&format!("pid {pid}")) && r.stderr.contains("--output-dir"),
            "{}",
            r.stderr
        );
    }
    let r = wait(first).await;
    assert_code(&r, 0);
    assert_eq!(kickoffs(&srv).len(), 1);
    assert_files_match(&srv, &out, false);
    // The lock ends with the process: the next run is not blocked by the lock file.
    let r = run(&args).await;
    assert_code(&r, 0);
    assert!(r.stderr.contains("already complete"), "{}", r.stderr);
}

/// Files named like an export's in a directory without a job state are never overwritten
/// piecemeal: the run refuses before the kick-off, naming `--fresh`; `--fresh` clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_an_unrecorded_export_are_refused_then_cleared_by_fresh() {
    let srv = server(
        TestServer::builder()
            .patients(2)
            .resource_types(["Patient", "Condition"])
            .polls_before_complete(0),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    std::fs::write(out.join("Patient.1.ndjson"), "{\"old\":1}\n").unwrap();
    std::fs::write(out.join("Observation.7.ndjson"), "{\"old\":2}\n").unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let base = srv.base_url().to_string();
    let r = run(&["export", &base, "--output-dir", s(out), FAST]).await;
    assert_code(&r, 2);
    assert!(
        r.stderr.contains("Observation.7.ndjson")
            && r.stderr.contains("--fresh")
            && r.stderr.contains("--output-dir"),
        "{}",
        r.stderr
    );
    assert_eq!(kickoffs(&srv).len(), 0, "refused before the kick-off");
    assert_eq!(read(&out.join("Patient.1.ndjson")), "{\"old\":1}\n");

    let r = run(&[
        "download",
        &format!("{base}jobs/none"),
        "--output-dir",
        s(out),
    ])
    .await;
    assert_code(&r, 2);
    assert!(r.stderr.contains("no job state"), "{}", r.stderr);

    let r = run(&["export", &base, "--output-dir", s(out), "--fresh", FAST]).await;
    assert_code(&r, 0);
    assert!(!out.join("Observation.7.ndjson").exists());
    assert_eq!(read(&out.join("notes.txt")), "mine", "other files are kept");
    assert_files_match(&srv, out, false);
}

/// `--max-poll-interval` caps the Retry-After of a 429 on the status poll: one hour asked,
/// the poll is retried at once (before, it waited the library's five-minute cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_poll_interval_caps_a_429_retry_after() {
    let srv = server(
        TestServer::builder()
            .patients(2)
            .polls_before_complete(1)
            .fault(Fault::too_many_requests(Some("3600")).on_status()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let child = command(&["export", &base, "--output-dir", s(dir.path()), FAST])
        .spawn()
        .unwrap();
    // `wait` gives up after 30 s; the uncapped wait is 300 s.
    let r = wait(child).await;
    assert_code(&r, 0);
    let polls = srv
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/jobs/"))
        .count();
    assert!(polls >= 3, "the 429, then the polls: {polls}");
}
