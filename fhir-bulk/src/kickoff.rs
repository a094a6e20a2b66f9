//! Sending a kick-off request and reading its answer.

use crate::client::BulkClient;
use crate::error::{Error, Result};
use crate::job::{ExportJob, JobHandle};
use crate::outcome::OperationOutcome;
use crate::request::{ExportRequest, KickoffMethod};
use crate::secret::redact_url;
use crate::transport::{Call, request_ids};
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use url::Url;

/// Percent-encodes a query component, keeping the characters FHIR servers expect literally
/// (`,` separates list values, `:` and `/` appear in references and URLs) and encoding the
/// rest, `+` included (it would otherwise read as a space).
pub(crate) fn encode_query_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~,:/$*()'!@;".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The kick-off URL: the operation path joined to the base, with the query for GET.
pub(crate) fn kickoff_url(base: &Url, request: &ExportRequest) -> Result<Url> {
    let mut url = base
        .join(&request.operation_path())
        .map_err(|e| Error::InvalidRequest {
            parameter: "level".into(),
            message: format!("cannot build the kick-off URL: {e}"),
        })?;
    if request.method == KickoffMethod::Get {
        let query: Vec<String> = request
            .query_pairs()
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    encode_query_component(k),
                    encode_query_component(v)
                )
            })
            .collect();
        if !query.is_empty() {
            url.set_query(Some(&query.join("&")));
        }
    }
    Ok(url)
}

/// Resolves a kick-off answer's `Content-Location` to the status URL.
///
/// Absolute URLs are used as they are. A path starting with `/` is resolved against the base's
/// host. A relative path is resolved against the base, except when its first segment also
/// appears in the base path: then it is taken as relative to the API root in front of that
/// segment. Google Cloud Healthcare answers `projects/p/.../operations/123` for a base of
/// `https://healthcare.googleapis.com/v1/projects/p/.../fhir/`, meaning
/// `https://healthcare.googleapis.com/v1/projects/p/.../operations/123`.
pub(crate) fn resolve_status_url(base: &Url, location: &str) -> Option<Url> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    if let Ok(url) = Url::parse(location) {
        return matches!(url.scheme(), "http" | "https").then_some(url);
    }
    if location.starts_with('/') {
        return base.join(location).ok();
    }
    let first = location.split('/').next().unwrap_or_default();
    let segments: Vec<&str> = base
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    if let Some(at) = segments.iter().position(|s| *s == first && !s.is_empty()) {
        let mut root = base.clone();
        root.set_path(&format!("/{}/", segments[..at].join("/")).replace("//", "/"));
        return root.join(location).ok();
    }
    base.join(location).ok()
}

impl BulkClient {
    /// The request exactly as [`BulkClient::kick_off`] sends it: checked against the IG's
    /// rules and the client's [`ServerProfile`](crate::ServerProfile), with the profile's
    /// encodings and required parameters applied (see
    /// [`ServerProfile::prepare`](crate::ServerProfile::prepare)).
    pub fn prepare_request(&self, request: &ExportRequest) -> Result<ExportRequest> {
        self.inner.profile.prepare(request)
    }

    /// The URL [`BulkClient::kick_off`] sends `request` to: the operation joined to the base,
    /// with the query string for GET, after the server profile is applied. It is the very URL
    /// sent, query included, so log it with care when parameters are sensitive.
    ///
    /// ```
    /// use fhir_bulk::{BulkClient, ExportRequest, ServerProfile};
    /// let client = BulkClient::builder("https://ws.fhir.azurehealthcareapis.com")
    ///     .server_profile(ServerProfile::Microsoft)
    ///     .build()?;
    /// let request = ExportRequest::system().types(["Patient"]).until("2024-02-01T00:00:00Z");
    /// assert_eq!(
    ///     client.kickoff_url(&request)?.as_str(),
    ///     "https://ws.fhir.azurehealthcareapis.com/$export?_type=Patient&_till=2024-02-01T00:00:00Z"
    /// );
    /// # Ok::<(), fhir_bulk::Error>(())
    /// ```
    pub fn kickoff_url(&self, request: &ExportRequest) -> Result<Url> {
        kickoff_url(&self.inner.base, &self.prepare_request(request)?)
    }

    /// The HTTP method [`BulkClient::kick_off`] would use for `request` (the server profile
    /// applied): [`KickoffMethod::Post`] sends the parameters as a `Parameters` body.
    pub fn kickoff_method(&self, request: &ExportRequest) -> Result<KickoffMethod> {
        Ok(self.prepare_request(request)?.method)
    }

    /// Validates `request`, sends the kick-off, and returns the job to poll.
    ///
    /// Errors: [`Error::InvalidRequest`] before anything is sent (the IG's rules and the
    /// server profile's limits, see [`BulkClient::prepare_request`]);
    /// [`Error::ExportInProgress`] for a 429 (one export per client);
    /// [`Error::KickoffRejected`] for any other answer than `202 Accepted` with a
    /// `Content-Location`; [`Error::Auth`] for 401/403.
    pub async fn kick_off(&self, request: &ExportRequest) -> Result<ExportJob> {
        let request = &self.prepare_request(request)?;
        let inner = &self.inner;
        let url = kickoff_url(&inner.base, request)?;
        let method = match request.method {
            KickoffMethod::Get => Method::GET,
            KickoffMethod::Post => Method::POST,
        };
        // A POST body (patient ids) is re-sent on a 307/308 only within the trusted origins:
        // the transport's redirect policy checks every hop.
        let mut call = Call::new("the kick-off request", method, url.clone())
            .what("kick-off")
            .header(ACCEPT, "application/fhir+json");
        let prefer =
            HeaderValue::from_str(&request.prefer_header()).map_err(|e| Error::InvalidRequest {
                parameter: "Prefer".into(),
                message: e.to_string(),
            })?;
        call.headers.insert("prefer", prefer);
        if request.method == KickoffMethod::Post {
            let body =
                serde_json::to_vec(&request.parameters()).map_err(|e| Error::InvalidRequest {
                    parameter: "parameters".into(),
                    message: e.to_string(),
                })?;
            call = call.header(CONTENT_TYPE, "application/fhir+json");
            call.body = Some(Bytes::from(body));
        }
        call.idempotent = false;
        call.retry_throttled = false;
        let answer = inner.request(&call).await?;
        match answer.status {
            202 => {
                let location = answer.header("content-location").unwrap_or_default();
                let Some(status_url) = resolve_status_url(&inner.base, location) else {
                    let mut report = answer.error_response(inner);
                    report.body = Some(format!(
                        "202 Accepted without a usable Content-Location header (got {location:?}); \
                         the server did not say where to poll"
                    ));
                    return Err(Error::KickoffRejected(Box::new(report)));
                };
                let handle = JobHandle {
                    status_url,
                    kickoff_url: Some(redact_url(&url)),
                    kicked_off_at: Some(
                        crate::resource::Timestamp::from((inner.clock)()).to_string(),
                    ),
                    request_ids: request_ids(&answer.headers),
                    separate_export_status: request.separate_export_status,
                    request: Some(request.clone()),
                };
                let mut job = self.job(handle);
                job.kickoff_outcome = OperationOutcome::parse(&answer.body);
                Ok(job)
            }
            429 => Err(Error::ExportInProgress(Box::new(
                answer.error_response(inner),
            ))),
            401 | 403 => Err(inner.unexpected("the kick-off request", &answer)),
            _ => Err(Error::KickoffRejected(Box::new(
                answer.error_response(inner),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn query_encoding_keeps_commas_and_encodes_plus() {
        assert_eq!(
            encode_query_component("Patient,Observation"),
            "Patient,Observation"
        );
        assert_eq!(
            encode_query_component("2024-01-01T00:00:00+02:00"),
            "2024-01-01T00:00:00%2B02:00"
        );
        assert_eq!(
            encode_query_component("Observation?category=laboratory&status=final"),
            "Observation%3Fcategory%3Dlaboratory%26status%3Dfinal"
        );
        assert_eq!(encode_query_component("a b"), "a%20b");
    }

    #[test]
    fn kickoff_urls() {
        let base = url("https://ehr.example/r4/tenant/");
        let r = ExportRequest::group("g1").types(["Patient", "Condition"]);
        assert_eq!(
            kickoff_url(&base, &r).unwrap().as_str(),
            "https://ehr.example/r4/tenant/Group/g1/$export?_type=Patient,Condition"
        );
        let post = ExportRequest::all_patients().post().types(["Patient"]);
        assert_eq!(
            kickoff_url(&base, &post).unwrap().as_str(),
            "https://ehr.example/r4/tenant/Patient/$export"
        );
        assert_eq!(
            kickoff_url(&base, &ExportRequest::system())
                .unwrap()
                .as_str(),
            "https://ehr.example/r4/tenant/$export"
        );
    }

    #[test]
    fn status_url_resolution() {
        let base = url("https://ehr.example/r4/tenant/");
        assert_eq!(
            resolve_status_url(&base, "https://ehr.example/r4/tenant/bulk-export/jobs/1")
                .unwrap()
                .as_str(),
            "https://ehr.example/r4/tenant/bulk-export/jobs/1"
        );
        assert_eq!(
            resolve_status_url(&base, "bulk-export/jobs/1")
                .unwrap()
                .as_str(),
            "https://ehr.example/r4/tenant/bulk-export/jobs/1"
        );
        assert_eq!(
            resolve_status_url(&base, "/jobs/1").unwrap().as_str(),
            "https://ehr.example/jobs/1"
        );
        let google = url(
            "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/fhirStores/s/fhir/",
        );
        assert_eq!(
            resolve_status_url(
                &google,
                "projects/p/locations/l/datasets/d/fhirStores/s/operations/123"
            )
            .unwrap()
            .as_str(),
            "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/fhirStores/s/operations/123"
        );
        assert_eq!(resolve_status_url(&base, ""), None);
        assert_eq!(resolve_status_url(&base, "ftp://x/y"), None);
    }
}
