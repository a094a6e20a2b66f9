//! Errors keep their causes in `source()`: a given-up request's last failure, the transport's
//! error from the HTTP stack, a manifest's JSON error.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::{BulkClient, Error, ExportRequest, RetryPolicy};

#[tokio::test]
async fn errors_keep_their_causes_in_source() {
    // A port nothing listens on: connection refused, retried, then given up.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sleeps = Sleeps::default();
    let client = BulkClient::builder(format!("http://127.0.0.1:{port}/fhir"))
        .allow_insecure_http(true)
        .sleep_fn(sleeps.sleep_fn())
        .retry_policy(RetryPolicy::default().with_max_retries(1))
        .build()
        .unwrap();
    let error = client.kick_off(&ExportRequest::system()).await.unwrap_err();
    let mut chain: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    assert!(matches!(error, Error::RetriesExhausted { .. }), "{error:?}");
    let transport = std::error::Error::source(&error).unwrap();
    // The last failure, boxed as the variant holds it.
    let transport = transport
        .downcast_ref::<Error>()
        .or_else(|| transport.downcast_ref::<Box<Error>>().map(|b| &**b))
        .unwrap();
    assert!(
        matches!(transport, Error::Transport { .. }),
        "{transport:?}"
    );
    assert!(
        chain.len() >= 3,
        "retries -> transport -> the HTTP stack's error: {chain:#?}"
    );
}

#[test]
fn a_bad_manifest_keeps_the_json_error_in_source() {
    let error =
        fhir_bulk::Manifest::from_slice(b"{not json", "https://ehr.example/jobs/1").unwrap_err();
    assert!(matches!(error, Error::BadManifest { .. }), "{error:?}");
    let cause = std::error::Error::source(&error).expect("the parser's error");
    assert!(cause.to_string().contains("line 1"), "{cause}");
}
