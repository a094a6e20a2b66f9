//! The Google Cloud Healthcare API's shape of `$export` (seed 003), for
//! [`TestServerBuilder::google_shaped`](super::TestServerBuilder::google_shaped).
//!
//! - `Group/{id}/$export` requires `organizeOutputBy=Patient`: without it
//!   (or with another value) the kick-off gets `400` with an OperationOutcome.
//! - The kick-off's `Content-Location` is a relative operations URL,
//!   `operations/{export_id}` (resolved against the FHIR base, it is served at
//!   `[base]/operations/{export_id}`).
//! - The status answers `202` with `X-Progress` while the job runs, then `200`
//!   with a manifest whose `output[].url` are `gs://bucket/dir/{export_id}_{Type}.ndjson`
//!   objects, which the server wrote into the Cloud Storage endpoint it was
//!   given (the FHIR store's `bulkExportGcsDestination`) through the JSON
//!   API's media upload before answering, as Google does; a failed write
//!   answers `500` with an OperationOutcome.

use std::io;

use url::Url;

use super::jobs::{FileSpec, Section};
use super::server::{Shared, lock};

/// Where a Google-shaped server writes an export: a Cloud Storage JSON API
/// endpoint and the `gs://bucket/dir` destination in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoogleShape {
    pub(crate) storage_endpoint: Url,
    pub(crate) bucket: String,
    pub(crate) dir: String,
}

impl GoogleShape {
    /// `storage_endpoint`: the base URL of a Cloud Storage JSON API (e.g.
    /// fake-gcs-server's `http://127.0.0.1:PORT`); `destination`: the store's
    /// `bulkExportGcsDestination`, `gs://bucket/dir` (the bucket must exist).
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] for an endpoint that is not
    /// an http(s) URL or a destination that is not `gs://bucket[/dir]`.
    pub fn new(storage_endpoint: &str, destination: &str) -> io::Result<GoogleShape> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let endpoint = Url::parse(storage_endpoint.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| invalid(format!("`{storage_endpoint}` is not an http(s) URL")))?;
        let rest = destination
            .trim()
            .strip_prefix("gs://")
            .ok_or_else(|| invalid(format!("`{destination}` is not a gs://bucket/dir URL")))?;
        let (bucket, dir) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("`{destination}` names no bucket")));
        }
        Ok(GoogleShape {
            storage_endpoint: endpoint,
            bucket: bucket.to_owned(),
            dir: dir.trim_matches('/').to_owned(),
        })
    }

    /// The object name of a job's file: `dir/{export_id}_{Type}.ndjson`
    /// (`_{Type}_{N}` from a type's second file on).
    pub(crate) fn object_name(&self, job_id: &str, file: &FileSpec) -> String {
        let kind = match file.section {
            Section::Output => file.resource_type.unwrap_or("Patient"),
            Section::Error => "OperationOutcome",
            Section::Deleted => "Deleted",
        };
        let number = file
            .name
            .strip_suffix(".ndjson")
            .and_then(|stem| stem.rsplit_once('.'))
            .and_then(|(_, n)| n.parse::<u64>().ok())
            .filter(|n| *n > 1);
        let name = match number {
            Some(n) => format!("{job_id}_{kind}_{n}.ndjson"),
            None => format!("{job_id}_{kind}.ndjson"),
        };
        if self.dir.is_empty() {
            name
        } else {
            format!("{}/{name}", self.dir)
        }
    }

    /// The manifest URL of a job's file: `gs://bucket/dir/{export_id}_{Type}.ndjson`.
    pub(crate) fn gs_url(&self, job_id: &str, file: &FileSpec) -> String {
        format!("gs://{}/{}", self.bucket, self.object_name(job_id, file))
    }
}

/// A kick-off Google would refuse: a Group export without
/// `organizeOutputBy=Patient`. The diagnostics, if refused.
pub(crate) fn refuse_kickoff(path: &str, organized: bool) -> Option<&'static str> {
    (path.contains("/Group/") && !organized)
        .then_some("organizeOutputBy is required for a Group export and must be set to Patient")
}

/// Writes every file of job `job_id` into the bucket, once per job (later
/// calls return at once). The error says which object could not be written.
pub(crate) async fn write_objects(shared: &Shared, job_id: &str) -> Result<(), String> {
    let Some(shape) = &shared.config.google else {
        return Ok(());
    };
    let mut written = shared.google_written.lock().await;
    if written.contains(job_id) {
        return Ok(());
    }
    let Some(job) = shared.any_job(job_id) else {
        return Err(format!("export {job_id} does not exist"));
    };
    let client = reqwest::Client::new();
    for file in &job.files {
        let name = shape.object_name(job_id, file);
        let mut body = Vec::with_capacity(usize::try_from(file.len).unwrap_or(0));
        for line in shared.dataset.lines(&file.content) {
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        let mut url = shape.storage_endpoint.clone();
        let path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{path}/upload/storage/v1/b/{}/o", shape.bucket));
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", &name);
        let answer = client
            .post(url)
            .header("content-type", "application/fhir+ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("writing gs://{}/{name} failed: {e}", shape.bucket))?;
        if !answer.status().is_success() {
            return Err(format!(
                "writing gs://{}/{name} failed: HTTP {}",
                shape.bucket,
                answer.status().as_u16()
            ));
        }
    }
    written.insert(job_id.to_owned());
    Ok(())
}

/// The job id and file name of a `gs://` URL this server listed, if any.
pub(crate) fn find_file(shared: &Shared, gs_url: &str) -> Option<(String, String)> {
    let shape = shared.config.google.as_ref()?;
    let jobs = lock(&shared.jobs);
    jobs.iter().find_map(|(id, job)| {
        job.files
            .iter()
            .find(|f| shape.gs_url(id, f) == gs_url)
            .map(|f| (id.clone(), f.name.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        let shape = GoogleShape::new("http://127.0.0.1:4443", "gs://bkt/exports/run/").unwrap();
        assert_eq!(shape.bucket, "bkt");
        assert_eq!(shape.dir, "exports/run");
        assert!(GoogleShape::new("ftp://x", "gs://b/d").is_err());
        assert!(GoogleShape::new("http://x", "s3://b/d").is_err());
        assert!(GoogleShape::new("http://x", "gs:///d").is_err());
        assert!(refuse_kickoff("/fhir/Group/g/$export", false).is_some());
        assert!(refuse_kickoff("/fhir/Group/g/$export", true).is_none());
        assert!(refuse_kickoff("/fhir/$export", false).is_none());
    }
}
