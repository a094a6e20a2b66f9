//! NDJSON rules on real downloads (wiremock files): line ends, BOM, blank lines, wrong types,
//! unparsable and overlong lines under both policies, `count`, and where the token goes.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::{Sleeps, client};
use fhir_bulk::resource::Resource;
use fhir_bulk::{
    CompletedExport, DownloadOptions, Error, FileKind, InvalidLines, JobHandle, LineErrorKind,
};
use futures::StreamExt;
use url::Url;
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An export whose manifest lists one file at `file_url`.
async fn export_with(
    server: &MockServer,
    file_url: &str,
    resource_type: &str,
    count: Option<u64>,
    requires_token: bool,
) -> CompletedExport {
    let mut entry = serde_json::json!({"type": resource_type, "url": file_url});
    if let Some(c) = count {
        entry["count"] = c.into();
    }
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "transactionTime": "2024-01-01T00:00:00Z",
            "requiresAccessToken": requires_token,
            "output": [entry],
            "error": []
        })))
        .mount(server)
        .await;
    let client = client(server, &Sleeps::default());
    client
        .job(JobHandle::new(
            Url::parse(&format!("{}/fhir/jobs/1", server.uri())).unwrap(),
        ))
        .wait()
        .await
        .unwrap()
}

async fn serve_file(server: &MockServer, body: &'static [u8]) -> String {
    Mock::given(method("GET"))
        .and(path("/files/f1"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/fhir+ndjson"))
        .mount(server)
        .await;
    format!("{}/files/f1", server.uri())
}

async fn collect(
    server: &MockServer,
    export: &CompletedExport,
    options: DownloadOptions,
) -> Vec<Result<(u64, String), Error>> {
    let client = client(server, &Sleeps::default());
    client
        .download_resources::<Resource>(export, &options)
        .map(|r| r.map(|r| (r.line, r.id().unwrap_or_default().to_owned())))
        .collect()
        .await
}

#[tokio::test]
async fn line_ends_bom_and_blank_lines() {
    let server = MockServer::start().await;
    let body: &[u8] = b"\xEF\xBB\xBF{\"resourceType\":\"Patient\",\"id\":\"a\"}\r\n\r\n  \n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n{\"resourceType\":\"Patient\",\"id\":\"c\"}";
    let url = serve_file(&server, body).await;
    let export = export_with(&server, &url, "Patient", Some(3), true).await;
    let got = collect(&server, &export, DownloadOptions::default()).await;
    let got: Vec<(u64, String)> = got.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        got,
        [(1, "a"), (4, "b"), (5, "c")].map(|(n, id)| (n, id.to_owned()))
    );
}

const MIXED: &[u8] = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Observation\",\"id\":\"x\"}\n{not json\n{\"resourceType\":\"Patient\",\"id\":\"d\"}\n";

#[tokio::test]
async fn invalid_lines_stop_by_default() {
    let server = MockServer::start().await;
    let url = serve_file(&server, MIXED).await;
    let export = export_with(&server, &url, "Patient", None, true).await;
    let got = collect(&server, &export, DownloadOptions::default()).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].as_ref().unwrap(), &(1, "a".to_owned()));
    match &got[1] {
        Err(Error::InvalidLine {
            line,
            kind,
            message,
            file,
        }) => {
            assert_eq!(*line, 2);
            assert_eq!(*kind, LineErrorKind::WrongType);
            assert!(message.contains("Observation"), "{message}");
            assert!(file.ends_with("/files/f1"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn invalid_lines_can_be_reported_and_skipped() {
    let server = MockServer::start().await;
    let url = serve_file(&server, MIXED).await;
    let export = export_with(&server, &url, "Patient", Some(4), true).await;
    let options = DownloadOptions::default().with_invalid_lines(InvalidLines::Report);
    let got = collect(&server, &export, options).await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].as_ref().unwrap().1, "a");
    assert!(matches!(
        &got[1],
        Err(Error::InvalidLine {
            line: 2,
            kind: LineErrorKind::WrongType,
            ..
        })
    ));
    match &got[2] {
        Err(
            e @ Error::InvalidLine {
                line: 3,
                kind: LineErrorKind::Parse,
                ..
            },
        ) => {
            assert!(e.to_string().contains("line 3"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got[3].as_ref().unwrap(), &(4, "d".to_owned()));
}

#[tokio::test]
async fn type_check_can_be_switched_off() {
    let server = MockServer::start().await;
    let url = serve_file(
        &server,
        b"{\"resourceType\":\"Observation\",\"id\":\"x\"}\n",
    )
    .await;
    let export = export_with(&server, &url, "Patient", None, true).await;
    let got = collect(
        &server,
        &export,
        DownloadOptions::default().with_check_resource_type(false),
    )
    .await;
    assert_eq!(got[0].as_ref().unwrap().1, "x");
}

#[tokio::test]
async fn overlong_lines() {
    let server = MockServer::start().await;
    let body: &[u8] = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"a-very-long-id-that-goes-past-the-limit\"}\n{\"resourceType\":\"Patient\",\"id\":\"c\"}\n";
    let url = serve_file(&server, body).await;
    let export = export_with(&server, &url, "Patient", None, true).await;
    let options = DownloadOptions::default()
        .with_max_line_bytes(48)
        .with_invalid_lines(InvalidLines::Report);
    let got = collect(&server, &export, options.clone()).await;
    assert_eq!(got.len(), 3);
    match &got[1] {
        Err(
            e @ Error::InvalidLine {
                line: 2,
                kind: LineErrorKind::TooLong,
                ..
            },
        ) => {
            assert!(e.to_string().contains("48 bytes"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got[2].as_ref().unwrap(), &(3, "c".to_owned()));
    let stopped = collect(
        &server,
        &export,
        options.with_invalid_lines(InvalidLines::Stop),
    )
    .await;
    assert_eq!(stopped.len(), 2);
}

#[tokio::test]
async fn count_mismatch_is_reported() {
    let server = MockServer::start().await;
    let url = serve_file(&server, b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n").await;
    let export = export_with(&server, &url, "Patient", Some(12), true).await;
    let got = collect(&server, &export, DownloadOptions::default()).await;
    assert_eq!(got.len(), 2);
    match &got[1] {
        Err(
            e @ Error::CountMismatch {
                expected: 12,
                actual: 1,
                ..
            },
        ) => {
            assert!(e.to_string().contains("12"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// Oracle answers file requests with a 307 to a pre-signed object-storage URL.
#[tokio::test]
async fn file_redirect_to_storage_drops_the_token() {
    let server = MockServer::start().await;
    let storage = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/files/f1"))
        .and(header("authorization", "Bearer test-token"))
        .respond_with(ResponseTemplate::new(307).insert_header(
            "Location",
            format!("{}/bucket/f1?X-Amz-Signature=sig", storage.uri()),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&storage)
        .await;
    Mock::given(method("GET"))
        .and(path("/bucket/f1"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            &b"{\"resourceType\":\"Patient\",\"id\":\"s3\"}\n"[..],
            "application/fhir+ndjson",
        ))
        .expect(1)
        .mount(&storage)
        .await;
    let export = export_with(
        &server,
        &format!("{}/files/f1", server.uri()),
        "Patient",
        Some(1),
        true,
    )
    .await;
    let got = collect(&server, &export, DownloadOptions::default()).await;
    assert_eq!(got[0].as_ref().unwrap().1, "s3");
}

#[tokio::test]
async fn files_on_untrusted_origins() {
    let server = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&other)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            &b"{\"resourceType\":\"Patient\",\"id\":\"cap\"}\n"[..],
            "application/fhir+ndjson",
        ))
        .mount(&other)
        .await;
    // requiresAccessToken: true on another origin: refused, naming the setting.
    let url = format!("{}/files/x?sig=SECRET", other.uri());
    let export = export_with(&server, &url, "Patient", None, true).await;
    let got = collect(&server, &export, DownloadOptions::default()).await;
    match &got[0] {
        Err(e @ Error::UntrustedOrigin { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("trusted_origin") && !text.contains("SECRET"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(export.files(FileKind::Output).len(), 1);
}

#[tokio::test]
async fn capability_url_on_another_origin_is_fetched_without_token() {
    let server = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&other)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            &b"{\"resourceType\":\"Patient\",\"id\":\"cap\"}\n"[..],
            "application/fhir+ndjson",
        ))
        .expect(1)
        .mount(&other)
        .await;
    let export = export_with(
        &server,
        &format!("{}/f", other.uri()),
        "Patient",
        None,
        false,
    )
    .await;
    let got = collect(&server, &export, DownloadOptions::default()).await;
    assert_eq!(got[0].as_ref().unwrap().1, "cap");
}
