//! How late a finished export is noticed: a simulated job (wiremock) that completes a known
//! time after its kick-off, polled with real sleeps and the default poll policy. The lag is the
//! time from the job's completion to the status request that receives the manifest.
//!
//! Two servers: one that answers every 202 with `Retry-After: 1` (the SMART reference server),
//! and one that sends no `Retry-After` (the growing schedule applies).
//!
//! `cargo bench -p fhir-bulk --bench poll_lag`
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

use fhir_bulk::{BulkClient, ExportRequest, PollPolicy};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// A job that completes at `done_at`; records when the manifest was first asked for after it.
struct Job {
    done_at: Instant,
    retry_after: bool,
    manifest_at: Arc<Mutex<Option<Instant>>>,
    base: String,
}

impl Respond for Job {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let now = Instant::now();
        if now < self.done_at {
            let answer = ResponseTemplate::new(202).insert_header("X-Progress", "in progress");
            return if self.retry_after {
                answer.insert_header("Retry-After", "1")
            } else {
                answer
            };
        }
        let mut first = self.manifest_at.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(now);
        ResponseTemplate::new(200).set_body_json(json!({
            "transactionTime": "2024-01-01T00:00:00Z",
            "requiresAccessToken": true,
            "output": [{"type": "Patient", "url": format!("{}/files/1", self.base)}],
            "error": []
        }))
    }
}

async fn lag(job_takes: Duration, retry_after: bool) -> Duration {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .respond_with(
            ResponseTemplate::new(202).insert_header("Content-Location", format!("{base}/jobs/1")),
        )
        .mount(&server)
        .await;
    let manifest_at = Arc::new(Mutex::new(None));
    let started = Instant::now();
    Mock::given(method("GET"))
        .and(path("/jobs/1"))
        .respond_with(Job {
            done_at: started + job_takes,
            retry_after,
            manifest_at: manifest_at.clone(),
            base: base.clone(),
        })
        .mount(&server)
        .await;
    let client = BulkClient::builder(format!("{base}/fhir"))
        .bearer_token("t")
        .poll_policy(PollPolicy::default())
        .build()
        .expect("client");
    client
        .export(&ExportRequest::system())
        .await
        .expect("export completes");
    let at = manifest_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .expect("manifest requested");
    at.saturating_duration_since(started + job_takes)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("poll lag: completion to manifest request (default PollPolicy, real sleeps)");
    println!("| server | job takes | lag |");
    println!("| --- | --- | --- |");
    for (what, retry_after) in [("Retry-After: 1", true), ("no Retry-After", false)] {
        for secs in [3.5, 12.5] {
            let took = Duration::from_secs_f64(secs);
            let lag = runtime.block_on(lag(took, retry_after));
            println!("| {what} | {secs} s | {:.2} s |", lag.as_secs_f64());
        }
    }
}
