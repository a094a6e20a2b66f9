//! Downloading one attachment to its file: through the download byte source (the one send
//! path, retries, `Range` + `If-Range` within the process), into `<name>.part` with a small
//! sidecar (`<name>.part.resume`) so another process continues where this one stopped, then
//! unwrapped (a FHIR `Binary` JSON answer), checked (`size`, `hash`) and renamed.

use super::AttachmentError;
use super::binary::{UnwrapError, Unwrapped, hash_text, parse_hash, sha1_of, unwrap_binary};
use crate::client::Inner;
use crate::download::body::{BodyEvent, FileRequest, ResumeFrom, body_stream};
use crate::download::with_suffix;
use crate::error::Error;
use crate::secret::redact_url;
use crate::transport::TokenUse;
use futures::StreamExt;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use url::Url;

/// How often (in bytes written) the sidecar is brought up to date.
const SIDECAR_EVERY: u64 = 64 * 1024;

/// The sidecar of an attachment's `.part`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Resume {
    version: u32,
    /// The URL without its query: the `.part` belongs to it.
    url: String,
    /// Bytes of the `.part` that are the representation's first bytes.
    offset: u64,
    /// `ETag` / `Last-Modified` for `If-Range`.
    validator: String,
}

const RESUME_VERSION: u32 = 1;

/// What one download needs.
pub(crate) struct Fetch<'a> {
    pub(crate) url: &'a Url,
    pub(crate) token: TokenUse,
    pub(crate) accept: &'a HeaderValue,
    /// The final file.
    pub(crate) dest: &'a Path,
    /// The most bytes accepted for the answer.
    pub(crate) limit: u64,
    pub(crate) size: Option<u64>,
    pub(crate) hash: Option<&'a str>,
}

/// What was saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// Bytes of the content.
    pub(crate) bytes: u64,
    /// Whether the answer was a FHIR `Binary` (unwrapped).
    pub(crate) unwrapped: bool,
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> AttachmentError {
    AttachmentError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Writes the sidecar whole or not at all (a new file renamed over the old), in place rather
/// than on the blocking pool: a dropped future leaves no write behind it, so the sidecar never
/// claims more than the `.part` holds.
fn write_sidecar(sidecar: &Path, state: &Resume) -> std::io::Result<()> {
    let tmp = with_suffix(sidecar, ".new");
    std::fs::write(&tmp, serde_json::to_vec(state).unwrap_or_default())?;
    std::fs::rename(&tmp, sidecar)
}

async fn read_resume(part: &Path, sidecar: &Path, url: &str) -> Option<Resume> {
    let text = tokio::fs::read(sidecar).await.ok()?;
    let state: Resume = serde_json::from_slice(&text).ok()?;
    let len = tokio::fs::metadata(part).await.ok()?.len();
    (state.version == RESUME_VERSION && state.url == url && len >= state.offset && state.offset > 0)
        .then_some(state)
}

/// Downloads, checks and saves one attachment at `fetch.dest`.
pub(crate) async fn fetch(
    inner: &Arc<Inner>,
    fetch: &Fetch<'_>,
) -> Result<Fetched, AttachmentError> {
    let part = with_suffix(fetch.dest, ".part");
    let sidecar = with_suffix(&part, ".resume");
    if let Some(parent) = fetch.dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io("creating directory", parent, e))?;
    }
    let shown = redact_url(fetch.url);
    let resume = read_resume(&part, &sidecar, &shown).await;
    let result = match download(inner, fetch, &part, &sidecar, &shown, resume.as_ref()).await {
        // A range past what an earlier run kept (it had it all): start over.
        Err(AttachmentError::Download(e))
            if resume.is_some()
                && matches!(&*e, Error::UnexpectedResponse { response, .. } if response.status == 416) =>
        {
            download(inner, fetch, &part, &sidecar, &shown, None).await
        }
        other => other,
    };
    if let Err(error) = &result {
        let keep = matches!(error, AttachmentError::Download(e) if crate::download::keeps_part(e))
            || matches!(error, AttachmentError::Io { .. });
        if !keep {
            let _ = tokio::fs::remove_file(&part).await;
            let _ = tokio::fs::remove_file(&sidecar).await;
        }
    }
    result?;
    let _ = tokio::fs::remove_file(&sidecar).await;
    finish(&part, fetch, &shown).await
}

async fn download(
    inner: &Arc<Inner>,
    fetch: &Fetch<'_>,
    part: &Path,
    sidecar: &Path,
    shown: &str,
    resume: Option<&Resume>,
) -> Result<(), AttachmentError> {
    let (mut file, mut written, mut validator) = match resume {
        Some(state) => {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(part)
                .await
                .map_err(|e| io("opening", part, e))?;
            file.set_len(state.offset)
                .await
                .map_err(|e| io("truncating", part, e))?;
            tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::End(0))
                .await
                .map_err(|e| io("seeking", part, e))?;
            (file, state.offset, Some(state.validator.clone()))
        }
        None => {
            let _ = tokio::fs::remove_file(sidecar).await;
            let file = tokio::fs::File::create(part)
                .await
                .map_err(|e| io("creating", part, e))?;
            (file, 0, None)
        }
    };
    let request = FileRequest {
        url: fetch.url.clone(),
        token: fetch.token,
        expires: None,
        resume: resume.and_then(|s| {
            HeaderValue::from_str(&s.validator)
                .ok()
                .map(|validator| ResumeFrom {
                    offset: s.offset,
                    validator,
                })
        }),
        accept: Some(fetch.accept.clone()),
    };
    let body = body_stream(inner.clone(), request);
    futures::pin_mut!(body);
    let mut recorded = written;
    while let Some(event) = body.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                // What the `.part` holds can be continued by the next run.
                if written > recorded
                    && let Some(validator) = &validator
                    && file.flush().await.is_ok()
                {
                    let state = Resume {
                        version: RESUME_VERSION,
                        url: shown.to_owned(),
                        offset: written,
                        validator: validator.clone(),
                    };
                    let _ = write_sidecar(sidecar, &state);
                }
                return Err(AttachmentError::Download(Box::new(e)));
            }
        };
        match event {
            BodyEvent::Data(data) => {
                written += data.len() as u64;
                if written > fetch.limit {
                    return Err(AttachmentError::TooLarge {
                        url: shown.to_owned(),
                        limit: fetch.limit,
                    });
                }
                file.write_all(&data)
                    .await
                    .map_err(|e| io("writing", part, e))?;
                if written - recorded >= SIDECAR_EVERY
                    && let Some(validator) = &validator
                {
                    file.flush().await.map_err(|e| io("writing", part, e))?;
                    let state = Resume {
                        version: RESUME_VERSION,
                        url: shown.to_owned(),
                        offset: written,
                        validator: validator.clone(),
                    };
                    write_sidecar(sidecar, &state).map_err(|e| io("writing", sidecar, e))?;
                    recorded = written;
                }
            }
            BodyEvent::Restart => {
                file.set_len(0)
                    .await
                    .map_err(|e| io("truncating", part, e))?;
                tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(0))
                    .await
                    .map_err(|e| io("seeking", part, e))?;
                let _ = std::fs::remove_file(sidecar);
                written = 0;
                recorded = 0;
            }
            BodyEvent::Representation { resumable } => {
                validator = resumable.and_then(|v| v.to_str().ok().map(str::to_owned));
            }
            BodyEvent::End { .. } => break,
        }
    }
    file.flush().await.map_err(|e| io("writing", part, e))?;
    file.sync_all().await.map_err(|e| io("syncing", part, e))?;
    Ok(())
}

/// Unwraps a `Binary`, checks `size` and `hash`, renames into place (blocking pool).
async fn finish(part: &Path, fetch: &Fetch<'_>, shown: &str) -> Result<Fetched, AttachmentError> {
    let part = part.to_owned();
    let dest = fetch.dest.to_owned();
    let size = fetch.size;
    let hash = fetch.hash.map(str::to_owned);
    let shown = shown.to_owned();
    let job = move || finish_blocking(&part, &dest, size, hash.as_deref(), &shown);
    match tokio::task::spawn_blocking(job).await {
        Ok(result) => result,
        Err(e) => Err(AttachmentError::Io {
            action: "checking",
            path: fetch.dest.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

fn integrity(url: &str, problem: &str) {
    tracing::warn!(target: "fhir_bulk::download", file = %url, problem, "integrity");
}

fn finish_blocking(
    part: &Path,
    dest: &Path,
    size: Option<u64>,
    hash: Option<&str>,
    shown: &str,
) -> Result<Fetched, AttachmentError> {
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| io("reading", p, e));
    let starts_as_json = {
        let mut first = [0u8; 64];
        let n = std::io::Read::read(&mut open(part)?, &mut first)
            .map_err(|e| io("reading", part, e))?;
        first[..n]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{')
    };
    let mut source = part.to_owned();
    let mut unwrapped = false;
    if starts_as_json {
        let content = with_suffix(dest, ".content.part");
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&content).map_err(|e| io("creating", &content, e))?,
        );
        let result = unwrap_binary(open(part)?, &mut out);
        let flushed = out.flush_all();
        match result {
            Ok(Unwrapped::Binary { .. }) => {
                flushed.map_err(|e| io("writing", &content, e))?;
                let _ = std::fs::remove_file(part);
                source = content;
                unwrapped = true;
            }
            Ok(Unwrapped::NotBinary) => {
                let _ = std::fs::remove_file(&content);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&content);
                let _ = std::fs::remove_file(part);
                return Err(match e {
                    UnwrapError::Io(e) => io("unwrapping", part, e),
                    UnwrapError::Bad(message) => {
                        integrity(shown, &message);
                        AttachmentError::BadBinary {
                            url: shown.to_owned(),
                            message,
                        }
                    }
                });
            }
        }
    }
    let (bytes, digest) = sha1_of(open(&source)?).map_err(|e| io("reading", &source, e))?;
    let fail = |error: AttachmentError, problem: String| {
        integrity(shown, &problem);
        let _ = std::fs::remove_file(&source);
        Err(error)
    };
    if let Some(expected) = size
        && expected != bytes
    {
        return fail(
            AttachmentError::SizeMismatch {
                url: shown.to_owned(),
                expected,
                actual: bytes,
            },
            format!("size {bytes} where the attachment says {expected}"),
        );
    }
    if let Some(expected) = hash {
        let actual = hash_text(&digest);
        if parse_hash(expected) != Some(digest) {
            return fail(
                AttachmentError::HashMismatch {
                    url: shown.to_owned(),
                    expected: expected.to_owned(),
                    actual: actual.clone(),
                },
                format!("SHA-1 {actual} where the attachment says {expected}"),
            );
        }
    }
    std::fs::rename(&source, dest).map_err(|e| io("renaming", &source, e))?;
    if let Some(parent) = dest.parent() {
        crate::download::sync_dir(parent);
    }
    Ok(Fetched { bytes, unwrapped })
}

/// Flushing a `BufWriter` to its file.
trait FlushAll {
    fn flush_all(&mut self) -> std::io::Result<()>;
}

impl FlushAll for std::io::BufWriter<std::fs::File> {
    fn flush_all(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(self)?;
        self.get_ref().sync_all()
    }
}
