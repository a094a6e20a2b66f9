//! End-to-end tests of the `fhir-bulk` binary: it runs as a separate process against the
//! crate's in-process bulk data server (or wiremock) on 127.0.0.1, and the tests check what
//! reached the wire (`TestServer::requests`), what landed in the output directory, the exit
//! codes, resume after a kill, SIGTERM and Ctrl-C, and that no token, pre-signed query string
//! or escape code appears in any output.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

#[path = "cli/support.rs"]
mod support;

use fhir_bulk::{BulkClient, ExportRequest};
use fhir_bulk_test_server::{Fault, TestServer};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_saves_files_manifest_log_and_state_then_deletes_the_job() {
    let srv = server(
        TestServer::builder()
            .patients(6)
            .max_resources_per_file(20)
            .polls_before_complete(1)
            .x_progress(["45% complete"])
            .require_bearer(TOKEN)
            .error_file(["warning", "information"])
            .deleted_file(2),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--token",
        TOKEN,
        "--output-dir",
        s(&out),
        "--log-files",
        "all",
        FAST,
    ])
    .await;
    assert_code(&r, 0);

    // Layout: per-type numbered files, error/ and deleted/, all equal to what was served.
    let saved = assert_files_match(&srv, &out, false);
    assert!(
        out.join("Observation.3.ndjson").exists(),
        "48 Observations in files of 20"
    );
    assert!(out.join("error/OperationOutcome.1.ndjson").exists());
    assert!(out.join("deleted/Bundle.1.ndjson").exists());

    // The summary on stdout; progress lines on stderr.
    for needle in [
        "Export complete",
        "Observation",
        "error files:     1 (2 OperationOutcomes; issues: 1 warning, 1 information)",
        "deleted files:   1 (2 Bundles)",
        "--since 20",
        "deleted on the server",
    ] {
        assert!(
            r.stdout.contains(needle),
            "`{needle}` missing:\n{}",
            r.stdout
        );
    }
    assert!(
        r.stderr.contains("export in progress: 45% complete"),
        "{}",
        r.stderr
    );
    let first = r.stderr.lines().next().unwrap();
    assert!(
        first.starts_with("20") && first.contains("Z "),
        "timestamped: {first}"
    );

    // The log: the SMART bulk-data-client's events (all of them with `--log-files all`), in
    // order, with one export id.
    let ids = event_ids(&out);
    assert_eq!(ids[0], "kickoff");
    // The kickoff event names the server's software, from its CapabilityStatement.
    let kickoff: serde_json::Value =
        serde_json::from_str(read(&out.join("log.ndjson")).lines().next().unwrap()).unwrap();
    let detail = &kickoff["eventDetail"];
    assert_eq!(detail["softwareName"], "fhir-bulk test server");
    assert_eq!(detail["softwareVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(detail["softwareReleaseDate"], "2026-01-01");
    assert_eq!(detail["fhirVersion"], "4.0.1");
    assert_eq!(ids[1], "status_progress");
    let tail: Vec<&str> = ids[2..5].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "status_page_complete",
            "manifest_complete",
            "status_complete"
        ]
    );
    let requests = ids.iter().filter(|i| *i == "download_request").count();
    let completes = ids.iter().filter(|i| *i == "download_complete").count();
    assert_eq!((requests, completes), (saved, saved));
    assert_eq!(ids.last().unwrap(), "export_complete");
    let log = events(&out);
    assert!(log.iter().all(|e| e["exportId"] == log[0]["exportId"]));
    assert_eq!(log[1]["eventDetail"]["xProgress"], "45% complete");
    let kickoff = &log[0]["eventDetail"];
    assert_eq!(kickoff["exportUrl"], format!("{base}$export"));
    assert!(
        kickoff["responseHeaders"]["content-location"]
            .as_str()
            .unwrap()
            .contains("/fhir/jobs/")
    );
    let complete = log
        .iter()
        .find(|e| e["eventId"] == "download_complete")
        .unwrap();
    assert!(complete["eventDetail"]["fileSize"].as_u64().unwrap() > 0);
    assert!(complete["eventDetail"]["resourceCount"].as_u64().unwrap() > 0);
    let done = &log.last().unwrap()["eventDetail"];
    assert_eq!(done["files"], saved);
    assert_eq!(done["resources"], 6 + 48 + 12 + 18 + 2 + 2);

    // The manifest as received, the state, the DELETE.
    let manifest: Value = serde_json::from_str(&read(&out.join("manifest.json"))).unwrap();
    assert!(manifest["transactionTime"].is_string());
    let st = state(&out);
    assert_eq!(st["phase"], "complete");
    assert_eq!(st["job_deleted"], true);
    assert_eq!(recorded_files(&out).len(), saved);
    assert_eq!(kickoffs(&srv).len(), 1);
    assert_eq!(deletes(&srv), 1);

    // The token is on the wire, never in the output directory or the terminal.
    assert_eq!(
        kickoffs(&srv)[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_absent(&r.all(), TOKEN, "output");
    assert_absent(&read(&out.join("log.ndjson")), TOKEN, "log.ndjson");
    assert_absent(&read(&out.join("fhir-bulk-job.json")), TOKEN, "state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_get_option_reaches_the_wire() {
    let srv = server(TestServer::builder().patients(2).polls_before_complete(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--group",
        "g-1",
        "--type",
        "Patient,Observation",
        "--since",
        "2024-01-01T00:00:00Z",
        "--until",
        "2024-06-01T00:00:00Z",
        "--type-filter",
        "Observation?category=laboratory",
        "--type-filter",
        "Patient?active=true",
        "--elements",
        "id,meta",
        "--include-associated-data",
        "LatestProvenanceResources",
        "--output-format",
        "application/fhir+ndjson",
        "--param",
        "_container=exports-1",
        "--lenient",
        "--header",
        "Epic-Client-ID: epic-123",
        "--token",
        TOKEN,
        "--output-dir",
        s(dir.path()),
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    let kickoff = &kickoffs(&srv)[0];
    assert_eq!(kickoff.method, "GET");
    assert_eq!(kickoff.path, "/fhir/Group/g-1/$export");
    let pairs = kickoff.query_pairs();
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    for expected in [
        pair("_type", "Patient,Observation"),
        pair("_since", "2024-01-01T00:00:00Z"),
        pair("_until", "2024-06-01T00:00:00Z"),
        pair("_typeFilter", "Observation?category=laboratory"),
        pair("_typeFilter", "Patient?active=true"),
        pair("_elements", "id,meta"),
        pair("includeAssociatedData", "LatestProvenanceResources"),
        pair("_outputFormat", "application/fhir+ndjson"),
        pair("_container", "exports-1"),
    ] {
        assert!(pairs.contains(&expected), "{expected:?} not in {pairs:?}");
    }
    let prefer = kickoff.header("prefer").unwrap();
    assert!(prefer.contains("respond-async") && prefer.contains("handling=lenient"));
    // Headers and token go with every request to the server: kick-off, status, files, DELETE.
    for request in srv.requests() {
        assert_eq!(
            request.header("epic-client-id"),
            Some("epic-123"),
            "{request:?}"
        );
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{request:?}"
        );
    }
    // Only the requested types were exported.
    assert!(dir.path().join("Patient.1.ndjson").exists());
    assert!(dir.path().join("Observation.1.ndjson").exists());
    assert!(!dir.path().join("Condition.1.ndjson").exists());
    // The log has the request parameters, repeated ones as arrays.
    let log = events(dir.path());
    let params = &log[0]["eventDetail"]["requestParameters"];
    assert_eq!(params["_type"], "Patient,Observation");
    assert_eq!(
        params["_typeFilter"],
        json!(["Observation?category=laboratory", "Patient?active=true"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_go_in_a_post_parameters_body() {
    let srv = server(TestServer::builder().patients(3).polls_before_complete(0)).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("patients.txt");
    std::fs::write(&list, "# cohort\nPatient/p-3\n\n").unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--patient",
        "Patient/p-1",
        "--patient",
        "p-2",
        "--patients-file",
        s(&list),
        "--type",
        "Patient,Condition",
        "--organize-output-by",
        "Patient",
        "--since",
        "2024-01-01T00:00:00Z",
        "--include-associated-data",
        "LatestProvenanceResources",
        "--output-dir",
        s(&out),
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    let kickoff = &kickoffs(&srv)[0];
    assert_eq!(kickoff.method, "POST");
    assert_eq!(kickoff.path, "/fhir/Patient/$export");
    let body: Value = serde_json::from_slice(&kickoff.body).unwrap();
    assert_eq!(body["resourceType"], "Parameters");
    let params = body["parameter"].as_array().unwrap();
    let refs: Vec<&str> = params
        .iter()
        .filter(|p| p["name"] == "patient")
        .map(|p| p["valueReference"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["Patient/p-1", "Patient/p-2", "Patient/p-3"]);
    let has = |name: &str, key: &str, value: &str| {
        params.iter().any(|p| p["name"] == name && p[key] == value)
    };
    assert!(has("_type", "valueString", "Patient,Condition"), "{body}");
    assert!(has("organizeOutputBy", "valueString", "Patient"), "{body}");
    assert!(
        has("_since", "valueInstant", "2024-01-01T00:00:00Z"),
        "{body}"
    );
    assert!(has(
        "includeAssociatedData",
        "valueCode",
        "LatestProvenanceResources"
    ));
    // Output organized by patient is saved under the organizing type.
    assert!(out.join("Patient.1.ndjson").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_and_methods() {
    let srv = server(
        TestServer::builder()
            .patients(1)
            .resource_types(["Patient"])
            .polls_before_complete(0),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let cases: [(&[&str], &str, &str); 4] = [
        (&[], "GET", "/fhir/$export"),
        (&["--all-patients"], "GET", "/fhir/Patient/$export"),
        (&["--group", "g.1-x"], "GET", "/fhir/Group/g.1-x/$export"),
        (
            &["--group", "g2", "--post"],
            "POST",
            "/fhir/Group/g2/$export",
        ),
    ];
    for (i, (flags, verb, path)) in cases.into_iter().enumerate() {
        let out = dir.path().join(i.to_string());
        let mut args = vec!["export", &base, "--output-dir", s(&out), FAST];
        args.extend_from_slice(flags);
        let r = run(&args).await;
        assert_code(&r, 0);
        let kickoff = kickoffs(&srv).pop().unwrap();
        assert_eq!(
            (kickoff.method.as_str(), kickoff.path.as_str()),
            (verb, path)
        );
        if verb == "POST" {
            let body: Value = serde_json::from_slice(&kickoff.body).unwrap();
            assert_eq!(body["resourceType"], "Parameters");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_unit_and_max_poll_interval_shape_the_polling() {
    // Retry-After 400 read as milliseconds: the log shows 0.4 s.
    let srv = server(
        TestServer::builder()
            .patients(1)
            .resource_types(["Patient"])
            .polls_before_complete(1)
            .retry_after("400"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ms");
    let base = srv.base_url().to_string();
    let args = [
        "export",
        &base,
        "--output-dir",
        s(&out),
        "--retry-after-unit",
        "millis",
        FAST,
    ];
    let r = run(&args).await;
    assert_code(&r, 0);
    assert_eq!(events(&out)[1]["eventDetail"]["retryAfter"], "0.4");

    // Retry-After 30 s, capped by --max-poll-interval.
    let slow = server(
        TestServer::builder()
            .patients(1)
            .resource_types(["Patient"])
            .polls_before_complete(2)
            .retry_after("30"),
    )
    .await;
    let out = dir.path().join("capped");
    let base = slow.base_url().to_string();
    let started = Instant::now();
    let r = run(&[
        "export",
        &base,
        "--output-dir",
        s(&out),
        "--max-poll-interval",
        "0.3",
    ])
    .await;
    assert_code(&r, 0);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(events(&out)[1]["eventDetail"]["retryAfter"], "30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_output_verbose_and_quiet_lines() {
    let srv = server(
        TestServer::builder()
            .patients(3)
            .polls_before_complete(1)
            .error_file(["information"]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let gz = dir.path().join("gz");
    let r = run(&[
        "export",
        &base,
        "--output-dir",
        s(&gz),
        "--gzip",
        "--concurrency",
        "1",
        // The multi-thread runtime (the quiet run below is on the default single thread).
        "--threads",
        "2",
        "-v",
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    assert_files_match(&srv, &gz, true);
    assert!(gz.join("error/OperationOutcome.1.ndjson.gz").exists());
    assert!(
        r.stderr.contains("poll 1: export in progress"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("downloading Patient.1.ndjson.gz"),
        "{}",
        r.stderr
    );

    // Quiet, and without syncs (`--no-sync`): the same files, each under its final name.
    let quiet = dir.path().join("quiet");
    let r = run(&[
        "export",
        &base,
        "--output-dir",
        s(&quiet),
        "--quiet",
        "--no-sync",
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    assert_files_match(&srv, &quiet, false);
    assert!(!r.stderr.contains("saved "), "{}", r.stderr);
    assert!(!r.stderr.contains("in progress"), "{}", r.stderr);
    assert!(r.stderr.contains("export kicked off"), "{}", r.stderr);
    assert!(r.stdout.contains("Export complete"));
}

/// The first run is killed (SIGKILL) while one file is still arriving; the second run polls
/// the recorded status URL, downloads only that file, and ends with identical files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_kill_in_the_middle_of_a_download() {
    let srv = server(
        TestServer::builder()
            .patients(10)
            .polls_before_complete(0)
            .fault(Fault::trickle(32, Duration::from_millis(50)).on_file("Observation.1.ndjson")),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let args = [
        "export",
        &base,
        "--token",
        TOKEN,
        "--output-dir",
        s(&out),
        FAST,
    ];
    let mut child = command(&args).spawn().unwrap();
    let journal_path = out.join("fhir-bulk-job.journal");
    wait_until("three files are complete", || {
        // Record lines are arrays (a group's definition is an object).
        let records = std::fs::read_to_string(&journal_path)
            .map_or(0, |t| t.lines().filter(|l| l.starts_with('[')).count());
        records == 3
    })
    .await;
    assert!(
        !out.join("Observation.1.ndjson").exists(),
        "still downloading"
    );
    child.start_kill().unwrap();
    let killed = wait(child).await;
    assert_ne!(killed.code, Some(0));
    assert_eq!(
        deletes(&srv),
        0,
        "never a DELETE before the files are complete"
    );
    assert_eq!(state(&out)["phase"], "downloading");

    let r = run(&args).await;
    assert_code(&r, 0);
    assert!(r.stderr.contains("resuming the export"), "{}", r.stderr);
    assert!(
        r.stderr.contains("3 of 4 files already complete"),
        "{}",
        r.stderr
    );
    assert_eq!(kickoffs(&srv).len(), 1, "no second kick-off");
    for done in [
        "Patient.1.ndjson",
        "Condition.1.ndjson",
        "Encounter.1.ndjson",
    ] {
        assert_eq!(file_gets(&srv, done), 1, "{done} downloaded once");
    }
    assert_eq!(file_gets(&srv, "Observation.1.ndjson"), 2);
    assert_files_match(&srv, &out, false);
    assert_eq!(deletes(&srv), 1);
    // Both runs log under the same export id.
    let log = events(&out);
    assert!(log.iter().all(|e| e["exportId"] == log[0]["exportId"]));
    assert_eq!(
        event_ids(&out).iter().filter(|i| *i == "kickoff").count(),
        1
    );
}

/// SIGTERM mid-download: exit 130 at once, files and state kept, no DELETE, a hint on how
/// to resume; the same command then finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_promptly_and_the_same_command_resumes() {
    let srv = server(
        TestServer::builder()
            .patients(5)
            .polls_before_complete(0)
            .fault(Fault::trickle(16, Duration::from_millis(100)).on_file("Encounter.1.ndjson")),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let args = [
        "export",
        &base,
        "--token",
        TOKEN,
        "--output-dir",
        s(&out),
        "--log-files",
        "all",
        FAST,
    ];
    let child = command(&args).spawn().unwrap();
    wait_until("Encounter is being downloaded", || {
        std::fs::read_to_string(out.join("log.ndjson"))
            .is_ok_and(|t| t.contains("download_request") && t.contains("Encounter"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    signal(&child, "TERM");
    let r = wait(child).await;
    assert!(sent.elapsed() < Duration::from_secs(5), "prompt stop");
    assert_code(&r, 130);
    assert!(
        r.stderr.contains("run the same command again to resume"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("fhir-bulk-job.json"), "{}", r.stderr);
    assert_absent(&r.all(), TOKEN, "output");
    assert_eq!(deletes(&srv), 0);
    let st = state(&out);
    assert!(st["job"]["status_url"].as_str().unwrap().contains("/jobs/"));
    assert!(!out.join("Encounter.1.ndjson").exists());

    let r = run(&args).await;
    assert_code(&r, 0);
    assert_eq!(kickoffs(&srv).len(), 1);
    assert_files_match(&srv, &out, false);
    assert_eq!(deletes(&srv), 1);
}

/// Ctrl-C while the job runs; `status` and `cancel` on its status URL; the next run says the
/// job is gone and how to start fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_polling_then_status_cancel_and_a_vanished_job() {
    let srv = server(
        TestServer::builder()
            .patients(1)
            .polls_before_complete(10_000)
            .x_progress(["12% complete"]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let args = [
        "export",
        &base,
        "--token",
        TOKEN,
        "--output-dir",
        s(&out),
        FAST,
    ];
    let child = command(&args).spawn().unwrap();
    wait_until("the job is polled", || {
        std::fs::read_to_string(out.join("log.ndjson")).is_ok_and(|t| t.contains("status_progress"))
    })
    .await;
    signal(&child, "INT");
    let r = wait(child).await;
    assert_code(&r, 130);
    assert!(r.stderr.contains("The job was not deleted"), "{}", r.stderr);
    assert_eq!(deletes(&srv), 0);
    let st = state(&out);
    assert_eq!(st["phase"], "running");
    let status_url = st["job"]["status_url"].as_str().unwrap().to_owned();

    let r = run(&["status", &status_url, "--token", TOKEN]).await;
    assert_code(&r, 0);
    assert!(
        r.stdout.contains("in progress: 12% complete"),
        "{}",
        r.stdout
    );

    let r = run(&["cancel", &status_url, "--token", TOKEN]).await;
    assert_code(&r, 0);
    assert!(r.stdout.contains("cancelled"), "{}", r.stdout);
    assert_eq!(deletes(&srv), 1);

    let r = run(&["status", &status_url, "--token", TOKEN]).await;
    assert_code(&r, 1);
    assert!(r.stderr.contains("no such job"), "{}", r.stderr);

    let r = run(&args).await;
    assert_code(&r, 1);
    assert!(r.stderr.contains("gone from the server"), "{}", r.stderr);
    assert!(r.stderr.contains("--fresh"), "{}", r.stderr);
    assert_eq!(kickoffs(&srv).len(), 1);
    assert_absent(&r.all(), TOKEN, "output");
    assert!(event_ids(&out).contains(&"status_error".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_2_naming_the_flag_before_any_request() {
    let srv = server(TestServer::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let base = srv.base_url().to_string();
    let d = s(&out);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "Usage"),
        (vec!["export"], "BASE_URL"),
        (
            vec!["export", &base, "--concurrency", "0", "--output-dir", d],
            "--concurrency",
        ),
        (
            vec!["export", &base, "--threads", "0", "--output-dir", d],
            "--threads",
        ),
        (
            vec!["export", &base, "--since", "yesterday", "--output-dir", d],
            "--since",
        ),
        (
            vec!["export", &base, "--header", "NoColon", "--output-dir", d],
            "--header",
        ),
        (
            vec!["export", &base, "--param", "novalue", "--output-dir", d],
            "--param",
        ),
        (
            vec![
                "export",
                &base,
                "--max-poll-interval",
                "0",
                "--output-dir",
                d,
            ],
            "--max-poll-interval",
        ),
        (
            vec![
                "export",
                &base,
                "--patients-file",
                "/nonexistent/p.txt",
                "--output-dir",
                d,
            ],
            "--patients-file",
        ),
        (
            vec![
                "export",
                &base,
                "--group",
                "g",
                "--all-patients",
                "--output-dir",
                d,
            ],
            "--group",
        ),
        (
            vec!["export", &base, "--group", "g 1", "--output-dir", d],
            "--group",
        ),
        (
            vec!["export", &base, "--type", "observation", "--output-dir", d],
            "--type",
        ),
        (
            vec!["export", &base, "--token", " ", "--output-dir", d],
            "--token",
        ),
        (
            vec!["export", "ftp://ehr.example/fhir", "--output-dir", d],
            "BASE_URL",
        ),
        (
            vec!["export", "http://ehr.example/fhir", "--output-dir", d],
            "BASE_URL",
        ),
        (vec!["status", "jobs/1"], "STATUS_URL"),
        (
            vec!["download", "/nonexistent/manifest.json", "--output-dir", d],
            "MANIFEST_JSON_FILE",
        ),
        (
            vec!["download", "/nonexistent/manifest.json"],
            "--output-dir",
        ),
    ];
    for (args, flag) in cases {
        let r = run(&args).await;
        assert_code(&r, 2);
        assert!(
            r.stderr.contains(flag),
            "{args:?}: `{flag}` not named in {}",
            r.stderr
        );
        let explanation = r.stderr.lines().find(|l| !l.trim().is_empty()).unwrap();
        assert!(explanation.len() < 400, "one line: {explanation}");
    }
    assert!(srv.requests().is_empty(), "{:?}", srv.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_1_and_never_show_the_token() {
    let srv = server(
        TestServer::builder()
            .patients(2)
            .polls_before_complete(0)
            .require_bearer(TOKEN),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();

    // A wrong token: 401.
    let wrong = "wrong-SECRET-token-55";
    let out = dir.path().join("wrong");
    let r = run(&[
        "export",
        &base,
        "--token",
        wrong,
        "--output-dir",
        s(&out),
        FAST,
    ])
    .await;
    assert_code(&r, 1);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let log = read(&out.join("log.ndjson"));
    for secret in [wrong, TOKEN] {
        assert_absent(&r.all(), secret, "output");
        assert_absent(&log, secret, "log.ndjson");
    }
    assert!(
        !out.join("fhir-bulk-job.json").exists(),
        "nothing to resume"
    );

    // The token from the environment, and a kick-off the server rejects.
    let out = dir.path().join("rejected");
    let output = command(&[
        "export",
        &base,
        "--type",
        "Medication",
        "--output-dir",
        s(&out),
        FAST,
    ])
    .env("FHIR_BULK_TOKEN", TOKEN)
    .output()
    .await
    .unwrap();
    let r = finished(output);
    assert_code(&r, 1);
    assert!(
        r.stderr.contains("kick-off rejected") && r.stderr.contains("400"),
        "{}",
        r.stderr
    );
    let log = events(&out);
    assert_eq!(log[0]["eventId"], "kickoff");
    assert_eq!(log[0]["eventDetail"]["errorCode"], 400);
    assert_eq!(
        log[0]["eventDetail"]["errorBody"]["resourceType"],
        "OperationOutcome"
    );
    assert_absent(&r.all(), TOKEN, "output");
    assert_absent(&read(&out.join("log.ndjson")), TOKEN, "log.ndjson");

    // Files that fail verification: exit 1, download_error events, no DELETE, resumable.
    let out = dir.path().join("long-lines");
    let args = [
        "export",
        &base,
        "--token",
        TOKEN,
        "--max-line-bytes",
        "100",
        "--output-dir",
        s(&out),
        FAST,
    ];
    let r = run(&args).await;
    assert_code(&r, 1);
    assert!(r.stderr.contains("line too long"), "{}", r.stderr);
    assert!(
        r.stderr.contains("run the same command again"),
        "{}",
        r.stderr
    );
    assert!(event_ids(&out).contains(&"download_error".to_owned()));
    assert_eq!(deletes(&srv), 0);
    assert_absent(&r.all(), TOKEN, "output");
    assert_absent(&read(&out.join("log.ndjson")), TOKEN, "log.ndjson");
    assert_absent(&read(&out.join("fhir-bulk-job.json")), TOKEN, "state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_files_with_error_issues_exit_3_after_a_complete_download() {
    let srv = server(
        TestServer::builder()
            .patients(1)
            .polls_before_complete(0)
            .error_file(["error", "warning"]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let r = run(&["export", &base, "--output-dir", s(dir.path()), FAST]).await;
    assert_code(&r, 3);
    assert!(r.stderr.contains("1 error/fatal issue"), "{}", r.stderr);
    assert!(
        r.stdout.contains("issues: 1 error, 1 warning"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("(exit code 3)"), "{}", r.stdout);
    assert_files_match(&srv, dir.path(), false);
    assert_eq!(state(dir.path())["phase"], "complete");
    // Running it again reports the same verdict without a new export.
    let r = run(&["export", &base, "--output-dir", s(dir.path()), FAST]).await;
    assert_code(&r, 3);
    assert!(r.stderr.contains("already complete"), "{}", r.stderr);
    assert!(r.stdout.contains("(exit code 3)"), "{}", r.stdout);
    assert_eq!(kickoffs(&srv).len(), 1);
}

/// A manifest with pre-signed file URLs: their query strings never reach the log, the state
/// or the terminal; a failed file leaves the job alone, and the next run fetches only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_stay_secret_and_a_failed_file_is_fetched_on_the_next_run() {
    let mock = MockServer::start().await;
    let uri = mock.uri();
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{uri}/fhir/jobs/1")),
        )
        .expect(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "2024-03-01T17:35:02.000Z",
            "requiresAccessToken": false,
            "output": [
                {"type": "Patient", "url": format!("{uri}/files/p1?X-Amz-Signature=SIG-SECRET-1"), "count": 2},
                {"type": "Condition", "url": format!("{uri}/files/c1?sig=SIG-SECRET-2"), "count": 1}
            ],
            "error": []
        })))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/p1"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n",
        ))
        .expect(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/c1"))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/c1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("{\"resourceType\":\"Condition\",\"id\":\"c\"}\n"),
        )
        .mount(&mock)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/jobs/1"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&mock)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let base = format!("{uri}/fhir");
    let args = [
        "export",
        &base,
        "--token",
        TOKEN,
        "--output-dir",
        s(dir.path()),
        FAST,
    ];
    let first = run(&args).await;
    assert_code(&first, 1);
    assert!(
        first.stderr.contains("Condition.1.ndjson"),
        "{}",
        first.stderr
    );
    let deletes_after_failure = mock
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .count();
    assert_eq!(deletes_after_failure, 0);
    let log = read(&dir.path().join("log.ndjson"));
    assert!(log.contains("download_error"));
    assert!(log.contains("/files/c1?[redacted]"), "{log}");

    let second = run(&args).await;
    assert_code(&second, 0);
    assert_eq!(
        read(&dir.path().join("Condition.1.ndjson")),
        "{\"resourceType\":\"Condition\",\"id\":\"c\"}\n"
    );
    let log = read(&dir.path().join("log.ndjson"));
    let state_text = read(&dir.path().join("fhir-bulk-job.json"));
    for secret in ["SIG-SECRET-1", "SIG-SECRET-2", TOKEN] {
        for (what, text) in [
            ("first run", first.all()),
            ("second run", second.all()),
            ("log", log.clone()),
            ("state", state_text.clone()),
        ] {
            assert_absent(&text, secret, what);
        }
    }
    // manifest.json is the manifest exactly as received, pre-signed URLs included.
    assert!(read(&dir.path().join("manifest.json")).contains("SIG-SECRET-1"));
    drop(mock); // verifies the `expect`s: one kick-off, p1 once, one DELETE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_from_a_saved_manifest_or_a_status_url() {
    let srv = server(
        TestServer::builder()
            .patients(3)
            .polls_before_complete(0)
            .require_bearer(TOKEN)
            .deleted_file(1),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let base = srv.base_url().to_string();
    let r = run(&[
        "export",
        &base,
        "--token",
        TOKEN,
        "--keep-job",
        "--output-dir",
        s(&first),
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    assert!(
        r.stdout.contains("kept on the server (--keep-job)"),
        "{}",
        r.stdout
    );
    assert_eq!(deletes(&srv), 0);
    let status_url = state(&first)["job"]["status_url"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = run(&["status", &status_url, "--token", TOKEN]).await;
    assert_code(&r, 0);
    assert!(
        r.stdout.contains("complete: transactionTime"),
        "{}",
        r.stdout
    );

    // From the saved manifest: the same files, no DELETE (there is no job to delete).
    let manifest = first.join("manifest.json");
    let copy = dir.path().join("copy");
    let r = run(&[
        "download",
        s(&manifest),
        "--output-dir",
        s(&copy),
        "--token",
        TOKEN,
    ])
    .await;
    assert_code(&r, 0);
    assert_eq!(assert_files_match(&srv, &copy, false), 5);
    assert_eq!(read(&copy.join("manifest.json")), read(&manifest));
    assert_eq!(deletes(&srv), 0);
    // Again: everything is complete, nothing is fetched.
    let gets = srv.requests().len();
    let r = run(&[
        "download",
        s(&manifest),
        "--output-dir",
        s(&copy),
        "--token",
        TOKEN,
    ])
    .await;
    assert_code(&r, 0);
    assert_eq!(srv.requests().len(), gets);

    // A manifest naming another origin as its server: the token goes to the files' origin
    // only when it is trusted.
    let port = srv.addr().port();
    let text = read(&manifest).replace(
        &format!("http://127.0.0.1:{port}/fhir/$export"),
        &format!("http://localhost:{port}/fhir/$export"),
    );
    assert!(
        text.contains("localhost"),
        "the manifest has a `request`: {text}"
    );
    let other = dir.path().join("other/manifest.json");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, &text).unwrap();
    let untrusted = dir.path().join("untrusted");
    let r = run(&[
        "download",
        s(&other),
        "--output-dir",
        s(&untrusted),
        "--token",
        TOKEN,
    ])
    .await;
    assert_code(&r, 1);
    assert!(
        r.stderr.contains("refusing to send the access token"),
        "{}",
        r.stderr
    );
    let trusted = dir.path().join("trusted");
    let origin = format!("http://127.0.0.1:{port}");
    let r = run(&[
        "download",
        s(&other),
        "--output-dir",
        s(&trusted),
        "--token",
        TOKEN,
        "--trusted-origin",
        &origin,
    ])
    .await;
    assert_code(&r, 0);
    // Without a `request`, a token needs --base-url.
    let bare: Value = {
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("request");
        v
    };
    std::fs::write(&other, bare.to_string()).unwrap();
    let r = run(&[
        "download",
        s(&other),
        "--output-dir",
        s(&untrusted),
        "--token",
        TOKEN,
    ])
    .await;
    assert_code(&r, 2);
    assert!(r.stderr.contains("--base-url"), "{}", r.stderr);
    let r = run(&[
        "download",
        s(&other),
        "--output-dir",
        s(&untrusted),
        "--token",
        TOKEN,
        "--base-url",
        &base,
    ])
    .await;
    assert_code(&r, 0);

    // From the status URL: polls, saves the manifest and the files, then DELETEs the job.
    let fetched = dir.path().join("fetched");
    let r = run(&[
        "download",
        &status_url,
        "--output-dir",
        s(&fetched),
        "--token",
        TOKEN,
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    assert_files_match(&srv, &fetched, false);
    assert_eq!(deletes(&srv), 1);
    assert!(event_ids(&fetched).contains(&"manifest_complete".to_owned()));
    for d in [&first, &copy, &trusted, &fetched] {
        assert_absent(&read(&d.join("log.ndjson")), TOKEN, "log.ndjson");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_export_is_not_repeated_without_fresh() {
    let srv = server(
        TestServer::builder()
            .patients(2)
            .resource_types(["Patient", "Condition"])
            .polls_before_complete(0),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let d = s(dir.path());
    let r = run(&[
        "export",
        &base,
        "--type",
        "Patient",
        "--output-dir",
        d,
        FAST,
    ])
    .await;
    assert_code(&r, 0);

    let r = run(&[
        "export",
        &base,
        "--type",
        "Patient",
        "--output-dir",
        d,
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    assert!(r.stderr.contains("already complete"), "{}", r.stderr);
    assert!(r.stdout.contains("Export complete"));
    assert_eq!(kickoffs(&srv).len(), 1);

    let r = run(&[
        "export",
        &base,
        "--type",
        "Condition",
        "--output-dir",
        d,
        FAST,
    ])
    .await;
    assert_code(&r, 2);
    assert!(
        r.stderr.contains("--fresh") && r.stderr.contains("--output-dir"),
        "{}",
        r.stderr
    );

    let r = run(&[
        "export",
        &base,
        "--type",
        "Condition",
        "--output-dir",
        d,
        "--fresh",
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    assert_eq!(kickoffs(&srv).len(), 2);
    assert!(dir.path().join("Condition.1.ndjson").exists());
    assert!(
        !dir.path().join("Patient.1.ndjson").exists(),
        "--fresh removes the old files"
    );
    // The log keeps both exports, each under its own id.
    let log = events(dir.path());
    let ids: std::collections::HashSet<&str> = log
        .iter()
        .map(|e| e["exportId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_job_kicked_off_elsewhere() {
    let srv = server(TestServer::builder().patients(1).polls_before_complete(1)).await;
    let client = BulkClient::builder(srv.base_url().as_str())
        .build()
        .unwrap();
    let job = client.kick_off(&ExportRequest::system()).await.unwrap();
    let url = job.status_url().to_string();
    let r = run(&["status", &url]).await;
    assert_code(&r, 0);
    assert!(
        r.stdout.starts_with("in progress: in-progress"),
        "{}",
        r.stdout
    );
    let r = run(&["status", &url]).await;
    assert_code(&r, 0);
    assert!(r.stdout.contains("output files"), "{}", r.stdout);
    assert!(r.stdout.contains("Observation"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_offline_through_the_export_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let r = run(&["demo", "--patients", "5", "--output-dir", s(&out)]).await;
    assert_code(&r, 0);
    assert!(r.stdout.contains("Export complete"), "{}", r.stdout);
    assert!(r.stdout.contains("transactionTime"), "{}", r.stdout);
    assert!(
        r.stderr.contains("demo: a bulk data server"),
        "{}",
        r.stderr
    );
    assert!(out.join("Patient.1.ndjson").exists());
    assert!(out.join("error/OperationOutcome.1.ndjson").exists());
    assert!(out.join("deleted/Bundle.1.ndjson").exists());
    let ids = event_ids(&out);
    assert_eq!(ids.first().map(String::as_str), Some("kickoff"));
    assert_eq!(ids.last().map(String::as_str), Some("export_complete"));
    // Run again: a fresh demo, not a resume of the old (gone) server's job.
    let r = run(&["demo", "--patients", "5", "--output-dir", s(&out)]).await;
    assert_code(&r, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_backend_services_with_a_pem_key() {
    let access = "smart-SECRET-access-1";
    let tokens = token_endpoint(access).await;
    let srv = server(
        TestServer::builder()
            .patients(1)
            .polls_before_complete(0)
            .require_bearer(access),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let token_url = format!("{}/token", tokens.uri());
    let r = run(&[
        "export",
        &base,
        "--client-id",
        "cli-client",
        "--private-key",
        &key_path("rsa-private.pem"),
        "--key-id",
        "test-rsa-1",
        "--token-url",
        &token_url,
        "--scope",
        "system/Patient.rs system/Observation.rs",
        "--output-dir",
        s(dir.path()),
        FAST,
    ])
    .await;
    assert_code(&r, 0);
    let requests = tokens.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "one token for the whole export");
    let fields = form(&requests[0].body);
    assert_eq!(fields["grant_type"], "client_credentials");
    assert_eq!(fields["scope"], "system/Patient.rs system/Observation.rs");
    assert_eq!(
        fields["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    let header = jwt_part(&fields["client_assertion"], 0);
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("RS384"), Some("test-rsa-1"))
    );
    let claims = jwt_part(&fields["client_assertion"], 1);
    assert_eq!(claims["iss"], "cli-client");
    assert_eq!(claims["sub"], "cli-client");
    assert_eq!(claims["aud"], token_url);
    assert!(
        srv.requests()
            .iter()
            .all(|q| q.header("authorization") == Some(&format!("Bearer {access}")))
    );
    assert_absent(&r.all(), access, "output");
    assert_absent(&read(&dir.path().join("log.ndjson")), access, "log.ndjson");
    assert_absent(
        &read(&dir.path().join("fhir-bulk-job.json")),
        access,
        "state",
    );
}

/// `status` with SMART discovery at `--base-url`, a JWKS key, and the job on another origin
/// that is trusted with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_discovery_with_a_jwks_key_for_status() {
    let access = "smart-SECRET-access-2";
    let fhir = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/.well-known/smart-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_endpoint": format!("{}/auth/token", fhir.uri()),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "capabilities": ["client-confidential-asymmetric", "permission-v2"]
        })))
        .expect(1)
        .mount(&fhir)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": access, "token_type": "bearer", "expires_in": 300
        })))
        .expect(1)
        .mount(&fhir)
        .await;
    let srv = server(
        TestServer::builder()
            .patients(1)
            .polls_before_complete(5)
            .require_bearer(access),
    )
    .await;
    let job = BulkClient::builder(srv.base_url().as_str())
        .bearer_token(access)
        .build()
        .unwrap()
        .kick_off(&ExportRequest::system())
        .await
        .unwrap();
    let status_url = job.status_url().to_string();
    let base = format!("{}/fhir", fhir.uri());
    let origin = format!("http://127.0.0.1:{}", srv.addr().port());
    let r = run(&[
        "status",
        &status_url,
        "--base-url",
        &base,
        "--trusted-origin",
        &origin,
        "--client-id",
        "cli-client",
        "--private-key",
        &key_path("private-jwks.json"),
        "--key-id",
        "test-ec-1",
    ])
    .await;
    assert_code(&r, 0);
    assert!(r.stdout.starts_with("in progress"), "{}", r.stdout);
    let token_request = fhir
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.url.path() == "/auth/token")
        .unwrap();
    let fields = form(&token_request.body);
    assert_eq!(
        fields["scope"], "system/*.rs",
        "scope from discovery (SMART v2)"
    );
    assert_eq!(jwt_part(&fields["client_assertion"], 0)["alg"], "ES384");
    assert_absent(&r.all(), access, "output");
    drop(fhir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_from_the_environment() {
    use base64::Engine;
    let access = "secret-SECRET-access-3";
    let secret = "client-SECRET-value-9";
    let tokens = MockServer::start().await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("cli-client:{secret}"));
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(wiremock::matchers::header(
            "authorization",
            format!("Basic {basic}"),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": access, "token_type": "bearer", "expires_in": 300
        })))
        .expect(1)
        .mount(&tokens)
        .await;
    let srv = server(
        TestServer::builder()
            .patients(1)
            .polls_before_complete(0)
            .require_bearer(access),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let token_url = format!("{}/token", tokens.uri());
    let output = command(&[
        "export",
        &base,
        "--client-id",
        "cli-client",
        "--token-url",
        &token_url,
        "--output-dir",
        s(dir.path()),
        FAST,
    ])
    .env("FHIR_BULK_CLIENT_SECRET", secret)
    .env("FHIR_BULK_TOKEN", "ignored-with-client-id")
    .output()
    .await
    .unwrap();
    let r = finished(output);
    assert_code(&r, 0);
    for s in [secret, access] {
        assert_absent(&r.all(), s, "output");
        assert_absent(&read(&dir.path().join("log.ndjson")), s, "log.ndjson");
    }
    drop(tokens);

    // A token endpoint that refuses the client: exit 1, no kick-off, no secret shown.
    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_client", "error_description": "unknown client"
        })))
        .mount(&refusing)
        .await;
    let before = kickoffs(&srv).len();
    let token_url = format!("{}/token", refusing.uri());
    let out = dir.path().join("refused");
    let r = run(&[
        "export",
        &base,
        "--client-id",
        "cli-client",
        "--client-secret",
        secret,
        "--token-url",
        &token_url,
        "--output-dir",
        s(&out),
        FAST,
    ])
    .await;
    assert_code(&r, 1);
    assert!(r.stderr.contains("invalid_client"), "{}", r.stderr);
    assert_absent(&r.all(), secret, "output");
    assert_absent(&read(&out.join("log.ndjson")), secret, "log.ndjson");
    assert_eq!(kickoffs(&srv).len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_flags_that_do_not_fit_exit_2() {
    let base = "http://127.0.0.1:9/fhir";
    let pem = key_path("rsa-private.pem");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["export", base, "--private-key", &pem], "--private-key"),
        (vec!["export", base, "--client-id", "c"], "--client-id"),
        (
            vec!["export", base, "--client-id", "c", "--private-key", &pem],
            "--key-id",
        ),
        (
            vec![
                "export",
                base,
                "--client-id",
                "c",
                "--private-key",
                "/nonexistent.pem",
            ],
            "--private-key",
        ),
        (
            vec![
                "export",
                base,
                "--client-id",
                "c",
                "--token",
                "t",
                "--client-secret",
                "s",
            ],
            "--token",
        ),
        (
            vec!["cancel", "http://127.0.0.1:9/jobs/1", "--scope", "x"],
            "--scope",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (mut args, flag) in cases {
        if args[0] == "export" {
            args.extend(["--output-dir", s(dir.path())]);
        }
        let r = run(&args).await;
        assert_code(&r, 2);
        assert!(r.stderr.contains(flag), "{args:?}: {}", r.stderr);
    }
}
