//! `fhir-bulk`: an async client for the FHIR Bulk Data Access API (`$export`).
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod ndjson;
pub mod outcome;
pub mod resource;
