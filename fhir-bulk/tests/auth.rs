//! Authorization providers against a wiremock token endpoint and FHIR server: the signed
//! assertion (checked with the public key), discovery, scope choice, client secrets,
//! caching, refresh, single flight, OAuth errors, retries and redaction.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use fhir_bulk::auth::{
    AuthProvider, ClientSecretAuth, ClientSecretMethod, SigningAlgorithm, SmartBackendAuth,
    SmartBackendAuthBuilder, TokenFn,
};
use fhir_bulk::{AccessToken, BulkClient, DeleteOutcome, Error, ExportJob, PollStatus};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const CLIENT_ID: &str = "bulk-client-42";
const TOKEN_PATH: &str = "/auth/token";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap()
}

fn fixture_path(name: &str) -> String {
    format!("{}/../fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn token_url(server: &MockServer) -> String {
    format!("{}{TOKEN_PATH}", server.uri())
}

fn client(server: &MockServer, auth: impl AuthProvider + 'static) -> BulkClient {
    BulkClient::builder(format!("{}/fhir", server.uri()))
        .auth(auth)
        .build()
        .unwrap()
}

fn job(client: &BulkClient, server: &MockServer) -> ExportJob {
    client
        .job_at(&format!("{}/fhir/jobs/1", server.uri()))
        .unwrap()
}

/// The FHIR status endpoint: 202 in progress for the given token.
async fn mount_status(server: &MockServer, token: &str) {
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(ResponseTemplate::new(202).insert_header("X-Progress", "in progress"))
        .mount(server)
        .await;
}

/// A token endpoint answering `tok-1`, `tok-2`, ... in turn.
struct TokenSeq {
    count: AtomicUsize,
    expires_in: Option<u64>,
    delay: Duration,
}

impl TokenSeq {
    fn new(expires_in: Option<u64>) -> TokenSeq {
        TokenSeq {
            count: AtomicUsize::new(0),
            expires_in,
            delay: Duration::ZERO,
        }
    }
}

impl Respond for TokenSeq {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let mut body = json!({"access_token": format!("tok-{n}"), "token_type": "Bearer"});
        if let Some(expires_in) = self.expires_in {
            body["expires_in"] = json!(expires_in);
        }
        ResponseTemplate::new(200)
            .set_body_json(body)
            .set_delay(self.delay)
    }
}

async fn mount_tokens(server: &MockServer, tokens: TokenSeq) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(tokens)
        .mount(server)
        .await;
}

async fn requests_to(server: &MockServer, at: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == at)
        .collect()
}

fn form(request: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks the token request's form and the assertion's signature, header and claims;
/// returns the claims.
fn check_assertion(
    request: &Request,
    public_pem: &str,
    alg: Algorithm,
    kid: &str,
    audience: &str,
    scope: &str,
) -> Value {
    assert!(
        request.headers.get("authorization").is_none(),
        "the token endpoint must not receive a bearer token"
    );
    let content_type = request
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(content_type, "application/x-www-form-urlencoded");
    let form = form(request);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], scope);
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    let jwt = &form["client_assertion"];
    let head = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(head.alg, alg);
    assert_eq!(head.kid.as_deref(), Some(kid));
    assert_eq!(head.typ.as_deref(), Some("JWT"));
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
    }
    .unwrap();
    let mut validation = Validation::new(alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.sub = Some(CLIENT_ID.to_owned());
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["iss"], CLIENT_ID);
    assert_eq!(claims["sub"], CLIENT_ID);
    assert_eq!(claims["aud"], audience, "aud must be the exact token URL");
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(exp <= now() + 300, "exp at most 5 minutes ahead");
    assert!(exp > now() + 60, "exp not already due");
    assert!(exp - iat <= 300);
    assert!(iat <= now() + 1 && iat + 60 >= now());
    let jti = claims["jti"].as_str().unwrap();
    assert!(
        jti.len() >= 32,
        "jti carries at least 16 random bytes: {jti}"
    );
    claims
}

fn smart(key: &str) -> SmartBackendAuthBuilder {
    SmartBackendAuth::builder(CLIENT_ID).private_key_pem(fixture(key))
}

#[tokio::test]
async fn rs384_pem_assertion_is_signed_and_complete() {
    let server = MockServer::start().await;
    mount_tokens(&server, TokenSeq::new(Some(300))).await;
    mount_status(&server, "tok-1").await;
    let auth = smart("rsa-private.pem")
        .kid("test-rsa-1")
        .jku("https://client.example/jwks.json")
        .token_url(token_url(&server))
        .scope("system/Patient.read system/Observation.read")
        .build()
        .unwrap();
    assert_eq!(auth.algorithm(), SigningAlgorithm::Rs384);
    let client = client(&server, auth);
    let status = job(&client, &server).poll().await.unwrap();
    assert!(matches!(status, PollStatus::InProgress(_)));
    let token_requests = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(token_requests.len(), 1);
    check_assertion(
        &token_requests[0],
        &fixture("rsa-public.pem"),
        Algorithm::RS384,
        "test-rsa-1",
        &token_url(&server),
        "system/Patient.read system/Observation.read",
    );
    let jwt = &form(&token_requests[0])["client_assertion"];
    let head = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(
        head.jku.as_deref(),
        Some("https://client.example/jwks.json")
    );
}

#[tokio::test]
async fn es384_jwks_assertion_with_a_fresh_jti_per_request() {
    let server = MockServer::start().await;
    mount_tokens(&server, TokenSeq::new(Some(300))).await;
    // The first token is rejected once, so a second token request follows.
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    mount_status(&server, "tok-2").await;
    let auth = SmartBackendAuth::builder(CLIENT_ID)
        .jwks(fixture("private-jwks.json"))
        .kid("test-ec-1")
        .token_url(token_url(&server))
        .scope("system/*.rs")
        .build()
        .unwrap();
    assert_eq!(auth.algorithm(), SigningAlgorithm::Es384);
    assert_eq!(auth.kid(), "test-ec-1");
    let client = client(&server, auth);
    job(&client, &server).poll().await.unwrap();
    let token_requests = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(token_requests.len(), 2);
    let jtis: HashSet<String> = token_requests
        .iter()
        .map(|r| {
            let claims = check_assertion(
                r,
                &fixture("ec-p384-public.pem"),
                Algorithm::ES384,
                "test-ec-1",
                &token_url(&server),
                "system/*.rs",
            );
            claims["jti"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 2, "every assertion has its own jti");
}

/// Signs with every supported input form and algorithm, so a missing or doubled crypto
/// backend in jsonwebtoken fails here.
#[tokio::test]
async fn every_key_form_and_algorithm_signs_verifiably() {
    let cases: Vec<(&str, SmartBackendAuthBuilder, &str, Algorithm, &str)> = vec![
        (
            "RSA PKCS#8 PEM",
            smart("rsa-private.pem").kid("k-rsa"),
            "rsa-public.pem",
            Algorithm::RS384,
            "k-rsa",
        ),
        (
            "RSA PKCS#1 PEM",
            smart("rsa-private-pkcs1.pem").kid("k-rsa"),
            "rsa-public.pem",
            Algorithm::RS384,
            "k-rsa",
        ),
        (
            "RSA PEM, PS384",
            smart("rsa-private.pem")
                .kid("k-rsa")
                .algorithm(SigningAlgorithm::Ps384),
            "rsa-public.pem",
            Algorithm::PS384,
            "k-rsa",
        ),
        (
            "RSA JWK",
            SmartBackendAuth::builder(CLIENT_ID)
                .jwks_file(fixture_path("private-jwks.json"))
                .kid("test-rsa-1"),
            "rsa-public.pem",
            Algorithm::RS384,
            "test-rsa-1",
        ),
        (
            "EC P-384 PKCS#8 PEM",
            smart("ec-p384-private.pem").kid("k-ec"),
            "ec-p384-public.pem",
            Algorithm::ES384,
            "k-ec",
        ),
        (
            "EC P-384 SEC 1 PEM file",
            SmartBackendAuth::builder(CLIENT_ID)
                .private_key_pem_file(fixture_path("ec-p384-private-sec1.pem"))
                .kid("k-ec"),
            "ec-p384-public.pem",
            Algorithm::ES384,
            "k-ec",
        ),
        (
            "EC P-384 JWK selected by algorithm",
            SmartBackendAuth::builder(CLIENT_ID)
                .jwks(fixture("private-jwks.json"))
                .algorithm(SigningAlgorithm::Es384),
            "ec-p384-public.pem",
            Algorithm::ES384,
            "test-ec-1",
        ),
        (
            "EC P-256 PEM",
            smart("ec-p256-private.pem").kid("k-p256"),
            "ec-p256-public.pem",
            Algorithm::ES256,
            "k-p256",
        ),
    ];
    for (name, builder, public, alg, kid) in cases {
        let server = MockServer::start().await;
        mount_tokens(&server, TokenSeq::new(None)).await;
        mount_status(&server, "tok-1").await;
        let auth = builder
            .token_url(token_url(&server))
            .scope("system/*.read")
            .build()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let client = client(&server, auth);
        job(&client, &server)
            .poll()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let requests = requests_to(&server, TOKEN_PATH).await;
        assert_eq!(requests.len(), 1, "{name}");
        check_assertion(
            &requests[0],
            &fixture(public),
            alg,
            kid,
            &token_url(&server),
            "system/*.read",
        );
    }
}

#[tokio::test]
async fn discovery_resolves_a_relative_token_endpoint_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/.well-known/smart-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_endpoint": "../auth/token",
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "capabilities": ["client-confidential-asymmetric", "permission-v2"]
        })))
        .expect(1)
        .mount(&server)
        .await;
    mount_tokens(&server, TokenSeq::new(Some(300))).await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    mount_status(&server, "tok-2").await;
    let auth = smart("ec-p384-private.pem").kid("k").build().unwrap();
    let client = client(&server, auth);
    job(&client, &server).poll().await.unwrap();
    let requests = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(requests.len(), 2, "two tokens, one discovery");
    for request in &requests {
        check_assertion(
            request,
            &fixture("ec-p384-public.pem"),
            Algorithm::ES384,
            "k",
            &token_url(&server),
            "system/*.rs",
        );
    }
}

#[tokio::test]
async fn discovery_falls_back_to_the_capability_statement() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/.well-known/smart-configuration"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/metadata"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "resourceType": "CapabilityStatement",
            "rest": [{"mode": "server", "security": {"extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": format!("{}/auth/authorize", server.uri())},
                    {"url": "token", "valueUri": token_url(&server)}
                ]
            }]}}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    mount_tokens(&server, TokenSeq::new(Some(300))).await;
    mount_status(&server, "tok-1").await;
    let auth = smart("rsa-private.pem").kid("k").build().unwrap();
    let client = client(&server, auth);
    job(&client, &server).poll().await.unwrap();
    let requests = requests_to(&server, TOKEN_PATH).await;
    check_assertion(
        &requests[0],
        &fixture("rsa-public.pem"),
        Algorithm::RS384,
        "k",
        &token_url(&server),
        "system/*.read",
    );
}

#[tokio::test]
async fn no_token_endpoint_anywhere_is_a_clear_error() {
    let server = MockServer::start().await;
    let auth = smart("rsa-private.pem").kid("k").build().unwrap();
    let client = client(&server, auth);
    let err = job(&client, &server).poll().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("smart-configuration"), "{text}");
    assert!(text.contains("token_url"), "{text}");
}

#[tokio::test]
async fn default_scope_follows_what_the_server_advertises() {
    let cases = [
        (
            Some(json!({"capabilities": ["permission-v1"]})),
            "system/*.read",
        ),
        (
            Some(json!({"capabilities": ["permission-v2"]})),
            "system/*.rs",
        ),
        (
            Some(json!({"capabilities": ["permission-v2"], "scopes_supported": ["system/*.read"]})),
            "system/*.read",
        ),
        (
            Some(json!({"scopes_supported": ["openid", "system/*.rs"]})),
            "system/*.rs",
        ),
        (None, "system/*.read"),
    ];
    for (config, expected) in cases {
        let server = MockServer::start().await;
        if let Some(mut config) = config.clone() {
            config["token_endpoint"] = json!(token_url(&server));
            Mock::given(method("GET"))
                .and(path("/fhir/.well-known/smart-configuration"))
                .respond_with(ResponseTemplate::new(200).set_body_json(config))
                .mount(&server)
                .await;
        }
        mount_tokens(&server, TokenSeq::new(Some(300))).await;
        mount_status(&server, "tok-1").await;
        // With a given token URL, discovery only informs the scope: a 404 means v1.
        let auth = ClientSecretAuth::builder("c", "s")
            .token_url(token_url(&server))
            .build()
            .unwrap();
        let client = client(&server, auth);
        job(&client, &server).poll().await.unwrap();
        let requests = requests_to(&server, TOKEN_PATH).await;
        assert_eq!(form(&requests[0])["scope"], expected, "{config:?}");
    }
}

#[tokio::test]
async fn client_secret_basic_and_post_wire_formats() {
    for method_kind in [ClientSecretMethod::Basic, ClientSecretMethod::Post] {
        let server = MockServer::start().await;
        mount_tokens(&server, TokenSeq::new(Some(300))).await;
        mount_status(&server, "tok-1").await;
        let mut builder = ClientSecretAuth::builder("my client", "s3cr3t:&=")
            .token_url(token_url(&server))
            .scopes(["system/Patient.read", "system/Group.read"]);
        if method_kind == ClientSecretMethod::Post {
            builder = builder.method(ClientSecretMethod::Post);
        }
        let auth = builder.build().unwrap();
        assert_eq!(auth.method(), method_kind);
        let client = client(&server, auth);
        job(&client, &server).poll().await.unwrap();
        let requests = requests_to(&server, TOKEN_PATH).await;
        let request = &requests[0];
        let form = form(request);
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["scope"], "system/Patient.read system/Group.read");
        assert!(!form.contains_key("client_assertion"));
        let authorization = request
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        match method_kind {
            ClientSecretMethod::Basic => {
                // RFC 6749 §2.3.1: each part form-urlencoded, then base64.
                use base64::Engine;
                let value = authorization.unwrap();
                let encoded = value.strip_prefix("Basic ").unwrap();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap();
                assert_eq!(decoded, b"my+client:s3cr3t%3A%26%3D");
                assert!(!form.contains_key("client_secret"));
                assert!(!form.contains_key("client_id"));
            }
            _ => {
                assert!(authorization.is_none());
                assert_eq!(form["client_id"], "my client");
                assert_eq!(form["client_secret"], "s3cr3t:&=");
            }
        }
    }
}

#[tokio::test]
async fn one_token_serves_many_requests() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(TokenSeq::new(Some(300)))
        .expect(1)
        .mount(&server)
        .await;
    mount_status(&server, "tok-1").await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let auth = ClientSecretAuth::builder("c", "s")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let job = job(&client, &server);
    for _ in 0..5 {
        job.poll().await.unwrap();
    }
    assert_eq!(job.delete().await.unwrap().outcome, DeleteOutcome::Deleted);
}

#[tokio::test]
async fn refreshes_before_expiry() {
    let server = MockServer::start().await;
    mount_tokens(&server, TokenSeq::new(Some(120))).await;
    mount_status(&server, "tok-1").await;
    mount_status(&server, "tok-2").await;
    let auth = smart("ec-p384-private.pem")
        .kid("k")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    // No timers of the HTTP stack (timeouts, idle pool), so the paused clock moves only when
    // the test moves it.
    let http = fhir_bulk::HttpOptions::default()
        .with_connect_timeout(None)
        .with_read_timeout(None)
        .with_pool_max_idle_per_host(0);
    let client = BulkClient::builder(format!("{}/fhir", server.uri()))
        .http_options(http)
        .auth(auth)
        .build()
        .unwrap();
    let job = job(&client, &server);
    tokio::time::pause();
    job.poll().await.unwrap();
    tokio::time::advance(Duration::from_secs(50)).await;
    job.poll().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    // 120 s lifetime, 60 s margin: refreshed from 60 s on, before it expires.
    tokio::time::advance(Duration::from_secs(15)).await;
    job.poll().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 2);
    let bearers: Vec<String> = requests_to(&server, "/fhir/jobs/1")
        .await
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(bearers, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);
}

#[tokio::test]
async fn a_401_causes_exactly_one_new_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(TokenSeq::new(Some(300)))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    mount_status(&server, "tok-2").await;
    let auth = ClientSecretAuth::builder("c", "s")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let job = job(&client, &server);
    job.poll().await.unwrap();
    job.poll().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_share_one_token_request() {
    let server = MockServer::start().await;
    let mut tokens = TokenSeq::new(Some(300));
    tokens.delay = Duration::from_millis(200);
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(tokens)
        .expect(1)
        .mount(&server)
        .await;
    mount_status(&server, "tok-1").await;
    let auth = smart("rsa-private.pem")
        .kid("k")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let job = job(&client, &server);
    let results = futures::future::join_all((0..10).map(|_| job.poll())).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test]
async fn concurrent_401s_cause_one_refresh() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(TokenSeq::new(Some(300)))
        .expect(2)
        .mount(&server)
        .await;
    // The ten 401s arrive one after another, most of them after the new token is cached:
    // those must not throw it away.
    let rejections = AtomicUsize::new(0);
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(move |_: &Request| {
            let n = rejections.fetch_add(1, Ordering::SeqCst) as u64;
            ResponseTemplate::new(401).set_delay(Duration::from_millis(20 + 40 * n))
        })
        .mount(&server)
        .await;
    mount_status(&server, "tok-2").await;
    let auth = ClientSecretAuth::builder("c", "s")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let job = job(&client, &server);
    let results = futures::future::join_all((0..10).map(|_| job.poll())).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test]
async fn invalid_client_says_what_to_check() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("X-Request-Id", "req-77")
                .set_body_json(json!({
                    "error": "invalid_client",
                    "error_description": "signature verification failed",
                    "error_uri": "https://auth.example/docs/errors"
                })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let auth = smart("ec-p384-private.pem")
        .kid("key-2024")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let err = job(&client, &server).poll().await.unwrap_err();
    let text = err.to_string();
    for needle in [
        "invalid_client",
        "signature verification failed",
        "https://auth.example/docs/errors",
        CLIENT_ID,
        "key-2024",
        "ES384",
        "clock",
        "JWKS",
    ] {
        assert!(text.contains(needle), "missing {needle}: {text}");
    }
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.request_id(), Some("req-77"));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn invalid_scope_lists_what_the_server_supports() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/.well-known/smart-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_endpoint": token_url(&server),
            "scopes_supported": ["system/Patient.read", "system/Observation.read"]
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_scope"})))
        .mount(&server)
        .await;
    let auth = smart("rsa-private.pem")
        .kid("k")
        .scope("system/*.rs")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let text = job(&client, &server).poll().await.unwrap_err().to_string();
    assert!(text.contains("invalid_scope"), "{text}");
    assert!(text.contains("`system/*.rs`"), "{text}");
    assert!(
        text.contains("system/Patient.read system/Observation.read"),
        "{text}"
    );
}

#[tokio::test]
async fn bare_5xx_and_empty_400_are_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(400))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    mount_tokens(&server, TokenSeq::new(Some(300))).await;
    mount_status(&server, "tok-1").await;
    let auth = smart("rsa-private.pem")
        .kid("k")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    job(&client, &server).poll().await.unwrap();
    let requests = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(requests.len(), 3);
    let jtis: HashSet<String> = requests
        .iter()
        .map(|r| {
            let jwt = &form(r)["client_assertion"];
            let data = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt).unwrap();
            data.claims["jti"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 3, "each retry carries a new assertion");
}

#[tokio::test]
async fn retries_of_the_token_request_are_bounded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .expect(4)
        .mount(&server)
        .await;
    let auth = ClientSecretAuth::builder("c", "s")
        .token_url(token_url(&server))
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let err = job(&client, &server).poll().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.status(), Some(502));
    assert!(err.to_string().contains("4 attempts"), "{err}");
}

#[tokio::test]
async fn a_success_without_a_bearer_token_is_a_clear_error() {
    for (body, needle) in [
        (json!({"token_type": "bearer"}), "access_token"),
        (
            json!({"access_token": "SECRET-AT", "token_type": "N_A"}),
            "token_type `N_A`",
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&server)
            .await;
        let auth = ClientSecretAuth::builder("c", "s")
            .token_url(token_url(&server))
            .scope("system/*.read")
            .build()
            .unwrap();
        let client = client(&server, auth);
        let err = job(&client, &server).poll().await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(needle), "{text}");
        assert!(!text.contains("SECRET-AT"), "{text}");
        assert!(!format!("{err:?}").contains("SECRET-AT"), "{err:?}");
    }
}

#[tokio::test]
async fn the_token_endpoint_must_use_https_off_this_machine() {
    let server = MockServer::start().await;
    let auth = ClientSecretAuth::builder("c", "s")
        .token_url("http://auth.example/token")
        .scope("system/*.read")
        .build()
        .unwrap();
    let client = client(&server, auth);
    let err = job(&client, &server).poll().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("allow_insecure_http"), "{err}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn secrets_stay_out_of_debug_and_errors() {
    let server = MockServer::start().await;
    // A server that echoes what it received in its error description.
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(|request: &Request| {
            let form = form(request);
            let echoed = form
                .get("client_assertion")
                .or(form.get("client_secret"))
                .cloned()
                .unwrap_or_default();
            ResponseTemplate::new(401).set_body_json(json!({
                "error": "invalid_client",
                "error_description": format!("bad credential {echoed}")
            }))
        })
        .mount(&server)
        .await;
    let secret = "CLIENT-SECRET-VALUE-123";
    let pem = fixture("rsa-private.pem");
    let pem_line = pem.lines().nth(5).unwrap().to_owned();
    let jwks = fixture("private-jwks.json");
    let jwks_d: Value = serde_json::from_str(&jwks).unwrap();
    let rsa_d = jwks_d["keys"][0]["d"].as_str().unwrap().to_owned();
    let ec_d = jwks_d["keys"][1]["d"].as_str().unwrap().to_owned();

    let pem_builder = SmartBackendAuth::builder(CLIENT_ID)
        .private_key_pem(pem.clone())
        .kid("k")
        .token_url(token_url(&server))
        .scope("system/*.read");
    let jwks_builder = SmartBackendAuth::builder(CLIENT_ID)
        .jwks(jwks.clone())
        .kid("test-ec-1");
    let secret_builder = ClientSecretAuth::builder("c", secret)
        .method(ClientSecretMethod::Post)
        .token_url(token_url(&server))
        .scope("system/*.read");
    let token_fn = TokenFn::new(|| async { Ok(AccessToken::new("TOKEN-FN-VALUE")) });
    let shown = [
        format!("{pem_builder:?}"),
        format!("{jwks_builder:?}"),
        format!("{secret_builder:?}"),
        format!("{:?}", pem_builder.clone().build().unwrap()),
        format!("{:?}", jwks_builder.clone().build().unwrap()),
        format!("{:?}", secret_builder.clone().build().unwrap()),
        format!("{token_fn:?}"),
    ];
    for text in &shown {
        for leak in [
            secret,
            pem_line.as_str(),
            rsa_d.as_str(),
            ec_d.as_str(),
            "TOKEN-FN-VALUE",
        ] {
            assert!(!text.contains(leak), "{text}");
        }
    }
    assert!(shown[3].contains(CLIENT_ID), "{}", shown[3]);

    let assertion_client = client(&server, pem_builder.build().unwrap());
    let err = job(&assertion_client, &server).poll().await.unwrap_err();
    let requests = requests_to(&server, TOKEN_PATH).await;
    let assertion = form(&requests[0])["client_assertion"].clone();
    let text = format!("{err} {err:?}");
    assert!(text.contains("bad credential [redacted]"), "{text}");
    assert!(!text.contains(&assertion), "{text}");

    let secret_client = client(&server, secret_builder.build().unwrap());
    let err = job(&secret_client, &server).poll().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("client_secret_post"), "{text}");
    assert!(!text.contains(secret), "{text}");
}

#[test]
fn build_errors_name_the_setting_without_key_material() {
    let setting = |b: SmartBackendAuthBuilder| match b.build() {
        Err(Error::InvalidConfig { setting, message }) => {
            assert!(!message.contains("MII"), "{message}");
            setting
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert_eq!(setting(smart("rsa-private.pem")), "kid");
    assert_eq!(setting(SmartBackendAuth::builder(CLIENT_ID)), "private_key");
    assert_eq!(
        setting(
            SmartBackendAuth::builder(" ")
                .private_key_pem(fixture("rsa-private.pem"))
                .kid("k")
        ),
        "client_id"
    );
    assert_eq!(setting(smart("rsa-public.pem").kid("k")), "private_key");
    assert_eq!(
        setting(
            smart("rsa-private.pem")
                .kid("k")
                .algorithm(SigningAlgorithm::Es384)
        ),
        "algorithm"
    );
    assert_eq!(
        setting(
            smart("ec-p256-private.pem")
                .kid("k")
                .algorithm(SigningAlgorithm::Es384)
        ),
        "algorithm"
    );
    assert_eq!(
        setting(
            SmartBackendAuth::builder(CLIENT_ID)
                .private_key_pem_file("/no/such/key.pem")
                .kid("k")
        ),
        "private_key"
    );
    assert_eq!(
        setting(SmartBackendAuth::builder(CLIENT_ID).jwks(fixture("private-jwks.json"))),
        "jwks"
    );
    assert_eq!(
        setting(SmartBackendAuth::builder(CLIENT_ID).jwks(fixture("public-jwks.json"))),
        "jwks"
    );
    assert_eq!(
        setting(smart("rsa-private.pem").kid("k").token_url("/token")),
        "token_url"
    );
    assert_eq!(
        setting(smart("rsa-private.pem").kid("k").scope("  ")),
        "scope"
    );
    match ClientSecretAuth::builder("c", "").build() {
        Err(Error::InvalidConfig { setting, .. }) => assert_eq!(setting, "client_secret"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn token_fn_is_called_and_told_about_rejections() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/jobs/1"))
        .and(header("authorization", "Bearer fn-1"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    mount_status(&server, "fn-2").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let auth = {
        let calls = calls.clone();
        let rejected = rejected.clone();
        TokenFn::new(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(AccessToken::new(format!("fn-{n}"))) }
        })
        .on_rejected(move |token| {
            assert_eq!(token.secret(), "fn-1");
            rejected.fetch_add(1, Ordering::SeqCst);
        })
    };
    let client = client(&server, auth);
    job(&client, &server).poll().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(rejected.load(Ordering::SeqCst), 1);
}
