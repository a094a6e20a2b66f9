//! Server profiles: what one kind of server needs, in one place.
//!
//! A [`ServerProfile`] holds a server's parameter encodings, its documented request limits
//! (checked before anything is sent), its poll defaults, where its `Retry-After` comes from,
//! what its DELETE answers mean, and advice for file URLs that point at cloud storage. Every
//! decision here is a pure function; the client calls them where it sends and reads.
//!
//! One file per server: `stu4.rs` (the IG's STU4 ballot), `oracle.rs` (Oracle Health
//! Millennium), `epic.rs`, `google.rs` (Google Cloud Healthcare API), `microsoft.rs` (Azure
//! Health Data Services FHIR service), `smart_reference.rs` (the SMART reference
//! bulk-data-server).

mod epic;
mod google;
mod microsoft;
mod oracle;
mod smart_reference;
mod stu4;

use crate::capability::CapabilityStatement;
use crate::error::{Error, Result};
use crate::job::DeleteOutcome;
use crate::poll::{PollPolicy, RetryAfterUnit, parse_retry_after};
use crate::request::{AssociatedDataEncoding, ExportRequest, KickoffMethod, ListEncoding};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use url::Url;

/// The kind of FHIR server the client talks to, and so the rules it follows.
///
/// Set it with [`BulkClientBuilder::server_profile`](crate::BulkClientBuilder::server_profile);
/// without one the client follows the Bulk Data IG (STU2/STU3 encodings) and nothing else.
/// [`ServerProfile::suggest`] proposes one from a server's CapabilityStatement.
///
/// ```
/// use fhir_bulk::{ExportRequest, ServerProfile};
/// let google = ServerProfile::GoogleCloudHealthcare;
/// // Google's Group export needs organizeOutputBy=Patient: the profile adds it.
/// let sent = google.prepare(&ExportRequest::group("g1").types(["Patient"]))?;
/// assert!(sent.query_pairs().contains(&("organizeOutputBy".into(), "Patient".into())));
/// assert_eq!("google".parse::<ServerProfile>()?, google);
/// # Ok::<(), fhir_bulk::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ServerProfile {
    /// The Bulk Data IG's rules only, STU2/STU3 encodings (comma-joined lists, `valueCode`).
    #[default]
    #[serde(rename = "generic")]
    Generic,
    /// A server of the IG's STU4 ballot: POST kick-off, every list parameter repeated,
    /// `includeAssociatedData` as `valueCoding`.
    #[serde(rename = "stu4")]
    Stu4,
    /// Oracle Health Millennium (Cerner): its `_type` table, Patient/Group rules, one
    /// `_typeFilter` per type, comma-joined lists, `Retry-After: 600`.
    #[serde(rename = "oracle")]
    OracleHealth,
    /// Epic: backslash-escaped commas inside `_typeFilter` values, long jobs polled slowly.
    #[serde(rename = "epic")]
    Epic,
    /// Google Cloud Healthcare API: GET only, Group exports organized by Patient, output in
    /// Cloud Storage (`gs://`).
    #[serde(rename = "google")]
    GoogleCloudHealthcare,
    /// Microsoft Azure Health Data Services (FHIR service) and the OSS FHIR server: GET only,
    /// `_till` for `_until`, `x-ms-retry-after-ms`, a manifest after a cancel.
    #[serde(rename = "microsoft")]
    Microsoft,
    /// The SMART reference bulk-data-server: `Retry-After: 1`, 400 after a DELETE of a job
    /// that is already gone.
    #[serde(rename = "smart")]
    SmartReference,
}

/// How a profile writes the kick-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Encodings {
    /// The method every kick-off is sent with, when the profile sets one (STU4: POST). A
    /// GET-only server (Google, Microsoft) refuses a POST request instead of rewriting it.
    pub method: Option<KickoffMethod>,
    /// `_type`, `_elements` and `includeAssociatedData` lists.
    pub list: ListEncoding,
    /// Several `_typeFilter` queries.
    pub type_filter: ListEncoding,
    /// `includeAssociatedData` in a `Parameters` body.
    pub associated_data: AssociatedDataEncoding,
    /// The name `_until` is sent under (`_till` for Microsoft).
    pub until_parameter: &'static str,
}

impl Encodings {
    /// The IG's STU2/STU3 encodings, which most servers accept.
    const STANDARD: Encodings = Encodings {
        method: None,
        list: ListEncoding::CommaJoined,
        type_filter: ListEncoding::Repeated,
        associated_data: AssociatedDataEncoding::Code,
        until_parameter: "_until",
    };
}

/// A `Retry-After` a profile read from an answer, and the header it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryAfterHint {
    /// How long the server asks to wait.
    pub delay: Duration,
    /// The header it came from: `Retry-After` or `x-ms-retry-after-ms`.
    pub source: &'static str,
}

/// Every profile, in the order the CLI lists them.
const ALL: [ServerProfile; 7] = [
    ServerProfile::Generic,
    ServerProfile::Stu4,
    ServerProfile::OracleHealth,
    ServerProfile::Epic,
    ServerProfile::GoogleCloudHealthcare,
    ServerProfile::Microsoft,
    ServerProfile::SmartReference,
];

impl ServerProfile {
    /// Every profile.
    pub fn all() -> &'static [ServerProfile] {
        &ALL
    }

    /// The short name (`generic`, `stu4`, `oracle`, `epic`, `google`, `microsoft`, `smart`),
    /// as [`FromStr`] reads it and the CLI's `--server-profile` takes it.
    pub fn name(self) -> &'static str {
        match self {
            ServerProfile::Generic => "generic",
            ServerProfile::Stu4 => "stu4",
            ServerProfile::OracleHealth => "oracle",
            ServerProfile::Epic => "epic",
            ServerProfile::GoogleCloudHealthcare => "google",
            ServerProfile::Microsoft => "microsoft",
            ServerProfile::SmartReference => "smart",
        }
    }

    /// The server's name, for messages.
    pub fn display_name(self) -> &'static str {
        match self {
            ServerProfile::Generic => "a Bulk Data IG server",
            ServerProfile::Stu4 => "a Bulk Data STU4 server",
            ServerProfile::OracleHealth => "Oracle Health Millennium",
            ServerProfile::Epic => "Epic",
            ServerProfile::GoogleCloudHealthcare => "Google Cloud Healthcare API",
            ServerProfile::Microsoft => "Azure Health Data Services (Microsoft FHIR service)",
            ServerProfile::SmartReference => "the SMART reference bulk-data-server",
        }
    }

    /// How this server wants the kick-off parameters written.
    pub fn encodings(self) -> Encodings {
        match self {
            ServerProfile::Generic => Encodings::STANDARD,
            ServerProfile::Stu4 => stu4::ENCODINGS,
            ServerProfile::OracleHealth => oracle::ENCODINGS,
            ServerProfile::Epic => epic::ENCODINGS,
            ServerProfile::GoogleCloudHealthcare => google::ENCODINGS,
            ServerProfile::Microsoft => microsoft::ENCODINGS,
            ServerProfile::SmartReference => smart_reference::ENCODINGS,
        }
    }

    /// The request as this server gets it: the IG's rules checked, the profile's encodings
    /// applied where the request does not choose its own, what the server requires added
    /// (Google: `organizeOutputBy=Patient` on a Group export), and the server's documented
    /// limits checked. The first problem is an [`Error::InvalidRequest`] that names the
    /// parameter, says why and how to fix it. The client calls this before every kick-off.
    pub fn prepare(self, request: &ExportRequest) -> Result<ExportRequest> {
        request.validate()?;
        let mut r = request.clone();
        let enc = self.encodings();
        if let Some(method) = enc.method {
            r.method = method;
        }
        r.list_encoding.get_or_insert(enc.list);
        r.type_filter_encoding.get_or_insert(enc.type_filter);
        r.associated_data_encoding
            .get_or_insert(enc.associated_data);
        r.until_as_till = enc.until_parameter == "_till";
        match self {
            ServerProfile::Generic | ServerProfile::Stu4 | ServerProfile::SmartReference => {}
            ServerProfile::OracleHealth => oracle::check(&r)?,
            ServerProfile::Epic => epic::check(&r)?,
            ServerProfile::GoogleCloudHealthcare => google::prepare(&mut r)?,
            ServerProfile::Microsoft => microsoft::check(&r)?,
        }
        Ok(r)
    }

    /// The poll defaults for this server (the client uses them unless
    /// [`BulkClientBuilder::poll_policy`](crate::BulkClientBuilder::poll_policy) sets another).
    pub fn poll_policy(self) -> PollPolicy {
        match self {
            ServerProfile::OracleHealth => oracle::poll_policy(),
            ServerProfile::Epic => epic::poll_policy(),
            ServerProfile::GoogleCloudHealthcare => google::poll_policy(),
            ServerProfile::SmartReference => smart_reference::poll_policy(),
            _ => PollPolicy::default(),
        }
    }

    /// Reads how long the server asks to wait, from the headers it sends that for (`header`
    /// looks one up by name). Microsoft's `x-ms-retry-after-ms` (always milliseconds) wins over
    /// `Retry-After` for that profile; everywhere else `Retry-After` is read, numeric values in
    /// `unit` ([`PollPolicy::retry_after_unit`]).
    pub fn retry_after<'h>(
        self,
        header: impl Fn(&str) -> Option<&'h str>,
        unit: RetryAfterUnit,
        now: SystemTime,
    ) -> Option<RetryAfterHint> {
        if self == ServerProfile::Microsoft
            && let Some(hint) = microsoft::retry_after_ms(&header)
        {
            return Some(hint);
        }
        let delay = parse_retry_after(header("retry-after")?, unit, now)?;
        Some(RetryAfterHint {
            delay,
            source: "Retry-After",
        })
    }

    /// The `Accept` header of status polls and manifest pages.
    pub fn status_accept(self) -> &'static str {
        match self {
            ServerProfile::GoogleCloudHealthcare => google::ACCEPT,
            _ => "application/json",
        }
    }

    /// What the answer to a DELETE of the job means: `Some` when it is done (deleted, or
    /// already gone), `None` when it is a failure to report. 2xx is deleted and 404/410 gone
    /// everywhere; the SMART reference server answers 400 for a job that is finished or gone,
    /// and Google an error (400) for a job that is no longer running.
    pub fn delete_outcome(self, status: u16) -> Option<DeleteOutcome> {
        match status {
            200..=299 => Some(DeleteOutcome::Deleted),
            404 | 410 => Some(DeleteOutcome::AlreadyGone),
            400 if self == ServerProfile::SmartReference => smart_reference::delete_400(),
            400 if self == ServerProfile::GoogleCloudHealthcare => google::delete_400(),
            _ => None,
        }
    }

    /// Whether a DELETE answer with this status may carry the manifest of the files written
    /// so far (Microsoft answers a cancelled job with 200 and a partial manifest).
    pub fn delete_may_carry_manifest(self, status: u16) -> bool {
        self == ServerProfile::Microsoft && status == 200
    }

    /// Whether a complete (200) status answer after this client's DELETE lists only the files
    /// written before the cancel: Microsoft answers a cancelled job with 200 and a partial
    /// manifest instead of 404, so it is reported as [`PollStatus::Cancelled`](crate::PollStatus::Cancelled)
    /// (and [`Error::JobCancelled`](crate::Error::JobCancelled) from a wait), never as a
    /// completed export.
    pub fn complete_after_cancel_is_partial(self) -> bool {
        self == ServerProfile::Microsoft
    }

    /// Advice for a manifest file URL this client cannot fetch with the FHIR token: cloud
    /// storage (`gs://`, `s3://`, Azure Blob Storage) or another non-HTTP scheme. `None` for
    /// a plain `http(s)` URL of no known storage service.
    pub fn file_url_advice(self, url: &str) -> Option<String> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("gs") => Some(google::gs_advice(
                self == ServerProfile::GoogleCloudHealthcare,
            )),
            Some("s3") => Some(
                "the file is in Amazon S3: read it with AWS credentials (the S3 API), not with \
                 the FHIR server's token"
                    .to_owned(),
            ),
            Some("http" | "https") => {
                let host = Url::parse(url).ok()?.host_str()?.to_ascii_lowercase();
                microsoft::is_azure_storage_host(&host).then(microsoft::azure_storage_advice)
            }
            Some(other) if !other.is_empty() => Some(format!(
                "the `{other}:` scheme is not HTTP(S); the file lives in storage this client \
                 cannot reach with the FHIR token"
            )),
            _ => None,
        }
    }

    /// Proposes a profile from a CapabilityStatement's `software.name`, `publisher` and
    /// `name`; `None` when nothing names a known server.
    ///
    /// ```
    /// use fhir_bulk::{CapabilityStatement, ServerProfile};
    /// let cs = CapabilityStatement::from_value(serde_json::json!({
    ///     "resourceType": "CapabilityStatement",
    ///     "publisher": "Boston Children's Hospital",
    ///     "software": {"name": "SMART Sample Bulk Data Server", "version": "2.1.0"}
    /// }));
    /// assert_eq!(ServerProfile::suggest(&cs), Some(ServerProfile::SmartReference));
    /// ```
    pub fn suggest(capability: &CapabilityStatement) -> Option<ServerProfile> {
        let fields = [
            capability.software_name.as_deref(),
            capability.publisher.as_deref(),
            capability.name.as_deref(),
        ];
        let text = fields
            .iter()
            .flatten()
            .map(|s| s.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(" | ");
        let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
        if has(&["bulk data server", "bulk-data-server", "smart health it"]) {
            Some(ServerProfile::SmartReference)
        } else if has(&["millennium", "cerner", "oracle health"]) {
            Some(ServerProfile::OracleHealth)
        } else if has(&["epic"]) {
            Some(ServerProfile::Epic)
        } else if has(&["google", "cloud healthcare"]) {
            Some(ServerProfile::GoogleCloudHealthcare)
        } else if has(&["microsoft", "azure"]) {
            Some(ServerProfile::Microsoft)
        } else {
            None
        }
    }

    /// Proposes a profile from the FHIR base URL's host (the vendors' cloud domains);
    /// `None` for any other host.
    pub fn suggest_for_url(base: &Url) -> Option<ServerProfile> {
        let host = base.host_str()?.to_ascii_lowercase();
        let ends = |suffix: &str| host == suffix || host.ends_with(&format!(".{suffix}"));
        if ends("healthcare.googleapis.com") {
            Some(ServerProfile::GoogleCloudHealthcare)
        } else if ends("azurehealthcareapis.com") {
            Some(ServerProfile::Microsoft)
        } else if ends("cerner.com") || ends("oraclecloud.com") {
            Some(ServerProfile::OracleHealth)
        } else if ends("epic.com") {
            Some(ServerProfile::Epic)
        } else {
            None
        }
    }
}

impl fmt::Display for ServerProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServerProfile {
    type Err = Error;

    /// Reads a [`ServerProfile::name`] (case-insensitive; `oracle-health`, `cerner`, `azure`
    /// and `bulk-data-server` are accepted too).
    fn from_str(text: &str) -> Result<ServerProfile> {
        let lower = text.trim().to_ascii_lowercase();
        let alias = match lower.as_str() {
            "oracle-health" | "cerner" => Some(ServerProfile::OracleHealth),
            "google-cloud-healthcare" | "gcp" => Some(ServerProfile::GoogleCloudHealthcare),
            "azure" | "ms" => Some(ServerProfile::Microsoft),
            "smart-reference" | "bulk-data-server" => Some(ServerProfile::SmartReference),
            _ => None,
        };
        alias
            .or_else(|| ALL.iter().copied().find(|p| p.name() == lower))
            .ok_or_else(|| Error::InvalidConfig {
                setting: "server_profile",
                message: format!(
                    "`{text}` is not a server profile; use one of {}",
                    ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip() {
        for p in ServerProfile::all() {
            assert_eq!(p.name().parse::<ServerProfile>().unwrap(), *p);
            assert_eq!(p.to_string(), p.name());
            let text = serde_json::to_string(p).unwrap();
            assert_eq!(text, format!("\"{}\"", p.name()));
        }
        assert_eq!(
            "Cerner".parse::<ServerProfile>().unwrap(),
            ServerProfile::OracleHealth
        );
        let err = "hapi".parse::<ServerProfile>().unwrap_err().to_string();
        assert!(
            err.contains("stu4, oracle, epic, google, microsoft, smart"),
            "{err}"
        );
    }

    #[test]
    fn generic_keeps_the_standard_encodings() {
        let r = ExportRequest::system()
            .types(["Patient", "Observation"])
            .type_filter("Observation?status=final")
            .type_filter("Patient?active=true")
            .until("2024-01-01T00:00:00Z");
        let sent = ServerProfile::Generic.prepare(&r).unwrap();
        assert_eq!(
            sent.query_pairs(),
            [
                ("_type", "Patient,Observation"),
                ("_typeFilter", "Observation?status=final"),
                ("_typeFilter", "Patient?active=true"),
                ("_until", "2024-01-01T00:00:00Z"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn a_request_encoding_overrides_the_profile() {
        let r = ExportRequest::system()
            .types(["Patient", "Observation"])
            .list_encoding(ListEncoding::Repeated);
        let sent = ServerProfile::Generic.prepare(&r).unwrap();
        assert_eq!(sent.query_pairs().len(), 2);
    }

    #[test]
    fn ig_rules_come_first() {
        let err = ServerProfile::Epic
            .prepare(&ExportRequest::system().resource_type("observation"))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { ref parameter, .. } if parameter == "_type"));
    }

    #[test]
    fn retry_after_sources() {
        let now = SystemTime::UNIX_EPOCH;
        let headers = [("retry-after", "5"), ("x-ms-retry-after-ms", "1500")];
        let lookup = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let ms = ServerProfile::Microsoft
            .retry_after(lookup, RetryAfterUnit::Seconds, now)
            .unwrap();
        assert_eq!(ms.delay, Duration::from_millis(1500));
        assert_eq!(ms.source, "x-ms-retry-after-ms");
        let std = ServerProfile::Generic
            .retry_after(lookup, RetryAfterUnit::Seconds, now)
            .unwrap();
        assert_eq!(std.delay, Duration::from_secs(5));
        assert_eq!(std.source, "Retry-After");
        // A Microsoft answer with only the standard header.
        let only = |name: &str| (name == "retry-after").then_some("7");
        let hint = ServerProfile::Microsoft
            .retry_after(only, RetryAfterUnit::Seconds, now)
            .unwrap();
        assert_eq!(
            (hint.delay, hint.source),
            (Duration::from_secs(7), "Retry-After")
        );
        assert_eq!(
            ServerProfile::Generic.retry_after(|_| None, RetryAfterUnit::Seconds, now),
            None
        );
    }

    #[test]
    fn delete_answers() {
        use DeleteOutcome::*;
        for p in ServerProfile::all() {
            assert_eq!(p.delete_outcome(202), Some(Deleted), "{p}");
            assert_eq!(p.delete_outcome(404), Some(AlreadyGone), "{p}");
            assert_eq!(p.delete_outcome(500), None, "{p}");
        }
        assert_eq!(ServerProfile::Generic.delete_outcome(400), None);
        assert_eq!(
            ServerProfile::SmartReference.delete_outcome(400),
            Some(AlreadyGone)
        );
        assert_eq!(
            ServerProfile::GoogleCloudHealthcare.delete_outcome(400),
            Some(AlreadyGone)
        );
        assert!(ServerProfile::Microsoft.delete_may_carry_manifest(200));
        assert!(!ServerProfile::Microsoft.delete_may_carry_manifest(202));
        assert!(!ServerProfile::Generic.delete_may_carry_manifest(200));
    }

    #[test]
    fn file_url_advice() {
        let g = ServerProfile::GoogleCloudHealthcare
            .file_url_advice("gs://bucket/dir/1_Patient.ndjson")
            .unwrap();
        assert!(g.contains("bulkExportGcsDestination"), "{g}");
        let generic = ServerProfile::Generic
            .file_url_advice("gs://bucket/x")
            .unwrap();
        assert!(generic.contains("Google Cloud Storage"), "{generic}");
        assert!(
            ServerProfile::Generic
                .file_url_advice("s3://b/k")
                .unwrap()
                .contains("S3")
        );
        let azure = ServerProfile::Microsoft
            .file_url_advice("https://acct.blob.core.windows.net/c/Patient-1-1.ndjson")
            .unwrap();
        assert!(azure.contains("Azure"), "{azure}");
        assert!(
            ServerProfile::Generic
                .file_url_advice("ftp://x/y")
                .unwrap()
                .contains("ftp")
        );
        assert_eq!(
            ServerProfile::Generic.file_url_advice("https://ehr.example/files/1"),
            None
        );
    }

    fn cs(software: &str, publisher: &str) -> CapabilityStatement {
        CapabilityStatement::from_value(json!({
            "resourceType": "CapabilityStatement",
            "publisher": publisher,
            "software": {"name": software}
        }))
    }

    #[test]
    fn suggestions() {
        let cases = [
            (
                "SMART Sample Bulk Data Server",
                "Boston Children's Hospital",
                Some(ServerProfile::SmartReference),
            ),
            (
                "Millennium",
                "Oracle Health",
                Some(ServerProfile::OracleHealth),
            ),
            (
                "Epic",
                "Epic Systems Corporation",
                Some(ServerProfile::Epic),
            ),
            (
                "Cloud Healthcare API",
                "Google",
                Some(ServerProfile::GoogleCloudHealthcare),
            ),
            (
                "Microsoft FHIR Server",
                "Microsoft",
                Some(ServerProfile::Microsoft),
            ),
            ("HAPI FHIR Server", "Not provided", None),
        ];
        for (software, publisher, expected) in cases {
            assert_eq!(
                ServerProfile::suggest(&cs(software, publisher)),
                expected,
                "{software}"
            );
        }
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            ServerProfile::suggest_for_url(&url(
                "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/fhirStores/s/fhir/"
            )),
            Some(ServerProfile::GoogleCloudHealthcare)
        );
        assert_eq!(
            ServerProfile::suggest_for_url(&url("https://ws-fs.fhir.azurehealthcareapis.com/")),
            Some(ServerProfile::Microsoft)
        );
        assert_eq!(
            ServerProfile::suggest_for_url(&url("https://fhir-ehr.cerner.com/r4/t/")),
            Some(ServerProfile::OracleHealth)
        );
        assert_eq!(
            ServerProfile::suggest_for_url(&url("https://notepic.com.example/")),
            None
        );
    }
}
