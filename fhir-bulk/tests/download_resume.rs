//! Resume edge cases a real server can produce, played by a scripted HTTP/1.1 server on
//! 127.0.0.1: a body cut mid-line, then a `206` whose `Content-Range` does not start where the
//! transfer broke off. The client must not splice it in: it reads the file again from the
//! start and skips what it already delivered.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::Sleeps;
use fhir_bulk::resource::Resource;
use fhir_bulk::{BulkClient, DownloadOptions, RetryPolicy};
use futures::TryStreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

fn body() -> String {
    (1..=40)
        .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n"))
        .collect()
}

/// Answers each connection with the next scripted reply; records the request heads.
async fn scripted(replies: Vec<Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        for reply in replies {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_lowercase());
            let _ = socket.write_all(&reply).await;
            let _ = socket.shutdown().await;
        }
    });
    (format!("http://{addr}"), heads)
}

#[tokio::test]
async fn a_range_that_does_not_continue_the_transfer_is_not_spliced() {
    let full = body();
    let len = full.len();
    let cut = 100; // mid-line
    let headers = |status: &str, extra: &str, length: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/fhir+ndjson\r\nAccept-Ranges: bytes\r\n\
             ETag: \"v1\"\r\nConnection: close\r\n{extra}Content-Length: {length}\r\n\r\n"
        )
    };
    // 1: the whole file announced, cut after 100 bytes.
    let mut first = headers("200 OK", "", len).into_bytes();
    first.extend_from_slice(&full.as_bytes()[..cut]);
    // 2: a 206 that starts at 50, not at 100.
    let mut second = headers(
        "206 Partial Content",
        &format!("Content-Range: bytes 50-{}/{len}\r\n", len - 1),
        len - 50,
    )
    .into_bytes();
    second.extend_from_slice(&full.as_bytes()[50..]);
    // 3: the whole file.
    let mut third = headers("200 OK", "", len).into_bytes();
    third.extend_from_slice(full.as_bytes());
    let (base, heads) = scripted(vec![first, second, third]).await;

    let manifest = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": false,
        "output": [{"type": "Patient", "url": format!("{base}/files/1"), "count": 40}],
        "error": []
    });
    let pages =
        vec![fhir_bulk::Manifest::from_slice(manifest.to_string().as_bytes(), "test").unwrap()];
    let export = fhir_bulk::CompletedExport::from_manifests(Url::parse(&base).unwrap(), pages);
    let sleeps = Sleeps::default();
    let client = BulkClient::builder(format!("{base}/fhir"))
        .sleep_fn(sleeps.sleep_fn())
        .retry_policy(RetryPolicy::default().with_min_delay(Duration::from_millis(1)))
        .build()
        .unwrap();
    let ids: Vec<String> = client
        .download_resources::<Resource>(&export, &DownloadOptions::default())
        .map_ok(|r| r.id().unwrap().to_owned())
        .try_collect()
        .await
        .unwrap();
    let want: Vec<String> = (1..=40).map(|i| format!("p{i}")).collect();
    assert_eq!(ids, want, "every line once, nothing spliced");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads[1].contains(&format!("range: bytes={cut}-")),
        "{}",
        heads[1]
    );
    assert!(heads[1].contains("if-range: \"v1\""), "{}", heads[1]);
    assert!(
        !heads[2].contains("range:"),
        "the third request reads from the start"
    );
}
