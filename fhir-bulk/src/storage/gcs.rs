//! Reading `gs://` export files through the Cloud Storage JSON API.
//!
//! Google Cloud Healthcare writes an export into the FHIR store's `bulkExportGcsDestination`
//! and lists `gs://bucket/dir/{export_id}_{Type}.ndjson` URLs in its manifest. Such a URL is
//! read as `{endpoint}/storage/v1/b/{bucket}/o/{object}?alt=media`, with the object name
//! percent-encoded (slashes included), through the same byte source as every other file:
//! retries, `Range` + `If-Range` resume (Cloud Storage sends a strong `ETag` and
//! `x-goog-generation`), gzip (objects stored with `Content-Encoding: gzip` are sent as stored,
//! since the client asks for gzip), line checks, exactly-once delivery.
//!
//! The endpoint is `https://storage.googleapis.com` unless `STORAGE_EMULATOR_HOST` (the
//! convention of Google's own SDKs: `host:port` or a URL) or
//! [`GoogleStorage::endpoint`] says otherwise.

use crate::client::check_http_url;
use crate::error::{Error, Result};
use crate::secret::redact_url_str;
use url::Url;

/// The Cloud Storage endpoint used when nothing else is configured.
pub const DEFAULT_GCS_ENDPOINT: &str = "https://storage.googleapis.com";
/// The environment variable Google's SDKs read for a Cloud Storage emulator.
pub const STORAGE_EMULATOR_HOST: &str = "STORAGE_EMULATOR_HOST";

/// Reading `gs://` files: where the Cloud Storage JSON API is.
///
/// Give it to [`BulkClientBuilder::google_storage`](crate::BulkClientBuilder::google_storage).
/// The client's auth provider (a Google OAuth provider such as
/// [`GoogleAuth`](crate::auth::GoogleAuth), whose `cloud-platform` token the Healthcare API
/// accepts too) then sends its token to this endpoint as well as to the FHIR server, and to no
/// other origin.
#[must_use]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoogleStorage {
    endpoint: Option<String>,
}

impl GoogleStorage {
    /// The default: `STORAGE_EMULATOR_HOST` if set, else [`DEFAULT_GCS_ENDPOINT`].
    pub fn new() -> GoogleStorage {
        GoogleStorage::default()
    }

    /// Reads from this endpoint instead (e.g. `http://127.0.0.1:4443` for fake-gcs-server),
    /// whatever `STORAGE_EMULATOR_HOST` says.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> GoogleStorage {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The endpoint URL, checked like every URL setting (https, or http to this machine
    /// unless insecure http is allowed).
    pub(crate) fn resolve(&self, allow_insecure_http: bool) -> Result<Url> {
        let text = match &self.endpoint {
            Some(text) => text.clone(),
            None => endpoint_from_env(std::env::var(STORAGE_EMULATOR_HOST).ok().as_deref()),
        };
        check_http_url("google_storage", &text, allow_insecure_http)
    }
}

/// The endpoint for a value of `STORAGE_EMULATOR_HOST`: a URL as given, `host:port` as
/// `http://host:port` (the emulators speak plain http), unset or blank as
/// [`DEFAULT_GCS_ENDPOINT`].
pub fn endpoint_from_env(value: Option<&str>) -> String {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => DEFAULT_GCS_ENDPOINT.to_owned(),
        Some(v) if v.contains("://") => v.trim_end_matches('/').to_owned(),
        Some(v) => format!("http://{}", v.trim_end_matches('/')),
    }
}

/// A `gs://bucket/object` URL split into its bucket and object name, made by
/// [`parse_gs_url`]. Non-exhaustive, so that a later field (a generation) is not a breaking
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GsObject {
    /// The bucket name.
    pub bucket: String,
    /// The object name, as written after the bucket (not percent-decoded: Cloud Storage
    /// names are plain text).
    pub object: String,
}

/// Whether a file URL is a `gs://` URL.
pub fn is_gs_url(url: &str) -> bool {
    url.trim()
        .get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("gs://"))
}

/// Splits `gs://bucket/object`. The error says what is wrong with the URL.
pub fn parse_gs_url(url: &str) -> std::result::Result<GsObject, String> {
    let text = url.trim();
    if !is_gs_url(text) {
        return Err("not a gs:// URL".into());
    }
    let rest = &text[5..];
    let Some((bucket, object)) = rest.split_once('/') else {
        return Err("a gs:// file URL needs an object name after the bucket".into());
    };
    let bucket_ok = (3..=222).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !bucket_ok {
        return Err(format!(
            "`{bucket}` is not a Cloud Storage bucket name (3 to 222 lowercase letters, digits, \
             `-`, `_` or `.`)"
        ));
    }
    if object.is_empty() || object.contains(['\r', '\n']) || object.len() > 1024 {
        return Err("the object name is empty, too long or holds a line break".into());
    }
    Ok(GsObject {
        bucket: bucket.to_owned(),
        object: object.to_owned(),
    })
}

/// Percent-encodes a path segment: everything but RFC 3986 unreserved characters, so `/`,
/// spaces and non-ASCII bytes are encoded.
pub(crate) fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The JSON API media URL of an object: `{endpoint}/storage/v1/b/{bucket}/o/{object}?alt=media`.
pub fn media_url(endpoint: &Url, object: &GsObject) -> Url {
    let mut base = endpoint.clone();
    base.set_query(None);
    base.set_fragment(None);
    let path = base.path().trim_end_matches('/').to_owned();
    base.set_path(&format!(
        "{path}/storage/v1/b/{}/o/{}",
        encode_segment(&object.bucket),
        encode_segment(&object.object)
    ));
    base.set_query(Some("alt=media"));
    base
}

/// The HTTP URL a `gs://` file is read from, or the error saying how to enable it.
pub(crate) fn file_url(endpoint: Option<&Url>, gs_url: &str) -> Result<Url> {
    let unsupported = |message: String| Error::UnsupportedFileUrl {
        url: redact_url_str(gs_url),
        message,
    };
    let object = parse_gs_url(gs_url).map_err(unsupported)?;
    let Some(endpoint) = endpoint else {
        return Err(unsupported(
            "the file is in Google Cloud Storage: enable reading it with \
             `BulkClientBuilder::google_storage(GoogleStorage::new())` and a Google auth \
             provider (`fhir_bulk::auth::GoogleAuth`), or in the CLI with \
             `--google-credentials FILE` (or application default credentials)"
                .into(),
        ));
    };
    Ok(media_url(endpoint, &object))
}

/// The media URL of a Cloud Storage object pinned to the generation its first answer named
/// (`x-goog-generation`): `...?alt=media&generation=G`. A resumed read then continues that very
/// version: once the object is overwritten, the pinned generation answers `404` (ETag and
/// `If-Range` alone are not enough: an emulator or proxy may ignore `If-Range`, and the
/// continuation would splice two versions). `None` when `url` is not a JSON API media URL, is
/// already pinned, or the answer names no generation.
pub(crate) fn pin_generation(url: &Url, generation: Option<&str>) -> Option<Url> {
    let generation = generation
        .map(str::trim)
        .filter(|g| !g.is_empty() && g.len() <= 20 && g.bytes().all(|b| b.is_ascii_digit()))?;
    let media = url.path().contains("/storage/v1/b/")
        && url.query_pairs().any(|(k, v)| k == "alt" && v == "media");
    if !media || url.query_pairs().any(|(k, _)| k == "generation") {
        return None;
    }
    let mut pinned = url.clone();
    pinned
        .query_pairs_mut()
        .append_pair("generation", generation);
    Some(pinned)
}

/// The error of a pinned read whose generation is gone: the object was replaced mid-read.
pub(crate) fn replaced_message(url: &Url) -> Option<String> {
    let generation = url
        .query_pairs()
        .find(|(k, _)| k == "generation")
        .map(|(_, v)| v.into_owned())?;
    Some(format!(
        "the Cloud Storage object was replaced while it was being read (generation \
         {generation} is gone); nothing of the new version was mixed in: download the file \
         again"
    ))
}

/// Whether a FHIR base URL is Google Cloud Healthcare's, where `gs://` reads are enabled
/// without being asked for.
pub fn is_google_healthcare(base: &Url) -> bool {
    base.host_str().is_some_and(|h| {
        let h = h.to_ascii_lowercase();
        h == "healthcare.googleapis.com" || h.ends_with("-healthcare.googleapis.com")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn media_urls_encode_the_whole_object_name() {
        let cases = [
            (
                "gs://my-bucket/exports/abc_Patient.ndjson",
                "https://storage.googleapis.com/storage/v1/b/my-bucket/o/exports%2Fabc_Patient.ndjson?alt=media",
            ),
            (
                "gs://b_1.x/dir with space/a+b#c?.ndjson",
                "https://storage.googleapis.com/storage/v1/b/b_1.x/o/dir%20with%20space%2Fa%2Bb%23c%3F.ndjson?alt=media",
            ),
            (
                "gs://bkt/ünïcødé/Ωbs.ndjson",
                "https://storage.googleapis.com/storage/v1/b/bkt/o/%C3%BCn%C3%AFc%C3%B8d%C3%A9%2F%CE%A9bs.ndjson?alt=media",
            ),
            (
                "GS://bkt/100%.ndjson",
                "https://storage.googleapis.com/storage/v1/b/bkt/o/100%25.ndjson?alt=media",
            ),
        ];
        let endpoint = ep(DEFAULT_GCS_ENDPOINT);
        for (gs, want) in cases {
            let object = parse_gs_url(gs).unwrap();
            assert_eq!(media_url(&endpoint, &object).as_str(), want, "{gs}");
        }
    }

    #[test]
    fn endpoint_path_and_emulator_host() {
        let object = parse_gs_url("gs://bkt/a/b").unwrap();
        let url = media_url(&ep("http://127.0.0.1:4443/prefix/"), &object);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:4443/prefix/storage/v1/b/bkt/o/a%2Fb?alt=media"
        );
        assert_eq!(endpoint_from_env(None), DEFAULT_GCS_ENDPOINT);
        assert_eq!(endpoint_from_env(Some("  ")), DEFAULT_GCS_ENDPOINT);
        assert_eq!(
            endpoint_from_env(Some("localhost:4443")),
            "http://localhost:4443"
        );
        assert_eq!(
            endpoint_from_env(Some("https://gcs.example:9000/")),
            "https://gcs.example:9000"
        );
    }

    #[test]
    fn bad_gs_urls_say_what_is_wrong() {
        assert!(parse_gs_url("gs://bucket").unwrap_err().contains("object"));
        assert!(parse_gs_url("gs://bucket/").unwrap_err().contains("object"));
        assert!(
            parse_gs_url("gs://Bad Bucket/x")
                .unwrap_err()
                .contains("bucket")
        );
        assert!(parse_gs_url("gs://ab/x").unwrap_err().contains("bucket"));
        assert!(parse_gs_url("s3://bucket/x").is_err());
        assert!(is_gs_url(" gs://b/x") && !is_gs_url("https://gs/x"));
    }

    #[test]
    fn without_google_storage_the_error_says_how_to_enable_it() {
        let err = file_url(None, "gs://bucket/x.ndjson")
            .unwrap_err()
            .to_string();
        assert!(err.contains("google_storage"), "{err}");
        let url = file_url(Some(&ep("https://s.example")), "gs://bucket/x.ndjson").unwrap();
        assert_eq!(
            url.as_str(),
            "https://s.example/storage/v1/b/bucket/o/x.ndjson?alt=media"
        );
    }

    #[test]
    fn reads_pin_the_first_answers_generation() {
        let media = ep("http://127.0.0.1:4443/storage/v1/b/bkt/o/a%2Fb?alt=media");
        let pinned = pin_generation(&media, Some(" 1714557600123456 ")).unwrap();
        assert_eq!(
            pinned.as_str(),
            "http://127.0.0.1:4443/storage/v1/b/bkt/o/a%2Fb?alt=media&generation=1714557600123456"
        );
        assert!(
            replaced_message(&pinned)
                .unwrap()
                .contains("generation 1714557600123456 is gone")
        );
        assert_eq!(pin_generation(&pinned, Some("2")), None, "pinned once");
        assert_eq!(pin_generation(&media, None), None);
        assert_eq!(pin_generation(&media, Some("12a")), None);
        assert_eq!(pin_generation(&media, Some("")), None);
        let https_file = ep("https://files.example/storage/x.ndjson?sig=1");
        assert_eq!(
            pin_generation(&https_file, Some("7")),
            None,
            "not Cloud Storage"
        );
        assert_eq!(replaced_message(&media), None);
    }

    #[test]
    fn google_healthcare_hosts() {
        assert!(is_google_healthcare(&ep(
            "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/fhirStores/s/fhir/"
        )));
        assert!(is_google_healthcare(&ep(
            "https://us-healthcare.googleapis.com/v1/"
        )));
        assert!(!is_google_healthcare(&ep(
            "https://healthcare.googleapis.com.evil.example/"
        )));
        assert!(!is_google_healthcare(&ep("https://ehr.example/fhir/")));
    }
}
