//! The send path: timeouts, connection failures, redirects and where the token and extra
//! headers may go, and secrets kept out of errors.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::{Sleeps, builder, client, outcome};
use fhir_bulk::{BulkClient, Error, JobHandle, RetryPolicy, TransportErrorKind};
use std::time::Duration;
use url::Url;
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn manifest(base: &str) -> serde_json::Value {
    serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": format!("{base}/files/1")}],
        "error": []
    })
}

fn job(client: &BulkClient, url: &str) -> fhir_bulk::ExportJob {
    client.job(JobHandle::new(Url::parse(url).unwrap()))
}

#[tokio::test]
async fn a_stalled_server_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(202).set_delay(Duration::from_secs(5)))
        .expect(2)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = builder(&server, &sleeps)
        .read_timeout(Duration::from_millis(200))
        .retry_policy(
            RetryPolicy::default()
                .with_max_retries(1)
                .with_jitter(false),
        )
        .build()
        .unwrap();
    let err = job(&client, &format!("{}/jobs/1", server.uri()))
        .poll()
        .await
        .unwrap_err();
    let Error::RetriesExhausted { attempts, last, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*attempts, 2);
    assert!(
        matches!(
            **last,
            Error::Transport {
                kind: TransportErrorKind::Timeout,
                ..
            }
        ),
        "{last:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sleeps = Sleeps::default();
    let client = BulkClient::builder(format!("http://127.0.0.1:{port}/fhir"))
        .sleep_fn(sleeps.sleep_fn())
        .retry_policy(RetryPolicy::default().with_max_retries(2))
        .build()
        .unwrap();
    let err = client
        .kick_off(&fhir_bulk::ExportRequest::system())
        .await
        .unwrap_err();
    let Error::RetriesExhausted { last, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(
            **last,
            Error::Transport {
                kind: TransportErrorKind::Connect,
                ..
            }
        ),
        "{last:?}"
    );
    assert_eq!(
        sleeps.taken().len(),
        2,
        "kick-off retried: the request never left"
    );
}

#[tokio::test]
async fn cross_origin_redirect_drops_token_and_extra_headers() {
    let fhir = MockServer::start().await;
    let storage = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", "Bearer test-token"))
        .respond_with(ResponseTemplate::new(307).insert_header(
            "Location",
            format!("{}/signed/manifest?sig=abc", storage.uri()),
        ))
        .expect(1)
        .mount(&fhir)
        .await;
    // Any Authorization or Epic-Client-ID reaching the storage server fails the test.
    for name in ["authorization", "epic-client-id"] {
        Mock::given(header_exists(name))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&storage)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/signed/manifest"))
        .respond_with(ResponseTemplate::new(200).set_body_json(manifest(&storage.uri())))
        .expect(1)
        .mount(&storage)
        .await;
    let client = builder(&fhir, &Sleeps::default())
        .header("Epic-Client-ID", "epic-1")
        .build()
        .unwrap();
    let export = job(&client, &format!("{}/fhir/jobs/1", fhir.uri()))
        .wait()
        .await
        .unwrap();
    assert_eq!(export.manifests.len(), 1);
}

#[tokio::test]
async fn redirect_to_a_trusted_origin_keeps_the_token() {
    let fhir = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/status/1", other.uri())),
        )
        .mount(&fhir)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", "Bearer test-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(manifest(&other.uri())))
        .expect(1)
        .mount(&other)
        .await;
    let client = builder(&fhir, &Sleeps::default())
        .trusted_origin(other.uri())
        .build()
        .unwrap();
    job(&client, &format!("{}/fhir/jobs/1", fhir.uri()))
        .wait()
        .await
        .unwrap();
}

#[tokio::test]
async fn status_url_on_an_untrusted_origin_gets_no_token() {
    let fhir = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let client = client(&fhir, &Sleeps::default());
    let err = job(&client, &format!("{}/jobs/1?sig=SECRET", elsewhere.uri()))
        .poll()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UntrustedOrigin { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&elsewhere.uri()), "{text}");
    assert!(text.contains("trusted_origin"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn without_auth_no_authorization_header_is_sent() {
    let server = MockServer::start().await;
    Mock::given(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .build()
        .unwrap();
    job(&client, &format!("{}/fhir/jobs/1", server.uri()))
        .poll()
        .await
        .unwrap();
}

#[tokio::test]
async fn redirect_loops_end() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", "/fhir/jobs/1"))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = job(&client, &format!("{}/fhir/jobs/1", server.uri()))
        .poll()
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
}

#[tokio::test]
async fn errors_never_show_tokens_or_signed_queries() {
    let fhir = MockServer::start().await;
    let storage = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(307).insert_header(
            "Location",
            format!(
                "{}/obj?X-Amz-Signature=SIGSECRET&X-Amz-Credential=AKIASECRET",
                storage.uri()
            ),
        ))
        .mount(&fhir)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403).set_body_json(outcome(
            "error",
            "forbidden",
            "expired",
        )))
        .mount(&storage)
        .await;
    let client = BulkClient::builder(format!("{}/fhir", fhir.uri()))
        .bearer_token("TOKENSECRET")
        .build()
        .unwrap();
    let err = job(&client, &format!("{}/fhir/jobs/1", fhir.uri()))
        .poll()
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    for secret in ["SIGSECRET", "AKIASECRET", "TOKENSECRET"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(!format!("{client:?}").contains("TOKENSECRET"));
}
