//! Attachments: the documents of the `DocumentReference` and `DiagnosticReport` resources
//! ([`TestServerBuilder::attachments`](super::TestServerBuilder::attachments)), and
//! `GET [base]/Binary/{id}`, which serves them.
//!
//! `DocumentReference` number `i` (0-based) points at `Binary/b-doc-{i+1}`: relative
//! (`Binary/b-doc-1`, as Epic writes them) for even `i`, absolute (`http://.../fhir/Binary/...`,
//! as Oracle Health does) for odd `i`. Every fourth one (`i % 4 == 3`) is a 200 KiB
//! `application/pdf` of binary bytes; the others are short `text/plain` notes (200 to 2,000
//! bytes). `DiagnosticReport` number `i` has one `presentedForm`, a short `text/html` page at
//! the absolute `Binary/b-rep-{i+1}`. Every attachment has its `size` and `hash` (base64
//! SHA-1).
//!
//! The endpoint answers the raw bytes with their content type, or, when `Accept` names
//! `application/fhir+json` (or `application/json`), a FHIR `Binary` resource with the bytes as
//! base64 `data`. Both representations have a strong `ETag` and honour `Range` / `If-Range`
//! (when ranges are on) and the [`Fault`](super::Fault)s targeted at binaries
//! ([`Fault::on_binary`](super::Fault::on_binary)).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::{
    ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, RANGE,
};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use sha1::Digest;

use super::config::FaultSite;
use super::data::{Kind, mix};
use super::files::{parse_range, resolve, stream_body};
use super::server::{
    ConnKill, FHIR_JSON, Shared, fault_response, outcome, set_header, single_chunk,
};

/// The size of the large (PDF-like) attachments.
pub(crate) const LARGE: u64 = 200 * 1024;

/// One attachment the test server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BinaryInfo {
    /// The Binary's id, e.g. `b-doc-1`.
    pub id: String,
    /// The resource that points at it, e.g. `DocumentReference/doc-1`.
    pub resource: String,
    /// Its content type.
    pub content_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Base64 of its SHA-1 (the attachment's `hash`).
    pub hash: String,
    /// Whether the resource gives its URL absolute (else relative, `Binary/{id}`).
    pub absolute: bool,
}

impl BinaryInfo {
    /// Whether it is one of the large `application/pdf` ones.
    pub fn is_large(&self) -> bool {
        self.size >= LARGE
    }
}

/// The Binary of resource `index` of `kind`, if that kind has attachments.
pub(crate) fn binary_of(seed: u64, kind: Kind, index: u64) -> Option<(BinaryInfo, Vec<u8>)> {
    let (id, resource, content_type, absolute, content) = match kind {
        Kind::DocumentReference => {
            let n = index + 1;
            let (content_type, content) = if index % 4 == 3 {
                ("application/pdf", pdf_bytes(seed, index))
            } else {
                ("text/plain", note(seed, index))
            };
            (
                format!("b-doc-{n}"),
                format!("DocumentReference/doc-{n}"),
                content_type,
                index % 2 == 1,
                content,
            )
        }
        Kind::DiagnosticReport => {
            let n = index + 1;
            let html = format!(
                "<html><body><h1>Laboratory report {n}</h1><p>All results are within the \
                 reference ranges. Seed {seed:x}.</p></body></html>"
            );
            (
                format!("b-rep-{n}"),
                format!("DiagnosticReport/rep-{n}"),
                "text/html",
                true,
                html.into_bytes(),
            )
        }
        _ => return None,
    };
    let hash = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&content));
    let info = BinaryInfo {
        id,
        resource,
        content_type: content_type.to_owned(),
        size: content.len() as u64,
        hash,
        absolute,
    };
    Some((info, content))
}

fn note(seed: u64, index: u64) -> Vec<u8> {
    let len = 200 + (mix(seed ^ index.wrapping_mul(0x9e37_79b9)) % 1800) as usize;
    let sentence = format!(
        "Clinical note {} written for the bulk data test server: the patient is doing well.\n",
        index + 1
    );
    sentence.bytes().cycle().take(len).collect()
}

fn pdf_bytes(seed: u64, index: u64) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut k = 0u64;
    while (out.len() as u64) < LARGE {
        out.extend_from_slice(&mix(seed ^ (index << 32) ^ k).to_le_bytes());
        k += 1;
    }
    out.truncate(LARGE as usize);
    out
}

/// Parses a Binary id into the resource it belongs to.
fn parse_id(id: &str) -> Option<(Kind, u64)> {
    let (kind, n) = if let Some(n) = id.strip_prefix("b-doc-") {
        (Kind::DocumentReference, n)
    } else {
        (Kind::DiagnosticReport, id.strip_prefix("b-rep-")?)
    };
    let n: u64 = n.parse().ok()?;
    Some((kind, n.checked_sub(1)?))
}

/// Whether the client asked for the FHIR `Binary` resource.
fn wants_json(request: &Request) -> bool {
    request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.split(';').next().unwrap_or_default().trim();
            t.eq_ignore_ascii_case(FHIR_JSON)
                || t.eq_ignore_ascii_case("application/json")
                || t.eq_ignore_ascii_case("application/json+fhir")
        })
}

/// `GET [base]/Binary/{id}`.
pub(crate) async fn binary(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let kill = ConnKill::from_extensions(request.extensions());
    let found = parse_id(&id).and_then(|(kind, index)| {
        let ty = shared.dataset.type_index(kind.name())?;
        (index < shared.dataset.types()[ty].count).then_some((kind, index))
    });
    let Some((info, content)) =
        found.and_then(|(kind, index)| binary_of(shared.dataset.seed(), kind, index))
    else {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("Binary/{id} is not known"),
        );
    };
    let fault = shared.take_fault(&FaultSite::Binary { id: &info.id });
    if let Some(response) = fault.as_ref().and_then(fault_response) {
        return response;
    }
    let json = wants_json(&request);
    let (body, content_type, etag) = if json {
        let data = base64::engine::general_purpose::STANDARD.encode(&content);
        let body = serde_json::json!({
            "resourceType": "Binary",
            "id": info.id,
            "contentType": info.content_type,
            "data": data,
        })
        .to_string();
        (
            Bytes::from(body),
            FHIR_JSON.to_owned(),
            format!("\"{}-json\"", info.id),
        )
    } else {
        (
            Bytes::from(content),
            info.content_type.clone(),
            format!("\"{}-raw\"", info.id),
        )
    };
    let ranges = shared.config.accept_ranges;
    let total = body.len() as u64;
    let if_range_ok = request
        .headers()
        .get(IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag));
    let range = request
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range)
        .filter(|_| ranges && if_range_ok);
    let span = match range {
        Some(range) => match resolve(range, total) {
            Some(span) => Some(span),
            None => {
                let mut response = outcome(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid",
                    &format!("The requested range is outside the {total}-byte representation"),
                );
                set_header(&mut response, CONTENT_RANGE, &format!("bytes */{total}"));
                return response;
            }
        },
        None => None,
    };
    let (first, last) = span.unwrap_or((0, total.saturating_sub(1)));
    let slice = if total == 0 {
        Bytes::new()
    } else {
        body.slice(first as usize..=last as usize)
    };
    let length = slice.len() as u64;
    let mut response = Response::new(stream_body(single_chunk(slice), fault, kill));
    set_header(&mut response, CONTENT_TYPE, &content_type);
    if ranges {
        set_header(&mut response, ACCEPT_RANGES, "bytes");
        set_header(&mut response, ETAG, &etag);
    }
    if span.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        set_header(
            &mut response,
            CONTENT_RANGE,
            &format!("bytes {first}-{last}/{total}"),
        );
    }
    response.headers_mut().insert(CONTENT_LENGTH, length.into());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_contents() {
        assert_eq!(parse_id("b-doc-1"), Some((Kind::DocumentReference, 0)));
        assert_eq!(parse_id("b-rep-12"), Some((Kind::DiagnosticReport, 11)));
        assert_eq!(parse_id("b-doc-0"), None);
        assert_eq!(parse_id("x"), None);
        let (small, bytes) = binary_of(1, Kind::DocumentReference, 0).unwrap();
        assert_eq!(small.content_type, "text/plain");
        assert!(!small.absolute && (200..2000).contains(&small.size));
        assert_eq!(bytes.len() as u64, small.size);
        let (large, bytes) = binary_of(1, Kind::DocumentReference, 3).unwrap();
        assert!(large.is_large() && large.absolute);
        assert!(std::str::from_utf8(&bytes).is_err(), "binary bytes");
        assert_eq!(binary_of(1, Kind::DocumentReference, 3).unwrap().1, bytes);
        assert!(binary_of(1, Kind::Patient, 0).is_none());
    }
}
