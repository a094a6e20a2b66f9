//! Shared helpers for the integration tests: a client wired to a mock server with recorded
//! (instant) sleeps, and fixtures.
#![allow(dead_code, unreachable_pub)]

use fhir_bulk::{BulkClient, BulkClientBuilder, PollPolicy, RetryPolicy, SleepFn};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wiremock::MockServer;

/// Reads `fixtures/<name>` with `{{base}}` replaced by `base`.
pub fn fixture(name: &str, base: &str) -> String {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("{{base}}", base)
}

/// Parses a fixture as JSON.
pub fn fixture_json(name: &str, base: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(name, base)).unwrap()
}

/// Records every wait instead of sleeping.
#[derive(Clone, Default)]
pub struct Sleeps(pub Arc<Mutex<Vec<Duration>>>);

impl Sleeps {
    pub fn sleep_fn(&self) -> SleepFn {
        let log = self.0.clone();
        Arc::new(move |d| {
            log.lock().unwrap().push(d);
            Box::pin(async {})
        })
    }

    pub fn taken(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

/// A builder for a client of `server` (base `{server}/fhir`) with a token, instant sleeps and
/// a jitter-free retry policy.
pub fn builder(server: &MockServer, sleeps: &Sleeps) -> BulkClientBuilder {
    BulkClient::builder(format!("{}/fhir", server.uri()))
        .bearer_token("test-token")
        .sleep_fn(sleeps.sleep_fn())
        .retry_policy(
            RetryPolicy::default()
                .with_jitter(false)
                .with_max_retries(3)
                .with_min_delay(Duration::from_secs(1)),
        )
        .poll_policy(PollPolicy::default().with_jitter(0.0))
}

pub fn client(server: &MockServer, sleeps: &Sleeps) -> BulkClient {
    builder(server, sleeps).build().unwrap()
}

pub fn outcome(severity: &str, code: &str, diagnostics: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    })
}

/// Starts `server`, builds a client for it and runs a system-level export to its end: the
/// server (keep it alive while its files are read), the client and the export. (The
/// library's unit tests have the same in `test_support`, which integration tests cannot
/// reach.)
pub async fn completed_export(
    server: fhir_bulk_test_server::TestServerBuilder,
) -> (
    fhir_bulk_test_server::TestServer,
    BulkClient,
    fhir_bulk::CompletedExport,
) {
    let server = server.start().await.unwrap();
    let client = BulkClient::builder(server.base_url().as_str())
        .build()
        .unwrap();
    let export = client
        .kick_off(&fhir_bulk::ExportRequest::system())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    (server, client, export)
}
