//! HTTP/2 is used when the server offers it: a TLS server on 127.0.0.1 that offers `h2` and
//! `http/1.1` by ALPN (hyper's server on tokio-rustls, a self-signed certificate made per run
//! with rcgen and trusted through `HttpOptions::with_root_certificate_pem`) records the HTTP
//! version of every request and counts its TCP connections. The downloads run over HTTP/2 and
//! files share one connection, streamed side by side.
//!
//! rustls builds only: reqwest negotiates HTTP/2 by ALPN with rustls (with `native-tls` it
//! would need reqwest's `native-tls-alpn`, which this crate does not enable).
#![cfg(any(feature = "rustls-aws-lc", feature = "rustls-ring"))]
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

use fhir_bulk::resource::Resource;
use fhir_bulk::{BulkClient, CompletedExport, DownloadOptions, HttpOptions, Manifest};
use futures::TryStreamExt;
use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use url::Url;

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// The HTTP version of each request, with its path.
    requests: Mutex<Vec<(Version, String)>>,
    /// TCP connections accepted.
    connections: AtomicUsize,
}

/// A TLS server for `files` (path to NDJSON body), offering h2 and http/1.1.
struct TlsServer {
    port: u16,
    certificate_pem: String,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    async fn start(files: HashMap<String, String>) -> TlsServer {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let files = Arc::new(files);
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, seen, files) = (acceptor.clone(), seen.clone(), files.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let service = hyper::service::service_fn(move |request| {
                            let (seen, files) = (seen.clone(), files.clone());
                            async move { Ok::<_, Infallible>(answer(&seen, &files, request)) }
                        });
                        let io = TokioIo::new(tls);
                        // A connection that ends early is the client's business here.
                        let _ = if h2 {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        } else {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        };
                    });
                }
            }
        });
        TlsServer {
            port,
            certificate_pem: cert.pem(),
            seen,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn client(&self) -> BulkClient {
        BulkClient::builder(self.url("/fhir"))
            .http_options(
                HttpOptions::default().with_root_certificate_pem(self.certificate_pem.clone()),
            )
            .build()
            .unwrap()
    }

    /// An export listing `paths` as Patient files of `count` lines each.
    fn export(&self, paths: &[String], count: u64) -> CompletedExport {
        let output: Vec<serde_json::Value> = paths
            .iter()
            .map(|path| serde_json::json!({"type": "Patient", "url": self.url(path), "count": count}))
            .collect();
        let manifest = serde_json::json!({
            "transactionTime": "2024-01-01T00:00:00Z",
            "requiresAccessToken": false,
            "output": output,
            "error": [],
        });
        let page = Manifest::from_slice(manifest.to_string().as_bytes(), "test").unwrap();
        CompletedExport::from_manifests(Url::parse(&self.url("/")).unwrap(), vec![page])
    }

    fn requests(&self) -> Vec<(Version, String)> {
        self.seen.requests.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }
}

fn answer(
    seen: &Seen,
    files: &HashMap<String, String>,
    request: Request<Incoming>,
) -> Response<String> {
    let path = request.uri().path().to_owned();
    seen.requests
        .lock()
        .unwrap()
        .push((request.version(), path.clone()));
    match files.get(&path) {
        Some(body) => Response::builder()
            .header("content-type", "application/fhir+ndjson")
            .body(body.clone())
            .unwrap(),
        None => Response::builder().status(404).body(String::new()).unwrap(),
    }
}

/// `n` files of `lines` Patients each, large enough (about 0.5 MB) that concurrent files
/// stream side by side over the one connection.
fn files(n: usize, lines: usize) -> HashMap<String, String> {
    (1..=n)
        .map(|file| {
            let body: String = (0..lines)
                .map(|line| {
                    format!(
                        "{{\"resourceType\":\"Patient\",\"id\":\"f{file}-{line}\",\"name\":[{{\"text\":\"{}\"}}]}}\n",
                        "é".repeat(20)
                    )
                })
                .collect();
            (format!("/files/{file}"), body)
        })
        .collect()
}

#[tokio::test]
async fn downloads_run_over_http2_and_share_one_connection() {
    const LINES: usize = 5_000;
    let server = TlsServer::start(files(6, LINES)).await;
    let client = server.client();
    let options = DownloadOptions::default().with_concurrency(4);

    // One file first (it opens the connection), then five at once over it.
    let first = server.export(&["/files/1".to_owned()], LINES as u64);
    let file = first.all_files().into_iter().next().unwrap();
    let lines: Vec<_> = client
        .download_lines(&file, &options)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(lines.len(), LINES);

    let rest: Vec<String> = (2..=6).map(|n| format!("/files/{n}")).collect();
    let export = server.export(&rest, LINES as u64);
    let resources: Vec<_> = client
        .download_resources::<Resource>(&export, &options)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(resources.len(), 5 * LINES);
    let mut per_file: HashMap<String, usize> = HashMap::new();
    for record in &resources {
        *per_file.entry(record.file.url.clone()).or_default() += 1;
    }
    assert!(per_file.values().all(|n| *n == LINES), "{per_file:?}");

    let requests = server.requests();
    assert_eq!(requests.len(), 6, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|(version, _)| *version == Version::HTTP_2),
        "every download over HTTP/2: {requests:?}"
    );
    assert_eq!(server.connections(), 1, "all six files over one connection");
}

#[tokio::test]
async fn plain_http_stays_on_http1_without_h2c() {
    // Plain http (loopback only): the client speaks HTTP/1.1, with no h2c upgrade and no
    // prior-knowledge HTTP/2, which an HTTP/1.1-only server would not understand. HTTP/2 comes
    // only through TLS's ALPN, where the server says it speaks it.
    let body = files(1, 10).remove("/files/1").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            let files = Arc::new(HashMap::from([("/files/1".to_owned(), body)]));
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, files) = (seen.clone(), files.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (seen, files) = (seen.clone(), files.clone());
                        async move { Ok::<_, Infallible>(answer(&seen, &files, request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let client = BulkClient::builder(format!("{base}/fhir")).build().unwrap();
    let manifest = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": false,
        "output": [{"type": "Patient", "url": format!("{base}/files/1"), "count": 10}],
        "error": [],
    });
    let page = Manifest::from_slice(manifest.to_string().as_bytes(), "test").unwrap();
    let export = CompletedExport::from_manifests(Url::parse(&base).unwrap(), vec![page]);
    let file = export.all_files().into_iter().next().unwrap();
    let lines: Vec<_> = client
        .download_lines(&file, &DownloadOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(lines.len(), 10);
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests, [(Version::HTTP_11, "/files/1".to_owned())]);
    task.abort();
}
