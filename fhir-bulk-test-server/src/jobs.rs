//! Export jobs: kick-off, status polling, manifests and deletion.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::header::{CONTENT_LOCATION, CONTENT_TYPE, EXPIRES, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::config::FaultSite;
use super::data::{Content, Instant, Kind, chunk_ranges, mix};
use super::files::{Chunks, stream_body};
use super::server::{
    ConnKill, FHIR_JSON, Shared, fault_response, lock, outcome, outcome_json, set_header,
    single_chunk,
};

/// How long a completed manifest's links are advertised as valid.
const MANIFEST_LIFETIME: Duration = Duration::from_secs(3600);

const X_PROGRESS: HeaderName = HeaderName::from_static("x-progress");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The manifest array a file is listed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Output,
    Error,
    Deleted,
}

/// One file of a job.
#[derive(Debug)]
pub(crate) struct FileSpec {
    pub(crate) name: String,
    pub(crate) section: Section,
    /// `type` in the manifest (absent for patient-organised output).
    pub(crate) resource_type: Option<&'static str>,
    pub(crate) content: Content,
    /// Number of lines.
    pub(crate) count: u64,
    /// Identity length in bytes.
    pub(crate) len: u64,
    /// Strong ETag of the identity representation (quoted).
    pub(crate) etag: String,
    /// Name of the file a patient block split at the end of this one
    /// continues in.
    pub(crate) continues_in: Option<String>,
    /// Index in the manifest's `output` array.
    pub(crate) output_index: Option<usize>,
    /// Length of the gzip representation, computed on first need.
    pub(crate) gzip_len: OnceLock<u64>,
}

impl FileSpec {
    /// Strong ETag of the gzip representation (quoted).
    pub(crate) fn gzip_etag(&self) -> String {
        format!("{}-gzip\"", self.etag.trim_end_matches('"'))
    }
}

/// A file of a job before it is measured.
struct Planned {
    name: String,
    section: Section,
    resource_type: Option<&'static str>,
    content: Content,
    continues_in: Option<String>,
}

/// An export job.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: String,
    /// The kick-off request URL, echoed as the manifest's `request`.
    request: String,
    transaction_time: String,
    organized: bool,
    pub(crate) files: Vec<Arc<FileSpec>>,
    polls: AtomicU64,
    deleted: AtomicBool,
    /// Whether the kick-off asked for partial manifests.
    allow_partial: bool,
}

impl Job {
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    pub(crate) fn file(&self, name: &str) -> Option<Arc<FileSpec>> {
        self.files.iter().find(|f| f.name == name).cloned()
    }

    fn create(
        shared: &Shared,
        id: String,
        request: String,
        types: &[usize],
        organized: bool,
        allow_partial: bool,
    ) -> Job {
        let ds = &shared.dataset;
        let mut planned: Vec<Planned> = Vec::new();
        if organized {
            let block = ds.block_size(types);
            let total = ds.patients().saturating_mul(block);
            let ranges = chunk_ranges(total, ds.max_per_file().unwrap_or(total));
            let types: Arc<[usize]> = types.into();
            for (i, &(start, end)) in ranges.iter().enumerate() {
                let continues =
                    (end < total && end % block != 0).then(|| format!("patients.{}.ndjson", i + 2));
                planned.push(Planned {
                    name: format!("patients.{}.ndjson", i + 1),
                    section: Section::Output,
                    resource_type: None,
                    content: Content::Organized {
                        types: types.clone(),
                        start,
                        end,
                    },
                    continues_in: continues,
                });
            }
        } else {
            for &ty in types {
                let Some(t) = ds.types().get(ty) else {
                    continue;
                };
                for (i, (start, end)) in ds.type_ranges(ty).into_iter().enumerate() {
                    planned.push(Planned {
                        name: format!("{}.{}.ndjson", t.kind.name(), i + 1),
                        section: Section::Output,
                        resource_type: Some(t.kind.name()),
                        content: Content::Type { ty, start, end },
                        continues_in: None,
                    });
                }
            }
        }
        let kinds: Arc<[Kind]> = types
            .iter()
            .filter_map(|&t| ds.types().get(t).map(|t| t.kind))
            .collect();
        if !shared.config.error_severities.is_empty() {
            planned.push(Planned {
                name: "errors.ndjson".into(),
                section: Section::Error,
                resource_type: Some("OperationOutcome"),
                content: Content::Errors {
                    severities: shared.config.error_severities.clone().into(),
                    types: kinds.clone(),
                },
                continues_in: None,
            });
        }
        if shared.config.deleted > 0 {
            planned.push(Planned {
                name: "deleted.ndjson".into(),
                section: Section::Deleted,
                resource_type: Some("Bundle"),
                content: Content::Deleted {
                    count: shared.config.deleted,
                    types: kinds,
                },
                continues_in: None,
            });
        }
        let mut output_index = 0;
        let files = planned
            .into_iter()
            .map(|planned| {
                let Planned {
                    name,
                    section,
                    resource_type,
                    content,
                    continues_in,
                } = planned;
                let (len, count) = ds.lines(&content).measure();
                let etag = format!(
                    "\"{:016x}\"",
                    fnv1a(format!("{}|{name}|{len}|{content:?}", ds.seed()).as_bytes())
                );
                let index = (section == Section::Output).then(|| {
                    output_index += 1;
                    output_index - 1
                });
                Arc::new(FileSpec {
                    name,
                    section,
                    resource_type,
                    content,
                    count,
                    len,
                    etag,
                    continues_in,
                    output_index: index,
                    gzip_len: OnceLock::new(),
                })
            })
            .collect();
        Job {
            id,
            request,
            transaction_time: Instant(now_millis()).to_string(),
            organized,
            files,
            polls: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            allow_partial,
        }
    }

    /// The completion manifest, with file URLs of the current generation.
    fn manifest(&self, shared: &Shared) -> Value {
        self.manifest_of(shared, self.files.len())
    }

    /// The manifest listing only the first `ready` files (a partial manifest when fewer than
    /// all).
    fn manifest_of(&self, shared: &Shared, ready: usize) -> Value {
        let generation = shared.url_generation.load(Ordering::SeqCst);
        let google = shared.config.google.as_ref();
        let url = |name: &str| {
            if let (Some(shape), Some(file)) = (google, self.file(name)) {
                return shape.gs_url(&self.id, &file);
            }
            let mut url = format!("{}files/{}/{name}", shared.base, self.id);
            if generation > 0 {
                url.push_str(&format!("?gen={generation}"));
            }
            url
        };
        let entries = |section: Section| -> Vec<Value> {
            self.files
                .iter()
                .take(ready)
                .filter(|f| f.section == section)
                .map(|f| {
                    let mut entry = json!({ "url": url(&f.name), "count": f.count });
                    if let Some(t) = f.resource_type {
                        entry["type"] = json!(t);
                    }
                    if let Some(next) = &f.continues_in {
                        entry["continuesInFile"] = json!(url(next));
                    }
                    entry
                })
                .collect()
        };
        let mut manifest = json!({
            "transactionTime": self.transaction_time,
            "request": self.request,
            "requiresAccessToken": shared.config.requires_access_token,
            "output": entries(Section::Output),
            "error": entries(Section::Error),
        });
        let deleted = entries(Section::Deleted);
        if !deleted.is_empty() {
            manifest["deleted"] = json!(deleted);
        }
        if self.organized {
            manifest["outputOrganizedBy"] = json!("Patient");
        }
        manifest
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn bad_request(code: &str, diagnostics: &str) -> Response {
    outcome(StatusCode::BAD_REQUEST, code, diagnostics)
}

fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Collects `(name, value)` pairs from a `Parameters` resource.
fn parameters_body(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("The request body is not JSON: {e}"))?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err("The request body must be a FHIR Parameters resource".into());
    }
    let mut pairs = Vec::new();
    let parameters = value.get("parameter").and_then(Value::as_array);
    for parameter in parameters.into_iter().flatten() {
        let Some(name) = parameter.get("name").and_then(Value::as_str) else {
            return Err("Every Parameters.parameter needs a name".into());
        };
        let Some(object) = parameter.as_object() else {
            continue;
        };
        for (key, value) in object {
            if !key.starts_with("value") {
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("reference")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                other => other.to_string(),
            };
            pairs.push((name.to_owned(), text));
        }
    }
    Ok(pairs)
}

/// `GET`/`POST` `[base]/$export`, `[base]/Patient/$export`,
/// `[base]/Group/{id}/$export`.
pub(crate) async fn kickoff(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let kill = ConnKill::from_extensions(&parts.extensions);
    if !prefers_async(&parts.headers) {
        return bad_request(
            "invalid",
            "Bulk export requires the header 'Prefer: respond-async'",
        );
    }
    let mut params: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    if parts.method == Method::POST {
        // The recording middleware already read (and size-checked) the body.
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        if !body.iter().all(u8::is_ascii_whitespace) {
            match parameters_body(&body) {
                Ok(pairs) => params.extend(pairs),
                Err(msg) => return bad_request("invalid", &msg),
            }
        }
    }

    let ds = &shared.dataset;
    let mut types: Vec<usize> = Vec::new();
    let mut type_given = false;
    let mut organized = false;
    let mut allow_partial = false;
    for (name, value) in &params {
        match name.as_str() {
            "allowPartialManifests" => allow_partial = value == "true",
            "_type" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    type_given = true;
                    match ds.type_index(t) {
                        Some(i) if !types.contains(&i) => types.push(i),
                        Some(_) => {}
                        None => {
                            return bad_request(
                                "not-supported",
                                &format!(
                                    "Resource type '{t}' in _type is not supported by this server"
                                ),
                            );
                        }
                    }
                }
            }
            "_outputFormat"
                if !matches!(
                    value.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) =>
            {
                return bad_request(
                    "not-supported",
                    &format!(
                        "_outputFormat '{value}' is not supported; use application/fhir+ndjson"
                    ),
                );
            }
            "organizeOutputBy" => {
                if value == "Patient" {
                    organized = true;
                } else if !value.is_empty() {
                    return bad_request(
                        "not-supported",
                        &format!("organizeOutputBy '{value}' is not supported; only 'Patient' is"),
                    );
                }
            }
            _ => {}
        }
    }
    if shared.config.google.is_some()
        && let Some(diagnostics) = super::google::refuse_kickoff(parts.uri.path(), organized)
    {
        return bad_request("required", diagnostics);
    }
    if type_given {
        // Keep the server's export order whatever order _type lists.
        types.sort_unstable();
    } else {
        types = (0..ds.types().len()).collect();
    }

    let mut body_fault = None;
    if let Some(kind) = shared.take_fault(&FaultSite::Kickoff) {
        if let Some(response) = fault_response(&kind) {
            return response;
        }
        body_fault = Some(kind);
    }

    let number = shared.next_job.fetch_add(1, Ordering::SeqCst);
    let id = format!("job-{number}-{:08x}", mix(ds.seed() ^ number) as u32);
    let request_url = shared.base.origin().ascii_serialization()
        + parts.uri.path_and_query().map_or("", |pq| pq.as_str());
    let job = Arc::new(Job::create(
        &shared,
        id.clone(),
        request_url,
        &types,
        organized,
        allow_partial && shared.config.partial_manifests,
    ));
    lock(&shared.jobs).insert(id.clone(), job);

    let request_id = parts
        .headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "req-{}",
                shared.next_request_id.fetch_add(1, Ordering::SeqCst)
            )
        });
    let body = Bytes::from(outcome_json(
        "information",
        "informational",
        &format!("Export job {id} accepted"),
    ));
    let mut response = json_response(StatusCode::ACCEPTED, body, body_fault, kill);
    let location = match &shared.config.google {
        // Google answers a relative operations name.
        Some(_) => format!("operations/{id}"),
        None => format!("{}jobs/{id}", shared.base),
    };
    set_header(&mut response, CONTENT_LOCATION, &location);
    set_header(&mut response, X_REQUEST_ID, &request_id);
    response
}

fn json_response(
    status: StatusCode,
    body: Bytes,
    fault: Option<super::config::FaultKind>,
    kill: Option<ConnKill>,
) -> Response {
    let len = body.len();
    let chunks: Chunks = single_chunk(body);
    let mut response = Response::new(stream_body(chunks, fault, kill));
    *response.status_mut() = status;
    set_header(&mut response, CONTENT_TYPE, FHIR_JSON);
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_LENGTH, len.into());
    response
}

fn job_not_found(id: &str) -> Response {
    outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!("Export job '{id}' does not exist or was deleted"),
    )
}

/// `GET [base]/jobs/{id}`.
pub(crate) async fn status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let kill = ConnKill::from_extensions(request.extensions());
    let Some(job) = shared.live_job(&id) else {
        return job_not_found(&id);
    };
    let mut body_fault = None;
    if let Some(kind) = shared.take_fault(&FaultSite::Status) {
        if let Some(response) = fault_response(&kind) {
            return response;
        }
        body_fault = Some(kind);
    }
    let config = &shared.config;
    let poll = job.polls.fetch_add(1, Ordering::SeqCst);
    if poll < u64::from(config.polls_before_complete) {
        let mut response = if job.allow_partial {
            let total = job.files.len() as u64;
            let ready = (total * (poll + 1)).div_ceil(u64::from(config.polls_before_complete) + 1);
            let body = job.manifest_of(&shared, usize::try_from(ready).unwrap_or(usize::MAX));
            let mut response = json_response(
                StatusCode::ACCEPTED,
                Bytes::from(body.to_string()),
                body_fault,
                kill,
            );
            set_header(&mut response, CONTENT_TYPE, "application/json");
            response
        } else {
            match body_fault {
                None => Response::new(axum::body::Body::empty()),
                fault => Response::new(stream_body(Box::new(std::iter::empty()), fault, kill)),
            }
        };
        *response.status_mut() = StatusCode::ACCEPTED;
        let progress = usize::try_from(poll)
            .ok()
            .and_then(|p| config.x_progress.get(p).or(config.x_progress.last()));
        if let Some(progress) = progress {
            set_header(&mut response, X_PROGRESS, progress);
        }
        if let Some(retry_after) = &config.retry_after {
            set_header(&mut response, RETRY_AFTER, retry_after);
        }
        return response;
    }
    if let Err(diagnostics) = super::google::write_objects(&shared, &job.id).await {
        return outcome(StatusCode::INTERNAL_SERVER_ERROR, "exception", &diagnostics);
    }
    let body = Bytes::from(job.manifest(&shared).to_string());
    let mut response = json_response(StatusCode::OK, body, body_fault, kill);
    set_header(&mut response, CONTENT_TYPE, "application/json");
    set_header(
        &mut response,
        EXPIRES,
        &httpdate::fmt_http_date(SystemTime::now() + MANIFEST_LIFETIME),
    );
    response
}

/// `DELETE [base]/jobs/{id}`.
pub(crate) async fn delete(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.live_job(&id) {
        Some(job) if !job.deleted.swap(true, Ordering::SeqCst) => outcome(
            StatusCode::ACCEPTED,
            "informational",
            &format!("Export job {id} deleted"),
        ),
        _ => job_not_found(&id),
    }
}
