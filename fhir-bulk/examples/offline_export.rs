//! A full export against a local mock server: kick-off, status polls with `X-Progress`, the
//! manifest, and the DELETE that tells the server we are done. No network needed.
//!
//! Run it with `cargo run --example offline_export`.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

use fhir_bulk::{BulkClient, ExportRequest, FileKind, PollPolicy};
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    let base = server.uri();
    // A server that behaves like Oracle Health: 202 with X-Progress, then the manifest.
    Mock::given(method("GET"))
        .and(path("/r4/tenant/Group/demo-group/$export"))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Content-Location",
            format!("{base}/r4/tenant/bulk-export/jobs/1"),
        ))
        .mount(&server)
        .await;
    for progress in ["scheduled", "in-progress"] {
        Mock::given(method("GET"))
            .and(path("/r4/tenant/bulk-export/jobs/1"))
            .respond_with(
                ResponseTemplate::new(202)
                    .insert_header("X-Progress", progress)
                    .insert_header("Retry-After", "1"),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/r4/tenant/bulk-export/jobs/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "transactionTime": "2024-03-01T17:35:02.000Z",
            "request": format!("{base}/r4/tenant/Group/demo-group/$export?_type=Patient,Condition"),
            "requiresAccessToken": true,
            "output": [
                {"type": "Patient", "url": format!("{base}/r4/tenant/bulk-export/files/p1"), "count": 3},
                {"type": "Condition", "url": format!("{base}/r4/tenant/bulk-export/files/c1"), "count": 41}
            ],
            "error": []
        })))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/r4/tenant/bulk-export/jobs/1"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;

    let client = BulkClient::builder(format!("{base}/r4/tenant"))
        .bearer_token("demo-token")
        .poll_policy(PollPolicy::default().with_initial_delay(Duration::from_millis(200)))
        .build()?;
    let request = ExportRequest::group("demo-group").types(["Patient", "Condition"]);
    let job = client.kick_off(&request).await?;
    println!("kicked off; status URL {}", job.status_url());
    let export = job
        .wait_with(|p| {
            println!(
                "  in progress: {}",
                p.text.as_deref().unwrap_or("(no X-Progress)")
            )
        })
        .await?;
    if let Some(time) = export.transaction_time() {
        println!("complete; transactionTime {time}");
    }
    for file in export.files(FileKind::Output) {
        println!(
            "  {:<10} {:>4} resources  {}",
            file.file.resource_type.as_deref().unwrap_or("?"),
            file.file.count.unwrap_or(0),
            file.file.url
        );
    }
    job.delete().await?;
    println!("job deleted on the server");
    Ok(())
}
