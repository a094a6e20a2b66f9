//! `manifest.json`: the manifest exactly as the server sent it. When the server pages its
//! manifest (or sends partial manifests), the first page is `manifest.json` and the following
//! ones `manifest.2.json`, `manifest.3.json`, ..., each byte for byte as received.

use crate::error::CliError;
use crate::state::write_atomically;
use fhir_bulk::{CompletedExport, Manifest};
use std::path::{Path, PathBuf};
use url::Url;

/// The file name of page `n` (1-based).
pub(crate) fn page_name(n: usize) -> String {
    if n <= 1 {
        "manifest.json".to_owned()
    } else {
        format!("manifest.{n}.json")
    }
}

/// Writes every page of `export` into `dir`, and removes stale pages of an earlier manifest.
pub(crate) fn write(dir: &Path, export: &CompletedExport) -> Result<(), CliError> {
    for (i, page) in export.manifests.iter().enumerate() {
        let path = dir.join(page_name(i + 1));
        let body = if page.raw().is_empty() {
            serde_json::to_string_pretty(page).unwrap_or_default()
        } else {
            page.raw().to_owned()
        };
        write_atomically(&path, body.as_bytes())
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    let mut n = export.manifests.len().max(1) + 1;
    while dir.join(page_name(n)).exists() {
        let _ = std::fs::remove_file(dir.join(page_name(n)));
        n += 1;
    }
    Ok(())
}

/// Reads a saved manifest and, when it is named `manifest.json`, the `manifest.N.json` pages
/// next to it. Unreadable input is a usage error about the argument.
pub(crate) fn read(path: &Path) -> Result<CompletedExport, CliError> {
    let bad = |message: String| CliError::usage("MANIFEST_JSON_FILE", message);
    let mut pages = vec![read_page(path).map_err(bad)?];
    if path.file_name().is_some_and(|n| n == "manifest.json") {
        let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let mut n = 2;
        while dir.join(page_name(n)).exists() {
            pages.push(read_page(&dir.join(page_name(n))).map_err(bad)?);
            n += 1;
        }
    }
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let url = Url::from_file_path(&absolute)
        .or_else(|()| Url::parse("file:///manifest.json"))
        .map_err(|e| bad(format!("cannot name {}: {e}", path.display())))?;
    Ok(CompletedExport::from_manifests(url, pages))
}

fn read_page(path: &Path) -> Result<Manifest, String> {
    let body = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Manifest::from_slice(&body, &path.display().to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"{"transactionTime":"2024-01-01T00:00:00Z","request":"https://ehr.example/fhir/$export","requiresAccessToken":true,
  "output":[{"type":"Patient","url":"https://ehr.example/files/1"}],"error":[]}"#;

    #[test]
    fn pages_round_trip_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let page2 = PAGE.replace("files/1", "files/2");
        let export = CompletedExport::from_manifests(
            Url::parse("https://ehr.example/jobs/1").unwrap(),
            vec![
                Manifest::from_slice(PAGE.as_bytes(), "x").unwrap(),
                Manifest::from_slice(page2.as_bytes(), "x").unwrap(),
            ],
        );
        std::fs::write(dir.path().join("manifest.3.json"), "stale").unwrap();
        write(dir.path(), &export).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("manifest.json")).unwrap(),
            PAGE
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("manifest.2.json")).unwrap(),
            page2
        );
        assert!(!dir.path().join("manifest.3.json").exists());
        let back = read(&dir.path().join("manifest.json")).unwrap();
        assert_eq!(back.manifests.len(), 2);
        assert_eq!(back.all_files().len(), 2);
        let err = read(&dir.path().join("missing.json")).unwrap_err();
        assert!(err.to_string().starts_with("MANIFEST_JSON_FILE:"), "{err}");
    }
}
