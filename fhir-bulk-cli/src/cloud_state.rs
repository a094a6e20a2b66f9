//! The resume state of `download --shard K/N` and object-storage `--output-dir` runs, kept
//! in the destination itself, where the user keeps the data.
//!
//! A local run keeps one job state per directory (`fhir-bulk-job.json` and its journal,
//! [`crate::state`]); shards cannot share it (N machines write at once) and a bucket has no
//! append. Here the data files are the resume state (a local shard file is written under a
//! temporary name and renamed when complete; an object appears only when its upload
//! completes), and each complete file gets one small record beside the data,
//! `_fhir-bulk/files/{name}.json` (the file's [`FileRecord`]: kind, type, URL id, resources,
//! bytes), written as soon as the file is complete. Records of different files never collide,
//! so shards write them at once; Spark and DuckDB skip `_`-prefixed folders. A rerun skips
//! the complete files and writes the rest, and its summary counts every file of the shard,
//! those of earlier runs included (from their records; a file completed by a run killed before
//! it could write the record is counted from the file itself when local, by its size when in
//! object storage).

use crate::state::{self, FileRecord, UrlId};
use fhir_bulk::download::SavedFile;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// The folder of the records, relative to the destination.
pub(crate) const RECORDS: &str = "_fhir-bulk/files";

/// The record's name for a file saved as `relative`.
pub(crate) fn record_name(relative: &str) -> String {
    format!("{RECORDS}/{relative}.json")
}

/// The file's name for a record's name, if it is one (and a safe relative path).
pub(crate) fn file_of_record(name: &str) -> Option<String> {
    let relative = name
        .strip_prefix(RECORDS)?
        .strip_prefix('/')?
        .strip_suffix(".json")?;
    state::is_safe_key(relative).then(|| relative.to_owned())
}

/// The record of a file written in this run.
pub(crate) fn record_of(saved: &SavedFile) -> FileRecord {
    FileRecord {
        kind: saved.kind,
        resource_type: saved.resource_type.clone(),
        url: UrlId::of(&saved.url),
        resources: saved.lines,
        bytes: saved.bytes,
        data_bytes: saved.data_bytes,
    }
}

/// A record as stored, or `None` for anything unreadable (the file is then counted again).
pub(crate) fn parse(bytes: &[u8]) -> Option<FileRecord> {
    serde_json::from_slice(bytes).ok()
}

/// A record as stored.
pub(crate) fn to_bytes(record: &FileRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

/// The records of one run's files, by relative name: this run's for the files it wrote, the
/// earlier run's for those it found complete. The second list names the complete files
/// that have no usable record (the run that wrote them ended before recording them, or wrote
/// another URL's file under the name).
pub(crate) fn merge(
    files: &[(String, SavedFile)],
    earlier: &BTreeMap<String, FileRecord>,
) -> (BTreeMap<String, FileRecord>, Vec<String>) {
    let mut records = BTreeMap::new();
    let mut missing = Vec::new();
    for (relative, saved) in files {
        if !saved.skipped {
            records.insert(relative.clone(), record_of(saved));
            continue;
        }
        match earlier.get(relative) {
            Some(record) if record.url == UrlId::of(&saved.url) => {
                records.insert(relative.clone(), record.clone());
            }
            _ => missing.push(relative.clone()),
        }
    }
    (records, missing)
}

/// The records kept in a local directory.
pub(crate) fn load_local(dir: &Path) -> BTreeMap<String, FileRecord> {
    let mut records = BTreeMap::new();
    let root = dir.join(RECORDS);
    let mut stack = vec![root.clone()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(inside) = path.strip_prefix(dir) else {
                continue;
            };
            let name = state::key(inside);
            if let (Some(relative), Ok(bytes)) = (file_of_record(&name), std::fs::read(&path))
                && let Some(record) = parse(&bytes)
            {
                records.insert(relative, record);
            }
        }
    }
    records
}

/// Writes a record into a local directory (atomically: a torn record is never read).
pub(crate) fn save_local(dir: &Path, relative: &str, record: &FileRecord) -> std::io::Result<()> {
    let path = dir.join(record_name(relative));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    state::write_atomically(&path, &to_bytes(record))
}

/// The record of a complete local file that has none: its lines and bytes counted from the
/// file (gzip decoded for the line count).
pub(crate) fn record_from_disk(
    dir: &Path,
    relative: &str,
    saved: &SavedFile,
) -> std::io::Result<FileRecord> {
    let path = dir.join(relative);
    let bytes = std::fs::metadata(&path)?.len();
    let file = std::fs::File::open(&path)?;
    let reader: Box<dyn Read> = if relative.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let (mut resources, mut data_bytes) = (0u64, 0u64);
    for line in BufReader::new(reader).split(b'\n') {
        let line = line?;
        data_bytes += line.len() as u64 + 1;
        if !line.iter().all(u8::is_ascii_whitespace) {
            resources += 1;
        }
    }
    Ok(FileRecord {
        bytes,
        resources,
        data_bytes,
        ..record_of(saved)
    })
}

#[cfg(feature = "cloud")]
pub(crate) mod store {
    //! The records in object storage.

    use super::*;
    use fhir_bulk::storage::cloud::Destination;

    /// Every record in the destination.
    pub(crate) async fn load(
        destination: &Destination,
    ) -> fhir_bulk::Result<BTreeMap<String, FileRecord>> {
        let mut records = BTreeMap::new();
        for name in destination.list_below(RECORDS).await? {
            let Some(relative) = file_of_record(&name) else {
                continue;
            };
            if let Some(record) = destination
                .get_small(&name)
                .await?
                .as_deref()
                .and_then(parse)
            {
                records.insert(relative, record);
            }
        }
        Ok(records)
    }

    /// Writes one record.
    pub(crate) async fn save(
        destination: &Destination,
        relative: &str,
        record: &FileRecord,
    ) -> fhir_bulk::Result<()> {
        destination
            .put_small(&record_name(relative), to_bytes(record))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_bulk::FileKind;

    fn record(url: &str, resources: u64) -> FileRecord {
        FileRecord {
            kind: FileKind::Output,
            resource_type: Some("Patient".into()),
            url: UrlId::of(url),
            resources,
            bytes: resources * 10,
            data_bytes: resources * 10,
        }
    }

    #[test]
    fn record_names_round_trip_and_stay_inside() {
        assert_eq!(
            record_name("Patient.1.ndjson"),
            "_fhir-bulk/files/Patient.1.ndjson.json"
        );
        assert_eq!(
            file_of_record("_fhir-bulk/files/a/Patient.1.ndjson.json").as_deref(),
            Some("a/Patient.1.ndjson")
        );
        assert_eq!(file_of_record("_fhir-bulk/files/../x.json"), None);
        assert_eq!(file_of_record("Patient.1.ndjson"), None);
        assert_eq!(file_of_record("_fhir-bulk/filesx/a.json"), None);
        let r = record("https://x/1", 3);
        assert_eq!(parse(&to_bytes(&r)), Some(r));
        assert_eq!(parse(b"{torn"), None);
    }

    #[test]
    fn local_records_load_back() {
        let dir = tempfile::tempdir().unwrap();
        save_local(dir.path(), "Patient.1.ndjson", &record("https://x/1", 4)).unwrap();
        save_local(dir.path(), "sub/Obs.1.ndjson", &record("https://x/2", 5)).unwrap();
        let loaded = load_local(dir.path());
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded["sub/Obs.1.ndjson"].resources, 5);
        assert!(load_local(&dir.path().join("absent")).is_empty());
    }
}
