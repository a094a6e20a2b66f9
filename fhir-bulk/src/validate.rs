//! Checks a kick-off request before anything is sent: the Bulk Data IG's rules. A server's
//! documented limits live in its profile (`crate::profile`).

use crate::error::{Error, Result};
use crate::request::{ExportLevel, ExportRequest, KickoffMethod};
use crate::resource::Timestamp;

/// The most `patient` references one kick-off may carry (Oracle Health's documented limit,
/// the strictest known).
pub const MAX_PATIENTS: usize = 20_000;

const OUTPUT_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];
const ASSOCIATED_DATA: [&str; 2] = ["LatestProvenanceResources", "RelevantProvenanceResources"];
const TYPED_NAMES: [&str; 11] = [
    "_outputFormat",
    "_since",
    "_until",
    "_type",
    "_elements",
    "patient",
    "includeAssociatedData",
    "_typeFilter",
    "organizeOutputBy",
    "allowPartialManifests",
    "_format",
];

pub(crate) fn invalid(parameter: &str, message: impl Into<String>) -> Error {
    Error::InvalidRequest {
        parameter: parameter.to_owned(),
        message: message.into(),
    }
}

/// Whether `name` is a syntactically valid FHIR resource type name.
pub(crate) fn is_resource_type(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
}

/// Whether `id` is a valid FHIR logical id.
fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn check_type(parameter: &str, name: &str) -> Result<()> {
    if is_resource_type(name) {
        Ok(())
    } else {
        Err(invalid(
            parameter,
            format!(
                "`{name}` is not a FHIR resource type name (letters and digits, starting with \
                 a capital, e.g. `Observation`)"
            ),
        ))
    }
}

fn check_instant(parameter: &str, value: &str) -> Result<Timestamp> {
    Timestamp::parse(value).ok_or_else(|| {
        invalid(
            parameter,
            format!(
                "`{value}` is not a FHIR instant: give a date, a time to the second and a time \
                 zone, e.g. `2024-01-01T00:00:00Z` or `2024-01-01T00:00:00.000+02:00`"
            ),
        )
    })
}

impl ExportRequest {
    /// Checks every parameter against the Bulk Data IG's rules, returning the first problem
    /// as [`Error::InvalidRequest`] naming the parameter and how to fix it. A server's own
    /// documented limits are checked by its [`ServerProfile`](crate::ServerProfile) (see
    /// [`ServerProfile::prepare`](crate::ServerProfile::prepare)), which the client applies
    /// before every kick-off.
    pub fn validate(&self) -> Result<()> {
        self.validate_standard()
    }

    fn validate_standard(&self) -> Result<()> {
        if let ExportLevel::Group(id) = &self.level
            && (id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "group",
                format!("`{id}` is not a Group id (it is empty or holds white space)"),
            ));
        }
        self.validate_patients()?;
        for t in &self.types {
            check_type("_type", t)?;
        }
        if let Some(t) = &self.organize_output_by {
            check_type("organizeOutputBy", t)?;
        }
        for e in &self.elements {
            let (resource, element) = match e.split_once('.') {
                Some((t, el)) => (Some(t), el),
                None => (None, e.as_str()),
            };
            if let Some(t) = resource {
                check_type("_elements", t)?;
            }
            let valid = element
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && element
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(invalid(
                    "_elements",
                    format!(
                        "`{e}` is not `Type.element` or `element` (top-level elements only, \
                         e.g. `Observation.code` or `id`)"
                    ),
                ));
            }
        }
        for filter in &self.type_filters {
            let Some((t, query)) = filter.split_once('?') else {
                return Err(invalid(
                    "_typeFilter",
                    format!(
                        "`{filter}` is not `Type?query`, e.g. `Observation?category=laboratory`"
                    ),
                ));
            };
            check_type("_typeFilter", t)?;
            if query.is_empty() {
                return Err(invalid(
                    "_typeFilter",
                    format!("`{filter}` has an empty query after `?`"),
                ));
            }
            if !self.types.is_empty() && !self.types.iter().any(|x| x == t) {
                return Err(invalid(
                    "_typeFilter",
                    format!(
                        "`{filter}` filters `{t}`, which is not in `_type` ({}); add `{t}` to \
                         `_type` or drop the filter",
                        self.types.join(",")
                    ),
                ));
            }
        }
        let since = self
            .since
            .as_deref()
            .map(|v| check_instant("_since", v))
            .transpose()?;
        let until = self
            .until
            .as_deref()
            .map(|v| check_instant("_until", v))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(invalid("_until", "`_until` must be later than `_since`"));
        }
        if let Some(format) = &self.output_format
            && !self.lenient
            && !OUTPUT_FORMATS.contains(&format.as_str())
        {
            return Err(invalid(
                "_outputFormat",
                format!(
                    "`{format}` is not an NDJSON format; use one of {} (or send the request \
                         as lenient to let the server decide)",
                    OUTPUT_FORMATS.join(", ")
                ),
            ));
        }
        for code in &self.include_associated_data {
            if !self.lenient && !ASSOCIATED_DATA.contains(&code.as_str()) && !code.starts_with('_')
            {
                return Err(invalid(
                    "includeAssociatedData",
                    format!(
                        "`{code}` is not `LatestProvenanceResources`, \
                         `RelevantProvenanceResources` or a server-defined `_code`"
                    ),
                ));
            }
        }
        for (name, _) in &self.extra {
            if name.is_empty() || name.contains(['&', '=', '?', '#', ' ']) {
                return Err(invalid(
                    name,
                    "an extra parameter name must be non-empty without `&`, `=`, `?`, `#` or spaces",
                ));
            }
            if TYPED_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    name,
                    format!(
                        "`{name}` has its own setter on ExportRequest; use it instead of `param`"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_patients(&self) -> Result<()> {
        if self.patients.is_empty() {
            return Ok(());
        }
        if self.level == ExportLevel::System {
            return Err(invalid(
                "patient",
                "`patient` is not defined for a system-level export; use \
                 ExportRequest::all_patients() or ExportRequest::group(..)",
            ));
        }
        if self.method != KickoffMethod::Post {
            return Err(invalid(
                "patient",
                "`patient` can only be sent in a POST body; call `.post()` on the request",
            ));
        }
        if self.patients.len() > MAX_PATIENTS {
            return Err(invalid(
                "patient",
                format!(
                    "{} patients given; servers accept at most {MAX_PATIENTS} per kick-off, so \
                     split them over several exports",
                    self.patients.len()
                ),
            ));
        }
        for reference in &self.patients {
            let id = reference
                .strip_prefix("Patient/")
                .or_else(|| {
                    (reference.starts_with("http://") || reference.starts_with("https://"))
                        .then(|| reference.rsplit_once("/Patient/").map(|(_, id)| id))
                        .flatten()
                })
                .unwrap_or("");
            if !is_fhir_id(id) {
                return Err(invalid(
                    "patient",
                    format!(
                        "`{reference}` is not a Patient reference: use `Patient/<id>` (or a bare \
                         id) with an id of letters, digits, `-` and `.`"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter_of(r: &ExportRequest) -> String {
        match r.validate() {
            Err(Error::InvalidRequest { parameter, .. }) => parameter,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn valid_requests_pass() {
        ExportRequest::system().validate().unwrap();
        ExportRequest::group("11ec-d16a-c763b73e-98e8-a31715e6a2bf")
            .types(["Patient", "Observation"])
            .type_filter("Observation?category=laboratory,vital-signs")
            .since("2024-01-01T00:00:00Z")
            .until("2024-06-01T00:00:00.000+02:00")
            .elements(["id", "Observation.code"])
            .include_associated_data("LatestProvenanceResources")
            .include_associated_data("_custom")
            .output_format("ndjson")
            .organize_output_by("Patient")
            .param("_container", "x")
            .validate()
            .unwrap();
        ExportRequest::all_patients()
            .post()
            .patient("123")
            .patient("https://ehr.example/fhir/Patient/a.b-c")
            .validate()
            .unwrap();
    }

    #[test]
    fn patient_rules() {
        assert_eq!(
            parameter_of(&ExportRequest::all_patients().patient("1")),
            "patient"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().post().patient("1")),
            "patient"
        );
        let many = ExportRequest::group("g")
            .post()
            .patients((0..=MAX_PATIENTS).map(|i| i.to_string()));
        let err = many.validate().unwrap_err();
        assert!(err.to_string().contains("20000"), "{err}");
        let ok = ExportRequest::group("g")
            .post()
            .patients((0..MAX_PATIENTS).map(|i| i.to_string()));
        ok.validate().unwrap();
        assert_eq!(
            parameter_of(&ExportRequest::all_patients().post().patient("Group/1")),
            "patient"
        );
        assert_eq!(
            parameter_of(&ExportRequest::all_patients().post().patient("Patient/a b")),
            "patient"
        );
    }

    #[test]
    fn type_and_filter_rules() {
        assert_eq!(
            parameter_of(&ExportRequest::system().resource_type("observation")),
            "_type"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().resource_type("Obs-1")),
            "_type"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().type_filter("status=final")),
            "_typeFilter"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().type_filter("Observation?")),
            "_typeFilter"
        );
        let err = ExportRequest::system()
            .types(["Patient"])
            .type_filter("Observation?status=final")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("not in `_type`"), "{err}");
        assert_eq!(
            parameter_of(&ExportRequest::system().elements(["Observation.code.text"])),
            "_elements"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().organize_output_by("patient")),
            "organizeOutputBy"
        );
    }

    #[test]
    fn instant_and_format_rules() {
        let err = ExportRequest::system()
            .since("2024-01-01")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("2024-01-01T00:00:00Z"), "{err}");
        assert_eq!(
            parameter_of(&ExportRequest::system().until("tomorrow")),
            "_until"
        );
        assert_eq!(
            parameter_of(
                &ExportRequest::system()
                    .since("2024-02-01T00:00:00Z")
                    .until("2024-01-01T00:00:00Z")
            ),
            "_until"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().output_format("text/csv")),
            "_outputFormat"
        );
        ExportRequest::system()
            .output_format("text/csv")
            .lenient(true)
            .validate()
            .unwrap();
        assert_eq!(
            parameter_of(&ExportRequest::system().include_associated_data("All")),
            "includeAssociatedData"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().param("_type", "X")),
            "_type"
        );
        assert_eq!(
            parameter_of(&ExportRequest::system().param("a&b", "X")),
            "a&b"
        );
        assert_eq!(parameter_of(&ExportRequest::group(" ")), "group");
    }
}
