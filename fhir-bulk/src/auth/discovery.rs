//! SMART discovery: `[base]/.well-known/smart-configuration`, with the deprecated `oauth-uris`
//! extension of the CapabilityStatement (`[base]/metadata`) as fallback for the token
//! endpoint; and the default scope chosen from what the server advertises.

use super::token_endpoint::Endpoint;
use crate::client::Inner;
use crate::error::{Error, Result};
use crate::secret::redact_url;
use crate::transport::{Call, DOCUMENT_LIMIT, TokenUse};
use reqwest::Method;
use reqwest::header;
use serde_json::Value;
use url::Url;

/// The extension on `CapabilityStatement.rest.security` that lists OAuth endpoints.
pub(super) const OAUTH_URIS: &str =
    "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// What the server advertises.
#[derive(Debug, Clone, Default)]
pub(super) struct Discovery {
    /// The token endpoint, resolved against the FHIR base.
    pub(super) token_endpoint: Option<Endpoint>,
    /// `scopes_supported` of the smart-configuration.
    pub(super) scopes_supported: Option<Vec<String>>,
    /// `capabilities` of the smart-configuration.
    pub(super) capabilities: Vec<String>,
    /// `token_endpoint_auth_methods_supported` of the smart-configuration.
    pub(super) auth_methods: Option<Vec<String>>,
    /// What was tried, for error messages.
    pub(super) notes: Vec<String>,
}

impl Discovery {
    /// The scope to request when none was configured: v2 `system/*.rs` or v1
    /// `system/*.read`, by `scopes_supported` first, then by `permission-v2`/`-v1`; v1 when
    /// the server says nothing.
    pub(super) fn default_scope(&self) -> &'static str {
        const V1: &str = "system/*.read";
        const V2: &str = "system/*.rs";
        if let Some(scopes) = &self.scopes_supported {
            if scopes.iter().any(|s| s == V2) {
                return V2;
            }
            if scopes.iter().any(|s| s == V1) {
                return V1;
            }
        }
        if self.capabilities.iter().any(|c| c == "permission-v2") {
            V2
        } else {
            V1
        }
    }
}

/// Fetches the smart-configuration; when it gives no token endpoint and `need_token` is set,
/// falls back to the CapabilityStatement. Fails only when `need_token` is set and no token
/// endpoint was found.
pub(super) async fn discover(inner: &Inner, base: &Url, need_token: bool) -> Result<Discovery> {
    let mut found = Discovery::default();
    let smart_url = join(base, ".well-known/smart-configuration")?;
    match get_json(inner, &smart_url, "application/json").await {
        Ok(Value::Object(config)) => {
            let strings = |field: &str| -> Option<Vec<String>> {
                config.get(field).and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
            };
            found.scopes_supported = strings("scopes_supported");
            found.capabilities = strings("capabilities").unwrap_or_default();
            found.auth_methods = strings("token_endpoint_auth_methods_supported");
            match config.get("token_endpoint").and_then(Value::as_str) {
                Some(text) => match Endpoint::resolve(text, Some(base)) {
                    Some(endpoint) => found.token_endpoint = Some(endpoint),
                    None => found.notes.push(format!(
                        "{} has a `token_endpoint` that is not a URL",
                        redact_url(&smart_url)
                    )),
                },
                None => found.notes.push(format!(
                    "{} has no `token_endpoint`",
                    redact_url(&smart_url)
                )),
            }
        }
        Ok(_) => found
            .notes
            .push(format!("{} is not a JSON object", redact_url(&smart_url))),
        Err(note) => found.notes.push(note),
    }
    if found.token_endpoint.is_some() || !need_token {
        log_found(&found);
        return Ok(found);
    }
    let metadata_url = join(base, "metadata")?;
    match get_json(inner, &metadata_url, "application/fhir+json").await {
        Ok(statement) => match oauth_token_uri(&statement) {
            Some(text) => match Endpoint::resolve(text, Some(base)) {
                Some(endpoint) => found.token_endpoint = Some(endpoint),
                None => found.notes.push(format!(
                    "the CapabilityStatement at {} has an oauth-uris `token` that is not a URL",
                    redact_url(&metadata_url)
                )),
            },
            None => found.notes.push(format!(
                "the CapabilityStatement at {} has no oauth-uris extension with a `token` \
                 endpoint",
                redact_url(&metadata_url)
            )),
        },
        Err(note) => found.notes.push(note),
    }
    if found.token_endpoint.is_some() {
        log_found(&found);
        return Ok(found);
    }
    Err(Error::Auth {
        message: format!(
            "cannot find the token endpoint: {}. Give it with `token_url`",
            found.notes.join("; ")
        ),
        response: None,
    })
}

fn log_found(found: &Discovery) {
    tracing::info!(
        target: "fhir_bulk::auth",
        token_endpoint = found.token_endpoint.as_ref().map(|e| redact_url(&e.url)).as_deref(),
        "smart discovery"
    );
}

fn join(base: &Url, path: &str) -> Result<Url> {
    base.join(path).map_err(|e| Error::Auth {
        message: format!(
            "cannot build the discovery URL from {}: {e}",
            redact_url(base)
        ),
        response: None,
    })
}

/// The `token` URI of the `oauth-uris` extension on `rest[].security`.
pub(super) fn oauth_token_uri(statement: &Value) -> Option<&str> {
    let rests = statement.get("rest")?.as_array()?;
    rests
        .iter()
        .filter_map(|rest| rest.get("security")?.get("extension")?.as_array())
        .flatten()
        .filter(|ext| ext.get("url").and_then(Value::as_str) == Some(OAUTH_URIS))
        .filter_map(|ext| ext.get("extension")?.as_array())
        .flatten()
        .find(|sub| sub.get("url").and_then(Value::as_str) == Some("token"))
        .and_then(|sub| sub.get("valueUri").or_else(|| sub.get("valueUrl")))
        .and_then(Value::as_str)
}

/// GETs a JSON document without credentials through the client's send path (redirects
/// checked per hop, retries, bounded body). The error is a note for the final message.
async fn get_json(
    inner: &Inner,
    url: &Url,
    accept: &'static str,
) -> std::result::Result<Value, String> {
    let mut call = Call::new("SMART discovery", Method::GET, url.clone())
        .what("discovery")
        .header(header::ACCEPT, accept);
    call.token = TokenUse::Never;
    call.limit = DOCUMENT_LIMIT;
    let answer = inner.request(&call).await.map_err(|e| e.to_string())?;
    if !(200..300).contains(&answer.status) {
        return Err(format!(
            "{} answered HTTP {}",
            redact_url(&answer.url),
            answer.status
        ));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|_| format!("{} did not answer with JSON", redact_url(&answer.url)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scope_choice() {
        let mut d = Discovery::default();
        assert_eq!(d.default_scope(), "system/*.read");
        d.capabilities = vec!["permission-v1".into()];
        assert_eq!(d.default_scope(), "system/*.read");
        d.capabilities = vec!["permission-v1".into(), "permission-v2".into()];
        assert_eq!(d.default_scope(), "system/*.rs");
        d.scopes_supported = Some(vec!["system/*.read".into()]);
        assert_eq!(d.default_scope(), "system/*.read");
        d.scopes_supported = Some(vec!["system/*.read".into(), "system/*.rs".into()]);
        assert_eq!(d.default_scope(), "system/*.rs");
        d.capabilities.clear();
        d.scopes_supported = Some(vec!["launch".into()]);
        assert_eq!(d.default_scope(), "system/*.read");
    }

    #[test]
    fn oauth_uris_token() {
        let statement = json!({
            "resourceType": "CapabilityStatement",
            "rest": [
                {"mode": "server"},
                {"mode": "server", "security": {"extension": [
                    {"url": "http://example.org/other", "valueString": "x"},
                    {"url": OAUTH_URIS, "extension": [
                        {"url": "authorize", "valueUri": "https://auth.example/authorize"},
                        {"url": "token", "valueUri": "https://auth.example/token"}
                    ]}
                ]}}
            ]
        });
        assert_eq!(
            oauth_token_uri(&statement),
            Some("https://auth.example/token")
        );
        assert_eq!(oauth_token_uri(&json!({"rest": "nope"})), None);
        assert_eq!(oauth_token_uri(&json!([])), None);
    }
}
