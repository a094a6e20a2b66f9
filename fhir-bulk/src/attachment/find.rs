//! The pure part of attachments: finding them in a resource, resolving their URLs, naming
//! their files, matching MIME types, deciding what to do with each. No I/O.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::path::PathBuf;
use url::Url;

/// The directory, beside the data file, attachments are saved in.
pub const ATTACHMENTS_DIR: &str = "attachments";

/// Where an attachment sits in its resource.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentPlace {
    /// `DocumentReference.content[i].attachment`.
    Content(usize),
    /// `DiagnosticReport.presentedForm[i]`.
    PresentedForm(usize),
}

impl AttachmentPlace {
    /// The element's index in its array.
    pub fn index(self) -> usize {
        match self {
            AttachmentPlace::Content(i) | AttachmentPlace::PresentedForm(i) => i,
        }
    }
}

impl fmt::Display for AttachmentPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachmentPlace::Content(i) => write!(f, "content[{i}].attachment"),
            AttachmentPlace::PresentedForm(i) => write!(f, "presentedForm[{i}]"),
        }
    }
}

/// An attachment found in a resource (FHIR `Attachment`), as the resource gives it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundAttachment {
    /// `DocumentReference` or `DiagnosticReport`.
    pub resource_type: String,
    /// The resource's `id`.
    pub resource_id: Option<String>,
    /// Where the attachment is in the resource.
    pub place: AttachmentPlace,
    /// `url`, as written (relative `Binary/x`, absolute, or a saved file's path).
    pub url: Option<String>,
    /// `contentType`.
    pub content_type: Option<String>,
    /// `size` (an integer, or R5's integer64 string).
    pub size: Option<u64>,
    /// `hash`: base64 of the content's SHA-1.
    pub hash: Option<String>,
    /// Whether `data` is there (the content is inline already).
    pub has_data: bool,
}

impl FoundAttachment {
    /// `Type/id` of the resource, for messages (`Type/?` without an id).
    pub fn resource(&self) -> String {
        format!(
            "{}/{}",
            self.resource_type,
            self.resource_id.as_deref().unwrap_or("?")
        )
    }
}

/// A JSON object with its members in their order, each value kept as written.
#[derive(Debug, Default)]
pub(crate) struct Ordered(pub(crate) Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(V)
    }
}

impl Ordered {
    pub(crate) fn parse(text: &str) -> Option<Ordered> {
        serde_json::from_str(text).ok()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    pub(crate) fn str(&self, key: &str) -> Option<String> {
        serde_json::from_str::<String>(self.get(key)?.get()).ok()
    }

    fn u64(&self, key: &str) -> Option<u64> {
        let raw = self.get(key)?.get();
        serde_json::from_str::<u64>(raw).ok().or_else(|| {
            serde_json::from_str::<String>(raw)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
    }

    /// Sets `key` (in place when present, else before `before` when present, else at the end).
    pub(crate) fn set(&mut self, key: &str, value: Box<RawValue>, before: &str) {
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
            return;
        }
        let at = self
            .0
            .iter()
            .position(|(k, _)| k == before)
            .unwrap_or(self.0.len());
        self.0.insert(at, (key.to_owned(), value));
    }

    /// The object as compact JSON, members in their order.
    pub(crate) fn to_raw(&self) -> Box<RawValue> {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(k));
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        raw(out)
    }
}

/// A JSON string literal.
pub(crate) fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// Text known to be valid JSON as a raw value.
pub(crate) fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).unwrap_or_else(|_| {
        // Only valid JSON reaches here; `null` keeps the document valid regardless.
        RawValue::from_string("null".into()).unwrap_or_default()
    })
}

/// The array member of a resource that holds its attachments, and whether each element wraps
/// it (`content[].attachment`) or is it (`presentedForm[]`).
pub(crate) fn holder(resource_type: &str) -> Option<(&'static str, bool)> {
    match resource_type {
        "DocumentReference" => Some(("content", true)),
        "DiagnosticReport" => Some(("presentedForm", false)),
        _ => None,
    }
}

pub(crate) fn place(resource_type: &str, index: usize) -> AttachmentPlace {
    if resource_type == "DiagnosticReport" {
        AttachmentPlace::PresentedForm(index)
    } else {
        AttachmentPlace::Content(index)
    }
}

/// Reads an attachment object.
pub(crate) fn describe(
    resource_type: &str,
    resource_id: Option<&str>,
    place: AttachmentPlace,
    attachment: &Ordered,
) -> FoundAttachment {
    FoundAttachment {
        resource_type: resource_type.to_owned(),
        resource_id: resource_id.map(str::to_owned),
        place,
        url: attachment.str("url"),
        content_type: attachment.str("contentType"),
        size: attachment.u64("size"),
        hash: attachment.str("hash"),
        has_data: attachment.get("data").is_some_and(|d| d.get() != "null"),
    }
}

/// The attachments of one resource (an NDJSON line): `DocumentReference.content[].attachment`
/// and `DiagnosticReport.presentedForm[]`. Anything else, and text that is not a JSON object,
/// has none.
///
/// ```
/// use fhir_bulk::attachment::{AttachmentPlace, find_attachments};
/// let line = br#"{"resourceType":"DocumentReference","id":"d1","content":[
///     {"attachment":{"contentType":"application/pdf","url":"Binary/b1","size":12}}]}"#;
/// let found = find_attachments(line);
/// assert_eq!(found[0].url.as_deref(), Some("Binary/b1"));
/// assert_eq!(found[0].place, AttachmentPlace::Content(0));
/// assert_eq!(found[0].size, Some(12));
/// ```
pub fn find_attachments(resource: &[u8]) -> Vec<FoundAttachment> {
    let Some(top) = std::str::from_utf8(resource).ok().and_then(Ordered::parse) else {
        return Vec::new();
    };
    let Some(resource_type) = top.str("resourceType") else {
        return Vec::new();
    };
    let Some((key, nested)) = holder(&resource_type) else {
        return Vec::new();
    };
    let id = top.str("id");
    let Some(items) = top
        .get(key)
        .and_then(|a| serde_json::from_str::<Vec<Box<RawValue>>>(a.get()).ok())
    else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let item = Ordered::parse(item.get())?;
            let attachment = if nested {
                Ordered::parse(item.get("attachment")?.get())?
            } else {
                item
            };
            Some(describe(
                &resource_type,
                id.as_deref(),
                place(&resource_type, i),
                &attachment,
            ))
        })
        .collect()
}

/// What an attachment's `url` names.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentUrl {
    /// Content to download from this URL (a relative `Binary/x` resolved against the FHIR
    /// base, or an absolute http(s) URL).
    Remote(Url),
    /// A file saved beside the data by an earlier pass (`attachments/...`).
    Saved(String),
    /// Nothing this client can download (`urn:`, `#contained`, another scheme, a relative
    /// path that is not a FHIR reference): why.
    Unsupported(String),
}

/// Whether `text` is a FHIR relative reference `Type/id` (optionally `/_history/vid`).
fn is_fhir_reference(text: &str) -> bool {
    let parts: Vec<&str> = text.split('/').collect();
    let id_ok = |id: &str| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    let head = parts.len() >= 2 && crate::validate::is_resource_type(parts[0]) && id_ok(parts[1]);
    match parts.len() {
        2 => head,
        4 => head && parts[2] == "_history" && id_ok(parts[3]),
        _ => false,
    }
}

/// Resolves an attachment's `url` against the FHIR base (which ends in `/`).
///
/// ```
/// use fhir_bulk::attachment::{AttachmentUrl, resolve_attachment_url};
/// let base = url::Url::parse("https://ehr.example/fhir/r4/").unwrap();
/// assert_eq!(
///     resolve_attachment_url(&base, "Binary/abc"),
///     AttachmentUrl::Remote(url::Url::parse("https://ehr.example/fhir/r4/Binary/abc").unwrap())
/// );
/// assert!(matches!(resolve_attachment_url(&base, "urn:uuid:1"), AttachmentUrl::Unsupported(_)));
/// ```
pub fn resolve_attachment_url(base: &Url, url: &str) -> AttachmentUrl {
    let url = url.trim();
    if let Ok(absolute) = Url::parse(url) {
        return match absolute.scheme() {
            "http" | "https" => AttachmentUrl::Remote(absolute),
            other => AttachmentUrl::Unsupported(format!(
                "the `{other}:` scheme is not downloadable (only http and https are)"
            )),
        };
    }
    if url.starts_with('#') {
        return AttachmentUrl::Unsupported("a reference to a contained resource".into());
    }
    if is_fhir_reference(url) {
        return match base.join(url) {
            Ok(resolved) => AttachmentUrl::Remote(resolved),
            Err(e) => AttachmentUrl::Unsupported(format!("cannot resolve against the base: {e}")),
        };
    }
    if url.starts_with(&format!("{ATTACHMENTS_DIR}/")) {
        return AttachmentUrl::Saved(url.to_owned());
    }
    AttachmentUrl::Unsupported(
        "a relative URL that is neither a FHIR reference (`Binary/id`) nor a saved attachment"
            .into(),
    )
}

/// The MIME type without parameters, lowercase.
pub(crate) fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether `content_type` is in the allow-list (`type/subtype`, `type/*` or `*/*`,
/// parameters and case ignored). No content type is never allowed.
pub fn mime_allowed(allowed: &[String], content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let have = essence(content_type);
    let major = have.split('/').next().unwrap_or_default();
    allowed.iter().any(|pattern| {
        let pattern = essence(pattern);
        pattern == have
            || pattern == "*/*"
            || pattern
                .strip_suffix("/*")
                .is_some_and(|p| p == major && !major.is_empty())
    })
}

/// The file extension for a MIME type (`bin` when unknown).
fn extension(content_type: Option<&str>) -> &'static str {
    match content_type.map(essence).as_deref() {
        Some("application/pdf") => "pdf",
        Some("text/plain") => "txt",
        Some("text/html") => "html",
        Some("application/xhtml+xml") => "xhtml",
        Some("text/xml" | "application/xml" | "application/hl7-v3+xml") => "xml",
        Some("application/json" | "application/fhir+json") => "json",
        Some("text/rtf" | "application/rtf") => "rtf",
        Some("image/jpeg") => "jpg",
        Some("image/png") => "png",
        Some("image/gif") => "gif",
        Some("image/tiff") => "tiff",
        Some("application/dicom") => "dcm",
        Some("text/csv") => "csv",
        Some("application/msword") => "doc",
        Some("application/vnd.openxmlformats-officedocument.wordprocessingml.document") => "docx",
        _ => "bin",
    }
}

/// A short hex digest of `text`, to tell names apart.
fn short_digest(text: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(text.as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps `[A-Za-z0-9-.]`, at most 64 characters, not starting with a dot; anything else
/// becomes `_` and the original's digest is appended, so two ids never share a name.
fn safe_component(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out != text || out.is_empty() {
        out.push('-');
        out.push_str(&short_digest(text));
    }
    out
}

/// The path, relative to the data file's directory, an attachment is saved under:
/// `attachments/<Type>/<id>.<index>.<ext>`, the extension from the content type. The same
/// attachment always gets the same name; unsafe characters in the id never reach the file
/// system (and a resource without an id is named after its URL's digest).
///
/// ```
/// use fhir_bulk::attachment::{attachment_path, find_attachments};
/// let line = br#"{"resourceType":"DiagnosticReport","id":"r-1","presentedForm":[
///     {"contentType":"text/html","url":"Binary/x"}]}"#;
/// let found = &find_attachments(line)[0];
/// assert_eq!(attachment_path(found), std::path::Path::new("attachments/DiagnosticReport/r-1.0.html"));
/// ```
pub fn attachment_path(attachment: &FoundAttachment) -> PathBuf {
    let id = match &attachment.resource_id {
        Some(id) => safe_component(id),
        None => format!(
            "no-id-{}",
            short_digest(attachment.url.as_deref().unwrap_or_default())
        ),
    };
    let mut path = PathBuf::from(ATTACHMENTS_DIR);
    path.push(safe_component(&attachment.resource_type));
    path.push(format!(
        "{id}.{}.{}",
        attachment.place.index(),
        extension(attachment.content_type.as_deref())
    ));
    path
}

/// The URL text of a saved attachment's relative path (always `/`-separated).
pub(crate) fn path_url(path: &std::path::Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Why an attachment was left as it was.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Its URL names nothing downloadable (see [`AttachmentUrl::Unsupported`]).
    UnsupportedUrl(String),
    /// Inline mode: its content type is not in the allow-list.
    TypeNotInlined,
    /// Inline mode: it is not smaller than the inline limit (by its `size`, or once
    /// downloaded).
    TooLargeToInline,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::UnsupportedUrl(why) => write!(f, "its URL is not downloadable: {why}"),
            SkipReason::TypeNotInlined => f.write_str("its content type is not one to inline"),
            SkipReason::TooLargeToInline => f.write_str("it is not smaller than the inline limit"),
        }
    }
}

/// What to do with one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// No `url` and no `data`: nothing to do, nothing to count.
    Nothing,
    /// Inline already, or saved by an earlier pass.
    Present,
    /// Left alone, for this reason.
    Skip(SkipReason),
    /// Download it; `inline`: inline it if it turns out smaller than the limit.
    Fetch { url: Url, inline: bool },
}

/// Decides what to do with an attachment. Pure: no I/O.
pub(crate) fn plan(
    attachment: &FoundAttachment,
    base: &Url,
    inline_mode: bool,
    inline_smaller_than: u64,
    inline_types: &[String],
) -> Plan {
    if attachment.has_data {
        return Plan::Present;
    }
    let Some(url) = &attachment.url else {
        return Plan::Nothing;
    };
    let url = match resolve_attachment_url(base, url) {
        AttachmentUrl::Remote(url) => url,
        AttachmentUrl::Saved(_) => return Plan::Present,
        AttachmentUrl::Unsupported(why) => return Plan::Skip(SkipReason::UnsupportedUrl(why)),
    };
    let type_ok = mime_allowed(inline_types, attachment.content_type.as_deref());
    let size_ok =
        inline_smaller_than > 0 && attachment.size.is_none_or(|s| s < inline_smaller_than);
    if inline_mode {
        if !type_ok {
            return Plan::Skip(SkipReason::TypeNotInlined);
        }
        if !size_ok {
            return Plan::Skip(SkipReason::TooLargeToInline);
        }
    }
    Plan::Fetch {
        url,
        inline: type_ok && size_ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://ehr.example/fhir/r4/").unwrap()
    }

    #[test]
    fn attachments_are_found_in_both_resource_types() {
        let doc = br#"{"resourceType":"DocumentReference","id":"d1","content":[{"attachment":{"contentType":"text/plain","data":"aGk="}},{"format":{"code":"x"},"attachment":{"url":"https://ehr.example/fhir/r4/Binary/b2","size":"2048","hash":"2jmj7l5rSw0yVb/vlWAYkK/YBwk="}}]}"#;
        let found = find_attachments(doc);
        assert_eq!(found.len(), 2);
        assert!(found[0].has_data && found[0].url.is_none());
        assert_eq!(found[1].place, AttachmentPlace::Content(1));
        assert_eq!(found[1].size, Some(2048), "R5 integer64 as a string");
        assert_eq!(found[1].resource(), "DocumentReference/d1");
        let report = br#"{"resourceType":"DiagnosticReport","presentedForm":[{"url":"Binary/r"}]}"#;
        let found = find_attachments(report);
        assert_eq!(found[0].place, AttachmentPlace::PresentedForm(0));
        assert_eq!(found[0].resource(), "DiagnosticReport/?");
        assert!(find_attachments(br#"{"resourceType":"Patient","id":"p"}"#).is_empty());
        assert!(find_attachments(b"not json").is_empty());
        assert!(
            find_attachments(br#"{"resourceType":"DocumentReference","content":7}"#).is_empty()
        );
    }

    #[test]
    fn urls_resolve_against_the_base() {
        let b = base();
        assert_eq!(
            resolve_attachment_url(&b, "Binary/e-1.x"),
            AttachmentUrl::Remote(Url::parse("https://ehr.example/fhir/r4/Binary/e-1.x").unwrap())
        );
        assert_eq!(
            resolve_attachment_url(&b, "Binary/1/_history/2"),
            AttachmentUrl::Remote(
                Url::parse("https://ehr.example/fhir/r4/Binary/1/_history/2").unwrap()
            )
        );
        assert!(matches!(
            resolve_attachment_url(&b, "https://other.example/b/1?sig=x"),
            AttachmentUrl::Remote(u) if u.host_str() == Some("other.example")
        ));
        assert_eq!(
            resolve_attachment_url(&b, "attachments/DocumentReference/d.0.pdf"),
            AttachmentUrl::Saved("attachments/DocumentReference/d.0.pdf".into())
        );
        for bad in [
            "urn:uuid:abc",
            "#c1",
            "ftp://h/x",
            "../etc/passwd",
            "binary/x",
            "Binary/a/b",
            "Binary/",
        ] {
            assert!(
                matches!(
                    resolve_attachment_url(&b, bad),
                    AttachmentUrl::Unsupported(_)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_are_deterministic_and_safe() {
        let mut a = find_attachments(
            br#"{"resourceType":"DocumentReference","id":"d-1","content":[{"attachment":{"contentType":"application/pdf; x=y","url":"Binary/1"}}]}"#,
        )
        .remove(0);
        assert_eq!(
            attachment_path(&a),
            PathBuf::from("attachments/DocumentReference/d-1.0.pdf")
        );
        a.resource_id = Some("../../etc".into());
        let hostile = attachment_path(&a);
        let name = hostile.file_name().unwrap().to_str().unwrap();
        assert!(!name.contains('/') && !name.starts_with('.'), "{name}");
        assert_eq!(hostile.components().count(), 3);
        a.resource_id = Some("a/b".into());
        let one = attachment_path(&a);
        a.resource_id = Some("a_b".into());
        assert_ne!(one, attachment_path(&a), "sanitised ids never collide");
        a.resource_id = None;
        a.content_type = None;
        let none = attachment_path(&a);
        assert_eq!(none, attachment_path(&a));
        assert!(none.to_str().unwrap().ends_with(".0.bin"));
        assert_eq!(path_url(&one), one.to_str().unwrap());
    }

    #[test]
    fn mime_allow_list() {
        let allowed: Vec<String> = vec!["text/plain".into(), "image/*".into()];
        assert!(mime_allowed(&allowed, Some("Text/Plain; charset=utf-8")));
        assert!(mime_allowed(&allowed, Some("image/png")));
        assert!(!mime_allowed(&allowed, Some("application/pdf")));
        assert!(!mime_allowed(&allowed, None));
        assert!(mime_allowed(&["*/*".into()], Some("application/pdf")));
    }

    #[test]
    fn plans() {
        let b = base();
        let types: Vec<String> = vec!["text/plain".into()];
        let att = |url: Option<&str>, ct: &str, size: Option<u64>| FoundAttachment {
            resource_type: "DocumentReference".into(),
            resource_id: Some("d".into()),
            place: AttachmentPlace::Content(0),
            url: url.map(str::to_owned),
            content_type: Some(ct.into()),
            size,
            hash: None,
            has_data: false,
        };
        let remote = Url::parse("https://ehr.example/fhir/r4/Binary/1").unwrap();
        assert_eq!(
            plan(&att(None, "text/plain", None), &b, false, 0, &types),
            Plan::Nothing
        );
        assert_eq!(
            plan(
                &att(Some("Binary/1"), "application/pdf", None),
                &b,
                false,
                0,
                &types
            ),
            Plan::Fetch {
                url: remote.clone(),
                inline: false
            }
        );
        assert_eq!(
            plan(
                &att(Some("Binary/1"), "text/plain", Some(10)),
                &b,
                false,
                100,
                &types
            ),
            Plan::Fetch {
                url: remote.clone(),
                inline: true
            }
        );
        assert_eq!(
            plan(
                &att(Some("Binary/1"), "text/plain", Some(100)),
                &b,
                true,
                100,
                &types
            ),
            Plan::Skip(SkipReason::TooLargeToInline),
            "smaller than, not equal"
        );
        assert_eq!(
            plan(
                &att(Some("Binary/1"), "application/pdf", Some(1)),
                &b,
                true,
                100,
                &types
            ),
            Plan::Skip(SkipReason::TypeNotInlined)
        );
        assert_eq!(
            plan(
                &att(Some("Binary/1"), "text/plain", None),
                &b,
                true,
                100,
                &types
            ),
            Plan::Fetch {
                url: remote,
                inline: true
            },
            "no size: downloaded, then measured"
        );
        assert_eq!(
            plan(
                &att(
                    Some("attachments/DocumentReference/d.0.txt"),
                    "text/plain",
                    None
                ),
                &b,
                false,
                0,
                &types
            ),
            Plan::Present
        );
        let mut inline = att(None, "text/plain", None);
        inline.has_data = true;
        assert_eq!(plan(&inline, &b, false, 0, &types), Plan::Present);
    }

    #[test]
    fn ordered_objects_keep_their_order() {
        let mut o = Ordered::parse(r#"{"z":1,"a":{"k":[1, 2]},"url":"x"}"#).unwrap();
        o.set("data", raw("\"aGk=\"".into()), "url");
        o.set("url", raw(json_string("attachments/x")), "url");
        assert_eq!(
            o.to_raw().get(),
            r#"{"z":1,"a":{"k":[1, 2]},"data":"aGk=","url":"attachments/x"}"#
        );
    }
}
