//! Status polling: Retry-After in all its forms, X-Progress, the backoff schedule, transient
//! and terminal failures, separate-export-status, and the deadline.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::{Sleeps, builder, client, fixture, outcome};
use fhir_bulk::resource::Timestamp;
use fhir_bulk::{
    BulkClient, Error, FileKind, JobHandle, PollPolicy, PollStatus, RetryAfterUnit, RetryPolicy,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const JOB: &str = "/r4/ec2458f2-1e24-41c8-b71b-0e701af7583d/bulk-export/jobs/9f1e";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn in_progress() -> ResponseTemplate {
    ResponseTemplate::new(202)
}

fn manifest(server: &MockServer, name: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("Expires", "Fri, 01 Mar 2024 17:35:02 GMT")
        .set_body_raw(fixture(name, &server.uri()), "application/json")
}

fn job_at(client: &BulkClient, server: &MockServer, job_path: &str) -> fhir_bulk::ExportJob {
    client.job(JobHandle::new(
        Url::parse(&format!("{}{job_path}", server.uri())).unwrap(),
    ))
}

/// Oracle Health sends `Retry-After: 600` (seconds); the policy caps each wait.
#[tokio::test]
async fn oracle_retry_after_is_honoured_and_capped() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(JOB))
        .and(header("accept", "application/json"))
        .and(header("authorization", "Bearer test-token"))
        .respond_with(
            in_progress()
                .insert_header("X-Progress", "in-progress")
                .insert_header("Retry-After", "600"),
        )
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(JOB))
        .respond_with(manifest(&server, "oracle/manifest.json"))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = builder(&server, &sleeps)
        .poll_policy(
            PollPolicy::default()
                .with_jitter(0.0)
                .with_max_interval(secs(300)),
        )
        .build()
        .unwrap();
    let job = job_at(&client, &server, JOB);
    let mut seen = Vec::new();
    let export = job
        .wait_with(|p| seen.push((p.text.clone(), p.retry_after)))
        .await
        .unwrap();
    assert_eq!(sleeps.taken(), [secs(300), secs(300)]);
    assert_eq!(
        seen,
        vec![(Some("in-progress".to_string()), Some(secs(600))); 2]
    );
    let files = export.files(FileKind::Output);
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].file.resource_type.as_deref(), Some("Patient"));
    assert_eq!(files[1].file.count, Some(41));
    assert!(files[0].file.url.expose().contains("/bulk-export/files/"));
    assert_eq!(
        export.transaction_time(),
        Timestamp::parse("2024-03-01T17:35:02.000Z")
    );
    assert_eq!(
        export.expires(),
        Some(UNIX_EPOCH + secs(1_709_314_502)),
        "Expires header captured"
    );
}

/// Seed 002: Retry-After in milliseconds and X-Progress words.
#[tokio::test]
async fn millisecond_retry_after_with_progress_words() {
    let server = MockServer::start().await;
    for word in ["scheduled", "started", "completed"] {
        Mock::given(method("GET"))
            .and(path("/fhir/export/5f1c"))
            .respond_with(
                in_progress()
                    .insert_header("X-Progress", word)
                    .insert_header("Retry-After", "1500"),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/fhir/export/5f1c"))
        .respond_with(manifest(&server, "vendor002/manifest.json"))
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = builder(&server, &sleeps)
        .poll_policy(
            PollPolicy::default()
                .with_jitter(0.0)
                .with_initial_delay(Duration::from_millis(100))
                .with_factor(1.0)
                .with_retry_after_unit(RetryAfterUnit::Milliseconds),
        )
        .build()
        .unwrap();
    let mut words = Vec::new();
    let export = job_at(&client, &server, "/fhir/export/5f1c")
        .wait_with(|p| words.push(p.text.clone().unwrap()))
        .await
        .unwrap();
    assert_eq!(words, ["scheduled", "started", "completed"]);
    assert_eq!(sleeps.taken(), vec![Duration::from_millis(1500); 3]);
    assert_eq!(export.files(FileKind::Error).len(), 1);
    assert_eq!(
        export.transaction_time(),
        Timestamp::parse("2024-05-02T08:15:00Z")
    );
}

#[tokio::test]
async fn progress_percentage_is_parsed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(in_progress().insert_header("X-Progress", "23.0% complete"))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    match job_at(&client, &server, "/jobs/1").poll().await.unwrap() {
        PollStatus::InProgress(p) => {
            assert_eq!(p.text.as_deref(), Some("23.0% complete"));
            assert_eq!(p.percent, Some(23.0));
            assert_eq!(p.retry_after, None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_date_retry_after_uses_the_injected_clock() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(in_progress().insert_header("Retry-After", "Wed, 21 Oct 2015 07:29:30 GMT"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(manifest(&server, "oracle/manifest.json"))
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    // 07:28:00 GMT: the server asks for 90 s.
    let now = UNIX_EPOCH + secs(1_445_412_480);
    let client = builder(&server, &sleeps)
        .clock(Arc::new(move || now))
        .build()
        .unwrap();
    job_at(&client, &server, "/jobs/1").wait().await.unwrap();
    assert_eq!(sleeps.taken(), [secs(90)]);
}

/// Microsoft's server sends no Retry-After: the exponential schedule applies.
#[tokio::test]
async fn exponential_schedule_without_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(in_progress())
        .up_to_n_times(5)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(manifest(&server, "oracle/manifest.json"))
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = builder(&server, &sleeps)
        .poll_policy(
            PollPolicy::default()
                .with_jitter(0.0)
                .with_initial_delay(secs(2))
                .with_factor(2.0)
                .with_max_interval(secs(20)),
        )
        .build()
        .unwrap();
    job_at(&client, &server, "/jobs/1").wait().await.unwrap();
    assert_eq!(sleeps.taken(), [2, 4, 8, 16, 20].map(secs));
}

#[tokio::test]
async fn throttled_and_transient_status_answers_are_retried() {
    let server = MockServer::start().await;
    let answers = [
        ResponseTemplate::new(429).insert_header("Retry-After", "30"),
        ResponseTemplate::new(503),
        ResponseTemplate::new(500).set_body_json(outcome("error", "transient", "try later")),
        ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"),
    ];
    for answer in answers {
        Mock::given(method("GET"))
            .respond_with(answer)
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .respond_with(in_progress().insert_header("X-Progress", "50%"))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = builder(&server, &sleeps)
        .retry_policy(
            RetryPolicy::default()
                .with_jitter(false)
                .with_max_retries(5)
                .with_min_delay(secs(1)),
        )
        .build()
        .unwrap();
    let status = job_at(&client, &server, "/jobs/1").poll().await.unwrap();
    assert!(matches!(status, PollStatus::InProgress(p) if p.percent == Some(50.0)));
    // 30 s from Retry-After, then the schedule: 2, 4, 8.
    assert_eq!(sleeps.taken(), [30, 2, 4, 8].map(secs));
}

#[tokio::test]
async fn retries_are_bounded() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("X-Request-Id", "r-503"))
        .expect(4)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps); // max_retries 3
    let err = job_at(&client, &server, "/jobs/1")
        .poll()
        .await
        .unwrap_err();
    match &err {
        Error::RetriesExhausted { attempts, .. } => assert_eq!(*attempts, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.request_id(), Some("r-503"));
    assert_eq!(sleeps.taken().len(), 3);
}

#[tokio::test]
async fn failed_job_reports_the_outcome() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(500)
                .insert_header("X-Request-Id", "g-1")
                .set_body_raw(
                    fixture("google/error-500.json", ""),
                    "application/fhir+json",
                ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = job_at(&client, &server, "/v1/projects/p/operations/1")
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobFailed(_)), "{err:?}");
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.request_id(), Some("g-1"));
    assert!(
        err.to_string().contains("bulkExportGcsDestination"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

/// Seed 002: an unknown (expired, deleted) job is 404 with a `forbidden` OperationOutcome.
#[tokio::test]
async fn unknown_job_is_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_raw(
            fixture("vendor002/not-found.json", ""),
            "application/fhir+json",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = job_at(&client, &server, "/fhir/export/gone")
        .poll()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobNotFound(_)), "{err:?}");
    assert_eq!(err.operation_outcome().unwrap().issue[0].code, "forbidden");
    assert!(err.to_string().contains("not available"), "{err}");
}

#[tokio::test]
async fn rejected_token_on_status_is_an_auth_error_after_one_retry() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = job_at(&client, &server, "/jobs/1")
        .poll()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.status(), Some(401));
}

#[tokio::test]
async fn separate_export_status_header_drives_the_decision() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Export-Status", "202 Accepted")
                .insert_header("X-Progress", "10%"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Export-Status", "503 Service Unavailable")
                .insert_header("Retry-After", "5"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            manifest(&server, "oracle/manifest.json").insert_header("X-Export-Status", "200 OK"),
        )
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let job = job_at(&client, &server, "/jobs/1");
    let mut progress = Vec::new();
    let export = job.wait_with(|p| progress.push(p.percent)).await.unwrap();
    assert_eq!(progress, [Some(10.0)]);
    assert_eq!(export.files(FileKind::Output).len(), 2);
    // Poll wait 2 s, then the transient X-Export-Status retried after its Retry-After.
    assert_eq!(sleeps.taken(), [secs(2), secs(5)]);
}

#[tokio::test]
async fn separate_export_status_failure() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Export-Status", "500 Internal Server Error")
                .set_body_json(outcome("fatal", "processing", "export crashed")),
        )
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let err = job_at(&client, &server, "/jobs/1")
        .poll()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobFailed(_)), "{err:?}");
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("export crashed"));
}

/// The real loop with the real tokio sleep, under a paused clock: the deadline ends it.
#[tokio::test(start_paused = true)]
async fn deadline_ends_the_wait() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(in_progress().insert_header("Retry-After", "120"))
        .mount(&server)
        .await;
    // No reqwest timeouts: the paused clock would fire them while waiting for the socket.
    let http = fhir_bulk::HttpOptions::default()
        .with_connect_timeout(None)
        .with_read_timeout(None);
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .http_options(http)
        .poll_policy(PollPolicy::default().with_deadline(Some(Duration::from_secs(600))))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = job_at(&client, &server, "/jobs/slow")
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PollDeadline { .. }), "{err:?}");
    assert!(err.to_string().contains("/jobs/slow"), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= secs(600) && waited < secs(600 + 130),
        "{waited:?}"
    );
    let polls = server.received_requests().await.unwrap().len();
    assert!((5..=6).contains(&polls), "{polls} polls");
}

#[tokio::test]
async fn partial_manifests_are_collected_once() {
    let server = MockServer::start().await;
    let base = server.uri();
    let partial = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": format!("{base}/files/p1")}],
        "error": []
    });
    Mock::given(method("GET"))
        .and(path("/jobs/p"))
        .respond_with(in_progress().set_body_json(&partial))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    let complete = serde_json::json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": true,
        "output": [
            {"type": "Patient", "url": format!("{base}/files/p1")},
            {"type": "Patient", "url": format!("{base}/files/p2")}
        ],
        "error": []
    });
    Mock::given(method("GET"))
        .and(path("/jobs/p"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&complete))
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let mut partial_files = 0;
    let export = job_at(&client, &server, "/jobs/p")
        .wait_with(|p| {
            partial_files += p.partial_manifest.as_ref().map_or(0, |m| m.output.len());
        })
        .await
        .unwrap();
    assert_eq!(
        partial_files, 2,
        "each in-progress answer showed its partial manifest"
    );
    let urls: Vec<String> = export
        .files(FileKind::Output)
        .into_iter()
        .map(|f| f.file.url.expose().to_owned())
        .collect();
    assert_eq!(
        urls,
        [format!("{base}/files/p1"), format!("{base}/files/p2")]
    );
    assert_eq!(
        export.manifests.len(),
        2,
        "the repeated partial page is kept once"
    );
}

#[tokio::test]
async fn clock_is_not_needed_for_plain_seconds() {
    // A clock far in the future must not matter for delta-seconds.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(in_progress().insert_header("Retry-After", "45"))
        .mount(&server)
        .await;
    let far = SystemTime::UNIX_EPOCH + secs(4_000_000_000);
    let client = builder(&server, &Sleeps::default())
        .clock(Arc::new(move || far))
        .build()
        .unwrap();
    match job_at(&client, &server, "/jobs/1").poll().await.unwrap() {
        PollStatus::InProgress(p) => assert_eq!(p.retry_after, Some(secs(45))),
        other => panic!("{other:?}"),
    }
}
