//! HTTP plumbing: shared state, routing, request recording, authorization,
//! OperationOutcome answers and the connection loop.

use std::collections::HashMap;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use axum::http::{Extensions, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Extension, Router};
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use url::Url;

use super::RecordedRequest;
use super::config::{Config, Fault, FaultKind, FaultSite};
use super::data::Dataset;
use super::files;
use super::jobs::{self, Job};

/// Largest request body the server reads (kick-off `Parameters`).
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// Locks a mutex, ignoring poisoning (no code holding these locks panics).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by every request handler and the [`TestServer`](super::TestServer).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) dataset: Dataset,
    pub(crate) base: Url,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) faults: Mutex<Vec<Fault>>,
    pub(crate) jobs: Mutex<HashMap<String, Arc<Job>>>,
    pub(crate) next_job: AtomicU64,
    pub(crate) next_request_id: AtomicU64,
    /// Bumped by `expire_files`: file URLs of older generations answer 410.
    pub(crate) url_generation: AtomicU64,
    /// Jobs whose files a Google-shaped server wrote into its bucket.
    pub(crate) google_written: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    pub(crate) fn new(config: Config, dataset: Dataset, base: Url) -> Shared {
        Shared {
            faults: Mutex::new(config.faults.clone()),
            config,
            dataset,
            base,
            requests: Mutex::new(Vec::new()),
            jobs: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            next_request_id: AtomicU64::new(1),
            url_generation: AtomicU64::new(0),
            google_written: tokio::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Uses up one firing of the first fault that applies to `site`.
    pub(crate) fn take_fault(&self, site: &FaultSite<'_>) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let fault = faults
            .iter_mut()
            .find(|f| f.times > 0 && f.applies_to(site))?;
        fault.times -= 1;
        Some(fault.kind.clone())
    }

    /// A job that exists and has not been deleted.
    pub(crate) fn live_job(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.jobs)
            .get(id)
            .filter(|j| !j.is_deleted())
            .cloned()
    }

    /// A job, deleted or not.
    pub(crate) fn any_job(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.jobs).get(id).cloned()
    }
}

/// Builds an OperationOutcome JSON document with one issue.
pub(crate) fn outcome_json(severity: &str, code: &str, diagnostics: &str) -> String {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }],
    })
    .to_string()
}

/// An error answer: `status` with an OperationOutcome body.
pub(crate) fn outcome(status: StatusCode, code: &str, diagnostics: &str) -> Response {
    let severity = if status.is_success() {
        "information"
    } else {
        "error"
    };
    (
        status,
        [(CONTENT_TYPE, FHIR_JSON)],
        outcome_json(severity, code, diagnostics),
    )
        .into_response()
}

/// Sets a header if `value` is a valid header value.
pub(crate) fn set_header(response: &mut Response, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// The answer to a status-code fault, or `None` for a body fault.
pub(crate) fn fault_response(kind: &FaultKind) -> Option<Response> {
    match kind {
        FaultKind::Status(code) => {
            let status = StatusCode::from_u16(*code)
                .ok()
                .filter(|s| (200..600).contains(&s.as_u16()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let issue = match status.as_u16() {
                502..=504 => "transient",
                429 => "throttled",
                _ => "exception",
            };
            Some(outcome(
                status,
                issue,
                &format!("Injected fault: HTTP {}", status.as_u16()),
            ))
        }
        FaultKind::TooManyRequests {
            retry_after,
            diagnostics,
        } => {
            let mut response = outcome(StatusCode::TOO_MANY_REQUESTS, "throttled", diagnostics);
            if let Some(value) = retry_after {
                set_header(&mut response, axum::http::header::RETRY_AFTER, value);
            }
            Some(response)
        }
        FaultKind::DropAfter(_) | FaultKind::Trickle { .. } | FaultKind::Stall(_) => None,
    }
}

// ---------------------------------------------------------------------------
// Routing

fn kickoff_routes(
    router: Router<Arc<Shared>>,
    path: &str,
    method_router: &MethodRouter<Arc<Shared>>,
) -> Router<Arc<Shared>> {
    // Clients may send `$export` literally or percent-encoded.
    router
        .route(&format!("{path}/$export"), method_router.clone())
        .route(&format!("{path}/%24export"), method_router.clone())
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let kickoff = get(jobs::kickoff).post(jobs::kickoff);
    let mut router = Router::new();
    for path in ["/fhir", "/fhir/Patient", "/fhir/Group/{group_id}"] {
        router = kickoff_routes(router, path, &kickoff);
    }
    router
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/jobs/{id}", get(jobs::status).delete(jobs::delete))
        // Google-shaped servers answer `operations/{id}` as the Content-Location.
        .route(
            "/fhir/operations/{id}",
            get(jobs::status).delete(jobs::delete),
        )
        .route("/fhir/files/{job}/{name}", get(files::download))
        .route("/fhir/Binary/{id}", get(super::attachments::binary))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_and_authorize,
        ))
        .with_state(shared)
}

/// `GET [base]/metadata`: a CapabilityStatement naming this server and its operations.
async fn metadata() -> Response {
    let body = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "date": "2026-01-01",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "software": {
            "name": "fhir-bulk test server",
            "version": env!("CARGO_PKG_VERSION"),
            "releaseDate": "2026-01-01"
        },
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "rest": [{
            "mode": "server",
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
            }],
            "resource": [
                {"type": "Patient", "operation": [{
                    "name": "patient-export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
                }]},
                {"type": "Group", "operation": [{
                    "name": "group-export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
                }]}
            ]
        }]
    });
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/fhir+json"),
    );
    response
}

async fn not_found() -> Response {
    outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such endpoint on this bulk data test server",
    )
}

async fn method_not_allowed() -> Response {
    outcome(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "Method not allowed on this endpoint",
    )
}

/// Records every request, then enforces the bearer token if one is required.
async fn record_and_authorize(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_REQUEST_BODY).await;
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.as_ref().cloned().unwrap_or_default(),
    };
    lock(&shared.requests).push(recorded);
    let Ok(body) = body else {
        return outcome(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
            "The request body could not be read or is too large",
        );
    };
    if let Some(token) = &shared.config.require_bearer {
        let authorized = parts
            .headers
            .get_all(axum::http::header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split_once(' ').is_some_and(|(scheme, credentials)| {
                    scheme.eq_ignore_ascii_case("bearer") && credentials.trim() == token
                })
            });
        if !authorized {
            let mut response = outcome(
                StatusCode::UNAUTHORIZED,
                "login",
                "A valid bearer access token is required",
            );
            set_header(&mut response, WWW_AUTHENTICATE, "Bearer realm=\"fhir\"");
            return response;
        }
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

// ---------------------------------------------------------------------------
// Connections

/// Lets a response body abort its connection once everything written so far
/// has reached the socket (see [`KillableIo`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnKill(Arc<AtomicBool>);

impl ConnKill {
    pub(crate) fn from_extensions(extensions: &Extensions) -> Option<ConnKill> {
        extensions.get::<ConnKill>().cloned()
    }

    pub(crate) fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A TCP stream whose `flush` fails once its [`ConnKill`] has been triggered.
///
/// hyper only flushes the socket after writing out everything it buffered, so
/// the bytes a body produced before triggering the kill are all on the wire
/// when the error makes hyper drop the connection.
#[derive(Debug)]
struct KillableIo {
    inner: TcpStream,
    kill: ConnKill,
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        if this.kill.is_triggered() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fault injection: connection dropped",
            )));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Resolves once `shutdown` turns true or its sender is gone.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts connections until `shutdown` turns true (or its sender is gone),
/// then lets open connections finish their in-flight responses.
///
/// Connections are tasks of a [`JoinSet`] owned by this future, so aborting
/// the task running it closes every connection at once.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn_shutdown = shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(
                        stream,
                        router.clone(),
                        conn_shutdown.clone(),
                    ));
                }
                // e.g. too many open files: back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            () = stop_requested(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, router: Router, mut shutdown: watch::Receiver<bool>) {
    let kill = ConnKill::default();
    let io = TokioIo::new(KillableIo {
        inner: stream,
        kill: kill.clone(),
    });
    let service = TowerToHyperService::new(router.layer(Extension(kill)));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    let mut connection = pin!(builder.serve_connection(io, service));
    tokio::select! {
        _ = connection.as_mut() => return,
        () = stop_requested(&mut shutdown) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// A body of one known chunk (used for small JSON answers that may carry a
/// body fault).
pub(crate) fn single_chunk(bytes: Bytes) -> files::Chunks {
    Box::new(std::iter::once(Ok(bytes)))
}
