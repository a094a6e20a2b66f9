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

/// A token endpoint that answers 307 to another origin: the client secret (in the body and
/// in Basic auth) never reaches it; the error says to give the final URL.
#[tokio::test]
async fn a_redirected_token_post_never_reaches_another_origin() {
    use fhir_bulk::auth::{ClientSecretAuth, ClientSecretMethod};
    use fhir_bulk_test_server::raw::{RawReply, RawServer};
    let thief = RawServer::start(|_, _| RawReply::framed(200, &[], b"{}"))
        .await
        .unwrap();
    let to = thief.url("/token");
    let auth_server =
        RawServer::start(move |_, _| RawReply::framed(307, &[("Location", to.as_str())], b""))
            .await
            .unwrap();
    for method in [ClientSecretMethod::Post, ClientSecretMethod::Basic] {
        let auth = ClientSecretAuth::builder("client", "client-SECRET-42")
            .method(method)
            .token_url(auth_server.url("/token"))
            .scope("system/*.read")
            .build()
            .unwrap();
        let client = BulkClient::builder(auth_server.url("/fhir"))
            .auth(auth)
            .sleep_fn(Sleeps::default().sleep_fn())
            .build()
            .unwrap();
        let err = client
            .kick_off(&fhir_bulk::ExportRequest::system())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Auth { .. }), "{err:?}");
        assert!(err.to_string().contains("redirect"), "{err}");
        assert!(!format!("{err} {err:?}").contains("SECRET"), "{err:?}");
    }
    assert!(
        thief.requests().is_empty(),
        "the secret went to another origin"
    );
}

/// A file server that redirects to another origin: neither the token nor the extra headers
/// go along.
#[tokio::test]
async fn a_redirected_download_carries_no_credentials_across_origins() {
    use fhir_bulk::{CompletedExport, DownloadOptions, FileKind, Manifest};
    use fhir_bulk_test_server::raw::{RawReply, RawServer};
    use futures::StreamExt;
    let storage = RawServer::start(|_, _| {
        RawReply::framed(200, &[], b"{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n")
    })
    .await
    .unwrap();
    let to = storage.url("/signed/1?sig=abc");
    let fhir =
        RawServer::start(move |_, _| RawReply::framed(302, &[("Location", to.as_str())], b""))
            .await
            .unwrap();
    let client = BulkClient::builder(fhir.url("/fhir"))
        .bearer_token("tok-SECRET-1")
        .header("Epic-Client-ID", "epic-1")
        .build()
        .unwrap();
    let json = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": fhir.url("/files/1")}], "error": []
    });
    let manifest = Manifest::from_slice(json.to_string().as_bytes(), "test").unwrap();
    let export =
        CompletedExport::from_manifests(Url::parse(&fhir.url("/jobs/1")).unwrap(), vec![manifest]);
    let file = export.files(FileKind::Output).remove(0);
    let lines: Vec<_> = client
        .download_lines(&file, &DownloadOptions::default())
        .collect()
        .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].is_ok());
    let first = &fhir.requests()[0];
    assert!(first.header("authorization").is_some());
    assert_eq!(first.header("epic-client-id"), Some("epic-1"));
    let hop = &storage.requests()[0];
    assert_eq!(hop.header("authorization"), None);
    assert_eq!(hop.header("epic-client-id"), None);
}

/// The proxy setting applies to the crate's own clients: a raw server playing an HTTP proxy
/// sees the absolute-form request.
#[tokio::test]
async fn the_proxy_setting_is_honoured() {
    use fhir_bulk::HttpOptions;
    use fhir_bulk_test_server::raw::{RawReply, RawServer};
    let proxy = RawServer::start(|_, _| {
        RawReply::framed(
            200,
            &[("Content-Type", "application/fhir+json")],
            br#"{"resourceType":"CapabilityStatement","software":{"name":"Proxied"}}"#,
        )
    })
    .await
    .unwrap();
    let client = BulkClient::builder("http://fhir.invalid/fhir")
        .allow_insecure_http(true)
        .http_options(HttpOptions::default().with_proxy(proxy.url("")))
        .build()
        .unwrap();
    let cs = client.capability_statement().await.unwrap();
    assert_eq!(cs.software_name.as_deref(), Some("Proxied"));
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "http://fhir.invalid/fhir/metadata");
}

/// Unusable TLS and proxy settings are typed errors that name the setting.
#[test]
fn bad_http_options_name_the_setting() {
    use fhir_bulk::HttpOptions;
    let setting = |options: HttpOptions| match BulkClient::builder("https://ehr.example/fhir")
        .http_options(options)
        .build()
    {
        Err(Error::InvalidConfig { setting, message }) => {
            assert!(!message.contains("KEY-SECRET"), "{message}");
            setting
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        setting(HttpOptions::default().with_root_certificate_pem("not a certificate")),
        "http_options.root_certificate"
    );
    assert_eq!(
        setting(HttpOptions::default().with_root_certificate_pem(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )),
        "http_options.root_certificate"
    );
    assert_eq!(
        setting(HttpOptions::default().with_identity_pem("nope", "KEY-SECRET")),
        "http_options.identity"
    );
    assert_eq!(
        setting(HttpOptions::default().with_proxy("not a url")),
        "http_options.proxy"
    );
    let debug = format!(
        "{:?}",
        HttpOptions::default()
            .with_proxy("http://user:pw-SECRET@proxy.example:3128")
            .with_identity_pem("c", "KEY-SECRET")
    );
    assert!(!debug.contains("SECRET"), "{debug}");
}
