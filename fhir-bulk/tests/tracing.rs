//! The library's tracing events and spans, captured over a run with every kind of secret in
//! play (an access token, a client secret, a SMART assertion, a pre-signed URL query), each
//! echoed back by the server: the events fire as the tracing contract says, and no field,
//! message or span holds a secret.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::auth::{ClientSecretAuth, SmartBackendAuth};
use fhir_bulk::{BulkClient, DownloadOptions, ExportRequest, FileKind, RetryPolicy};
use fhir_bulk_test_server::raw::{RawReply, RawRequest, RawServer};
use futures::StreamExt;
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every event and span as one line of text: target, name and all fields.
#[derive(Clone, Default)]
struct Capture {
    lines: Arc<Mutex<Vec<String>>>,
    ids: Arc<AtomicU64>,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Capture {
    fn push(&self, meta: &Metadata<'_>, fields: Fields) {
        let line = format!("{} {}{}", meta.target(), meta.name(), fields.0);
        self.lines.lock().unwrap().push(line);
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields(String::new());
        span.record(&mut fields);
        self.push(span.metadata(), fields);
        Id::from_u64(self.ids.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut fields = Fields(String::new());
        values.record(&mut fields);
        self.lines
            .lock()
            .unwrap()
            .push(format!("record{}", fields.0));
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.push(event.metadata(), fields);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

const TOKEN: &str = "tok-SECRET-ACCESS";
const CLIENT_SECRET: &str = "client-SECRET-PASSWORD";
const QUERY: &str = "sig=SECRET-QUERY";

fn lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A server that echoes what it got (headers and body) in its transient error pages, and
/// otherwise plays token endpoint, FHIR server and file server: a redirect to a pre-signed
/// URL, a body cut once and resumed with Range.
fn script(req: &RawRequest, _n: usize, seen: &Mutex<Vec<String>>) -> RawReply {
    let key = format!("{} {}", req.method, req.path());
    let first = {
        let mut seen = seen.lock().unwrap();
        let first = !seen.contains(&key);
        seen.push(key);
        first
    };
    let host = format!("http://{}", req.header("host").unwrap_or(""));
    let echo = format!(
        "<pre>request: {} {}\nAuthorization: {}\nbody: {}</pre>",
        req.method,
        req.target,
        req.header("authorization").unwrap_or(""),
        String::from_utf8_lossy(&req.body)
    );
    if first && !req.path().starts_with("/signed") {
        // Every first request of a kind fails with a gateway error that echoes everything.
        return RawReply::framed(503, &[("Retry-After", "1")], echo.as_bytes());
    }
    let body = lines(20);
    match req.path() {
        "/token" => RawReply::framed(
            200,
            &[("Content-Type", "application/json")],
            format!(r#"{{"access_token":"{TOKEN}","token_type":"bearer","expires_in":300}}"#)
                .as_bytes(),
        ),
        p if p.ends_with("/$export") => {
            RawReply::framed(202, &[("Content-Location", "/jobs/1")], b"")
        }
        "/jobs/1" => {
            let manifest = serde_json::json!({
                "transactionTime": "2024-01-01T00:00:00Z",
                "requiresAccessToken": true,
                "output": [{"type": "Patient", "url": format!("{host}/files/1"), "count": 20}],
                "error": []
            });
            RawReply::framed(200, &[], manifest.to_string().as_bytes())
        }
        "/files/1" => {
            let to = format!("{host}/signed/1?{QUERY}");
            RawReply::framed(302, &[("Location", to.as_str())], b"")
        }
        _ => match req.header("range") {
            None => {
                let len = body.len().to_string();
                RawReply::response(
                    200,
                    &[
                        ("Accept-Ranges", "bytes"),
                        ("ETag", "\"e1\""),
                        ("Content-Length", len.as_str()),
                    ],
                    &body[..100],
                )
            }
            Some(range) => {
                let start: usize = range
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                let cr = format!("bytes {start}-{}/{}", body.len() - 1, body.len());
                RawReply::framed(206, &[("Content-Range", cr.as_str())], &body[start..])
            }
        },
    }
}

async fn run(client: &BulkClient) {
    let export = client
        .export(&ExportRequest::system().types(["Patient"]))
        .await
        .unwrap();
    let file = export.files(FileKind::Output).remove(0);
    let items: Vec<_> = client
        .download_lines(&file, &DownloadOptions::default())
        .collect()
        .await;
    assert_eq!(items.len(), 20, "{items:?}");
    assert!(items.iter().all(Result::is_ok), "{items:?}");
}

#[tokio::test]
async fn events_follow_the_contract_and_hold_no_secret() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.clone()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let server = RawServer::start(move |req, n| script(req, n, &s))
        .await
        .unwrap();
    let policy = RetryPolicy::default()
        .with_jitter(false)
        .with_min_delay(Duration::from_millis(1));

    // A client secret.
    let auth = ClientSecretAuth::builder("client", CLIENT_SECRET)
        .token_url(server.url("/token"))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = BulkClient::builder(server.url("/fhir"))
        .auth(auth)
        .sleep_fn(Sleeps::default().sleep_fn())
        .retry_policy(policy.clone())
        .build()
        .unwrap();
    run(&client).await;

    // A SMART assertion (discovery too: no token URL given).
    seen.lock().unwrap().clear();
    let key = std::fs::read_to_string(format!(
        "{}/../fixtures/keys/rsa-private.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let smart = SmartBackendAuth::builder("smart-client")
        .private_key_pem(key)
        .kid("k1")
        .token_url(server.url("/token"))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = BulkClient::builder(server.url("/fhir"))
        .auth(smart)
        .sleep_fn(Sleeps::default().sleep_fn())
        .retry_policy(policy)
        .build()
        .unwrap();
    run(&client).await;

    let text = capture.text();
    let ours: String = text
        .lines()
        .filter(|l| l.starts_with("fhir_bulk"))
        .collect::<Vec<_>>()
        .join("\n");
    let assertions: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path() == "/token")
        .flat_map(|r| {
            url::form_urlencoded::parse(&r.body)
                .filter(|(k, _)| k == "client_assertion")
                .map(|(_, v)| v.into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!assertions.is_empty(), "the SMART client sent assertions");
    for secret in ["SECRET"].into_iter().map(str::to_owned).chain(assertions) {
        assert!(!text.contains(&secret), "{secret} in:\n{text}");
    }
    // The contract's events all fired.
    for expected in [
        "fhir_bulk::retry event",
        "message=retrying",
        "what=\"token request\"",
        "what=\"kick-off\"",
        "what=\"status poll\"",
        "attempt=2 max_attempts=6",
        "fhir_bulk::retry_after",
        "source=\"Retry-After\"",
        "fhir_bulk::redirect",
        "fhir_bulk::download",
        "offset=100 mode=\"range\"",
        "fhir_bulk::auth event",
        "message=token refreshed",
        "fhir_bulk::client export",
        "fhir_bulk::job poll",
        "fhir_bulk::download::body file url=",
    ] {
        assert!(ours.contains(expected), "no `{expected}` in:\n{ours}");
    }
}
