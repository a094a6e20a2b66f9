//! The server's CapabilityStatement (`[base]/metadata`): what it runs and which operations it
//! offers, for logs and for checking support before a kick-off.

use crate::client::BulkClient;
use crate::error::{Error, Result};
use crate::secret::redact_url;
use crate::transport::Call;
use reqwest::Method;
use reqwest::header::ACCEPT;
use serde_json::Value;

/// The facts of a CapabilityStatement this crate reads, and the whole resource.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityStatement {
    /// `software.name`.
    pub software_name: Option<String>,
    /// `software.version`.
    pub software_version: Option<String>,
    /// `software.releaseDate`.
    pub software_release_date: Option<String>,
    /// `name`: the statement's computer-friendly name.
    pub name: Option<String>,
    /// `publisher`: the organization that published the statement.
    pub publisher: Option<String>,
    /// `fhirVersion`, e.g. `4.0.1`.
    pub fhir_version: Option<String>,
    /// The names of the operations in `rest[].operation[]` and `rest[].resource[].operation[]`
    /// (e.g. `export`, `patient-export`, `group-export`).
    pub operations: Vec<String>,
    /// The resource as received.
    pub raw: Value,
}

impl CapabilityStatement {
    /// Reads the facts out of a CapabilityStatement resource.
    pub fn from_value(raw: Value) -> CapabilityStatement {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let mut operations = Vec::new();
        for rest in raw["rest"].as_array().into_iter().flatten() {
            let nested = rest["resource"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["operation"].as_array().into_iter().flatten());
            for op in rest["operation"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(nested)
            {
                if let Some(name) = op["name"].as_str()
                    && !operations.iter().any(|o| o == name)
                {
                    operations.push(name.to_owned());
                }
            }
        }
        CapabilityStatement {
            software_name: text(&raw["software"]["name"]),
            software_version: text(&raw["software"]["version"]),
            software_release_date: text(&raw["software"]["releaseDate"]),
            name: text(&raw["name"]),
            publisher: text(&raw["publisher"]),
            fhir_version: text(&raw["fhirVersion"]),
            operations,
            raw,
        }
    }
}

impl CapabilityStatement {
    /// The server profile its software, publisher or name suggests
    /// ([`ServerProfile::suggest`](crate::ServerProfile::suggest)).
    pub fn suggested_profile(&self) -> Option<crate::ServerProfile> {
        crate::ServerProfile::suggest(self)
    }
}

impl BulkClient {
    /// Fetches `[base]/metadata`, retrying transient failures under the client's
    /// [`RetryPolicy`](crate::RetryPolicy).
    pub async fn capability_statement(&self) -> Result<CapabilityStatement> {
        let mut ctx = self.inner.retry_context();
        self.capability_statement_in(&mut ctx).await
    }

    /// [`BulkClient::capability_statement`] within a budget of time (see
    /// [`BulkClient::capability_statement_within`]).
    pub(crate) async fn capability_statement_in(
        &self,
        ctx: &mut crate::transport::retry::RetryContext,
    ) -> Result<CapabilityStatement> {
        let inner = &self.inner;
        let url = inner
            .base
            .join("metadata")
            .map_err(|e| Error::InvalidConfig {
                setting: "base_url",
                message: format!("cannot build the metadata URL: {e}"),
            })?;
        let call = Call::new("the CapabilityStatement request", Method::GET, url)
            .what("capability statement")
            .header(ACCEPT, "application/fhir+json");
        let answer = inner.request_in(&call, ctx).await?;
        if answer.status != 200 {
            return Err(inner.unexpected("the CapabilityStatement request", &answer));
        }
        let raw: Value = serde_json::from_slice(&answer.body).map_err(|e| Error::BadManifest {
            url: redact_url(&answer.url),
            message: format!("the CapabilityStatement is not JSON: {e}"),
            source: Some(Box::new(e)),
        })?;
        if raw["resourceType"] != "CapabilityStatement" {
            return Err(Error::UnexpectedResponse {
                context: "the CapabilityStatement request",
                response: Box::new(answer.error_response(inner)),
            });
        }
        Ok(CapabilityStatement::from_value(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_software_version_and_operations() {
        let cs = CapabilityStatement::from_value(json!({
            "resourceType": "CapabilityStatement",
            "fhirVersion": "4.0.1",
            "name": "CernerMillennium",
            "publisher": "Oracle Health",
            "software": {"name": "Millennium", "version": "2024.1", "releaseDate": "2024-02-01"},
            "rest": [{
                "mode": "server",
                "operation": [{"name": "export", "definition": "x"}],
                "resource": [
                    {"type": "Patient", "operation": [{"name": "patient-export"}]},
                    {"type": "Group", "operation": [{"name": "group-export"}, {"name": "export"}]}
                ]
            }]
        }));
        assert_eq!(cs.software_name.as_deref(), Some("Millennium"));
        assert_eq!(cs.software_version.as_deref(), Some("2024.1"));
        assert_eq!(cs.software_release_date.as_deref(), Some("2024-02-01"));
        assert_eq!(cs.fhir_version.as_deref(), Some("4.0.1"));
        assert_eq!(cs.name.as_deref(), Some("CernerMillennium"));
        assert_eq!(cs.publisher.as_deref(), Some("Oracle Health"));
        assert_eq!(
            cs.suggested_profile(),
            Some(crate::ServerProfile::OracleHealth)
        );
        assert_eq!(cs.operations, ["export", "patient-export", "group-export"]);
        let empty = CapabilityStatement::from_value(json!({"resourceType": "CapabilityStatement"}));
        assert_eq!(empty.software_name, None);
        assert!(empty.operations.is_empty());
    }
}
