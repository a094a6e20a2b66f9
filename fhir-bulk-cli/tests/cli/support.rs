//! Helpers for the CLI tests: running the binary, reading what it wrote, and what the test
//! server received.

use fhir_bulk_test_server::{RecordedRequest, TestServer, TestServerBuilder};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_fhir-bulk");
pub(crate) const TOKEN: &str = "tok-SECRET-7f3a9c";
/// Fast polling for tests.
pub(crate) const FAST: &str = "--max-poll-interval=0.2";

/// What a finished run printed and returned.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub(crate) fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("FHIR_BULK_TOKEN")
        .env_remove("FHIR_BULK_CLIENT_SECRET")
        // No config file of the developer's: only the ones a test writes.
        .env_remove("FHIR_BULK_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent/fhir-bulk-tests")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

pub(crate) fn finished(output: std::process::Output) -> Run {
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    // Not a terminal: plain lines, never an escape code.
    assert!(
        !run.all().contains('\x1b'),
        "escape codes in output: {run:?}"
    );
    run
}

/// Runs the binary to completion.
pub(crate) async fn run(args: &[&str]) -> Run {
    let output = tokio::time::timeout(Duration::from_secs(120), command(args).output())
        .await
        .expect("fhir-bulk did not finish in time")
        .expect("fhir-bulk runs");
    finished(output)
}

/// Waits for a spawned run to end.
pub(crate) async fn wait(child: Child) -> Run {
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("fhir-bulk did not stop in time")
        .expect("fhir-bulk ran");
    finished(output)
}

/// Sends a signal with the `kill` command.
pub(crate) fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Polls `check` until it holds.
pub(crate) async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

pub(crate) fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, Some(code), "{run:#?}");
}

pub(crate) fn assert_absent(haystack: &str, secret: &str, what: &str) {
    assert!(
        !haystack.contains(secret),
        "{what} contains `{secret}`:\n{haystack}"
    );
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn events(dir: &Path) -> Vec<Value> {
    read(&dir.join("log.ndjson"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect()
}

pub(crate) fn event_ids(dir: &Path) -> Vec<String> {
    events(dir)
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn state(dir: &Path) -> Value {
    serde_json::from_str(&read(&dir.join("fhir-bulk-job.json"))).unwrap()
}

/// The files the job state of `dir` records complete, read from its journal (see the CLI's
/// `journal` module for the lines), which must be whole: every line a group definition, a
/// record of a defined group, or the end-of-downloads mark.
pub(crate) fn recorded_files(dir: &Path) -> std::collections::BTreeSet<String> {
    let journal = read(&dir.join("fhir-bulk-job.journal"));
    assert!(
        journal.is_empty() || journal.ends_with('\n'),
        "torn: {journal}"
    );
    let mut groups = std::collections::HashMap::new();
    let mut files = std::collections::BTreeSet::new();
    for line in journal.lines() {
        let line: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        if let Some(group) = line.get("group") {
            groups.insert(group.as_u64().unwrap(), line.clone());
        } else if let Some(record) = line.as_array() {
            let group = &groups[&record[0].as_u64().unwrap()];
            files.insert(match &record[1] {
                Value::Number(n) => format!(
                    "{}.{n}.{}",
                    group["prefix"].as_str().unwrap(),
                    group["ext"].as_str().unwrap()
                ),
                key => key.as_str().unwrap().to_owned(),
            });
        } else {
            assert_eq!(line["phase"], "complete", "{line}");
        }
    }
    files
}

pub(crate) fn kickoffs(server: &TestServer) -> Vec<RecordedRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("$export"))
        .collect()
}

pub(crate) fn deletes(server: &TestServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count()
}

pub(crate) fn file_gets(server: &TestServer, name: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/{name}")))
        .count()
}

/// A saved file's text, gunzipped when it ends in `.gz`.
pub(crate) fn saved_text(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        text
    } else {
        String::from_utf8(bytes).unwrap()
    }
}

/// The relative path each manifest entry is saved under, with its URL.
pub(crate) fn expected_files(manifest: &Value, gzip: bool) -> Vec<(PathBuf, String)> {
    let ext = if gzip { "ndjson.gz" } else { "ndjson" };
    let mut out = Vec::new();
    let mut counts = std::collections::HashMap::new();
    for (key, dir, fixed) in [
        ("output", None, None),
        ("error", Some("error"), Some("OperationOutcome")),
        ("deleted", Some("deleted"), Some("Bundle")),
    ] {
        for entry in manifest[key].as_array().into_iter().flatten() {
            let name = fixed
                .map(str::to_owned)
                .unwrap_or_else(|| entry["type"].as_str().unwrap().to_owned());
            let n = counts.entry((key, name.clone())).or_insert(0);
            *n += 1;
            let mut path = PathBuf::new();
            if let Some(dir) = dir {
                path.push(dir);
            }
            path.push(format!("{name}.{n}.{ext}"));
            out.push((path, entry["url"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// Every file the manifest lists is saved with exactly the lines the server served.
pub(crate) fn assert_files_match(server: &TestServer, dir: &Path, gzip: bool) -> usize {
    let manifest: Value = serde_json::from_str(&read(&dir.join("manifest.json"))).unwrap();
    let files = expected_files(&manifest, gzip);
    assert!(!files.is_empty());
    for (relative, url) in &files {
        let expected: String = server
            .file_lines(url)
            .expect("served file")
            .map(|l| l + "\n")
            .collect();
        let saved = saved_text(&dir.join(relative));
        assert!(
            saved == expected,
            "{} differs from what the server sent",
            relative.display()
        );
        assert!(!dir.join(format!("{}.part", relative.display())).exists());
    }
    files.len()
}

pub(crate) async fn server(builder: TestServerBuilder) -> TestServer {
    builder.start().await.expect("test server starts")
}

pub(crate) fn key_path(name: &str) -> String {
    format!("{}/../fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The decoded JSON of part `n` (0 header, 1 claims) of a JWT.
pub(crate) fn jwt_part(jwt: &str, n: usize) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(n).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub(crate) fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub(crate) async fn token_endpoint(token: &str) -> MockServer {
    let tokens = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": 300,
            "scope": "system/*.rs"
        })))
        .mount(&tokens)
        .await;
    tokens
}

/// A minimal static file server for scale tests: HTTP/1.1 with keep-alive on 127.0.0.1,
/// answering `GET /f/<n>` with one Patient line, and counting the TCP connections it accepted
/// and the requests it answered.
#[allow(dead_code)]
pub(crate) struct FileServer {
    pub(crate) base: String,
    pub(crate) connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[allow(dead_code)]
impl FileServer {
    pub(crate) async fn start() -> FileServer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let mut request_line = String::new();
                        if read.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut header = String::new();
                            if read.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" || header == "\n" {
                                break;
                            }
                        }
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let path = request_line.split(' ').nth(1).unwrap_or("/");
                        let id = path.rsplit('/').next().unwrap_or("0");
                        let body = format!("{{\"resourceType\":\"Patient\",\"id\":\"p{id}\"}}\n");
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+ndjson\r\n\
                             content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if write.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FileServer {
            base,
            connections,
            requests,
        }
    }

    /// A manifest of `n` Patient files, one resource each, served by this server.
    pub(crate) fn manifest(&self, n: usize) -> String {
        let output: Vec<Value> = (0..n)
            .map(|i| json!({"type": "Patient", "url": format!("{}f/{i}", self.base), "count": 1}))
            .collect();
        json!({
            "transactionTime": "2026-01-01T00:00:00Z",
            "request": format!("{}$export", self.base),
            "requiresAccessToken": false,
            "output": output,
            "error": [],
        })
        .to_string()
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[allow(dead_code)]
/// Characters that must never reach a terminal raw: control characters other than newline
/// (and tab), and the bidi overrides and isolates.
pub(crate) fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

#[allow(dead_code)]
/// Asserts that a run printed no raw control character or bidi override.
pub(crate) fn assert_no_raw_controls(run: &Run) {
    for (what, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        let found = raw_controls(text);
        assert!(found.is_empty(), "raw {found:?} on {what}:\n{text}");
    }
}
