//! `fhir-bulk`: an async client for the FHIR Bulk Data Access API (`$export`).
//!
//! It speaks the protocol from kick-off to manifest for STU2, STU3 and the STU4 ballot, and
//! copes with what real servers do: Oracle Health's 600 s `Retry-After` and one-export-per-
//! client 429, a vendor's millisecond `Retry-After`, Google's relative operations URLs,
//! STU4's `outcome` and array `extension`, `separate-export-status`, partial and paged
//! manifests.
//!
//! The steps, one module each: [`ExportRequest`] (parameters and their encodings) →
//! [`BulkClient::kick_off`] → [`ExportJob::poll`] / [`ExportJob::wait`] (following
//! [`PollPolicy`], retrying transient failures under [`RetryPolicy`]) → [`CompletedExport`]
//! (the manifest pages) → [`ExportJob::delete`].
//!
//! # Example
//!
//! ```
//! use fhir_bulk::{BulkClient, ExportRequest, FileKind, PollPolicy};
//! use std::time::Duration;
//! # use wiremock::{Mock, MockServer, ResponseTemplate, matchers::*};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = MockServer::start().await;
//! # let base = format!("{}/fhir", server.uri());
//! # Mock::given(method("GET")).and(path("/fhir/Group/g1/$export"))
//! #     .respond_with(ResponseTemplate::new(202)
//! #         .insert_header("Content-Location", format!("{}/jobs/1", server.uri())))
//! #     .mount(&server).await;
//! # Mock::given(method("GET")).and(path("/jobs/1"))
//! #     .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
//! #         "transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": true,
//! #         "output": [{"type": "Patient", "url": format!("{}/files/1", server.uri()), "count": 3}],
//! #         "error": []})))
//! #     .mount(&server).await;
//! # Mock::given(method("DELETE")).and(path("/jobs/1"))
//! #     .respond_with(ResponseTemplate::new(202)).mount(&server).await;
//! // `base` is your FHIR server, e.g. "https://ehr.example/fhir/r4/tenant".
//! let client = BulkClient::builder(base)
//!     .bearer_token("token")
//!     .poll_policy(PollPolicy::default().with_max_interval(Duration::from_secs(60)))
//!     .build()?;
//!
//! let request = ExportRequest::group("g1")
//!     .types(["Patient", "Observation"])
//!     .since("2023-01-01T00:00:00Z");
//! let job = client.kick_off(&request).await?;
//! // Save `job.handle()` (it serializes) to resume polling after a restart.
//! let export = job.wait_with(|p| println!("{}", p.text.as_deref().unwrap_or("…"))).await?;
//!
//! for file in export.files(FileKind::Output) {
//!     // `file.file.url` prints without its query string (a pre-signed URL's signature).
//!     println!("{:?}: {} ({:?} resources)", file.file.resource_type, file.file.url, file.file.count);
//! }
//! if let Some(since) = export.transaction_time() {
//!     println!("next _since: {since}");
//! }
//! job.delete().await?;
//! # Ok(()) }
//! ```
//!
//! # Crate features
//!
//! One of the TLS features is needed for `https://` servers and for signing SMART Backend
//! Services assertions; without any, only plain `http://` (loopback, or with
//! [`BulkClientBuilder::allow_insecure_http`]) works, and both are refused with
//! [`Error::InvalidConfig`] naming what to enable.
//!
//! | feature | default | what it does |
//! | --- | --- | --- |
//! | `rustls-aws-lc` | yes | TLS by rustls with the aws-lc-rs provider; SMART assertions signed with aws-lc-rs. aws-lc-rs builds C code: it needs a C compiler and is most of a clean build. |
//! | `rustls-ring` | | TLS by rustls with the ring provider (ring becomes rustls's process-wide default provider when a client is built, unless the application installed one); assertions signed with ring. A much shorter clean build. |
//! | `native-tls` | | TLS by the platform's library (OpenSSL on Linux, with its headers; Secure Transport; SChannel); assertions signed with ring. |
//!
//! With several TLS features, `rustls-aws-lc` is used. Choose one with
//! `fhir-bulk = { version = "0.1", default-features = false, features = ["rustls-ring"] }`.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attachment;
pub mod auth;
mod capability;
mod client;
pub mod download;
mod error;
mod job;
mod kickoff;
mod manifest;
pub mod ndjson;
pub mod outcome;
mod poll;
mod profile;
mod request;
pub mod resource;
mod retry;
mod secret;
mod status;
pub mod storage;
#[cfg(test)]
mod test_support;
mod tls;
mod transport;
mod validate;

pub use attachment::{AttachmentMode, AttachmentOptions, AttachmentReport};
pub use capability::CapabilityStatement;
pub use client::{BulkClient, BulkClientBuilder, DEFAULT_USER_AGENT, HttpOptions};
pub use download::{DownloadOptions, InvalidLines, Record, RecordStream};
pub use error::{Error, ErrorResponse, LineErrorKind, RequestIds, Result, TransportErrorKind};
pub use job::{DeleteOutcome, DeleteReport, ExportJob, JobHandle, PollStatus};
pub use manifest::{
    CompletedExport, ExportFile, FileKind, FileUrl, Manifest, ManifestFile, ManifestLink,
};
pub use outcome::{OperationOutcome, SeverityCounts};
pub use poll::{ClockFn, PollPolicy, PollSchedule, RetryAfterUnit, SleepFn, parse_retry_after};
pub use profile::{Encodings, RetryAfterHint, ServerProfile};
pub use request::{
    AssociatedDataEncoding, ExportLevel, ExportRequest, INCLUDE_ASSOCIATED_DATA_SYSTEM,
    KickoffMethod, ListEncoding, ParamValue,
};
pub use retry::RetryPolicy;
pub use secret::{AccessToken, SecretString, redact_url_str};
pub use status::{Progress, parse_progress_percent};
pub use storage::GoogleStorage;
pub use transport::retry::RandomFn;
pub use validate::MAX_PATIENTS;
