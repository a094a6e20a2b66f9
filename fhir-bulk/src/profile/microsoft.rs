//! Microsoft: Azure Health Data Services FHIR service and the OSS microsoft/fhir-server
//! (spec digest §6): GET only, at every level; `_till` instead of `_until`; `_typeFilter`
//! needs `_type`; `includeAssociatedData` takes only `_history` and `_deleted`, not beside
//! `_typeFilter`; its own `_container`, `_isParallel`, `_maxCount` and anonymization parameters;
//! any other parameter is a 400, lenient or not. 202 answers carry no `Retry-After`; throttled
//! answers carry `x-ms-retry-after-ms`. After a DELETE the job answers 200 with the manifest of
//! what was written so far. Files are Azure Blob URLs marked `requiresAccessToken: false` that
//! need Azure Storage credentials.

use super::{Encodings, RetryAfterHint};
use crate::error::Result;
use crate::request::{AssociatedDataEncoding, ExportRequest, KickoffMethod, ListEncoding};
use crate::validate::invalid;
use std::time::Duration;

/// Comma-joined lists, `_till` (a POST is refused, not rewritten).
pub(super) const ENCODINGS: Encodings = Encodings {
    method: None,
    list: ListEncoding::CommaJoined,
    type_filter: ListEncoding::CommaJoined,
    associated_data: AssociatedDataEncoding::Code,
    until_parameter: "_till",
};

/// The vendor parameters the server accepts besides the IG's.
const OWN_PARAMETERS: [&str; 6] = [
    "_container",
    "_isParallel",
    "_maxCount",
    "_anonymizationConfig",
    "_anonymizationConfigCollectionReference",
    "_anonymizationConfigEtag",
];

/// `includeAssociatedData` codes it takes.
const ASSOCIATED_DATA: [&str; 2] = ["_history", "_deleted"];

/// `x-ms-retry-after-ms`: always milliseconds.
pub(super) fn retry_after_ms<'h>(
    header: &impl Fn(&str) -> Option<&'h str>,
) -> Option<RetryAfterHint> {
    let value = header("x-ms-retry-after-ms")?.trim();
    let ms: u64 = value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse().ok())
        .flatten()?;
    Some(RetryAfterHint {
        delay: Duration::from_millis(ms),
        source: "x-ms-retry-after-ms",
    })
}

/// Azure Blob Storage and Data Lake hosts.
pub(super) fn is_azure_storage_host(host: &str) -> bool {
    host.ends_with(".blob.core.windows.net") || host.ends_with(".dfs.core.windows.net")
}

/// Advice for an Azure Storage file URL.
pub(super) fn azure_storage_advice() -> String {
    "the file is in Azure Storage: the FHIR service marks it `requiresAccessToken: false`, but \
     reading it needs Azure Storage credentials (an Entra ID token with a storage role, or a \
     SAS), not the FHIR token"
        .to_owned()
}

pub(super) fn check(r: &ExportRequest) -> Result<()> {
    const WHY: &str = "the Microsoft FHIR service refuses any parameter it does not know (400), \
                       lenient or not";
    if r.method == KickoffMethod::Post || !r.patients.is_empty() {
        return Err(invalid(
            "method",
            "the Microsoft FHIR service takes GET kick-offs only, so `patient` cannot be sent; \
             drop `.post()` and export a Group",
        ));
    }
    let unsupported = [
        ("_elements", !r.elements.is_empty()),
        ("organizeOutputBy", r.organize_output_by.is_some()),
        ("allowPartialManifests", r.allow_partial_manifests.is_some()),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, used)| *used) {
        return Err(invalid(name, format!("{WHY}; drop `{name}`")));
    }
    if !r.type_filters.is_empty() && r.types.is_empty() {
        return Err(invalid(
            "_typeFilter",
            "the Microsoft FHIR service needs `_type` whenever `_typeFilter` is given",
        ));
    }
    for code in &r.include_associated_data {
        if !ASSOCIATED_DATA.contains(&code.as_str()) {
            return Err(invalid(
                "includeAssociatedData",
                format!(
                    "the Microsoft FHIR service takes only `_history` and `_deleted`, not \
                     `{code}`"
                ),
            ));
        }
    }
    if !r.include_associated_data.is_empty() && !r.type_filters.is_empty() {
        return Err(invalid(
            "includeAssociatedData",
            "the Microsoft FHIR service cannot combine includeAssociatedData with `_typeFilter`",
        ));
    }
    for (name, _) in &r.extra {
        if !OWN_PARAMETERS.contains(&name.as_str()) {
            return Err(invalid(
                name,
                format!(
                    "{WHY}; its own parameters are {}",
                    OWN_PARAMETERS.join(", ")
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
        match ServerProfile::Microsoft.prepare(r) {
            Err(Error::InvalidRequest { parameter, .. }) => parameter,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn until_is_sent_as_till() {
        let sent = ServerProfile::Microsoft
            .prepare(
                &ExportRequest::system()
                    .types(["Patient", "Observation"])
                    .since("2024-01-01T00:00:00Z")
                    .until("2024-02-01T00:00:00Z")
                    .param("_container", "exports"),
            )
            .unwrap();
        assert_eq!(
            sent.query_pairs(),
            [
                ("_type", "Patient,Observation"),
                ("_since", "2024-01-01T00:00:00Z"),
                ("_till", "2024-02-01T00:00:00Z"),
                ("_container", "exports"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn limits() {
        assert_eq!(parameter_of(&ExportRequest::system().post()), "method");
        assert_eq!(
            parameter_of(&ExportRequest::system().elements(["id"])),
            "_elements"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().type_filter("Patient?active=true")),
            "_typeFilter"
        );
        assert_eq!(
            parameter_of(
                &ExportRequest::system().include_associated_data("LatestProvenanceResources")
            ),
            "includeAssociatedData"
        );
        assert_eq!(
            parameter_of(
                &ExportRequest::system()
                    .types(["Patient"])
                    .type_filter("Patient?active=true")
                    .include_associated_data("_history")
            ),
            "includeAssociatedData"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().param("_foo", "1").lenient(true)),
            "_foo"
        );
        let _ = ServerProfile::Microsoft
            .prepare(&ExportRequest::group("g").include_associated_data("_deleted"))
            .unwrap();
    }
}
