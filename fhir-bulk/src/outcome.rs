//! FHIR `OperationOutcome`: the error and warning report servers put in
//! error responses and in the `error` files of a bulk export.
//!
//! Only the parts a client needs are modelled; unknown fields are ignored
//! when parsing and missing ones get lenient defaults, so that a server's
//! error report can almost always be shown to the user.
//!
//! ```
//! use fhir_bulk::outcome::{OperationOutcome, Severity};
//!
//! let body = br#"{"resourceType":"OperationOutcome","issue":[
//!     {"severity":"error","code":"transient","diagnostics":"database busy,\n try later"},
//!     {"severity":"warning","code":"informational","details":{"text":"slow"}}]}"#;
//! let outcome = OperationOutcome::parse(body).unwrap();
//! assert!(outcome.is_transient());
//! assert!(outcome.has_errors());
//! assert_eq!(outcome.max_severity(), Some(&Severity::Error));
//! assert_eq!(
//!     outcome.to_string(),
//!     "error/transient: database busy, try later; warning/informational: slow",
//! );
//!
//! assert!(OperationOutcome::parse(br#"{"resourceType":"Patient"}"#).is_none());
//! ```

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

/// Issue codes that mean "try again later" (the `transient` branch of the
/// FHIR IssueType code system, plus `throttled`).
pub const TRANSIENT_CODES: &[&str] = &[
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
];

/// A FHIR `OperationOutcome` resource.
///
/// Serializes with `"resourceType": "OperationOutcome"`. Deserializing
/// accepts a missing `resourceType` but rejects any other one; use
/// [`OperationOutcome::parse`] to require it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OperationOutcome {
    /// The issues, in the server's order.
    pub issue: Vec<Issue>,
}

/// One issue of an [`OperationOutcome`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// How bad the issue is. A missing severity is read as
    /// `Severity::Other("")`.
    #[serde(default = "missing_severity")]
    pub severity: Severity,
    /// The IssueType code, such as `processing` or `transient` (empty if the
    /// server left it out).
    #[serde(default)]
    pub code: String,
    /// Coded or textual details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<CodeableConcept>,
    /// Free text for humans, often the most useful part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// Deprecated XPath-style locations of the issue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub location: Vec<String>,
    /// FHIRPath expressions locating the issue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

fn missing_severity() -> Severity {
    Severity::Other(String::new())
}

/// A FHIR `CodeableConcept`, reduced to codings and text.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CodeableConcept {
    /// Codes from code systems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    /// Plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A FHIR `Coding`, reduced to system, code and display.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Coding {
    /// The code system URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// The severity of an [`Issue`].
///
/// Ordered from least to most severe: unknown values, `information`,
/// `warning`, `error`, `fatal`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Severity {
    /// `fatal`: the operation failed because of this issue.
    Fatal,
    /// `error`: the operation failed or will fail.
    Error,
    /// `warning`: something might be wrong, but the operation succeeded.
    Warning,
    /// `information`: for the record.
    Information,
    /// Any other value, kept as sent (empty when the server sent none).
    Other(String),
}

impl Severity {
    /// The FHIR code (`fatal`, `error`, ...), or the unknown value as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
            Severity::Other(other) => other,
        }
    }

    /// Whether this is `error` or `fatal`.
    pub fn is_error(&self) -> bool {
        matches!(self, Severity::Fatal | Severity::Error)
    }

    fn rank(&self) -> u8 {
        match self {
            Severity::Other(_) => 0,
            Severity::Information => 1,
            Severity::Warning => 2,
            Severity::Error => 3,
            Severity::Fatal => 4,
        }
    }
}

impl From<&str> for Severity {
    fn from(code: &str) -> Self {
        match code {
            "fatal" => Severity::Fatal,
            "error" => Severity::Error,
            "warning" => Severity::Warning,
            "information" => Severity::Information,
            other => Severity::Other(other.to_owned()),
        }
    }
}

impl Ord for Severity {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Severity::Other(a), Severity::Other(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Severity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Severity {
    /// The FHIR code; an empty unknown value shows as `unknown`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            "" => f.write_str("unknown"),
            code => f.write_str(code),
        }
    }
}

impl Serialize for Severity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeverityVisitor;

        impl Visitor<'_> for SeverityVisitor {
            type Value = Severity;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an issue severity code")
            }

            fn visit_str<E: de::Error>(self, code: &str) -> Result<Severity, E> {
                Ok(Severity::from(code))
            }
        }

        deserializer.deserialize_str(SeverityVisitor)
    }
}

impl Issue {
    /// An issue with the given severity and code and nothing else.
    ///
    /// ```
    /// use fhir_bulk::outcome::{Issue, Severity};
    ///
    /// let issue = Issue::new(Severity::Error, "processing").with_diagnostics("boom");
    /// assert_eq!(issue.to_string(), "error/processing: boom");
    /// ```
    pub fn new(severity: Severity, code: impl Into<String>) -> Self {
        Self {
            severity,
            code: code.into(),
            details: None,
            diagnostics: None,
            location: Vec::new(),
            expression: Vec::new(),
        }
    }

    /// Sets `diagnostics`.
    pub fn with_diagnostics(mut self, diagnostics: impl Into<String>) -> Self {
        self.diagnostics = Some(diagnostics.into());
        self
    }

    /// Whether the code is one of [`TRANSIENT_CODES`].
    pub fn is_transient(&self) -> bool {
        TRANSIENT_CODES.contains(&self.code.as_str())
    }

    /// The best text for humans: `diagnostics`, else `details.text`, else
    /// the display (or code) of the first coding that has one.
    pub fn text(&self) -> Option<&str> {
        if let Some(text) = non_blank(self.diagnostics.as_deref()) {
            return Some(text);
        }
        let details = self.details.as_ref()?;
        non_blank(details.text.as_deref()).or_else(|| {
            details
                .coding
                .iter()
                .find_map(|c| non_blank(c.display.as_deref()).or(non_blank(c.code.as_deref())))
        })
    }
}

fn non_blank(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.trim().is_empty())
}

impl fmt::Display for Issue {
    /// `severity/code: text` on one line (runs of whitespace, including
    /// newlines, in the text become single spaces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.severity)?;
        if self.code.is_empty() {
            f.write_str("unknown")?;
        } else {
            f.write_str(&self.code)?;
        }
        if let Some(text) = self.text() {
            f.write_str(":")?;
            for word in text.split_whitespace() {
                write!(f, " {word}")?;
            }
        }
        Ok(())
    }
}

impl OperationOutcome {
    /// An outcome with the given issues.
    pub fn new(issue: Vec<Issue>) -> Self {
        Self { issue }
    }

    /// Parses a response body or NDJSON line; `None` if it is not a JSON
    /// object with `"resourceType": "OperationOutcome"` (a leading UTF-8
    /// byte order mark is allowed).
    pub fn parse(body: &[u8]) -> Option<OperationOutcome> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let wire: Wire = serde_json::from_slice(body).ok()?;
        if wire.resource_type.as_deref() != Some(RESOURCE_TYPE) {
            return None;
        }
        Some(OperationOutcome { issue: wire.issue })
    }

    /// Whether any issue has a transient code (see [`TRANSIENT_CODES`]), so
    /// that retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.issue.iter().any(Issue::is_transient)
    }

    /// The highest severity among the issues, `None` without issues.
    pub fn max_severity(&self) -> Option<&Severity> {
        self.issue.iter().map(|issue| &issue.severity).max()
    }

    /// Whether any issue is an `error` or `fatal`.
    pub fn has_errors(&self) -> bool {
        self.issue.iter().any(|issue| issue.severity.is_error())
    }

    /// A one-line text for humans, the same as the `Display` output:
    /// `error/processing: text; warning/informational: text`, or
    /// `no issues`.
    pub fn summary(&self) -> String {
        self.to_string()
    }

    /// How many issues of each severity the outcome holds.
    ///
    /// ```
    /// use fhir_bulk::outcome::{Issue, OperationOutcome, Severity};
    /// let oo = OperationOutcome::new(vec![
    ///     Issue::new(Severity::Error, "processing"),
    ///     Issue::new(Severity::Warning, "informational"),
    ///     Issue::new(Severity::Other("odd".into()), "processing"),
    /// ]);
    /// let counts = oo.counts();
    /// assert_eq!((counts.error, counts.warning, counts.other), (1, 1, 1));
    /// assert_eq!(counts.errors(), 1);
    /// ```
    pub fn counts(&self) -> SeverityCounts {
        let mut counts = SeverityCounts::default();
        counts.add(self);
        counts
    }
}

/// Issue counts by severity, of one [`OperationOutcome`] or, added up, of many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeverityCounts {
    /// `fatal` issues.
    pub fatal: u64,
    /// `error` issues.
    pub error: u64,
    /// `warning` issues.
    pub warning: u64,
    /// `information` issues.
    pub information: u64,
    /// Issues of any other (or no) severity.
    pub other: u64,
}

impl SeverityCounts {
    /// Adds the issues of `outcome`.
    pub fn add(&mut self, outcome: &OperationOutcome) {
        for issue in &outcome.issue {
            let slot = match issue.severity {
                Severity::Fatal => &mut self.fatal,
                Severity::Error => &mut self.error,
                Severity::Warning => &mut self.warning,
                Severity::Information => &mut self.information,
                Severity::Other(_) => &mut self.other,
            };
            *slot = slot.saturating_add(1);
        }
    }

    /// `error` and `fatal` issues together.
    pub fn errors(&self) -> u64 {
        self.fatal.saturating_add(self.error)
    }

    /// Every issue.
    pub fn total(&self) -> u64 {
        [
            self.fatal,
            self.error,
            self.warning,
            self.information,
            self.other,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

impl fmt::Display for OperationOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.issue.is_empty() {
            return f.write_str("no issues");
        }
        for (i, issue) in self.issue.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

const RESOURCE_TYPE: &str = "OperationOutcome";

/// The JSON shape of an outcome.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "resourceType", default)]
    resource_type: Option<String>,
    #[serde(default)]
    issue: Vec<Issue>,
}

impl Serialize for OperationOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("OperationOutcome", 2)?;
        state.serialize_field("resourceType", RESOURCE_TYPE)?;
        state.serialize_field("issue", &self.issue)?;
        state.end()
    }
}

impl<'de> Deserialize<'de> for OperationOutcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        match wire.resource_type.as_deref() {
            None | Some(RESOURCE_TYPE) => Ok(OperationOutcome { issue: wire.issue }),
            Some(other) => Err(de::Error::invalid_value(
                de::Unexpected::Str(other),
                &"resourceType OperationOutcome",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(json: &str) -> OperationOutcome {
        OperationOutcome::parse(json.as_bytes()).expect("an OperationOutcome")
    }

    #[test]
    fn parses_a_full_outcome() {
        let o = outcome(
            r#"{
              "resourceType": "OperationOutcome",
              "id": "x",
              "text": {"status": "generated", "div": "<div/>"},
              "issue": [{
                "severity": "error",
                "code": "processing",
                "details": {
                  "coding": [{"system": "http://example.org", "code": "E1", "display": "Bad", "version": "1"}],
                  "text": "Bad thing"
                },
                "diagnostics": "Stack: x",
                "location": ["/f:Patient"],
                "expression": ["Patient.name[0]"],
                "extension": [{"url": "http://example.org/ext", "valueString": "v"}]
              }]
            }"#,
        );
        assert_eq!(o.issue.len(), 1);
        let issue = &o.issue[0];
        assert_eq!(issue.severity, Severity::Error);
        assert_eq!(issue.code, "processing");
        assert_eq!(issue.diagnostics.as_deref(), Some("Stack: x"));
        let details = issue.details.as_ref().unwrap();
        assert_eq!(details.text.as_deref(), Some("Bad thing"));
        assert_eq!(
            details.coding,
            [Coding {
                system: Some("http://example.org".into()),
                code: Some("E1".into()),
                display: Some("Bad".into()),
            }]
        );
        assert_eq!(issue.location, ["/f:Patient"]);
        assert_eq!(issue.expression, ["Patient.name[0]"]);
    }

    #[test]
    fn parse_rejects_other_bodies() {
        for body in [
            &br#"{"resourceType":"Patient","issue":[]}"#[..],
            br#"{"issue":[]}"#,
            b"",
            b"not json",
            b"[]",
            b"<html>502 Bad Gateway</html>",
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":1}]}"#,
            br#"{"resourceType":"OperationOutcome"} trailing"#,
        ] {
            assert!(OperationOutcome::parse(body).is_none(), "{body:?}");
        }
    }

    #[test]
    fn parse_is_lenient_where_it_can_be() {
        let o = outcome("\u{FEFF} {\"resourceType\":\"OperationOutcome\"}\n");
        assert!(o.issue.is_empty());
        assert_eq!(o.to_string(), "no issues");
        assert_eq!(o.max_severity(), None);
        assert!(!o.has_errors());
        assert!(!o.is_transient());

        let o = outcome(r#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"?"}]}"#);
        assert_eq!(o.issue[0].severity, Severity::Other(String::new()));
        assert_eq!(o.to_string(), "unknown/unknown: ?");

        let o = outcome(
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"critical","code":"x"}]}"#,
        );
        assert_eq!(o.issue[0].severity, Severity::Other("critical".into()));
        assert_eq!(o.to_string(), "critical/x");
    }

    #[test]
    fn transient_detection() {
        for code in TRANSIENT_CODES {
            let json = format!(
                r#"{{"resourceType":"OperationOutcome","issue":[
                    {{"severity":"information","code":"informational"}},
                    {{"severity":"error","code":"{code}"}}]}}"#
            );
            assert!(outcome(&json).is_transient(), "{code}");
        }
        for code in [
            "processing",
            "not-found",
            "security",
            "too-costly",
            "Transient",
            "",
        ] {
            let json = format!(
                r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"{code}"}}]}}"#
            );
            assert!(!outcome(&json).is_transient(), "{code}");
        }
    }

    #[test]
    fn severities() {
        let o = OperationOutcome::new(vec![
            Issue::new(Severity::Information, "informational"),
            Issue::new(Severity::Warning, "processing"),
            Issue::new(Severity::Other("odd".into()), "processing"),
        ]);
        assert_eq!(o.max_severity(), Some(&Severity::Warning));
        assert!(!o.has_errors());

        let mut o = o;
        o.issue.push(Issue::new(Severity::Error, "processing"));
        assert_eq!(o.max_severity(), Some(&Severity::Error));
        assert!(o.has_errors());
        o.issue.push(Issue::new(Severity::Fatal, "exception"));
        assert_eq!(o.max_severity(), Some(&Severity::Fatal));

        assert!(Severity::Fatal > Severity::Error);
        assert!(Severity::Error > Severity::Warning);
        assert!(Severity::Warning > Severity::Information);
        assert!(Severity::Information > Severity::Other("zzz".into()));
        for code in ["fatal", "error", "warning", "information", "x"] {
            assert_eq!(Severity::from(code).as_str(), code);
        }
    }

    #[test]
    fn summary_text_sources() {
        let mut issue = Issue::new(Severity::Error, "processing");
        assert_eq!(issue.to_string(), "error/processing");
        issue.details = Some(CodeableConcept {
            coding: vec![
                Coding {
                    code: Some("C".into()),
                    ..Coding::default()
                },
                Coding::default(),
            ],
            text: None,
        });
        assert_eq!(issue.to_string(), "error/processing: C");
        issue.details.as_mut().unwrap().coding.insert(
            0,
            Coding {
                display: Some("Display".into()),
                ..Coding::default()
            },
        );
        assert_eq!(issue.to_string(), "error/processing: Display");
        issue.details.as_mut().unwrap().text = Some("Details text".into());
        assert_eq!(issue.to_string(), "error/processing: Details text");
        issue.diagnostics = Some("  ".into());
        assert_eq!(issue.to_string(), "error/processing: Details text");
        issue.diagnostics = Some(" line one\n\tline two \r\n".into());
        assert_eq!(issue.to_string(), "error/processing: line one line two");

        let o = OperationOutcome::new(vec![
            issue,
            Issue::new(Severity::Warning, "throttled").with_diagnostics("slow down"),
        ]);
        assert_eq!(
            o.summary(),
            "error/processing: line one line two; warning/throttled: slow down"
        );
        assert!(!o.summary().contains('\n'));
    }

    #[test]
    fn serde_round_trip() {
        let o = OperationOutcome::new(vec![
            Issue::new(Severity::Error, "processing").with_diagnostics("boom"),
        ]);
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(
            json,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"boom"}]}"#
        );
        assert_eq!(OperationOutcome::parse(json.as_bytes()), Some(o.clone()));
        assert_eq!(
            serde_json::from_str::<OperationOutcome>(&json).unwrap(),
            o.clone()
        );
        // Without resourceType: fine for serde, not for parse.
        let bare: OperationOutcome = serde_json::from_str(r#"{"issue":[]}"#).unwrap();
        assert!(bare.issue.is_empty());
        assert!(serde_json::from_str::<OperationOutcome>(r#"{"resourceType":"Bundle"}"#).is_err());
    }
}
