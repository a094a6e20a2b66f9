//! The kick-off request: level, method and every `$export` parameter, with its two
//! encodings (a query string for GET, a FHIR `Parameters` body for POST).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The `includeAssociatedData` code system (Bulk Data IG).
pub const INCLUDE_ASSOCIATED_DATA_SYSTEM: &str =
    "http://hl7.org/fhir/uv/bulkdata/CodeSystem/include-associated-data";

/// Which `$export` operation to call.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportLevel {
    /// `[base]/$export`: everything the client may see.
    System,
    /// `[base]/Patient/$export`: all patients (or those named by `patient`).
    AllPatients,
    /// `[base]/Group/{id}/$export`: the members of one Group.
    Group(String),
}

/// How the kick-off is sent.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KickoffMethod {
    /// `GET` with query parameters (STU2/STU3; the only form Microsoft and Google accept).
    #[default]
    Get,
    /// `POST` with a FHIR `Parameters` body (required for `patient`, and by STU4 servers).
    Post,
}

/// How a parameter with several values is sent. A [`ServerProfile`](crate::ServerProfile)
/// chooses it per server; [`ExportRequest::list_encoding`] overrides the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ListEncoding {
    /// One parameter, values joined with commas: `_type=Patient,Observation`. Accepted by
    /// STU2/STU3 servers and required by Oracle Health, which rejects repeated `_type`.
    #[default]
    CommaJoined,
    /// One parameter per value: `_type=Patient&_type=Observation`. Required by STU4.
    Repeated,
    /// One parameter, values joined with commas, and every comma inside a value escaped as
    /// `\,` (FHIR search escaping): `_typeFilter=Observation?code=a\,b,Patient?active=true`.
    /// What Epic expects for `_typeFilter`.
    CommaJoinedEscaped,
}

/// How `includeAssociatedData` values are typed in a `Parameters` body. A
/// [`ServerProfile`](crate::ServerProfile) chooses it per server;
/// [`ExportRequest::associated_data_encoding`] overrides the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AssociatedDataEncoding {
    /// `valueCode` (STU2/STU3, Oracle Health).
    #[default]
    Code,
    /// `valueCoding` with the IG's code system (STU4).
    Coding,
}

/// A value of an extra (pass-through) kick-off parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ParamValue {
    /// `valueString`.
    String(String),
    /// `valueInstant`.
    Instant(String),
    /// `valueCode`.
    Code(String),
    /// `valueBoolean`.
    Boolean(bool),
    /// `valueInteger`.
    Integer(i64),
    /// `valueReference` with this `reference`.
    Reference(String),
    /// `valueCoding` with a system and a code.
    Coding {
        /// The code system.
        system: String,
        /// The code.
        code: String,
    },
}

impl ParamValue {
    /// The value as it goes in a query string.
    pub fn to_query_value(&self) -> String {
        match self {
            ParamValue::String(s)
            | ParamValue::Instant(s)
            | ParamValue::Code(s)
            | ParamValue::Reference(s) => s.clone(),
            ParamValue::Boolean(b) => b.to_string(),
            ParamValue::Integer(i) => i.to_string(),
            ParamValue::Coding { system, code } => format!("{system}|{code}"),
        }
    }

    /// The value as a `Parameters.parameter` entry named `name`.
    pub fn to_parameter(&self, name: &str) -> Value {
        match self {
            ParamValue::String(s) => json!({"name": name, "valueString": s}),
            ParamValue::Instant(s) => json!({"name": name, "valueInstant": s}),
            ParamValue::Code(s) => json!({"name": name, "valueCode": s}),
            ParamValue::Boolean(b) => json!({"name": name, "valueBoolean": b}),
            ParamValue::Integer(i) => json!({"name": name, "valueInteger": i}),
            ParamValue::Reference(r) => json!({"name": name, "valueReference": {"reference": r}}),
            ParamValue::Coding { system, code } => {
                json!({"name": name, "valueCoding": {"system": system, "code": code}})
            }
        }
    }
}

impl From<&str> for ParamValue {
    fn from(s: &str) -> Self {
        ParamValue::String(s.to_owned())
    }
}

impl From<String> for ParamValue {
    fn from(s: String) -> Self {
        ParamValue::String(s)
    }
}

impl From<bool> for ParamValue {
    fn from(b: bool) -> Self {
        ParamValue::Boolean(b)
    }
}

/// A bulk data kick-off request: where, how, and with which parameters.
///
/// Setters never fail; [`ExportRequest::validate`] (called by
/// [`BulkClient::kick_off`](crate::BulkClient::kick_off) before anything is sent) reports the
/// first invalid parameter by name.
///
/// ```
/// use fhir_bulk::ExportRequest;
/// let request = ExportRequest::group("11ec-d16a-c763b73e")
///     .types(["Patient", "Observation"])
///     .since("2024-01-01T00:00:00Z")
///     .type_filter("Observation?category=laboratory");
/// request.validate()?;
/// assert_eq!(
///     request.query_pairs(),
///     vec![
///         ("_type".to_string(), "Patient,Observation".to_string()),
///         ("_typeFilter".to_string(), "Observation?category=laboratory".to_string()),
///         ("_since".to_string(), "2024-01-01T00:00:00Z".to_string()),
///     ]
/// );
/// # Ok::<(), fhir_bulk::Error>(())
/// ```
#[must_use]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub(crate) level: ExportLevel,
    pub(crate) method: KickoffMethod,
    pub(crate) output_format: Option<String>,
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
    pub(crate) types: Vec<String>,
    pub(crate) elements: Vec<String>,
    pub(crate) patients: Vec<String>,
    pub(crate) include_associated_data: Vec<String>,
    pub(crate) type_filters: Vec<String>,
    pub(crate) organize_output_by: Option<String>,
    pub(crate) allow_partial_manifests: Option<bool>,
    pub(crate) extra: Vec<(String, ParamValue)>,
    /// `None`: the server profile's (comma-joined without one).
    pub(crate) list_encoding: Option<ListEncoding>,
    /// `None`: the server profile's (repeated without one).
    pub(crate) type_filter_encoding: Option<ListEncoding>,
    /// `None`: the server profile's (`valueCode` without one).
    pub(crate) associated_data_encoding: Option<AssociatedDataEncoding>,
    /// Send `_until` under Microsoft's name, `_till` (set by the Microsoft profile).
    #[serde(default)]
    pub(crate) until_as_till: bool,
    pub(crate) lenient: bool,
    pub(crate) separate_export_status: bool,
}

impl ExportRequest {
    /// A request at `level`, sent with GET, with no parameters.
    pub fn new(level: ExportLevel) -> Self {
        ExportRequest {
            level,
            method: KickoffMethod::Get,
            output_format: None,
            since: None,
            until: None,
            types: Vec::new(),
            elements: Vec::new(),
            patients: Vec::new(),
            include_associated_data: Vec::new(),
            type_filters: Vec::new(),
            organize_output_by: None,
            allow_partial_manifests: None,
            extra: Vec::new(),
            list_encoding: None,
            type_filter_encoding: None,
            associated_data_encoding: None,
            until_as_till: false,
            lenient: false,
            separate_export_status: false,
        }
    }

    /// A system-level export, `[base]/$export`.
    pub fn system() -> Self {
        ExportRequest::new(ExportLevel::System)
    }

    /// An all-patients export, `[base]/Patient/$export`.
    pub fn all_patients() -> Self {
        ExportRequest::new(ExportLevel::AllPatients)
    }

    /// A Group export, `[base]/Group/{id}/$export`.
    pub fn group(id: impl Into<String>) -> Self {
        ExportRequest::new(ExportLevel::Group(id.into()))
    }

    /// Sends the kick-off as `POST` with a `Parameters` body.
    pub fn post(self) -> Self {
        self.method(KickoffMethod::Post)
    }

    /// Chooses GET or POST.
    pub fn method(mut self, method: KickoffMethod) -> Self {
        self.method = method;
        self
    }

    /// `_outputFormat`: `application/fhir+ndjson` (the default), `application/ndjson` or
    /// `ndjson`.
    pub fn output_format(mut self, format: impl Into<String>) -> Self {
        self.output_format = Some(format.into());
        self
    }

    /// `_since`: only resources changed after this FHIR instant
    /// (e.g. `2024-01-01T00:00:00Z`). Use a previous manifest's `transactionTime`.
    pub fn since(mut self, instant: impl Into<String>) -> Self {
        self.since = Some(instant.into());
        self
    }

    /// `_until` (STU3+): only resources changed up to this FHIR instant.
    pub fn until(mut self, instant: impl Into<String>) -> Self {
        self.until = Some(instant.into());
        self
    }

    /// Adds one resource type to `_type`.
    pub fn resource_type(mut self, resource_type: impl Into<String>) -> Self {
        self.types.push(resource_type.into());
        self
    }

    /// Adds resource types to `_type`.
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types.extend(types.into_iter().map(Into::into));
        self
    }

    /// Adds `_elements` entries (`Type.element` or `element`).
    pub fn elements<I, S>(mut self, elements: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.elements.extend(elements.into_iter().map(Into::into));
        self
    }

    /// Adds a `patient` (POST only): `Patient/123`, a bare id `123`, or an absolute URL.
    pub fn patient(mut self, reference: impl Into<String>) -> Self {
        let reference = reference.into();
        let reference = if reference.contains('/') {
            reference
        } else {
            format!("Patient/{reference}")
        };
        self.patients.push(reference);
        self
    }

    /// Adds several `patient` references (see [`ExportRequest::patient`]).
    pub fn patients<I, S>(self, references: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        references.into_iter().fold(self, |r, p| r.patient(p))
    }

    /// Adds an `includeAssociatedData` code (`LatestProvenanceResources`,
    /// `RelevantProvenanceResources`, or a server's own `_code`).
    pub fn include_associated_data(mut self, code: impl Into<String>) -> Self {
        self.include_associated_data.push(code.into());
        self
    }

    /// Adds a `_typeFilter` query, e.g. `Observation?category=laboratory`.
    pub fn type_filter(mut self, query: impl Into<String>) -> Self {
        self.type_filters.push(query.into());
        self
    }

    /// `organizeOutputBy` (STU3+): a resource type, e.g. `Patient`.
    pub fn organize_output_by(mut self, resource_type: impl Into<String>) -> Self {
        self.organize_output_by = Some(resource_type.into());
        self
    }

    /// `allowPartialManifests` (STU3+).
    pub fn allow_partial_manifests(mut self, allow: bool) -> Self {
        self.allow_partial_manifests = Some(allow);
        self
    }

    /// Adds a parameter this type has no setter for (a vendor's own, e.g. `_container`).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<ParamValue>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// How `_type`, `_elements` and `includeAssociatedData` lists are sent, overriding the
    /// client's [`ServerProfile`](crate::ServerProfile) (without a profile: comma-joined).
    pub fn list_encoding(mut self, encoding: ListEncoding) -> Self {
        self.list_encoding = Some(encoding);
        self
    }

    /// How several `_typeFilter` queries are sent, overriding the server profile (without a
    /// profile: repeated, one query per parameter, as STU3 and STU4 define; comma-joined for
    /// STU2 servers and Oracle Health, comma-joined with escaped inner commas for Epic).
    pub fn type_filter_encoding(mut self, encoding: ListEncoding) -> Self {
        self.type_filter_encoding = Some(encoding);
        self
    }

    /// How `includeAssociatedData` is typed in a POST body, overriding the server profile
    /// (without a profile: `valueCode`).
    pub fn associated_data_encoding(mut self, encoding: AssociatedDataEncoding) -> Self {
        self.associated_data_encoding = Some(encoding);
        self
    }

    /// STU4 style: POST, every list repeated, `includeAssociatedData` as `valueCoding` (what
    /// [`ServerProfile::Stu4`](crate::ServerProfile::Stu4) applies to every request).
    pub fn stu4(self) -> Self {
        self.post()
            .list_encoding(ListEncoding::Repeated)
            .type_filter_encoding(ListEncoding::Repeated)
            .associated_data_encoding(AssociatedDataEncoding::Coding)
    }

    /// Sends `Prefer: handling=lenient`: the server ignores parameters it does not support
    /// instead of refusing the export. Also relaxes the client's checks of `_outputFormat`,
    /// `includeAssociatedData` codes and the validation profile's unsupported parameters.
    pub fn lenient(mut self, lenient: bool) -> Self {
        self.lenient = lenient;
        self
    }

    /// Sends `Prefer: respond-async,separate-export-status` (STU3+): status answers are then
    /// 200 with the job state in `X-Export-Status`.
    pub fn separate_export_status(mut self, separate: bool) -> Self {
        self.separate_export_status = separate;
        self
    }

    /// The level.
    pub fn level(&self) -> &ExportLevel {
        &self.level
    }

    /// GET or POST.
    #[cfg(test)]
    pub(crate) fn kickoff_method(&self) -> KickoffMethod {
        self.method
    }

    /// The path of the operation relative to the FHIR base, e.g. `Group/g1/$export`.
    pub fn operation_path(&self) -> String {
        match &self.level {
            ExportLevel::System => "$export".to_owned(),
            ExportLevel::AllPatients => "Patient/$export".to_owned(),
            ExportLevel::Group(id) => format!("Group/{}/$export", encode_segment(id)),
        }
    }

    /// The `Prefer` header value.
    pub fn prefer_header(&self) -> String {
        let mut prefer = String::from("respond-async");
        if self.separate_export_status {
            prefer.push_str(",separate-export-status");
        }
        if self.lenient {
            prefer.push_str(",handling=lenient");
        }
        prefer
    }

    fn list(&self, name: &str, values: &[String], encoding: ListEncoding) -> Vec<(String, String)> {
        if values.is_empty() {
            return Vec::new();
        }
        match encoding {
            ListEncoding::CommaJoined => vec![(name.to_owned(), values.join(","))],
            ListEncoding::CommaJoinedEscaped => {
                let escaped: Vec<String> = values.iter().map(|v| escape_commas(v)).collect();
                vec![(name.to_owned(), escaped.join(","))]
            }
            ListEncoding::Repeated => values
                .iter()
                .map(|v| (name.to_owned(), v.clone()))
                .collect(),
        }
    }

    /// Every parameter as `(name, value)` pairs in the order they are sent, `patient`
    /// included (as its reference), for logs and reports. For the request a client really
    /// sends (its [`ServerProfile`](crate::ServerProfile) applied), call it on
    /// [`BulkClient::prepare_request`](crate::BulkClient::prepare_request)'s result.
    pub fn parameter_pairs(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .patients
            .iter()
            .map(|p| ("patient".to_owned(), p.clone()))
            .collect();
        pairs.extend(self.query_pairs());
        pairs
    }

    /// The parameters as `(name, value)` pairs, in the order they are sent; `patient` goes
    /// only in a POST body and is left out here.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = self.standard_pairs();
        for (name, value) in &self.extra {
            pairs.push((name.clone(), value.to_query_value()));
        }
        pairs
    }

    /// The typed parameters (all but `patient` and the extra ones) as query pairs.
    fn standard_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        let lists = self.list_encoding.unwrap_or(ListEncoding::CommaJoined);
        let filters = self.type_filter_encoding.unwrap_or(ListEncoding::Repeated);
        pairs.extend(self.list("_type", &self.types, lists));
        pairs.extend(self.list("_elements", &self.elements, lists));
        pairs.extend(self.list("_typeFilter", &self.type_filters, filters));
        pairs.extend(self.list(
            "includeAssociatedData",
            &self.include_associated_data,
            lists,
        ));
        let until = if self.until_as_till {
            "_till"
        } else {
            "_until"
        };
        let scalars = [
            ("_since", &self.since),
            (until, &self.until),
            ("_outputFormat", &self.output_format),
            ("organizeOutputBy", &self.organize_output_by),
        ];
        for (name, value) in scalars {
            if let Some(value) = value {
                pairs.push((name.to_owned(), value.clone()));
            }
        }
        if let Some(allow) = self.allow_partial_manifests {
            pairs.push(("allowPartialManifests".to_owned(), allow.to_string()));
        }
        pairs
    }

    /// The parameters as a FHIR `Parameters` resource, each with its `value[x]`:
    /// `valueReference` for `patient`, `valueInstant` for `_since`/`_until`, `valueCode` (or
    /// `valueCoding`) for `includeAssociatedData`, `valueBoolean` for
    /// `allowPartialManifests`, `valueString` for the rest.
    pub fn parameters(&self) -> Value {
        let mut params: Vec<Value> = self
            .patients
            .iter()
            .map(|p| ParamValue::Reference(p.clone()).to_parameter("patient"))
            .collect();
        for (name, value) in self.standard_pairs() {
            let entry = match name.as_str() {
                "_since" | "_until" | "_till" => ParamValue::Instant(value).to_parameter(&name),
                "allowPartialManifests" => ParamValue::Boolean(value == "true").to_parameter(&name),
                "includeAssociatedData" => {
                    match self.associated_data_encoding.unwrap_or_default() {
                        AssociatedDataEncoding::Code => ParamValue::Code(value).to_parameter(&name),
                        AssociatedDataEncoding::Coding => ParamValue::Coding {
                            system: INCLUDE_ASSOCIATED_DATA_SYSTEM.to_owned(),
                            code: value,
                        }
                        .to_parameter(&name),
                    }
                }
                _ => ParamValue::String(value).to_parameter(&name),
            };
            params.push(entry);
        }
        for (name, value) in &self.extra {
            params.push(value.to_parameter(name));
        }
        json!({"resourceType": "Parameters", "parameter": params})
    }
}

/// Escapes every comma of `value` not already escaped as `\,`.
fn escape_commas(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let mut escaped = false;
    for c in value.chars() {
        if c == ',' && !escaped {
            out.push('\\');
        }
        escaped = c == '\\' && !escaped;
        out.push(c);
    }
    out
}

/// Percent-encodes a path segment (a Group id should need none, but must not break the path).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_level() {
        assert_eq!(ExportRequest::system().operation_path(), "$export");
        assert_eq!(
            ExportRequest::all_patients().operation_path(),
            "Patient/$export"
        );
        assert_eq!(
            ExportRequest::group("11ec-d16a.x").operation_path(),
            "Group/11ec-d16a.x/$export"
        );
        assert_eq!(
            ExportRequest::group("a b/c").operation_path(),
            "Group/a%20b%2Fc/$export"
        );
    }

    #[test]
    fn prefer_header_combinations() {
        let r = ExportRequest::system();
        assert_eq!(r.prefer_header(), "respond-async");
        let r = r.lenient(true).separate_export_status(true);
        assert_eq!(
            r.prefer_header(),
            "respond-async,separate-export-status,handling=lenient"
        );
    }

    #[test]
    fn repeated_and_joined_lists() {
        let r = ExportRequest::system()
            .types(["Patient", "Observation"])
            .elements(["id", "Observation.code"])
            .type_filter("Observation?status=final")
            .type_filter("Patient?active=true");
        let joined = r.clone().type_filter_encoding(ListEncoding::CommaJoined);
        assert_eq!(
            joined.query_pairs(),
            [
                ("_type", "Patient,Observation"),
                ("_elements", "id,Observation.code"),
                (
                    "_typeFilter",
                    "Observation?status=final,Patient?active=true"
                ),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let repeated = r.list_encoding(ListEncoding::Repeated);
        assert_eq!(
            repeated.query_pairs(),
            [
                ("_type", "Patient"),
                ("_type", "Observation"),
                ("_elements", "id"),
                ("_elements", "Observation.code"),
                ("_typeFilter", "Observation?status=final"),
                ("_typeFilter", "Patient?active=true"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    /// Seed 001's example body, built with the typed request.
    #[test]
    fn oracle_patient_export_body() {
        let r = ExportRequest::all_patients()
            .post()
            .patients(["Patient/12783127", "12783128", "Patient/12783129"])
            .types(["Condition", "Provenance"])
            .type_filter("Condition?category=problem-list-item")
            .include_associated_data("RelevantProvenanceResources")
            .since("2021-03-18T19:19:42.000Z")
            .output_format("application/fhir+ndjson");
        assert_eq!(
            r.parameters(),
            json!({
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "patient", "valueReference": {"reference": "Patient/12783127"}},
                    {"name": "patient", "valueReference": {"reference": "Patient/12783128"}},
                    {"name": "patient", "valueReference": {"reference": "Patient/12783129"}},
                    {"name": "_type", "valueString": "Condition,Provenance"},
                    {"name": "_typeFilter", "valueString": "Condition?category=problem-list-item"},
                    {"name": "includeAssociatedData", "valueCode": "RelevantProvenanceResources"},
                    {"name": "_since", "valueInstant": "2021-03-18T19:19:42.000Z"},
                    {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}
                ]
            })
        );
    }

    #[test]
    fn stu4_body_repeats_and_uses_coding() {
        let r = ExportRequest::system()
            .stu4()
            .types(["Patient", "Observation"])
            .include_associated_data("LatestProvenanceResources")
            .until("2025-01-01T00:00:00Z")
            .organize_output_by("Patient")
            .allow_partial_manifests(true)
            .param("_container", "exports")
            .param("_isParallel", ParamValue::Boolean(false));
        assert_eq!(
            r.parameters(),
            json!({
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "_type", "valueString": "Patient"},
                    {"name": "_type", "valueString": "Observation"},
                    {"name": "includeAssociatedData", "valueCoding": {
                        "system": INCLUDE_ASSOCIATED_DATA_SYSTEM,
                        "code": "LatestProvenanceResources"}},
                    {"name": "_until", "valueInstant": "2025-01-01T00:00:00Z"},
                    {"name": "organizeOutputBy", "valueString": "Patient"},
                    {"name": "allowPartialManifests", "valueBoolean": true},
                    {"name": "_container", "valueString": "exports"},
                    {"name": "_isParallel", "valueBoolean": false}
                ]
            })
        );
        assert_eq!(r.kickoff_method(), KickoffMethod::Post);
    }

    #[test]
    fn request_round_trips_through_serde() {
        let r = ExportRequest::group("g").types(["Patient"]).lenient(true);
        let text = serde_json::to_string(&r).unwrap();
        let back: ExportRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
