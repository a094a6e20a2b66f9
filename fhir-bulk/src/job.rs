//! A running export: poll it, wait for it, cancel or delete it. A [`JobHandle`] serializes
//! so another process can pick the job up later.

use crate::client::BulkClient;
use crate::error::{Error, RequestIds, Result};
use crate::manifest::{CompletedExport, Manifest, PageCollector};
use crate::outcome::OperationOutcome;
use crate::poll::PollSchedule;
use crate::request::ExportRequest;
use crate::secret::redact_url;
use crate::status::{Progress, StatusAnswer, StatusDecision, decide};
use crate::transport::Call;
use reqwest::Method;
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;
use url::Url;

/// The most manifest pages followed through `next` links from one manifest.
pub(crate) const MAX_MANIFEST_PAGES: usize = 1_000;

/// The file URLs a manifest page lists.
fn files_of(page: &Manifest) -> impl Iterator<Item = String> + '_ {
    page.output
        .iter()
        .chain(&page.error)
        .chain(&page.deleted)
        .map(|f| f.url.expose().to_owned())
}

/// What identifies an export job on the server; save it to resume polling after a restart.
///
/// ```
/// # use fhir_bulk::JobHandle;
/// let text = r#"{"status_url":"https://ehr.example/r4/t/bulk-export/jobs/42"}"#;
/// let handle: JobHandle = serde_json::from_str(text)?;
/// assert_eq!(handle.status_url.path(), "/r4/t/bulk-export/jobs/42");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobHandle {
    /// The status URL (the kick-off's `Content-Location`).
    pub status_url: Url,
    /// The kick-off URL, without its query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kickoff_url: Option<String>,
    /// When the export was kicked off (a FHIR instant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kicked_off_at: Option<String>,
    /// The request-id headers of the kick-off answer.
    #[serde(default)]
    pub request_ids: RequestIds,
    /// Whether `separate-export-status` was requested.
    #[serde(default)]
    pub separate_export_status: bool,
    /// The kick-off request, when this process sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<ExportRequest>,
}

impl JobHandle {
    /// A handle for a status URL obtained elsewhere.
    pub fn new(status_url: Url) -> Self {
        JobHandle {
            status_url,
            kickoff_url: None,
            kicked_off_at: None,
            request_ids: RequestIds::default(),
            separate_export_status: false,
            request: None,
        }
    }
}

/// The answer to one status poll.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum PollStatus {
    /// The export is still running.
    InProgress(Progress),
    /// The export is complete: the (first) manifest.
    Complete(Box<Manifest>),
    /// The job was cancelled (DELETE) by this client, and the server still answers with the
    /// manifest of the files written before the cancel (Microsoft's FHIR service: 200 with a
    /// partial manifest). Partial output: never take it for a complete export.
    Cancelled(Box<Manifest>),
}

/// What a DELETE of the job found.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The server accepted the DELETE (202 or another 2xx).
    Deleted,
    /// The job was already gone (404 or 410).
    AlreadyGone,
}

/// The server's answer to a DELETE of the job.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteReport {
    /// Deleted, or already gone.
    pub outcome: DeleteOutcome,
    /// The `OperationOutcome` the server sent with its answer, if any.
    pub operation_outcome: Option<OperationOutcome>,
    /// The manifest of the files written before the cancel, when the server sends one with
    /// its answer (Microsoft's FHIR service: 200 with a partial manifest).
    pub partial_manifest: Option<Box<Manifest>>,
    /// The request-id headers of the answer.
    pub request_ids: RequestIds,
}

/// An export job on the server.
#[derive(Debug, Clone)]
pub struct ExportJob {
    pub(crate) client: BulkClient,
    pub(crate) handle: JobHandle,
    pub(crate) kickoff_outcome: Option<OperationOutcome>,
    /// Whether a DELETE of the job succeeded (shared by the job's clones).
    pub(crate) cancelled: Arc<AtomicBool>,
}

impl BulkClient {
    /// The job behind a saved [`JobHandle`], to poll, wait for or delete it.
    pub fn job(&self, handle: JobHandle) -> ExportJob {
        ExportJob {
            client: self.clone(),
            handle,
            kickoff_outcome: None,
            cancelled: Arc::default(),
        }
    }

    /// The job behind a status URL (absolute, or relative to the FHIR base).
    pub fn job_at(&self, status_url: &str) -> Result<ExportJob> {
        let url =
            crate::kickoff::resolve_status_url(&self.inner.base, status_url).ok_or_else(|| {
                Error::InvalidConfig {
                    setting: "status_url",
                    message: format!("`{status_url}` is not an http(s) URL"),
                }
            })?;
        Ok(self.job(JobHandle::new(url)))
    }
}

impl ExportJob {
    /// The handle to save for resuming later.
    pub fn handle(&self) -> &JobHandle {
        &self.handle
    }

    /// The status URL.
    pub fn status_url(&self) -> &Url {
        &self.handle.status_url
    }

    /// The `OperationOutcome` the server sent with its `202 Accepted`, if any.
    pub fn kickoff_outcome(&self) -> Option<&OperationOutcome> {
        self.kickoff_outcome.as_ref()
    }

    fn get(&self, context: &'static str, url: Url) -> Call {
        let accept = self.client.inner.profile.status_accept();
        Call::new(context, Method::GET, url).header(ACCEPT, accept)
    }

    /// Polls the status URL once. Transient failures (429, 5xx without a FHIR body, transient
    /// issue codes, connection errors) are retried under the client's
    /// [`RetryPolicy`](crate::RetryPolicy) within this call: one budget for the transport's
    /// failures and the status answers that ask for a retry together.
    pub async fn poll(&self) -> Result<PollStatus> {
        let inner = &self.client.inner;
        let call = self
            .get("the status request", self.handle.status_url.clone())
            .what("status poll");
        let mut ctx = inner.retry_context();
        loop {
            let answer = inner.request_in(&call, &mut ctx).await?;
            let url = redact_url(&answer.url);
            let facts = StatusAnswer {
                http_status: answer.status,
                export_status: answer.header("x-export-status"),
                x_progress: answer.header("x-progress"),
                expires: answer.expires(),
                retry_after: inner.retry_after(&answer.headers),
                body: &answer.body,
                url: &url,
            };
            let decision = decide(&facts, |status| {
                let mut report = answer.error_response(inner);
                report.status = status;
                report
            })?;
            return match decision {
                StatusDecision::InProgress(progress) => Ok(PollStatus::InProgress(progress)),
                StatusDecision::Complete(manifest)
                    if self.cancelled.load(Ordering::Relaxed)
                        && inner.profile.complete_after_cancel_is_partial() =>
                {
                    Ok(PollStatus::Cancelled(manifest))
                }
                StatusDecision::Complete(manifest) => Ok(PollStatus::Complete(manifest)),
                StatusDecision::NotFound(r) => Err(Error::JobNotFound(Box::new(r))),
                StatusDecision::Failed(r) => Err(Error::JobFailed(Box::new(r))),
                StatusDecision::Unauthorized(_) => {
                    Err(inner.unexpected("the status request", &answer))
                }
                StatusDecision::Retry(report) => {
                    let server = inner.server_wait(&answer.headers);
                    let last = Error::UnexpectedResponse {
                        context: "the status request",
                        response: Box::new(report),
                    };
                    inner
                        .retry_wait(call.what, &call.url, &mut ctx, server, last)
                        .await?;
                    continue;
                }
            };
        }
    }

    /// Polls until the export completes, then follows manifest `next` links, and returns
    /// every manifest page. Waits follow the client's [`PollPolicy`](crate::PollPolicy).
    pub async fn wait(&self) -> Result<CompletedExport> {
        self.wait_with(|_| {}).await
    }

    /// [`ExportJob::wait`], calling `on_progress` with every in-progress answer (to show
    /// `X-Progress`, or to start on the files of partial manifests early).
    pub async fn wait_with(&self, on_progress: impl FnMut(&Progress)) -> Result<CompletedExport> {
        let span = tracing::info_span!("poll", status_url = %redact_url(&self.handle.status_url));
        self.wait_inner(on_progress).instrument(span).await
    }

    async fn wait_inner(&self, mut on_progress: impl FnMut(&Progress)) -> Result<CompletedExport> {
        let inner = &self.client.inner;
        let policy = &inner.poll;
        let started = tokio::time::Instant::now();
        let mut pages = PageCollector::default();
        let mut schedule = PollSchedule::default();
        loop {
            match self.poll().await? {
                PollStatus::Complete(manifest) => {
                    self.collect(&mut pages, *manifest, true).await?;
                    return Ok(pages.finish(self.handle.status_url.clone()));
                }
                PollStatus::Cancelled(manifest) => {
                    return Err(Error::JobCancelled {
                        status_url: redact_url(&self.handle.status_url),
                        partial: Some(manifest),
                    });
                }
                PollStatus::InProgress(progress) => {
                    on_progress(&progress);
                    if let Some(partial) = progress.partial_manifest.clone() {
                        self.collect(&mut pages, *partial, false).await?;
                    }
                    let mut wait = schedule.next_wait(
                        policy,
                        progress.text.as_deref(),
                        progress.retry_after,
                        (inner.random)(),
                    );
                    if let Some(server) = progress.retry_after.filter(|d| !d.is_zero()) {
                        tracing::info!(
                            target: "fhir_bulk::retry_after",
                            delay_ms = u64::try_from(server.as_millis()).unwrap_or(u64::MAX),
                            source = "Retry-After",
                            "server wait honoured"
                        );
                    }
                    if let Some(deadline) = policy.deadline {
                        let left = deadline.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            return Err(Error::PollDeadline {
                                deadline,
                                status_url: redact_url(&self.handle.status_url),
                            });
                        }
                        wait = wait.min(left);
                    }
                    (inner.sleep)(wait).await;
                }
            }
        }
    }

    /// Adds a manifest and every page behind its `next` links: at most
    /// [`MAX_MANIFEST_PAGES`] pages, each of which must bring a file not seen before.
    async fn collect(&self, pages: &mut PageCollector, first: Manifest, keep: bool) -> Result<()> {
        let inner = &self.client.inner;
        let mut seen: HashSet<String> = files_of(&first).collect();
        let mut next = pages.add(first, keep);
        let mut fetched = 0usize;
        while let Some(link) = next {
            let url = self
                .handle
                .status_url
                .join(&link)
                .map_err(|e| Error::BadManifest {
                    url: redact_url(&self.handle.status_url),
                    message: format!("manifest `next` link is not a URL: {e}"),
                    source: Some(Box::new(e)),
                })?;
            fetched += 1;
            if fetched > MAX_MANIFEST_PAGES {
                return Err(Error::BadManifest {
                    url: redact_url(&url),
                    message: format!(
                        "the manifest `next` links go on past {MAX_MANIFEST_PAGES} pages; \
                         stopped (a server paging without end)"
                    ),
                    source: None,
                });
            }
            let call = self.get("a manifest page request", url).what("manifest");
            let answer = inner.request(&call).await?;
            let page = match answer.status {
                200 => {
                    let mut page = Manifest::from_slice(&answer.body, &redact_url(&answer.url))?;
                    page.expires = answer.expires();
                    page
                }
                404 | 410 => {
                    return Err(Error::JobNotFound(Box::new(answer.error_response(inner))));
                }
                401 | 403 => return Err(inner.unexpected("a manifest page request", &answer)),
                _ => return Err(Error::JobFailed(Box::new(answer.error_response(inner)))),
            };
            let before = seen.len();
            seen.extend(files_of(&page));
            if seen.len() == before && page.next_link().is_some() {
                return Err(Error::BadManifest {
                    url: redact_url(&answer.url),
                    message: "a manifest page lists no file not seen before, yet links to \
                              another page; stopped (a server paging without end)"
                        .into(),
                    source: None,
                });
            }
            next = pages.add(page, true);
        }
        Ok(())
    }

    /// Fetches the manifest again, for fresh file URLs after they expired
    /// ([`Error::FileExpired`]): servers may answer a completed job's status URL with new
    /// links or a new `Expires`. Polls until complete if the job is not.
    pub async fn refresh_manifest(&self) -> Result<CompletedExport> {
        self.wait().await
    }

    /// Cancels a running export (DELETE on the status URL). Same request as
    /// [`ExportJob::delete`]; named for use before completion.
    pub async fn cancel(&self) -> Result<DeleteReport> {
        self.delete_as("cancelling the export job").await
    }

    /// Tells the server the files are downloaded and may be removed (DELETE on the status
    /// URL). Servers that allow one export per client need it before the next kick-off.
    pub async fn delete(&self) -> Result<DeleteReport> {
        self.delete_as("deleting the export job").await
    }

    async fn delete_as(&self, context: &'static str) -> Result<DeleteReport> {
        let inner = &self.client.inner;
        let call = Call::new(context, Method::DELETE, self.handle.status_url.clone())
            .what("DELETE")
            .header(ACCEPT, "application/fhir+json");
        let answer = inner.request(&call).await?;
        let Some(outcome) = inner.profile.delete_outcome(answer.status) else {
            return Err(inner.unexpected(context, &answer));
        };
        let partial_manifest = (inner.profile.delete_may_carry_manifest(answer.status)
            && Manifest::looks_like_manifest(&answer.body))
        .then(|| Manifest::from_slice(&answer.body, &redact_url(&answer.url)).ok())
        .flatten()
        .map(Box::new);
        self.cancelled.store(true, Ordering::Relaxed);
        Ok(DeleteReport {
            outcome,
            operation_outcome: OperationOutcome::parse(&answer.body),
            partial_manifest,
            request_ids: crate::transport::request_ids(&answer.headers),
        })
    }
}
