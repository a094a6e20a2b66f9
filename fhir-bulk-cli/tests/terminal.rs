//! What the `fhir-bulk` binary shows a person: no server text reaches the terminal raw (on
//! every subcommand), messages name CLI flags and the server's own reason, and a run on a
//! real terminal (tmux) leaves no stale progress-bar lines behind.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[allow(dead_code)]
#[path = "cli/support.rs"]
mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An OperationOutcome whose diagnostics hold terminal escapes and bidi overrides.
fn hostile_outcome(severity: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": severity,
            "code": "informational",
            "diagnostics": "ok \u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}txt.exe\u{202c} \u{9b}31m\r\u{8}\u{0}"
        }]
    })
}

const HUGE: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_text_never_reaches_the_terminal_raw_on_any_subcommand() {
    let m = MockServer::start().await;
    let uri = m.uri();
    let huge_progress = format!("50% {}", "x".repeat(HUGE - 4));
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{uri}/fhir/jobs/1").as_str())
                .set_body_json(hostile_outcome("information")),
        )
        .mount(&m)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("X-Progress", huge_progress.as_str())
                .insert_header("Retry-After", "0"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&m)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "\u{1b}[2Jlast tuesday\u{202e}",
            "request": format!("{uri}/fhir/$export"),
            "requiresAccessToken": false,
            "output": [{"type": "Patient", "url": format!("{uri}/files/p.ndjson"), "count": 1}],
            "error": [{"type": "OperationOutcome", "url": format!("{uri}/files/e.ndjson")}],
        })))
        .with_priority(2)
        .mount(&m)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/p.ndjson"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("{\"resourceType\":\"Patient\",\"id\":\"1\"}\n"),
        )
        .mount(&m)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/e.ndjson"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(format!("{}\n", hostile_outcome("warning"))),
        )
        .mount(&m)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/jobs/1"))
        .respond_with(ResponseTemplate::new(202).set_body_json(hostile_outcome("information")))
        .mount(&m)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{uri}/fhir");
    let r = run(&["export", &base, "--output-dir", s(dir.path()), FAST, "-v"]).await;
    assert_no_raw_controls(&r);
    assert_code(&r, 0);
    // The server's text is shown escaped, visibly.
    assert!(r.stderr.contains("\\x1b]0;owned\\x07"), "{}", r.stderr);
    assert!(r.stderr.contains("\\u{202e}txt.exe"), "{}", r.stderr);
    // A 100 KB X-Progress is cut to its start, saying how much was cut.
    assert!(
        r.stderr.contains("50% xxx") && r.stderr.contains("more characters cut)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.len() < 20_000, "the X-Progress was echoed whole");
    // A transactionTime that is not an instant is not offered as the next --since.
    assert!(!r.stdout.contains("--since \\x1b"), "{}", r.stdout);
    assert!(r.stdout.contains("not a FHIR instant"), "{}", r.stdout);
    // log.ndjson keeps the text as data, JSON-escaped.
    let log = read(&dir.path().join("log.ndjson"));
    assert!(log.contains("\"transactionTime\":\"\\u001b[2Jlast tuesday"));
    let progress = events(dir.path())
        .into_iter()
        .find(|e| e["eventId"] == "status_progress")
        .unwrap();
    assert_eq!(
        progress["eventDetail"]["xProgress"].as_str().unwrap().len(),
        HUGE
    );

    // `status`: the X-Progress of one poll, cut and escaped.
    let s2 = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/jobs/2"))
        .respond_with(
            ResponseTemplate::new(202).insert_header("X-Progress", huge_progress.as_str()),
        )
        .mount(&s2)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/jobs/2"))
        .respond_with(ResponseTemplate::new(202).set_body_json(hostile_outcome("information")))
        .mount(&s2)
        .await;
    Mock::given(method("GET"))
        .and(path("/jobs/3"))
        .respond_with(
            ResponseTemplate::new(404)
                .insert_header("Content-Type", "text/plain")
                .set_body_string("no such job \u{1b}[2J\u{1b}[31m\u{202e}gone\r\n"),
        )
        .mount(&s2)
        .await;
    let status_url = format!("{}/jobs/2", s2.uri());
    let r = run(&["status", &status_url]).await;
    assert_no_raw_controls(&r);
    assert_code(&r, 0);
    assert!(r.stdout.starts_with("in progress: 50% xxx"), "{}", r.stdout);
    assert!(
        r.stdout.contains("(99,700 more characters cut)"),
        "{}",
        r.stdout
    );
    // `cancel`: the DELETE's OperationOutcome, escaped.
    let r = run(&["cancel", &status_url]).await;
    assert_no_raw_controls(&r);
    assert_code(&r, 0);
    assert!(
        r.stdout.contains("\\x1b[2J\\u{202e}txt.exe"),
        "{}",
        r.stdout
    );
    // `download` of a vanished job: the plain-text error body, escaped.
    let out = tempfile::tempdir().unwrap();
    let gone = format!("{}/jobs/3", s2.uri());
    let r = run(&["download", &gone, "--output-dir", s(out.path()), FAST]).await;
    assert_no_raw_controls(&r);
    assert_code(&r, 1);
    assert!(r.stderr.contains("no such job \\x1b[2J"), "{}", r.stderr);
}

/// A wiremock FHIR server whose kick-off answers `response`.
async fn kickoff_answering(response: ResponseTemplate) -> MockServer {
    let m = MockServer::start().await;
    Mock::given(path("/fhir/$export"))
        .respond_with(response)
        .mount(&m)
        .await;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_cli_flags_and_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = s(dir.path());

    // No credentials, and the server says 401: ask for them, with the server's reason.
    let m = kickoff_answering(ResponseTemplate::new(401).set_body_json(json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login", "diagnostics": "bearer token missing"}]
    })))
    .await;
    let r = run(&[
        "export",
        &format!("{}/fhir", m.uri()),
        "--output-dir",
        out,
        FAST,
    ])
    .await;
    assert_code(&r, 1);
    assert!(
        r.stderr.contains(
            "this server needs credentials: --token (or FHIR_BULK_TOKEN), or --client-id with \
             --private-key or --client-secret"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("bearer token missing"), "{}", r.stderr);
    assert!(!r.stderr.contains("after a fresh token"), "{}", r.stderr);

    // A web page instead of a FHIR server: named as such, cut to a line.
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>Sign in - Hospital Portal</title></head>\n<body>{}</body></html>",
        "<p>lots of markup</p>\n".repeat(200)
    );
    let m = kickoff_answering(
        ResponseTemplate::new(200)
            .insert_header("Content-Type", "text/html")
            .set_body_string(page),
    )
    .await;
    let fresh = tempfile::tempdir().unwrap();
    let r = run(&[
        "export",
        &format!("{}/fhir", m.uri()),
        "--output-dir",
        s(fresh.path()),
        FAST,
    ])
    .await;
    assert_code(&r, 1);
    assert!(
        r.stderr.contains("HTML page, not a FHIR answer"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("Sign in - Hospital Portal"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("lots of markup"), "{}", r.stderr);

    // A refused kick-off: which request, and why.
    let m = kickoff_answering(ResponseTemplate::new(400).set_body_json(json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-supported", "diagnostics": "_typeFilter is not supported"}]
    })))
    .await;
    let fresh = tempfile::tempdir().unwrap();
    let r = run(&[
        "export",
        &format!("{}/fhir", m.uri()),
        "--type",
        "Observation",
        "--type-filter",
        "Observation?category=laboratory",
        "--output-dir",
        s(fresh.path()),
        FAST,
    ])
    .await;
    assert_code(&r, 1);
    assert!(
        r.stderr.contains("_typeFilter is not supported"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "the refused request: GET {}/fhir/$export?_type=Observation&_typeFilter=",
            m.uri()
        )),
        "{}",
        r.stderr
    );

    // A status URL on another origin: explained as one, with the flag to allow it.
    let other = MockServer::start().await;
    let m = kickoff_answering(ResponseTemplate::new(202).insert_header(
        "Content-Location",
        format!("{}/jobs/1", other.uri()).as_str(),
    ))
    .await;
    let fresh = tempfile::tempdir().unwrap();
    let r = run(&[
        "export",
        &format!("{}/fhir", m.uri()),
        "--token",
        TOKEN,
        "--output-dir",
        s(fresh.path()),
        FAST,
    ])
    .await;
    assert_code(&r, 1);
    assert!(r.stderr.contains("status URL"), "{}", r.stderr);
    assert!(r.stderr.contains("is on another origin"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("--trusted-origin {}", other.uri())),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("manifest says"), "{}", r.stderr);
    assert_absent(&r.all(), TOKEN, "output");
    assert!(other.received_requests().await.unwrap().is_empty());

    // Library advice is never shown: flags are.
    let r = run(&["export", "http://ehr.example/fhir", "--output-dir", out]).await;
    assert_code(&r, 2);
    assert!(
        r.stderr.contains("BASE_URL:") && !r.stderr.contains("allow_insecure_http"),
        "{}",
        r.stderr
    );
    let r = run(&[
        "export",
        "https://ehr.example/fhir",
        "--all-patients",
        "--param",
        "patient=123",
        "--output-dir",
        out,
    ])
    .await;
    assert_code(&r, 2);
    assert!(
        r.stderr
            .contains("use --patient instead of --param patient="),
        "{}",
        r.stderr
    );
    let r = run(&[
        "export",
        "https://ehr.example/fhir",
        "--header",
        "Authorization: Bearer x",
        "--output-dir",
        out,
    ])
    .await;
    assert_code(&r, 2);
    assert!(
        r.stderr.contains("--token") && !r.stderr.contains("bearer_token"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cancel_and_download_find_the_token_endpoint_at_the_fhir_base() {
    // SMART credentials without --base-url: the status URL does not tell the FHIR base.
    for sub in ["status", "cancel"] {
        let r = run(&[
            sub,
            "https://ehr.example/fhir/r4/jobs/1",
            "--client-id",
            "c",
            "--client-secret",
            "s",
        ])
        .await;
        assert_code(&r, 2);
        assert!(r.stderr.contains("--base-url"), "{}", r.stderr);
    }

    // `download manifest.json`: the base comes from the manifest's `request`, discovery is
    // asked there, and a token endpoint that cannot be found fails once, before any file.
    let m = MockServer::start().await;
    let uri = m.uri();
    let dir = tempfile::tempdir().unwrap();
    let manifest = json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "request": format!("{uri}/fhir/r4/Group/g1/$export?_type=Patient"),
        "requiresAccessToken": true,
        "output": [
            {"type": "Patient", "url": format!("{uri}/files/1.ndjson")},
            {"type": "Patient", "url": format!("{uri}/files/2.ndjson")}
        ],
        "error": []
    });
    let saved = dir.path().join("manifest.json");
    std::fs::write(&saved, manifest.to_string()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = run(&[
        "download",
        s(&saved),
        "--client-id",
        "c",
        "--client-secret",
        "s",
        "--output-dir",
        s(out.path()),
    ])
    .await;
    assert_code(&r, 1);
    assert!(r.stderr.contains("no file was downloaded"), "{}", r.stderr);
    assert!(r.stderr.contains("--token-url"), "{}", r.stderr);
    assert_eq!(r.stderr.matches("error:").count(), 1, "{}", r.stderr);
    let requests = m.received_requests().await.unwrap();
    let paths: Vec<&str> = requests.iter().map(|r| r.url.path()).collect();
    assert!(
        paths.contains(&"/fhir/r4/.well-known/smart-configuration"),
        "discovery at the FHIR base: {paths:?}"
    );
    assert!(
        !paths.contains(&"/.well-known/smart-configuration"),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.starts_with("/files/")), "{paths:?}");
}

/// Runs `command` in a detached tmux session on its own socket and returns the screen and
/// scrollback once it printed `marker`. None when tmux is not installed.
fn tmux_screen(name: &str, command: &str, marker: &str) -> Option<String> {
    tmux_capture(name, command, marker, &[])
}

/// A tmux server on a socket of its own, killed when dropped (also when an assertion fails).
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        std::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// [`tmux_screen`] with extra `capture-pane` flags (`-e` keeps the colours).
///
/// Every call gets a fresh socket: reusing one right after `kill-server` races the old server's
/// shutdown, and tmux answers "server exited unexpectedly". A start that fails that way anyway
/// (a loaded machine) is tried again, three times at most.
fn tmux_capture(name: &str, command: &str, marker: &str, flags: &[&str]) -> Option<String> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        return None;
    }
    let mut attempt = 0;
    let tmux = loop {
        attempt += 1;
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Tmux {
            socket: format!("{name}-{}-{call}", std::process::id()),
        };
        let started = tmux
            .run(&["new-session", "-d", "-x", "120", "-y", "40", command])
            .expect("tmux runs");
        if started.status.success() {
            break tmux;
        }
        assert!(
            attempt < 3,
            "tmux new-session failed {attempt} times: {started:?}"
        );
        eprintln!("tmux new-session failed ({started:?}); trying again");
        std::thread::sleep(Duration::from_millis(500));
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let screen = loop {
        let mut capture = vec!["capture-pane", "-p", "-S", "-"];
        capture.extend_from_slice(flags);
        let shot = tmux.run(&capture).expect("tmux capture-pane");
        let text = String::from_utf8_lossy(&shot.stdout).into_owned();
        if text.contains(marker) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {marker} on the screen:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    Some(screen)
}

#[test]
fn a_run_on_a_terminal_leaves_no_stale_bar_lines() {
    let dir = tempfile::tempdir().unwrap();
    let command = format!(
        "env -u NO_COLOR TERM=xterm XDG_CONFIG_HOME=/nonexistent {BIN} demo --patients 300 --output-dir {} ; echo RUN-ENDED-$?; sleep 30",
        s(dir.path())
    );
    let Some(screen) = tmux_screen("fhir-bulk-test", &command, "RUN-ENDED-") else {
        eprintln!("tmux is not installed (Debian package `tmux`): the terminal test did not run");
        return;
    };
    assert!(screen.contains("RUN-ENDED-0"), "{screen}");
    assert!(
        screen.contains("Export complete: 8 files, 4,205 resources"),
        "{screen}"
    );
    let stale: Vec<&str> = screen
        .lines()
        .filter(|l| {
            l.contains("downloading [")
                || l.contains("B/s  ")
                || l.contains("waiting for the server")
                || l.contains("export in progress")
                || l.chars()
                    .any(|c| ('\u{2800}'..='\u{28ff}').contains(&c) || c == '░' || c == '█')
        })
        .collect();
    assert!(stale.is_empty(), "stale bar lines {stale:?} in:\n{screen}");
    // Full file names, one line per saved file, right plurals.
    assert!(
        screen.contains("saved Patient.1.ndjson: 300 resources"),
        "{screen}"
    );
    assert!(screen.contains("1 error file; 1 deleted file"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_what_log_ndjson_counts() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(&["demo", "--output-dir", s(dir.path())]).await;
    assert_code(&r, 0);
    let done = events(dir.path())
        .into_iter()
        .find(|e| e["eventId"] == "export_complete")
        .expect("export_complete");
    let files = done["eventDetail"]["files"].as_u64().unwrap();
    let resources = done["eventDetail"]["resources"].as_u64().unwrap();
    let thousands = |n: u64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let headline = format!(
        "Export complete: {files} files, {} resources,",
        thousands(resources)
    );
    assert!(r.stdout.starts_with(&headline), "{headline}\n{}", r.stdout);
    assert!(r.stdout.contains("result:          complete (exit code 0)"));
    // Right plurals: one error file, one deleted file.
    assert!(
        r.stdout.contains("; 1 error file; 1 deleted file"),
        "{}",
        r.stdout
    );
}

#[test]
fn errors_are_red_on_a_terminal_unless_no_color() {
    let run = |no_color: &str| {
        let command = format!(
            "env {no_color} TERM=xterm XDG_CONFIG_HOME=/nonexistent {BIN} export http://ehr.example/fhir ; echo RUN-ENDED-$?; sleep 30"
        );
        tmux_capture("fhir-bulk-colour", &command, "RUN-ENDED-", &["-e"])
    };
    let Some(coloured) = run("-u NO_COLOR") else {
        eprintln!("tmux is not installed (Debian package `tmux`): the colour test did not run");
        return;
    };
    let error_line = |screen: &str| {
        screen
            .lines()
            .find(|l| l.contains("error:"))
            .unwrap_or_else(|| panic!("no error line in {screen:?}"))
            .to_owned()
    };
    assert!(coloured.contains("RUN-ENDED-2"), "{coloured:?}");
    let line = error_line(&coloured);
    assert!(line.starts_with('\x1b'), "the label is coloured: {line:?}");
    assert!(!line.contains("allow_insecure_http"), "{line:?}");
    let plain = run("NO_COLOR=1").unwrap();
    let line = error_line(&plain);
    assert!(line.starts_with("error:"), "NO_COLOR: no colour: {line:?}");
}
