//! The export manifest: the complete-status body listing the files, in its STU2, STU3 and
//! STU4 shapes, and the set of manifest pages a finished export consists of.

use crate::error::{Error, Result};
use crate::resource::Timestamp;
use crate::secret::{redact_url, redact_url_str};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::time::SystemTime;
use url::Url;

/// A file URL of a manifest. A pre-signed URL carries its credential in the query string, so
/// `Debug` and `Display` show only the origin and path (`https://b.s3.example/f.ndjson?[redacted]`);
/// [`FileUrl::expose`] gives the whole URL, to send it.
///
/// ```
/// use fhir_bulk::FileUrl;
/// let url = FileUrl::new("https://b.s3.example/f.ndjson?X-Amz-Signature=abc");
/// assert_eq!(url.to_string(), "https://b.s3.example/f.ndjson?[redacted]");
/// assert!(!format!("{url:?}").contains("abc"));
/// assert_eq!(url.expose(), "https://b.s3.example/f.ndjson?X-Amz-Signature=abc");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileUrl(String);

impl FileUrl {
    /// Wraps a URL as the manifest gives it.
    pub fn new(url: impl Into<String>) -> Self {
        FileUrl(url.into())
    }

    /// The whole URL, query string included: for sending it, never for showing it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without user info, query string or fragment (what `Display` shows).
    pub fn redacted(&self) -> String {
        redact_url_str(&self.0)
    }
}

impl fmt::Debug for FileUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileUrl({:?})", self.redacted())
    }
}

impl fmt::Display for FileUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<String> for FileUrl {
    fn from(url: String) -> Self {
        FileUrl(url)
    }
}

impl From<&str> for FileUrl {
    fn from(url: &str) -> Self {
        FileUrl(url.to_owned())
    }
}

impl Borrow<str> for FileUrl {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for FileUrl {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for FileUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for FileUrl {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<FileUrl> for String {
    fn eq(&self, other: &FileUrl) -> bool {
        *self == other.0
    }
}

impl PartialEq<FileUrl> for &str {
    fn eq(&self, other: &FileUrl) -> bool {
        *self == other.0
    }
}

/// The keys of a JSON object, for a `Debug` that must not print values (they may hold URLs).
struct Keys<'a>(&'a Map<String, Value>);

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// One manifest (one page, when the server pages them).
///
/// Accepts every published shape: `error` (STU2/STU3) or `outcome` (STU4) are both read into
/// [`Manifest::error`]; `extension` may be an object (STU2/STU3) or an array (STU4) and is kept
/// as JSON; fields this type does not know are kept in [`Manifest::extra`]. The body exactly as
/// received is kept too ([`Manifest::raw`]).
///
/// Its `Debug` shows no query string of any URL and no JSON values it does not know (they may
/// hold URLs); the body is shown by its length only.
#[non_exhaustive]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire")]
pub struct Manifest {
    /// `transactionTime`: the server time of the export; use it as the next `_since`.
    #[serde(rename = "transactionTime")]
    pub transaction_time: String,
    /// `request`: the kick-off URL (STU2/STU3; removed in STU4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// `requiresAccessToken`: whether the files of this page need the bearer token. Taken as
    /// `true` when absent (the token still goes only to trusted origins).
    #[serde(rename = "requiresAccessToken")]
    pub requires_access_token: bool,
    /// `output`: the data files.
    pub output: Vec<ManifestFile>,
    /// `deleted`: files of transaction Bundles naming deleted resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<ManifestFile>,
    /// `error` (STU2/STU3) or `outcome` (STU4): files of `OperationOutcome`s, informational
    /// and warning ones included.
    pub error: Vec<ManifestFile>,
    /// `extension`, as sent (an object before STU4, an array of Extensions in STU4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<Value>,
    /// `outputOrganizedBy` (STU3+): the resource type files are organized by.
    #[serde(rename = "outputOrganizedBy", skip_serializing_if = "Option::is_none")]
    pub output_organized_by: Option<String>,
    /// `link` (STU3+): `next` points to the next manifest page.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<ManifestLink>,
    /// `manifestType` (STU4).
    #[serde(rename = "manifestType", skip_serializing_if = "Option::is_none")]
    pub manifest_type: Option<String>,
    /// `outputFormat` (STU4): the files' MIME type.
    #[serde(rename = "outputFormat", skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The `Expires` of the answer that carried this manifest: the files may be gone after it.
    #[serde(skip)]
    pub expires: Option<SystemTime>,
    /// The body exactly as received (empty for a manifest built by deserializing a value).
    #[serde(skip)]
    raw: String,
}

/// One file entry of a manifest. `Debug` shows its URLs without their query strings.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// `type`: the resource type of every line (absent when output is organized by a type).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// `url`: where to download it. Read it with [`ManifestFile::http_url`], which checks it.
    pub url: FileUrl,
    /// `count`: the number of resources (lines), when the server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `continuesInFile` (STU3+): the file a split block continues in.
    #[serde(
        rename = "continuesInFile",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub continues_in_file: Option<FileUrl>,
    /// `fileSize` (STU4): bytes.
    #[serde(rename = "fileSize", default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// `extension`, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Value>,
    /// Every other field (e.g. STU4 `countSeverity`), as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A manifest `link`. `Debug` shows its URL without the query string.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestLink {
    /// `relation`: `next` is the only one defined.
    pub relation: String,
    /// `url`: the linked manifest.
    pub url: String,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "transactionTime")]
    transaction_time: Option<String>,
    request: Option<String>,
    #[serde(rename = "requiresAccessToken")]
    requires_access_token: Option<bool>,
    #[serde(default)]
    output: Vec<ManifestFile>,
    #[serde(default)]
    deleted: Vec<ManifestFile>,
    #[serde(default)]
    error: Vec<ManifestFile>,
    #[serde(default)]
    outcome: Vec<ManifestFile>,
    extension: Option<Value>,
    #[serde(rename = "outputOrganizedBy")]
    output_organized_by: Option<String>,
    #[serde(default)]
    link: Vec<ManifestLink>,
    #[serde(rename = "manifestType")]
    manifest_type: Option<String>,
    #[serde(rename = "outputFormat")]
    output_format: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl TryFrom<Wire> for Manifest {
    type Error = String;

    fn try_from(wire: Wire) -> std::result::Result<Self, String> {
        let transaction_time = wire
            .transaction_time
            .ok_or("the required field `transactionTime` is missing")?;
        let mut error = wire.error;
        error.extend(wire.outcome);
        // A list read from JSON grows by doubling: up to half of it would be spare room, held
        // as long as the export (the CLI holds a 100,000-file manifest for the whole run).
        let (mut output, mut deleted) = (wire.output, wire.deleted);
        for list in [&mut output, &mut deleted, &mut error] {
            list.shrink_to_fit();
        }
        Ok(Manifest {
            transaction_time,
            request: wire.request,
            requires_access_token: wire.requires_access_token.unwrap_or(true),
            output,
            deleted,
            error,
            extension: wire.extension,
            output_organized_by: wire.output_organized_by,
            link: wire.link,
            manifest_type: wire.manifest_type,
            output_format: wire.output_format,
            extra: wire.extra,
            expires: None,
            raw: String::new(),
        })
    }
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("transaction_time", &self.transaction_time)
            .field("request", &self.request.as_deref().map(redact_url_str))
            .field("requires_access_token", &self.requires_access_token)
            .field("output", &self.output)
            .field("deleted", &self.deleted)
            .field("error", &self.error)
            .field("extension", &self.extension.as_ref().map(|_| "[not shown]"))
            .field("output_organized_by", &self.output_organized_by)
            .field("link", &self.link)
            .field("manifest_type", &self.manifest_type)
            .field("output_format", &self.output_format)
            .field("extra", &Keys(&self.extra))
            .field("expires", &self.expires)
            .field("raw_bytes", &self.raw.len())
            .finish()
    }
}

impl fmt::Debug for ManifestFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestFile")
            .field("resource_type", &self.resource_type)
            .field("url", &self.url)
            .field("count", &self.count)
            .field("continues_in_file", &self.continues_in_file)
            .field("file_size", &self.file_size)
            .field("extension", &self.extension.as_ref().map(|_| "[not shown]"))
            .field("extra", &Keys(&self.extra))
            .finish()
    }
}

impl fmt::Debug for ManifestLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestLink")
            .field("relation", &self.relation)
            .field("url", &redact_url_str(&self.url))
            .finish()
    }
}

impl Manifest {
    /// Parses a manifest body; `source` (the URL it came from) names it in errors.
    pub fn from_slice(body: &[u8], source: &str) -> Result<Manifest> {
        let mut manifest: Manifest =
            serde_json::from_slice(body).map_err(|e| Error::BadManifest {
                url: redact_url_str(source),
                message: format!(
                    "{e}; the body starts with: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
                source: Some(Box::new(e)),
            })?;
        manifest.raw = String::from_utf8_lossy(body).into_owned();
        Ok(manifest)
    }

    /// The body exactly as received.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The `next` page's URL, if any.
    pub fn next_link(&self) -> Option<&str> {
        self.link
            .iter()
            .find(|l| l.relation == "next")
            .map(|l| l.url.as_str())
    }

    /// Whether a body looks like a manifest (a partial one may come with a 202).
    pub(crate) fn looks_like_manifest(body: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "transactionTime")]
            _transaction_time: String,
        }
        serde_json::from_slice::<Probe>(body).is_ok()
    }
}

impl ManifestFile {
    /// The file's URL, checked: it must be an absolute `http(s)` URL. Cloud storage URLs
    /// (`gs://`, `s3://`, Azure blob credentials) give [`Error::UnsupportedFileUrl`] saying
    /// where the files are and why this client cannot fetch them.
    pub fn http_url(&self) -> Result<Url> {
        let unsupported = |message: String| Error::UnsupportedFileUrl {
            url: self.url.redacted(),
            message,
        };
        let url = Url::parse(self.url.expose()).map_err(|e| {
            unsupported(format!(
                "not an absolute URL ({e}); manifests must list absolute file URLs"
            ))
        })?;
        match url.scheme() {
            "http" | "https" => Ok(url),
            "gs" => Err(unsupported(
                "the file is in Google Cloud Storage, read with Google credentials, not with \
                 the FHIR server's token: the download streams read it through the Cloud \
                 Storage API when `BulkClientBuilder::google_storage` is set (with a Google auth \
                 provider, `fhir_bulk::auth::GoogleAuth`)"
                    .into(),
            )),
            _ => Err(unsupported(
                crate::ServerProfile::Generic
                    .file_url_advice(url.as_str())
                    .unwrap_or_else(|| "not an HTTP(S) URL".to_owned()),
            )),
        }
    }
}

/// What a manifest file holds.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// An `output` file: exported resources.
    Output,
    /// An `error`/`outcome` file: `OperationOutcome`s.
    Error,
    /// A `deleted` file: transaction Bundles of deletions.
    Deleted,
}

/// A file of a finished export, with the page facts that apply to it. `Debug` shows its URL
/// without the query string.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct ExportFile {
    /// Output, error or deleted.
    pub kind: FileKind,
    /// The manifest entry.
    pub file: ManifestFile,
    /// The `requiresAccessToken` of the page that listed it.
    pub requires_access_token: bool,
    /// The `outputOrganizedBy` of the page that listed it.
    pub organized_by: Option<String>,
    /// The `Expires` of the answer that listed it.
    pub expires: Option<SystemTime>,
}

/// A finished export: every manifest page received (partial ones, the complete one and the
/// pages behind `next` links), in the order received. `Debug` shows no query string.
#[non_exhaustive]
#[derive(Clone, PartialEq)]
pub struct CompletedExport {
    /// The status URL of the job.
    pub status_url: Url,
    /// The manifest pages.
    pub manifests: Vec<Manifest>,
}

impl CompletedExport {
    /// An export made of manifest pages obtained earlier, e.g. read back from a saved
    /// `manifest.json` with [`Manifest::from_slice`], so its files can be saved again with
    /// [`BulkClient::save_export`](crate::BulkClient::save_export) without polling the server. `status_url` names the job (use
    /// the file's `file://` URL when the status URL is unknown); `next` links of the pages are
    /// not followed, so pass every page. The pages' `Expires` are unknown (`None`).
    pub fn from_manifests(status_url: Url, manifests: Vec<Manifest>) -> CompletedExport {
        CompletedExport {
            status_url,
            manifests,
        }
    }
}

impl fmt::Debug for CompletedExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletedExport")
            .field("status_url", &redact_url(&self.status_url))
            .field("manifests", &self.manifests)
            .finish()
    }
}

impl CompletedExport {
    /// The `transactionTime` of the first page, to use as the next export's `_since`; `None`
    /// when there is no page or the server's value is not a FHIR instant (the text as sent is
    /// in [`Manifest::transaction_time`]).
    pub fn transaction_time(&self) -> Option<Timestamp> {
        Timestamp::parse(&self.manifests.first()?.transaction_time)
    }

    /// The earliest `Expires` of any page.
    pub fn expires(&self) -> Option<SystemTime> {
        self.manifests.iter().filter_map(|m| m.expires).min()
    }

    /// The files of one kind across all pages, each once (by URL), in manifest order.
    pub fn files(&self, kind: FileKind) -> Vec<ExportFile> {
        self.files_of(kind).collect()
    }

    /// Output, error and deleted files, in that order.
    pub fn all_files(&self) -> Vec<ExportFile> {
        self.iter_files().collect()
    }

    /// [`CompletedExport::all_files`] one at a time: each [`ExportFile`] is made as it is
    /// taken, so going through a manifest of 100,000 files holds one entry, not a copy of
    /// the manifest (only the URLs seen so far are remembered, borrowed, to drop repeats).
    pub fn iter_files(&self) -> impl Iterator<Item = ExportFile> + '_ {
        [FileKind::Output, FileKind::Error, FileKind::Deleted]
            .into_iter()
            .flat_map(|kind| self.files_of(kind))
    }

    /// The files of one kind across all pages, each once (by URL), made as they are taken.
    fn files_of(&self, kind: FileKind) -> impl Iterator<Item = ExportFile> + '_ {
        let mut seen = HashSet::new();
        self.manifests
            .iter()
            .flat_map(move |m| {
                let list = match kind {
                    FileKind::Output => &m.output,
                    FileKind::Error => &m.error,
                    FileKind::Deleted => &m.deleted,
                };
                list.iter().map(move |f| (m, f))
            })
            .filter(move |(_, f)| seen.insert(f.url.expose()))
            .map(move |(m, f)| ExportFile {
                kind,
                file: f.clone(),
                requires_access_token: m.requires_access_token,
                organized_by: m.output_organized_by.clone(),
                expires: m.expires,
            })
    }
}

/// Gathers manifest pages across polls and `next` links, dropping repeats.
#[derive(Debug, Default)]
pub(crate) struct PageCollector {
    pages: Vec<Manifest>,
    files: HashSet<FileUrl>,
    links: HashSet<String>,
}

impl PageCollector {
    /// Adds a page; returns the `next` link to follow, if it is one not followed yet. A page
    /// listing nothing new is kept only when `keep` (the final, complete manifest).
    pub(crate) fn add(&mut self, page: Manifest, keep: bool) -> Option<String> {
        let mut new = false;
        for f in page.output.iter().chain(&page.error).chain(&page.deleted) {
            new |= self.files.insert(f.url.clone());
        }
        let next = page
            .next_link()
            .filter(|l| self.links.insert((*l).to_owned()))
            .map(str::to_owned);
        if new || keep || self.pages.is_empty() {
            self.pages.push(page);
        }
        next
    }

    pub(crate) fn finish(self, status_url: Url) -> CompletedExport {
        CompletedExport {
            status_url,
            manifests: self.pages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STU2: &str = r#"{
        "transactionTime": "2021-01-01T00:00:00Z",
        "request": "https://ehr.example/fhir/$export?_type=Patient",
        "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": "https://ehr.example/files/1", "count": 2}],
        "error": [{"type": "OperationOutcome", "url": "https://ehr.example/files/e"}],
        "extension": {"https://vendor.example/x": 1},
        "vendorField": "kept"
    }"#;

    const STU4: &str = r#"{
        "transactionTime": "2026-01-01T00:00:00Z",
        "requiresAccessToken": false,
        "manifestType": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/BulkDataManifest",
        "outputFormat": "application/fhir+ndjson",
        "output": [{"type": "Observation", "url": "https://files.example/o", "fileSize": 1024}],
        "deleted": [{"url": "https://files.example/d", "count": 1}],
        "outcome": [{"url": "https://files.example/oo",
                     "countSeverity": [{"code": "warning", "count": 3}]}],
        "extension": [{"url": "https://vendor.example/e", "valueString": "v"}],
        "link": [{"relation": "next", "url": "https://ehr.example/manifest?page=2"}]
    }"#;

    #[test]
    fn reads_stu2_shape() {
        let m = Manifest::from_slice(STU2.as_bytes(), "https://ehr.example/jobs/1").unwrap();
        assert_eq!(m.transaction_time, "2021-01-01T00:00:00Z");
        assert!(m.requires_access_token);
        assert_eq!(m.output[0].count, Some(2));
        assert_eq!(m.error.len(), 1);
        assert!(m.extension.as_ref().unwrap().is_object());
        assert_eq!(m.extra["vendorField"], "kept");
        assert_eq!(m.raw(), STU2);
        assert_eq!(m.next_link(), None);
    }

    #[test]
    fn reads_stu4_shape() {
        let m = Manifest::from_slice(STU4.as_bytes(), "https://ehr.example/jobs/1").unwrap();
        assert!(!m.requires_access_token);
        assert_eq!(m.error.len(), 1, "outcome read into error");
        assert_eq!(m.error[0].extra["countSeverity"][0]["count"], 3);
        assert!(m.extension.as_ref().unwrap().is_array());
        assert_eq!(m.output[0].file_size, Some(1024));
        assert_eq!(m.deleted[0].resource_type, None);
        assert_eq!(m.next_link(), Some("https://ehr.example/manifest?page=2"));
        assert_eq!(m.output_format.as_deref(), Some("application/fhir+ndjson"));
    }

    #[test]
    fn missing_transaction_time_is_a_clear_error() {
        let err = Manifest::from_slice(br#"{"output": []}"#, "https://x/jobs/1?sig=s").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("transactionTime"), "{text}");
        assert!(!text.contains("sig=s"), "{text}");
        assert!(Manifest::from_slice(b"<html>", "https://x/").is_err());
    }

    #[test]
    fn file_urls_are_checked() {
        let file = |url: &str| ManifestFile {
            resource_type: Some("Patient".into()),
            url: FileUrl::new(url),
            count: None,
            continues_in_file: None,
            file_size: None,
            extension: None,
            extra: Map::new(),
        };
        assert!(file("https://a.example/f").http_url().is_ok());
        let gs = file("gs://bucket/export_Patient.ndjson")
            .http_url()
            .unwrap_err();
        assert!(gs.to_string().contains("Google Cloud Storage"), "{gs}");
        let s3 = file("s3://bucket/x").http_url().unwrap_err();
        assert!(s3.to_string().contains("S3"), "{s3}");
        assert!(file("files/1").http_url().is_err());
        assert!(matches!(
            file("ftp://x/y").http_url(),
            Err(Error::UnsupportedFileUrl { .. })
        ));
    }

    #[test]
    fn collector_dedups_pages_and_links() {
        let page = |urls: &[&str], next: Option<&str>| {
            let output: Vec<Value> = urls
                .iter()
                .map(|u| serde_json::json!({"type": "Patient", "url": u}))
                .collect();
            let mut v = serde_json::json!({"transactionTime": "t", "output": output});
            if let Some(n) = next {
                v["link"] = serde_json::json!([{"relation": "next", "url": n}]);
            }
            Manifest::from_slice(v.to_string().as_bytes(), "x").unwrap()
        };
        let mut c = PageCollector::default();
        assert_eq!(c.add(page(&["a"], None), false), None);
        assert_eq!(
            c.add(page(&["a"], None), false),
            None,
            "same partial manifest again"
        );
        assert_eq!(
            c.add(page(&["a"], Some("p2")), false).as_deref(),
            Some("p2")
        );
        assert_eq!(
            c.add(page(&["a"], Some("p2")), false),
            None,
            "link followed once"
        );
        assert_eq!(c.add(page(&["b"], None), true), None);
        let done = c.finish(Url::parse("https://x/jobs/1").unwrap());
        assert_eq!(done.manifests.len(), 2);
        let urls: Vec<FileUrl> = done
            .files(FileKind::Output)
            .into_iter()
            .map(|f| f.file.url)
            .collect();
        assert_eq!(urls, ["a", "b"]);
    }

    #[test]
    fn requires_access_token_is_per_page() {
        let a = Manifest::from_slice(STU2.as_bytes(), "x").unwrap();
        let b = Manifest::from_slice(STU4.as_bytes(), "x").unwrap();
        let done = CompletedExport {
            status_url: Url::parse("https://x/j").unwrap(),
            manifests: vec![a, b],
        };
        let flags: Vec<bool> = done
            .files(FileKind::Output)
            .iter()
            .map(|f| f.requires_access_token)
            .collect();
        assert_eq!(flags, [true, false]);
        assert_eq!(done.all_files().len(), 5);
        assert_eq!(
            done.transaction_time(),
            Timestamp::parse("2021-01-01T00:00:00Z")
        );
        let odd = Manifest::from_slice(br#"{"transactionTime": "yesterday"}"#, "x").unwrap();
        let odd = CompletedExport::from_manifests(Url::parse("https://x/j").unwrap(), vec![odd]);
        assert_eq!(odd.transaction_time(), None);
    }

    #[test]
    fn debug_hides_query_strings() {
        let body = r#"{
            "transactionTime": "2024-01-01T00:00:00Z",
            "request": "https://ehr.example/fhir/$export?_type=Patient&token=SECRET1",
            "requiresAccessToken": false,
            "output": [{"type": "Patient",
                        "url": "https://b.s3.example/f.ndjson?X-Amz-Signature=SECRET2",
                        "continuesInFile": "https://b.s3.example/g.ndjson?sig=SECRET3",
                        "extension": {"u": "https://x.example/?sig=SECRET4"},
                        "vendor": "https://x.example/?sig=SECRET5"}],
            "error": [{"type": "OperationOutcome",
                       "url": "https://b.s3.example/e.ndjson?sig=SECRET6"}],
            "extension": [{"url": "https://x.example/?sig=SECRET7"}],
            "link": [{"relation": "next", "url": "https://ehr.example/m?page=2&sig=SECRET8"}],
            "vendorField": "https://x.example/?sig=SECRET9"
        }"#;
        let m =
            Manifest::from_slice(body.as_bytes(), "https://ehr.example/jobs/1?x=SECRET0").unwrap();
        let export = CompletedExport::from_manifests(
            Url::parse("https://ehr.example/jobs/1?sig=SECRETA").unwrap(),
            vec![m.clone()],
        );
        let file = export.files(FileKind::Output).remove(0);
        for text in [
            format!("{m:?}"),
            format!("{m:#?}"),
            format!("{:?}", m.output[0]),
            format!("{:?}", m.link[0]),
            format!("{file:?}"),
            format!("{export:?}"),
            format!("{}", file.file.url),
        ] {
            assert!(!text.contains("SECRET"), "{text}");
        }
        let text = format!("{export:?}");
        assert!(text.contains("https://b.s3.example/f.ndjson"), "{text}");
        assert!(text.contains("vendorField"), "{text}");
        assert_eq!(
            file.file.url.expose(),
            "https://b.s3.example/f.ndjson?X-Amz-Signature=SECRET2"
        );
    }
}
