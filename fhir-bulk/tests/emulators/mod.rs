//! Storage emulators started by the tests on 127.0.0.1, on free ports: fake-gcs-server
//! (Cloud Storage), moto (S3), Azurite (Azure Blob). `.ci/tools.sh` installs them under
//! `target/ci-tools/`; a test also finds them on `PATH` or through `FHIR_BULK_FAKE_GCS`,
//! `FHIR_BULK_MOTO`, `FHIR_BULK_AZURITE`. A missing tool skips the test with a loud message,
//! except under `CI`, where it fails. Each emulator is killed when its handle drops.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running emulator; killed on drop.
pub struct Emulator {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory, removed on drop.
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The tool: the env var, then `target/ci-tools/bin/{name}`, then `PATH`.
pub fn find_tool(env_var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let local = workspace_root().join("target/ci-tools/bin").join(name);
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Reports a missing tool: a failure under CI, a loud skip elsewhere.
fn missing(name: &str, env_var: &str) {
    let message = format!(
        "{name} not found (looked at ${env_var}, target/ci-tools/bin/{name}, PATH). Install \
         the emulators with `bash .ci/tools.sh`."
    );
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("CI is set and {message}");
    }
    eprintln!("\n{0}\n!!! SKIPPED: {message}\n{0}\n", "!".repeat(78));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until `port` accepts connections.
fn wait_ready(child: &mut Child, port: u16, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(
    env_var: &str,
    name: &str,
    args: impl FnOnce(u16, &Path) -> Vec<String>,
) -> Option<Emulator> {
    let Some(tool) = find_tool(env_var, name) else {
        missing(name, env_var);
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(&tool)
        .args(args(port, dir.path()))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tool.display()));
    wait_ready(&mut child, port, name);
    Some(Emulator {
        child,
        port,
        _dir: dir,
    })
}

/// fake-gcs-server, in memory, plain http.
pub fn fake_gcs() -> Option<Emulator> {
    start("FHIR_BULK_FAKE_GCS", "fake-gcs-server", |port, _| {
        [
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-backend",
            "memory",
            "-public-host",
            &format!("127.0.0.1:{port}"),
            "-external-url",
            &format!("http://127.0.0.1:{port}"),
        ]
        .map(String::from)
        .to_vec()
    })
}

/// moto's S3 server.
pub fn moto() -> Option<Emulator> {
    start("FHIR_BULK_MOTO", "moto_server", |port, _| {
        ["-H", "127.0.0.1", "-p", &port.to_string()]
            .map(String::from)
            .to_vec()
    })
}

/// Azurite's blob service, in memory.
pub fn azurite() -> Option<Emulator> {
    start("FHIR_BULK_AZURITE", "azurite-blob", |port, _| {
        [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]
        .map(String::from)
        .to_vec()
    })
}

/// Creates a bucket in fake-gcs-server.
pub async fn gcs_bucket(gcs: &Emulator, bucket: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/storage/v1/b", gcs.url()))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "name": bucket }).to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Uploads an object to fake-gcs-server (`gzip`: stored with `Content-Encoding: gzip`).
pub async fn gcs_put(gcs: &Emulator, bucket: &str, name: &str, body: Vec<u8>, gzip: bool) {
    let mut url =
        reqwest::Url::parse(&format!("{}/upload/storage/v1/b/{bucket}/o", gcs.url())).unwrap();
    url.query_pairs_mut()
        .append_pair("uploadType", "media")
        .append_pair("name", name);
    if gzip {
        url.query_pairs_mut().append_pair("contentEncoding", "gzip");
    }
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/fhir+ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// What a proxy does before it forwards its second connection.
pub type Hook = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A TCP proxy to `upstream` (on 127.0.0.1) whose first connection's answer is cut after
/// `cut_after` bytes; records what clients sent. It runs `before_resume` (once) before it forwards the second
/// connection, the one that resumes after the cut.
pub async fn cutting_proxy_then(
    upstream: u16,
    cut_after: usize,
    before_resume: Option<Hook>,
) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    tokio::spawn(async move {
        let mut before_resume = before_resume;
        let mut connections = 0;
        while let Ok((client, _)) = listener.accept().await {
            connections += 1;
            if connections == 2
                && let Some(hook) = before_resume.take()
            {
                hook.await;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let limit = (connections == 1).then_some(cut_after);
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
