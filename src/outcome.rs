//! FHIR `OperationOutcome`, as servers send it in error bodies and error files.
//!
//! Provisional minimal version; replaced by the full one from the ndjson work.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A FHIR `OperationOutcome` resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationOutcome {
    /// The issues it reports.
    #[serde(default)]
    pub issue: Vec<Issue>,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    /// `fatal`, `error`, `warning` or `information`.
    pub severity: String,
    /// The IssueType code, e.g. `processing` or `transient`.
    pub code: String,
    /// Free text from the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
}

const TRANSIENT: [&str; 7] = [
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
];

impl OperationOutcome {
    /// Parses a body; `None` when it is not an OperationOutcome.
    pub fn parse(body: &[u8]) -> Option<OperationOutcome> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "resourceType")]
            resource_type: String,
            #[serde(default)]
            issue: Vec<Issue>,
        }
        let probe: Probe = serde_json::from_slice(body).ok()?;
        (probe.resource_type == "OperationOutcome")
            .then_some(OperationOutcome { issue: probe.issue })
    }

    /// Whether any issue has a transient IssueType code.
    pub fn is_transient(&self) -> bool {
        self.issue
            .iter()
            .any(|i| TRANSIENT.contains(&i.code.as_str()))
    }

    /// Whether any issue is an `error` or `fatal`.
    pub fn has_errors(&self) -> bool {
        self.issue
            .iter()
            .any(|i| i.severity == "error" || i.severity == "fatal")
    }
}

impl fmt::Display for OperationOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, i) in self.issue.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}/{}", i.severity, i.code)?;
            if let Some(d) = &i.diagnostics {
                write!(f, ": {d}")?;
            }
        }
        Ok(())
    }
}
