//! Oracle Health Millennium (Cerner), from seeds 000, 001 and 004 and the spec digest: no
//! system-level export; `Patient/$export` needs `patient` (POST, up to 20,000); Group exports
//! are GET without `_typeFilter`, `_elements`, `includeAssociatedData` or `patient`; a fixed
//! `_type` table whose reference types need a clinical type beside them; one `_typeFilter`
//! per type, none on Location, Organization, Patient, Practitioner or Provenance; comma-joined
//! `_type` (repeated is refused); `valueCode` for `includeAssociatedData`; unsupported
//! parameters refused unless lenient. Status answers carry `Retry-After: 600` (seconds).

use super::Encodings;
use crate::error::Result;
use crate::poll::PollPolicy;
use crate::request::{
    AssociatedDataEncoding, ExportLevel, ExportRequest, KickoffMethod, ListEncoding,
};
use crate::validate::invalid;
use std::time::Duration;

/// Comma-joined `_type` and `_typeFilter`, `valueCode`.
pub(super) const ENCODINGS: Encodings = Encodings {
    method: None,
    list: ListEncoding::CommaJoined,
    type_filter: ListEncoding::CommaJoined,
    associated_data: AssociatedDataEncoding::Code,
    until_parameter: "_until",
};

/// Oracle asks for 600 s between polls (seed 004: back off exponentially); waiting less only
/// costs requests, so the cap is its own figure.
pub(super) fn poll_policy() -> PollPolicy {
    PollPolicy::default()
        .with_initial_delay(Duration::from_secs(10))
        .with_max_interval(Duration::from_secs(600))
}

/// Oracle Health's exportable types (seed 004: the clinical types, and the reference types
/// allowed beside them). `Binary` is not exported: attachments are read from their Binary URLs.
const ORACLE_TYPES: [&str; 22] = [
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Coverage",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Goal",
    "Immunization",
    "Location",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "Procedure",
    "Provenance",
    "RelatedPerson",
    "ServiceRequest",
];
/// Types Oracle Health exports only beside a clinical type.
const ORACLE_REFERENCE_TYPES: [&str; 5] = [
    "Location",
    "Organization",
    "Practitioner",
    "Provenance",
    "RelatedPerson",
];
/// Types Oracle Health refuses `_typeFilter` for.
const ORACLE_NO_TYPE_FILTER: [&str; 5] = [
    "Location",
    "Organization",
    "Patient",
    "Practitioner",
    "Provenance",
];

pub(super) fn check(r: &ExportRequest) -> Result<()> {
    const WHY: &str = "Oracle Health does not support it";
    match &r.level {
        ExportLevel::System => {
            return Err(invalid(
                "level",
                "Oracle Health has no system-level export; use a Group export or \
                 Patient/$export with `patient`",
            ));
        }
        ExportLevel::AllPatients => {
            if r.patients.is_empty() {
                return Err(invalid(
                    "patient",
                    "Oracle Health's Patient/$export needs at least one `patient` (POST); \
                     it cannot export all patients",
                ));
            }
            if !r.elements.is_empty() {
                return Err(invalid("_elements", format!("{WHY} on Patient/$export")));
            }
        }
        ExportLevel::Group(_) => {
            if r.method == KickoffMethod::Post {
                return Err(invalid(
                    "method",
                    "Oracle Health's Group export is GET only; drop `.post()`",
                ));
            }
            let unsupported = [
                ("_typeFilter", !r.type_filters.is_empty()),
                ("_elements", !r.elements.is_empty()),
                (
                    "includeAssociatedData",
                    !r.include_associated_data.is_empty(),
                ),
                ("patient", !r.patients.is_empty()),
            ];
            if let Some((name, _)) = unsupported.iter().find(|(_, used)| *used) {
                return Err(invalid(name, format!("{WHY} on Group exports")));
            }
        }
    }
    if !r.lenient {
        let unsupported = [
            ("_until", r.until.is_some()),
            ("organizeOutputBy", r.organize_output_by.is_some()),
            ("allowPartialManifests", r.allow_partial_manifests.is_some()),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(invalid(
                name,
                format!("{WHY}; drop it or send the request as lenient"),
            ));
        }
    }
    for t in &r.types {
        if !ORACLE_TYPES.contains(&t.as_str()) {
            return Err(invalid(
                "_type",
                format!("Oracle Health does not export `{t}`"),
            ));
        }
    }
    if r.types.len() > 1 && r.list_encoding == Some(ListEncoding::Repeated) {
        return Err(invalid(
            "_type",
            "Oracle Health rejects repeated `_type`; use ListEncoding::CommaJoined",
        ));
    }
    let has_clinical = r
        .types
        .iter()
        .any(|t| !ORACLE_REFERENCE_TYPES.contains(&t.as_str()));
    if let Some(t) = r
        .types
        .iter()
        .find(|t| ORACLE_REFERENCE_TYPES.contains(&t.as_str()))
        && !has_clinical
    {
        return Err(invalid(
            "_type",
            format!(
                "Oracle Health exports `{t}` only together with a clinical type such as \
                     Patient, Condition or Observation"
            ),
        ));
    }
    if !r.include_associated_data.is_empty()
        && !r.types.is_empty()
        && !r.types.iter().any(|t| t == "Provenance")
    {
        return Err(invalid(
            "includeAssociatedData",
            "with `_type`, Oracle Health needs `Provenance` in `_type` for includeAssociatedData",
        ));
    }
    if !r.type_filters.is_empty() && r.types.is_empty() {
        return Err(invalid(
            "_typeFilter",
            "Oracle Health needs `_type` whenever `_typeFilter` is given",
        ));
    }
    let mut filtered: Vec<&str> = Vec::new();
    for filter in &r.type_filters {
        let t = filter.split_once('?').map_or(filter.as_str(), |(t, _)| t);
        if ORACLE_NO_TYPE_FILTER.contains(&t) {
            return Err(invalid(
                "_typeFilter",
                format!("Oracle Health does not support `_typeFilter` on `{t}`"),
            ));
        }
        if filtered.contains(&t) {
            return Err(invalid(
                "_typeFilter",
                format!(
                    "Oracle Health accepts one `_typeFilter` per type; combine the `{t}` \
                     queries into one (a comma inside a value means OR)"
                ),
            ));
        }
        filtered.push(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ServerProfile};

    #[test]
    fn oracle_profile() {
        let parameter_of = |r: &ExportRequest| match ServerProfile::OracleHealth.prepare(r) {
            Err(Error::InvalidRequest { parameter, .. }) => parameter,
            other => panic!("expected InvalidRequest, got {other:?}"),
        };
        let validate = |r: ExportRequest| ServerProfile::OracleHealth.prepare(&r).map(|_| ());
        // Seed 001's example passes.
        validate(
            ExportRequest::all_patients()
                .post()
                .patients(["12783127", "12783128", "12783129"])
                .types(["Condition", "Provenance"])
                .type_filter("Condition?category=problem-list-item")
                .include_associated_data("RelevantProvenanceResources")
                .since("2021-03-18T19:19:42.000Z")
                .output_format("application/fhir+ndjson"),
        )
        .unwrap();
        validate(ExportRequest::group("g").types(["Patient"])).unwrap();
        // The same passes the standard rules with no profile, but not Oracle's.
        let cases: Vec<(ExportRequest, &str)> = vec![
            (ExportRequest::system(), "level"),
            (ExportRequest::all_patients(), "patient"),
            (
                ExportRequest::group("g").type_filter("Condition?x=1"),
                "_typeFilter",
            ),
            (ExportRequest::group("g").elements(["id"]), "_elements"),
            (
                ExportRequest::group("g").include_associated_data("LatestProvenanceResources"),
                "includeAssociatedData",
            ),
            (ExportRequest::group("g").post(), "method"),
            (ExportRequest::group("g").types(["Medication"]), "_type"),
            (
                ExportRequest::group("g").types(["Practitioner", "Location"]),
                "_type",
            ),
            (
                ExportRequest::group("g")
                    .types(["Patient", "Condition"])
                    .list_encoding(ListEncoding::Repeated),
                "_type",
            ),
            (
                ExportRequest::group("g").until("2024-01-01T00:00:00Z"),
                "_until",
            ),
            (
                ExportRequest::all_patients()
                    .post()
                    .patient("1")
                    .types(["Condition"])
                    .include_associated_data("LatestProvenanceResources"),
                "includeAssociatedData",
            ),
            (
                ExportRequest::all_patients()
                    .post()
                    .patient("1")
                    .type_filter("Condition?a=b"),
                "_typeFilter",
            ),
            (
                ExportRequest::all_patients()
                    .post()
                    .patient("1")
                    .types(["Patient", "Condition"])
                    .type_filter("Patient?gender=male"),
                "_typeFilter",
            ),
            (
                ExportRequest::all_patients()
                    .post()
                    .patient("1")
                    .types(["Condition"])
                    .type_filter("Condition?a=b")
                    .type_filter("Condition?c=d"),
                "_typeFilter",
            ),
        ];
        for (request, parameter) in cases {
            request
                .validate()
                .unwrap_or_else(|e| panic!("standard rules refused {request:?}: {e}"));
            assert_eq!(parameter_of(&request), parameter, "{request:?}");
        }
        // Lenient lets unsupported parameters through.
        validate(
            ExportRequest::group("g")
                .until("2024-01-01T00:00:00Z")
                .lenient(true),
        )
        .unwrap();
    }

    /// Seed 004 lists no `Binary`: attachments are read from their URLs, not exported.
    #[test]
    fn binary_is_not_exportable() {
        let err = ServerProfile::OracleHealth
            .prepare(&ExportRequest::group("g").types(["Patient", "Binary"]))
            .unwrap_err();
        assert!(err.to_string().contains("`Binary`"), "{err}");
    }

    #[test]
    fn lists_are_comma_joined() {
        let sent = ServerProfile::OracleHealth
            .prepare(
                &ExportRequest::all_patients()
                    .post()
                    .patient("1")
                    .types(["Condition", "Observation"])
                    .type_filter("Condition?category=problem-list-item")
                    .type_filter("Observation?category=laboratory"),
            )
            .unwrap();
        assert_eq!(
            sent.query_pairs(),
            [
                ("_type", "Condition,Observation"),
                (
                    "_typeFilter",
                    "Condition?category=problem-list-item,Observation?category=laboratory"
                ),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }
}
