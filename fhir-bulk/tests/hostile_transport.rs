//! Hostile servers at the transport level, played byte by byte with `RawServer`: every retry
//! loop ends (cut bodies with and without Range, false gzip labels, oversized answers,
//! endless manifest pages, unusable tokens), echoed tokens never reach an error, a POST
//! kick-off is not re-sent to another origin, error bodies are decoded before they are read.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::auth::ClientSecretAuth;
use fhir_bulk::{
    BulkClient, CompletedExport, DownloadOptions, Error, ExportRequest, FileKind, JobHandle,
    Manifest, RetryPolicy, TransportErrorKind,
};
use fhir_bulk_test_server::raw::{RawReply, RawRequest, RawServer};
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::StreamExt;
use std::io::Write;
use url::Url;

/// After this many requests the scripts answer a permanent 400, so that a client that would
/// retry forever fails the test instead of hanging it.
const RUNAWAY: usize = 200;

fn host(req: &RawRequest) -> String {
    format!("http://{}", req.header("host").unwrap_or("127.0.0.1"))
}

fn runaway() -> RawReply {
    RawReply::framed(400, &[], b"runaway client")
}

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_jitter(false)
        .with_max_retries(2)
        .with_max_elapsed(None)
}

fn client(server: &RawServer, sleeps: &Sleeps) -> BulkClient {
    BulkClient::builder(server.url("/fhir"))
        .bearer_token("tok-SECRET-123456")
        .sleep_fn(sleeps.sleep_fn())
        .retry_policy(policy())
        .build()
        .unwrap()
}

/// An export whose one output file is `server`'s `/files/1`.
fn export(server: &RawServer) -> CompletedExport {
    let json = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": server.url("/files/1")}],
        "error": []
    });
    let manifest = Manifest::from_slice(json.to_string().as_bytes(), "test").unwrap();
    CompletedExport::from_manifests(Url::parse(&server.url("/jobs/1")).unwrap(), vec![manifest])
}

async fn download_error(server: &RawServer, sleeps: &Sleeps) -> Error {
    let client = client(server, sleeps);
    let file = export(server).files(FileKind::Output).remove(0);
    let items: Vec<_> = client
        .download_lines(&file, &DownloadOptions::default())
        .collect()
        .await;
    items
        .into_iter()
        .find_map(Result::err)
        .expect("the download fails")
}

fn lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i:04}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn range_start(req: &RawRequest) -> Option<usize> {
    req.header("range")?
        .strip_prefix("bytes=")?
        .trim_end_matches('-')
        .parse()
        .ok()
}

#[tokio::test]
async fn a_body_cut_again_and_again_with_range_support_ends() {
    let body = lines(2000);
    let total = body.len();
    let server = RawServer::start(move |req, n| {
        if n >= RUNAWAY {
            return runaway();
        }
        // Every answer claims the rest of the file and delivers 40 more bytes of it.
        let start = range_start(req).unwrap_or(0);
        let end = (start + 40).min(total);
        let len = (total - start).to_string();
        let range = format!("bytes {start}-{}/{total}", total - 1);
        let mut headers = vec![
            ("Accept-Ranges", "bytes"),
            ("ETag", "\"v1\""),
            ("Content-Length", len.as_str()),
        ];
        let status = if start > 0 {
            headers.push(("Content-Range", range.as_str()));
            206
        } else {
            200
        };
        RawReply::response(status, &headers, &body[start..end])
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let err = download_error(&server, &sleeps).await;
    let Error::RetriesExhausted { attempts, last, .. } = &err else {
        panic!("{err:?}");
    };
    // Three attempts by the policy; progress earns up to four times that.
    assert_eq!(*attempts, 12, "{err}");
    assert_eq!(server.requests().len(), 12);
    assert!(
        matches!(
            **last,
            Error::Transport {
                kind: TransportErrorKind::Body,
                ..
            }
        ),
        "{last:?}"
    );
    let text = err.to_string();
    assert!(text.contains("cut the body at byte 480"), "{text}");
    assert!(text.contains("12 attempts"), "{text}");
    assert!(
        server.requests()[1].header("range").is_some(),
        "resumed with Range"
    );
}

#[tokio::test]
async fn a_content_length_larger_than_the_body_without_range_ends() {
    let server = RawServer::start(|_, n| {
        if n >= RUNAWAY {
            return runaway();
        }
        RawReply::response(200, &[("Content-Length", "100000")], &lines(3))
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let err = download_error(&server, &sleeps).await;
    let Error::RetriesExhausted { attempts, .. } = &err else {
        panic!("{err:?}");
    };
    // The first attempt reached furthest (one earned attempt), the others got no further.
    assert_eq!(*attempts, 4, "{err}");
    assert_eq!(server.requests().len(), 4);
    assert_eq!(sleeps.taken().len(), 3);
    assert!(err.to_string().contains("cut the body at byte"), "{err}");
}

#[tokio::test]
async fn a_body_labelled_gzip_that_is_not_gzip_ends() {
    let server = RawServer::start(|_, n| {
        if n >= RUNAWAY {
            return runaway();
        }
        RawReply::framed(200, &[("Content-Encoding", "gzip")], &lines(50))
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let err = download_error(&server, &sleeps).await;
    assert!(matches!(err, Error::RetriesExhausted { .. }), "{err:?}");
    assert!(server.requests().len() <= 4, "{}", server.requests().len());
    assert!(err.to_string().contains("does not decode"), "{err}");
}

#[tokio::test]
async fn an_oversized_manifest_is_fetched_once() {
    let server = RawServer::start(|_, n| {
        if n >= RUNAWAY {
            return runaway();
        }
        // Claims 100 MB, more than any manifest may be.
        RawReply::response(
            200,
            &[
                ("Content-Type", "application/json"),
                ("Content-Length", "100000000"),
            ],
            b"{\"transactionTime\":",
        )
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let job = client.job(JobHandle::new(Url::parse(&server.url("/jobs/1")).unwrap()));
    let err = job.poll().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::TooLarge,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(server.requests().len(), 1);
    assert!(sleeps.taken().is_empty());
}

fn token_client(server: &RawServer, sleeps: &Sleeps) -> BulkClient {
    let auth = ClientSecretAuth::builder("client", "client-SECRET-999")
        .token_url(server.url("/token"))
        .scope("system/*.read")
        .build()
        .unwrap();
    BulkClient::builder(server.url("/fhir"))
        .auth(auth)
        .sleep_fn(sleeps.sleep_fn())
        .retry_policy(policy())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_ten_megabyte_token_answer_fails_at_once() {
    let server = RawServer::start(|req, n| {
        if n >= RUNAWAY {
            return runaway();
        }
        if req.path() == "/token" {
            let mut body = b"{\"access_token\":\"".to_vec();
            body.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
            body.extend_from_slice(b"\"}");
            return RawReply::framed(200, &[("Content-Type", "application/json")], &body);
        }
        RawReply::framed(202, &[("Content-Location", "/jobs/1")], b"")
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let err = token_client(&server, &sleeps)
        .kick_off(&ExportRequest::system())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::TooLarge,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(
        server.requests().len(),
        1,
        "one token request, nothing else"
    );
    assert!(sleeps.taken().is_empty());
}

#[tokio::test]
async fn a_token_that_cannot_be_sent_fails_at_once() {
    let server = RawServer::start(|req, n| {
        if n >= RUNAWAY {
            return runaway();
        }
        if req.path() == "/token" {
            return RawReply::framed(
                200,
                &[("Content-Type", "application/json")],
                br#"{"access_token":"abc\ndef","token_type":"bearer","expires_in":300}"#,
            );
        }
        RawReply::framed(202, &[("Content-Location", "/jobs/1")], b"")
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let err = token_client(&server, &sleeps)
        .kick_off(&ExportRequest::system())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot carry"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(server.requests().len(), 1);
    assert!(sleeps.taken().is_empty());
}

#[tokio::test]
async fn an_echoed_token_never_reaches_an_error() {
    let server = RawServer::start(|req, _| {
        let auth = req.header("authorization").unwrap_or("").to_owned();
        let page = format!(
            "<html><pre>Internal error\nrequest headers:\nAuthorization: {auth}\nHost: x\n</pre>\
             token was {}</html>",
            auth.trim_start_matches("Bearer ")
        );
        let oo = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing",
            "diagnostics": format!("rejected {auth} for this job")}]});
        if req.path() == "/jobs/html" {
            RawReply::framed(500, &[("Content-Type", "text/html")], page.as_bytes())
        } else {
            RawReply::framed(
                400,
                &[("Content-Type", "application/fhir+json")],
                oo.to_string().as_bytes(),
            )
        }
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    for path in ["/jobs/html", "/jobs/oo"] {
        let job = client.job(JobHandle::new(Url::parse(&server.url(path)).unwrap()));
        let err = job.poll().await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
    assert!(
        server.requests()[0]
            .header("authorization")
            .unwrap()
            .contains("tok-SECRET-123456"),
        "the token was sent, and echoed"
    );
}

#[tokio::test]
async fn a_post_kick_off_is_not_redirected_to_another_origin() {
    let elsewhere =
        RawServer::start(|_, _| RawReply::framed(202, &[("Content-Location", "/x")], b""))
            .await
            .unwrap();
    let target = elsewhere.url("/steal/$export");
    let server = RawServer::start(move |req, _| {
        if req.path().ends_with("/moved/Patient/$export") {
            return RawReply::framed(202, &[("Content-Location", "/jobs/1")], b"");
        }
        if req.path().ends_with("/same/Patient/$export") {
            let to = format!("{}/fhir/moved/Patient/$export", host(req));
            return RawReply::framed(307, &[("Location", to.as_str())], b"");
        }
        RawReply::framed(307, &[("Location", target.as_str())], b"")
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let request = ExportRequest::all_patients()
        .post()
        .patients(["Patient/p-1"]);
    let err = client(&server, &sleeps)
        .kick_off(&request)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Redirect,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not re-sent"), "{err}");
    assert!(
        elsewhere.requests().is_empty(),
        "the body went to another origin"
    );
    // Within the trusted origin the 307 is followed, body and all.
    let same = BulkClient::builder(server.url("/fhir/same"))
        .bearer_token("tok-SECRET-123456")
        .sleep_fn(sleeps.sleep_fn())
        .build()
        .unwrap();
    same.kick_off(&request).await.unwrap();
    let last = server.requests().pop().unwrap();
    assert!(last.path().ends_with("/moved/Patient/$export"));
    assert_eq!(last.method, "POST");
    assert!(String::from_utf8_lossy(&last.body).contains("p-1"));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn a_gzipped_error_answer_on_a_file_is_read_like_data() {
    let server = RawServer::start(|_, _| {
        let oo = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "not-found",
            "diagnostics": "the export file has expired"}]});
        RawReply::framed(
            404,
            &[
                ("Content-Type", "application/fhir+json"),
                ("Content-Encoding", "gzip"),
            ],
            &gzip(oo.to_string().as_bytes()),
        )
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let err = download_error(&server, &sleeps).await;
    assert!(matches!(err, Error::FileExpired { .. }), "{err:?}");
    let oo = err
        .operation_outcome()
        .expect("the OperationOutcome is parsed");
    assert_eq!(oo.issue[0].code, "not-found");
    assert!(err.to_string().contains("has expired"), "{err}");
}

fn page(host: &str, next: Option<String>, file: usize) -> RawReply {
    let mut json = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": format!("{host}/files/{file}")}],
        "error": []
    });
    if let Some(next) = next {
        json["link"] = serde_json::json!([{"relation": "next", "url": next}]);
    }
    RawReply::framed(
        200,
        &[("Content-Type", "application/json")],
        json.to_string().as_bytes(),
    )
    .keep_alive()
}

#[tokio::test]
async fn manifest_pages_that_bring_nothing_new_stop() {
    let server = RawServer::start(|req, n| {
        if n >= RUNAWAY {
            return runaway();
        }
        // Every page links to a new page listing the same file.
        page(
            &host(req),
            Some(format!("{}/pages/{}", host(req), n + 1)),
            1,
        )
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let job = client.job(JobHandle::new(Url::parse(&server.url("/jobs/1")).unwrap()));
    let err = job.wait().await.unwrap_err();
    assert!(matches!(err, Error::BadManifest { .. }), "{err:?}");
    assert!(err.to_string().contains("no file not seen before"), "{err}");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn manifest_pages_without_end_stop_at_the_cap() {
    let server = RawServer::start(|req, n| {
        if n > 5_000 {
            return runaway();
        }
        // Every page a new file and a new next link: only the cap ends it.
        page(
            &host(req),
            Some(format!("{}/pages/{}", host(req), n + 1)),
            n,
        )
    })
    .await
    .unwrap();
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let job = client.job(JobHandle::new(Url::parse(&server.url("/jobs/1")).unwrap()));
    let err = job.wait().await.unwrap_err();
    assert!(matches!(err, Error::BadManifest { .. }), "{err:?}");
    assert!(err.to_string().contains("past 1000 pages"), "{err}");
    assert_eq!(server.requests().len(), 1001);
}
