//! A whole export (kick-off, polls, manifest, downloads, DELETE) against a server that demands
//! SMART Backend Services tokens and honours each for three seconds only: tokens expire
//! mid-export and every step must keep working across renewals.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use fhir_bulk::auth::SmartBackendAuth;
use fhir_bulk::resource::Resource;
use fhir_bulk::{BulkClient, DeleteOutcome, DownloadOptions, ExportRequest, PollPolicy};
use futures::TryStreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

const LIFETIME: Duration = Duration::from_secs(3);

/// Tokens issued, with when.
type Issued = Arc<Mutex<HashMap<String, Instant>>>;

struct TokenEndpoint {
    issued: Issued,
    count: AtomicUsize,
    lifetime: Duration,
}

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials")
            || !form.contains_key("client_assertion")
        {
            return ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_request"}));
        }
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("tok-{n}");
        self.issued
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now());
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.lifetime.as_secs(),
            "scope": "system/*.read"
        }))
    }
}

/// The FHIR side: every request needs a token issued less than LIFETIME ago.
struct Fhir {
    issued: Issued,
    base: String,
    polls: AtomicUsize,
    rejected: AtomicUsize,
}

const PATIENTS: &str =
    "{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n{\"resourceType\":\"Patient\",\"id\":\"p2\"}\n";
const OBSERVATIONS: &str = "{\"resourceType\":\"Observation\",\"id\":\"o1\"}\n";

impl Respond for Fhir {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let fresh = self
            .issued
            .lock()
            .unwrap()
            .get(bearer)
            .is_some_and(|at| at.elapsed() < LIFETIME);
        if !fresh {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(401).set_body_json(json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "expired", "diagnostics": "token expired"}]
            }));
        }
        let base = &self.base;
        match (request.method.as_str(), request.url.path()) {
            ("GET", "/fhir/$export") => ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{base}/fhir/jobs/1")),
            ("GET", "/fhir/jobs/1") => {
                if self.polls.fetch_add(1, Ordering::SeqCst) < 5 {
                    ResponseTemplate::new(202).insert_header("X-Progress", "in progress")
                } else {
                    ResponseTemplate::new(200).set_body_json(json!({
                        "transactionTime": "2024-01-01T00:00:00Z",
                        "requiresAccessToken": true,
                        "output": [
                            {"type": "Patient", "url": format!("{base}/fhir/files/1"), "count": 2},
                            {"type": "Observation", "url": format!("{base}/fhir/files/2"), "count": 1}
                        ],
                        "error": []
                    }))
                }
            }
            ("GET", "/fhir/files/1") => {
                ResponseTemplate::new(200).set_body_raw(PATIENTS, "application/fhir+ndjson")
            }
            ("GET", "/fhir/files/2") => {
                ResponseTemplate::new(200).set_body_raw(OBSERVATIONS, "application/fhir+ndjson")
            }
            ("DELETE", "/fhir/jobs/1") => ResponseTemplate::new(202),
            _ => ResponseTemplate::new(404),
        }
    }
}

fn key(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn export_completes_across_token_renewals() {
    let server = MockServer::start().await;
    let issued: Issued = Arc::default();
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/fhir/.well-known/smart-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_endpoint": "auth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "capabilities": ["client-confidential-asymmetric", "permission-v1"]
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/fhir/auth/token"))
        .respond_with(TokenEndpoint {
            issued: issued.clone(),
            count: AtomicUsize::new(0),
            lifetime: LIFETIME,
        })
        .mount(&server)
        .await;
    let fhir = Arc::new(Fhir {
        issued: issued.clone(),
        base: server.uri(),
        polls: AtomicUsize::new(0),
        rejected: AtomicUsize::new(0),
    });
    Mock::given(matchers::path_regex("^/fhir/(\\$export|jobs/.*|files/.*)$"))
        .respond_with(SharedFhir(fhir.clone()))
        .mount(&server)
        .await;

    let auth = SmartBackendAuth::builder("bulk-client")
        .private_key_pem(key("ec-p384-private.pem"))
        .kid("test-ec-key")
        .build()
        .unwrap();
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(auth)
        .poll_policy(
            PollPolicy::default()
                .with_initial_delay(Duration::from_millis(700))
                .with_factor(1.0)
                .with_jitter(0.0),
        )
        .build()
        .unwrap();

    let started = Instant::now();
    let job = client
        .kick_off(&ExportRequest::system().types(["Patient", "Observation"]))
        .await
        .unwrap();
    let export = job.wait().await.unwrap();
    let ids: Vec<String> = client
        .download_resources::<Resource>(&export, &DownloadOptions::default().with_concurrency(1))
        .map_ok(|r| r.id().unwrap_or_default().to_owned())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, ["p1", "p2", "o1"]);
    assert_eq!(job.delete().await.unwrap().outcome, DeleteOutcome::Deleted);

    assert!(started.elapsed() > LIFETIME, "the export outlived a token");
    let tokens = issued.lock().unwrap().len();
    assert!(
        tokens >= 2,
        "tokens were renewed mid-export ({tokens} issued)"
    );
    assert_eq!(
        fhir.rejected.load(Ordering::SeqCst),
        0,
        "renewed before expiry: the server never saw a stale token"
    );
}

/// `Respond` for a shared `Fhir`.
struct SharedFhir(Arc<Fhir>);

impl Respond for SharedFhir {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.respond(request)
    }
}

/// Many files downloading at once share one token request (single flight): the server accepts
/// only the first token issued, so any extra token request would show as a rejection.

#[tokio::test]
async fn concurrent_downloads_share_one_token() {
    use fhir_bulk_test_server::TestServer;
    let tokens = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/token"))
        .respond_with(TokenEndpoint {
            issued: Issued::default(),
            count: AtomicUsize::new(0),
            lifetime: Duration::from_secs(300),
        })
        .expect(1)
        .mount(&tokens)
        .await;
    let server = TestServer::builder()
        .patients(20)
        .max_resources_per_file(5)
        .require_bearer("tok-1")
        .retry_after("0")
        .start()
        .await
        .unwrap();
    let auth = SmartBackendAuth::builder("bulk-client")
        .private_key_pem(key("rsa-private.pem"))
        .kid("test-rsa-key")
        .token_url(format!("{}/token", tokens.uri()))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = BulkClient::builder(server.base_url().as_str())
        .auth(auth)
        .build()
        .unwrap();
    let export = client.export(&ExportRequest::system()).await.unwrap();
    let files = export.files(fhir_bulk::FileKind::Output).len();
    assert!(files >= 8, "{files} files");
    let n = client
        .download_resources::<Resource>(&export, &DownloadOptions::default().with_concurrency(8))
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await
        .unwrap();
    assert!(n > 0);
    let rejected = server
        .requests()
        .iter()
        .filter(|r| r.header("authorization") != Some("Bearer tok-1"))
        .count();
    assert_eq!(rejected, 0);
}
