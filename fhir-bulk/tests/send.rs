//! Every public future and stream runs inside `tokio::spawn` on a multi-thread runtime: a
//! compile-time proof (a future that stops being `Send + 'static` fails to compile here), run
//! against the in-process test server so each also works when spawned.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::resource::Resource;
use fhir_bulk::{
    BulkClient, DownloadOptions, ExportRequest, FileKind, PollPolicy, PollStatus, RetryPolicy,
};
use fhir_bulk_test_server::TestServer;
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;

const TOKEN: &str = "send-token";

/// Spawns `future` on the runtime and waits for it: compiles only for `Send + 'static`.
async fn spawned<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future).await.expect("the task ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_future_and_stream_can_be_spawned() {
    let server = TestServer::builder()
        .patients(3)
        .require_bearer(TOKEN)
        .retry_after("0")
        .start()
        .await
        .unwrap();
    let client = BulkClient::builder(server.base_url().as_str())
        .bearer_token(TOKEN)
        .sleep_fn(Sleeps::default().sleep_fn())
        .poll_policy(PollPolicy::default().with_jitter(0.0))
        .retry_policy(
            RetryPolicy::default()
                .with_jitter(false)
                .with_min_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    let request = ExportRequest::system().types(["Patient"]);

    let c = client.clone();
    let cs = spawned(async move { c.capability_statement().await }).await;
    assert!(cs.is_ok(), "{cs:?}");

    let (c, r) = (client.clone(), request.clone());
    let job = spawned(async move { c.kick_off(&r).await }).await.unwrap();

    let j = job.clone();
    let polled = spawned(async move { j.poll().await }).await.unwrap();
    assert!(matches!(
        polled,
        PollStatus::InProgress(_) | PollStatus::Complete(_)
    ));

    let j = job.clone();
    let waited = spawned(async move { j.wait_with(|_| {}).await })
        .await
        .unwrap();
    let j = job.clone();
    spawned(async move { j.wait().await }).await.unwrap();
    let j = job.clone();
    spawned(async move { j.refresh_manifest().await })
        .await
        .unwrap();

    let file = waited.files(FileKind::Output).remove(0);
    let (c, f) = (client.clone(), file.clone());
    let resources = spawned(async move {
        c.download_file::<Resource>(&f, &DownloadOptions::default())
            .collect::<Vec<_>>()
            .await
    })
    .await;
    assert!(!resources.is_empty() && resources.iter().all(Result::is_ok));
    let (c, f) = (client.clone(), file.clone());
    let lines = spawned(async move {
        c.download_lines(&f, &DownloadOptions::default())
            .collect::<Vec<_>>()
            .await
    })
    .await;
    assert_eq!(lines.len(), resources.len());
    let (c, e) = (client.clone(), waited.clone());
    spawned(async move {
        c.download_resources::<Resource>(&e, &DownloadOptions::default())
            .collect::<Vec<_>>()
            .await
    })
    .await;
    let (c, e) = (client.clone(), waited.clone());
    spawned(async move {
        c.download_outcomes(&e, &DownloadOptions::default())
            .collect::<Vec<_>>()
            .await
    })
    .await;
    let (c, e) = (client.clone(), waited.clone());
    spawned(async move {
        c.download_deleted(&e, &DownloadOptions::default())
            .collect::<Vec<_>>()
            .await
    })
    .await;

    let j = job.clone();
    spawned(async move { j.delete().await }).await.unwrap();
    let (c, r) = (client.clone(), request.clone());
    let other = spawned(async move { c.kick_off(&r).await }).await.unwrap();
    spawned(async move { other.cancel().await }).await.unwrap();

    let (c, r) = (client.clone(), request.clone());
    let export = spawned(async move { c.export(&r).await }).await.unwrap();
    assert!(!export.files(FileKind::Output).is_empty());
}

/// The token fetch of the OAuth providers runs inside the spawned futures too: a SMART
/// client's kick-off, spawned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_off_with_a_token_fetch_can_be_spawned() {
    use fhir_bulk::auth::ClientSecretAuth;
    use fhir_bulk_test_server::raw::{RawReply, RawServer};
    let server = RawServer::start(|req, _| {
        if req.path() == "/token" {
            RawReply::framed(
                200,
                &[("Content-Type", "application/json")],
                br#"{"access_token":"t-1","token_type":"bearer","expires_in":300}"#,
            )
        } else {
            RawReply::framed(202, &[("Content-Location", "/jobs/1")], b"")
        }
    })
    .await
    .unwrap();
    let auth = ClientSecretAuth::builder("c", "s")
        .token_url(server.url("/token"))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = BulkClient::builder(server.url("/fhir"))
        .auth(auth)
        .build()
        .unwrap();
    let job = spawned(async move { client.kick_off(&ExportRequest::system()).await })
        .await
        .unwrap();
    assert!(job.status_url().path().ends_with("/jobs/1"));
    assert_eq!(
        server.requests()[1].header("authorization"),
        Some("Bearer t-1")
    );
}
