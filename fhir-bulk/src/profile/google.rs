//! Google Cloud Healthcare API (seed 003, spec digest §6): `GET [store]/fhir/$export` and
//! `GET [store]/fhir/Group/{id}/$export` only (no Patient/$export, empty body); `Accept:
//! application/fhir+json`; `_type`, `_since`, `_outputFormat` (`ndjson`) and `organizeOutputBy`,
//! which a Group export requires and which must be `Patient`; the status URL is a relative
//! `projects/…/operations/{id}` name; the files are written to the FHIR store's
//! `bulkExportGcsDestination` bucket and listed as `gs://` URLs; DELETE only cancels a running
//! job and answers an error for one that finished.

use super::Encodings;
use crate::error::Result;
use crate::job::DeleteOutcome;
use crate::poll::PollPolicy;
use crate::request::{
    AssociatedDataEncoding, ExportLevel, ExportRequest, KickoffMethod, ListEncoding,
};
use crate::validate::invalid;
use std::time::Duration;

/// The only `Accept` Google takes.
pub(super) const ACCEPT: &str = "application/fhir+json";

/// Comma-joined `_type` (a POST is refused, not rewritten).
pub(super) const ENCODINGS: Encodings = Encodings {
    method: None,
    list: ListEncoding::CommaJoined,
    type_filter: ListEncoding::CommaJoined,
    associated_data: AssociatedDataEncoding::Code,
    until_parameter: "_until",
};

/// No `Retry-After` is documented: a short start, the default growth.
pub(super) fn poll_policy() -> PollPolicy {
    PollPolicy::default().with_initial_delay(Duration::from_secs(5))
}

/// A 400 to DELETE: the operation is no longer running, so there is nothing to cancel (the
/// files stay in the bucket, which the user owns).
pub(super) fn delete_400() -> Option<DeleteOutcome> {
    Some(DeleteOutcome::AlreadyGone)
}

/// Advice for a `gs://` file URL.
pub(super) fn gs_advice(google: bool) -> String {
    let mut text = String::from(
        "the file is in Google Cloud Storage: read it through the Cloud Storage API with a \
         Google OAuth token (cloud-platform scope), not with the FHIR server's token",
    );
    if google {
        text.push_str(
            "; the Cloud Healthcare API writes exports to the FHIR store's \
             bulkExportGcsDestination bucket, so the account needs read access there",
        );
    }
    text
}

/// Adds `organizeOutputBy=Patient` to a Group export and checks Google's limits.
pub(super) fn prepare(r: &mut ExportRequest) -> Result<()> {
    match (&r.level, r.organize_output_by.as_deref()) {
        (ExportLevel::AllPatients, _) => {
            return Err(invalid(
                "level",
                "the Google Cloud Healthcare API has no Patient/$export; use a Group export \
                 or a system-level export",
            ));
        }
        (ExportLevel::Group(_), None) => r.organize_output_by = Some("Patient".to_owned()),
        (_, Some(by)) if by != "Patient" => {
            return Err(invalid(
                "organizeOutputBy",
                format!(
                    "the Google Cloud Healthcare API organizes output only by `Patient` (and \
                     requires it on Group exports); `{by}` would be refused"
                ),
            ));
        }
        _ => {}
    }
    if r.method == KickoffMethod::Post || !r.patients.is_empty() {
        return Err(invalid(
            "method",
            "the Google Cloud Healthcare API takes GET kick-offs only (the body must be empty), \
             so `patient` cannot be sent; drop `.post()` and list the patients in a Group",
        ));
    }
    if let Some(format) = &r.output_format
        && format != "ndjson"
    {
        return Err(invalid(
            "_outputFormat",
            format!("the Google Cloud Healthcare API takes only `ndjson`, not `{format}`"),
        ));
    }
    if !r.lenient {
        let unsupported = [
            ("_until", r.until.is_some()),
            ("_elements", !r.elements.is_empty()),
            ("_typeFilter", !r.type_filters.is_empty()),
            (
                "includeAssociatedData",
                !r.include_associated_data.is_empty(),
            ),
            ("allowPartialManifests", r.allow_partial_manifests.is_some()),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(invalid(
                name,
                "the Google Cloud Healthcare API does not support it (only `_type`, `_since`, \
                 `_outputFormat` and `organizeOutputBy`); drop it or send the request as lenient",
            ));
        }
        if let Some((name, _)) = r.extra.first() {
            return Err(invalid(
                name,
                format!(
                    "the Google Cloud Healthcare API does not document `{name}`; drop it or send the request as lenient"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Error, ExportRequest, ServerProfile};

    fn parameter_of(r: &ExportRequest) -> String {
        match ServerProfile::GoogleCloudHealthcare.prepare(r) {
            Err(Error::InvalidRequest { parameter, .. }) => parameter,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn group_export_is_organized_by_patient() {
        let google = ServerProfile::GoogleCloudHealthcare;
        let sent = google
            .prepare(&ExportRequest::group("g").types(["Patient", "Encounter"]))
            .unwrap();
        assert_eq!(sent.organize_output_by.as_deref(), Some("Patient"));
        let explicit = google
            .prepare(&ExportRequest::group("g").organize_output_by("Patient"))
            .unwrap();
        assert_eq!(explicit.organize_output_by.as_deref(), Some("Patient"));
        // A system export is sent as asked.
        let system = google.prepare(&ExportRequest::system()).unwrap();
        assert_eq!(system.organize_output_by, None);
        let err = google
            .prepare(&ExportRequest::group("g").organize_output_by("Encounter"))
            .unwrap_err();
        assert!(err.to_string().contains("only by `Patient`"), "{err}");
    }

    #[test]
    fn limits() {
        assert_eq!(parameter_of(&ExportRequest::all_patients()), "level");
        assert_eq!(parameter_of(&ExportRequest::group("g").post()), "method");
        assert_eq!(
            parameter_of(&ExportRequest::group("g").output_format("application/fhir+ndjson")),
            "_outputFormat"
        );
        assert_eq!(
            parameter_of(&ExportRequest::group("g").type_filter("Patient?active=true")),
            "_typeFilter"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().param("_container", "x")),
            "_container"
        );
        let _ = ServerProfile::GoogleCloudHealthcare
            .prepare(
                &ExportRequest::system()
                    .types(["Patient"])
                    .since("2024-01-01T00:00:00.000+00:00")
                    .output_format("ndjson"),
            )
            .unwrap();
    }
}
