//! Cancel and delete: DELETE on the status URL, and what servers answer to it.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use common::{Sleeps, client, outcome};
use fhir_bulk::{DeleteOutcome, Error, JobHandle};
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const JOB: &str = "/r4/tenant/bulk-export/jobs/9f1e";

async fn delete_answer(
    answer: ResponseTemplate,
) -> (MockServer, fhir_bulk::Result<fhir_bulk::DeleteReport>) {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path(JOB))
        .and(header("authorization", "Bearer test-token"))
        .and(header("accept", "application/fhir+json"))
        .respond_with(answer)
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server, &Sleeps::default());
    let job = client.job(JobHandle::new(
        Url::parse(&format!("{}{JOB}", server.uri())).unwrap(),
    ));
    let result = job.cancel().await;
    (server, result)
}

#[tokio::test]
async fn accepted_delete() {
    let (_s, r) = delete_answer(
        ResponseTemplate::new(202)
            .insert_header("X-Request-Id", "del-202")
            .set_body_json(outcome("information", "informational", "files purged")),
    )
    .await;
    let report = r.unwrap();
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    assert_eq!(
        report.operation_outcome.unwrap().issue[0]
            .diagnostics
            .as_deref(),
        Some("files purged"),
        "the server's OperationOutcome is kept"
    );
    assert_eq!(report.request_ids.x_request_id.as_deref(), Some("del-202"));
    // Microsoft and others answer 200.
    let (_s, r) = delete_answer(ResponseTemplate::new(200)).await;
    assert_eq!(r.unwrap().outcome, DeleteOutcome::Deleted);
}

#[tokio::test]
async fn already_gone_is_not_an_error() {
    let (_s, r) = delete_answer(ResponseTemplate::new(404)).await;
    assert_eq!(r.unwrap().outcome, DeleteOutcome::AlreadyGone);
    let (_s, r) = delete_answer(ResponseTemplate::new(410)).await;
    assert_eq!(r.unwrap().outcome, DeleteOutcome::AlreadyGone);
}

/// Google answers an error to DELETE of a completed job.
#[tokio::test]
async fn refused_delete_carries_the_outcome() {
    let (_s, r) = delete_answer(
        ResponseTemplate::new(400)
            .insert_header("X-Request-Id", "del-1")
            .set_body_json(outcome(
                "error",
                "processing",
                "operation already completed",
            )),
    )
    .await;
    let err = r.unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err:?}");
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.request_id(), Some("del-1"));
    let text = err.to_string();
    assert!(text.contains("cancelling the export job"), "{text}");
    assert!(text.contains("operation already completed"), "{text}");
}

#[tokio::test]
async fn delete_after_download_and_transient_retry() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = client(&server, &sleeps);
    let job = client.job_at("jobs/1").unwrap();
    assert_eq!(job.status_url().path(), "/fhir/jobs/1");
    assert_eq!(job.delete().await.unwrap().outcome, DeleteOutcome::Deleted);
    assert_eq!(sleeps.taken().len(), 1);
}
