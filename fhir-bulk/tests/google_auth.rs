//! Google OAuth: a service-account key signs a token request (RS256 JWT bearer grant) that a
//! test token endpoint verifies with the public key; authorized_user refresh, the metadata
//! server and an external command; secrets never in Debug or errors.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use fhir_bulk::auth::{CLOUD_PLATFORM_SCOPE, GoogleAuth};
use fhir_bulk::{BulkClient, Error, ExportRequest};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const CLIENT_EMAIL: &str = "exporter@my-project.iam.gserviceaccount.com";

fn key_pem(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn service_account_json(token_uri: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "0123456789abcdef",
        "private_key": key_pem("rsa-private.pem"),
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
        "token_uri": token_uri,
    })
    .to_string()
}

fn form(request: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect()
}

/// The token endpoint of the test: verifies the grant and the assertion, as Google does,
/// and answers 400 `invalid_grant` with the reason when anything is wrong.
fn verifying_token_endpoint(audience: String) -> impl Fn(&Request) -> ResponseTemplate {
    move |request: &Request| {
        let refuse = |why: String| {
            ResponseTemplate::new(400).set_body_json(
                serde_json::json!({"error": "invalid_grant", "error_description": why}),
            )
        };
        let fields = form(request);
        if fields.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return refuse(format!("grant_type {:?}", fields.get("grant_type")));
        }
        let Some(assertion) = fields.get("assertion") else {
            return refuse("no assertion".into());
        };
        let key = DecodingKey::from_rsa_pem(key_pem("rsa-public.pem").as_bytes()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[audience.as_str()]);
        validation.set_issuer(&[CLIENT_EMAIL]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        let data = match jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation) {
            Ok(data) => data,
            Err(e) => return refuse(format!("assertion: {e}")),
        };
        if data.header.kid.as_deref() != Some("0123456789abcdef") {
            return refuse("kid".into());
        }
        let claims = data.claims;
        if claims["scope"] != CLOUD_PLATFORM_SCOPE {
            return refuse(format!("scope {}", claims["scope"]));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let iat = claims["iat"].as_u64().unwrap_or(0);
        let exp = claims["exp"].as_u64().unwrap_or(0);
        if iat.abs_diff(now) > 120 || exp != iat + 3600 {
            return refuse(format!("iat {iat} exp {exp} now {now}"));
        }
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "ya29.google-token",
            "expires_in": 3599,
            "token_type": "Bearer"
        }))
    }
}

#[tokio::test]
async fn a_service_account_key_signs_a_token_request_the_endpoint_verifies() {
    let server = MockServer::start().await;
    let token_uri = format!("{}/token", server.uri());
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(verifying_token_endpoint(token_uri.clone()))
        .expect(1)
        .mount(&server)
        .await;
    // The FHIR server accepts only the Google token.
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .and(header("authorization", "Bearer ya29.google-token"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Content-Location", format!("{}/fhir/jobs/1", server.uri())),
        )
        .expect(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sa.json");
    std::fs::write(&key_file, service_account_json(&token_uri)).unwrap();
    let auth = GoogleAuth::service_account_key_file(&key_file).unwrap();
    let debug = format!("{auth:?}");
    assert!(debug.contains(CLIENT_EMAIL), "{debug}");
    assert!(
        !debug.contains("PRIVATE KEY") && !debug.contains("MII"),
        "{debug}"
    );
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(auth)
        .build()
        .unwrap();
    // Two kick-offs, one token request (cached).
    for _ in 0..2 {
        client.kick_off(&ExportRequest::system()).await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_token_request_says_why_without_secrets() {
    let server = MockServer::start().await;
    // The endpoint expects another audience: the assertion is refused.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(verifying_token_endpoint(
            "https://other.example/token".into(),
        ))
        .mount(&server)
        .await;
    let token_uri = format!("{}/token", server.uri());
    let auth = GoogleAuth::credentials_json(service_account_json(&token_uri)).unwrap();
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(auth)
        .build()
        .unwrap();
    let err = client.kick_off(&ExportRequest::system()).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("HTTP 400") && text.contains("InvalidAudience"),
        "{text}"
    );
    assert!(text.contains(CLIENT_EMAIL), "{text}");
    let requests = server.received_requests().await.unwrap();
    let assertion = form(&requests[0])["assertion"].clone();
    assert!(!text.contains(&assertion) && !format!("{err:?}").contains(&assertion));
}

#[tokio::test]
async fn authorized_user_credentials_refresh_their_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(|request: &Request| {
            let f = form(request);
            let ok = f.get("grant_type").map(String::as_str) == Some("refresh_token")
                && f.get("refresh_token").map(String::as_str) == Some("1//refresh-secret")
                && f.get("client_id").map(String::as_str) == Some("cid.apps.googleusercontent.com")
                && f.get("client_secret").map(String::as_str) == Some("client-secret");
            if ok {
                ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "access_token": "ya29.user-token", "expires_in": 3599, "token_type": "Bearer"
                }))
            } else {
                ResponseTemplate::new(400)
                    .set_body_json(serde_json::json!({"error": "invalid_grant"}))
            }
        })
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .and(header("authorization", "Bearer ya29.user-token"))
        .respond_with(ResponseTemplate::new(202).insert_header("Content-Location", "jobs/1"))
        .expect(1)
        .mount(&server)
        .await;
    let json = serde_json::json!({
        "type": "authorized_user",
        "client_id": "cid.apps.googleusercontent.com",
        "client_secret": "client-secret",
        "refresh_token": "1//refresh-secret",
        "token_uri": format!("{}/oauth/token", server.uri()),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("application_default_credentials.json");
    std::fs::write(&file, json.to_string()).unwrap();
    let auth = GoogleAuth::credentials_file(&file).unwrap();
    let debug = format!("{auth:?}");
    assert!(
        !debug.contains("refresh-secret") && !debug.contains("client-secret"),
        "{debug}"
    );
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(auth)
        .build()
        .unwrap();
    client.kick_off(&ExportRequest::system()).await.unwrap();
}

#[tokio::test]
async fn the_metadata_server_is_asked_with_its_flavor_header() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(
            "/computeMetadata/v1/instance/service-accounts/default/token",
        ))
        .and(header("metadata-flavor", "Google"))
        .and(query_param("scopes", CLOUD_PLATFORM_SCOPE))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "ya29.metadata-token", "expires_in": 3599, "token_type": "Bearer"
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .and(header("authorization", "Bearer ya29.metadata-token"))
        .respond_with(ResponseTemplate::new(202).insert_header("Content-Location", "jobs/1"))
        .expect(1)
        .mount(&server)
        .await;
    let auth = GoogleAuth::metadata_server_at(server.uri()).unwrap();
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(auth)
        .build()
        .unwrap();
    client.kick_off(&ExportRequest::system()).await.unwrap();
}

#[tokio::test]
async fn an_external_command_prints_the_token() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/$export"))
        .and(header("authorization", "Bearer ya29.from-command"))
        .respond_with(ResponseTemplate::new(202).insert_header("Content-Location", "jobs/1"))
        .expect(1)
        .mount(&server)
        .await;
    let auth = GoogleAuth::command("sh", ["-c", "echo ya29.from-command"]);
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(auth)
        .build()
        .unwrap();
    client.kick_off(&ExportRequest::system()).await.unwrap();

    let failing = GoogleAuth::command("sh", ["-c", "echo not logged in >&2; exit 3"]);
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(failing)
        .build()
        .unwrap();
    let err = client
        .kick_off(&ExportRequest::system())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not logged in") && err.contains("failed"),
        "{err}"
    );
}
