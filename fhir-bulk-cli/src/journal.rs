//! The lines of `fhir-bulk-job.journal`, the list of an output directory's complete files
//! (see [`crate::state`] for when they are written and how they are made durable).
//!
//! A file is named as fhir-bulk names files, `<prefix>.<n>.<ext>` (`Patient.12.ndjson`,
//! `error/OperationOutcome.1.ndjson`), so its record names a *group* (kind, type, prefix and
//! extension, defined once by a line of its own) and the file's number:
//!
//! ```text
//! {"group":0,"kind":"Output","type":"Patient","prefix":"Patient","ext":"ndjson"}
//! [0,12,"0123456789abcdef",1,250]
//! [0,13,"fedcba9876543210",1,260,900]
//! ```
//!
//! `[group, n, url id, resources, bytes(, data bytes when they differ)]`: about 35 bytes a
//! file, so 20,000 one-line files cost 0.7 MB of state in all. A key of another shape is
//! written whole in place of the number. A group line defines its number from there on (a later
//! run appending to the journal starts its numbers again). The records of formats 1 to 3
//! (`["Patient.1.ndjson","Output","Patient","<url id>",lines,bytes]`, or an object) are read
//! too, and the end of the downloads is `{"phase":"complete","error_issues":N}`.

use crate::state::{CompleteMark, FileRecord, UrlId};
use fhir_bulk::FileKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What records of one group share.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    kind: FileKind,
    #[serde(rename = "type")]
    resource_type: Option<String>,
    /// The key before `.<n>.<ext>` (empty for a group of keys written whole).
    prefix: String,
    /// The key's extension after `.<n>.` (empty likewise).
    ext: String,
}

/// A group's definition line.
#[derive(Serialize, Deserialize)]
struct GroupLine {
    group: u32,
    #[serde(flatten)]
    def: Group,
}

/// A file's number in its group, or its whole key when it is not `<prefix>.<n>.<ext>`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum KeyPart {
    Number(u32),
    Key(String),
}

/// `<prefix>.<n>.<ext>` split, when `key` has that shape with `n` written as `u32` writes it
/// (so the key is rebuilt byte for byte) and `ext` one of fhir-bulk's.
fn split_key(key: &str) -> Option<(&str, u32, &str)> {
    let (stem, ext) = match key.strip_suffix(".ndjson.gz") {
        Some(stem) => (stem, "ndjson.gz"),
        None => (key.strip_suffix(".ndjson")?, "ndjson"),
    };
    let (prefix, digits) = stem.rsplit_once('.')?;
    let n: u32 = digits.parse().ok()?;
    (!prefix.is_empty() && n.to_string() == digits).then_some((prefix, n, ext))
}

/// Writes records, defining each group the first time one of its files is recorded in the
/// journal being written.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    /// The groups defined, by number: a few (one per kind, type and extension), searched
    /// without building a key per record.
    groups: Vec<Group>,
}

impl Encoder {
    /// Appends to `out` the line(s) recording `key` complete: its group's definition when
    /// this encoder has not written it, then the record.
    pub(crate) fn encode(
        &mut self,
        key: &str,
        record: &FileRecord,
        out: &mut Vec<u8>,
    ) -> serde_json::Result<()> {
        let (prefix, part, ext) = match split_key(key) {
            Some((prefix, n, ext)) => (prefix, KeyPart::Number(n), ext),
            None => ("", KeyPart::Key(key.to_owned()), ""),
        };
        let found = self.groups.iter().position(|g| {
            g.kind == record.kind
                && g.resource_type == record.resource_type
                && g.prefix == prefix
                && g.ext == ext
        });
        let index = found.unwrap_or(self.groups.len());
        let group = u32::try_from(index).unwrap_or(u32::MAX);
        if found.is_none() {
            let def = Group {
                kind: record.kind,
                resource_type: record.resource_type.clone(),
                prefix: prefix.to_owned(),
                ext: ext.to_owned(),
            };
            serde_json::to_writer(
                &mut *out,
                &GroupLine {
                    group,
                    def: def.clone(),
                },
            )?;
            out.push(b'\n');
            self.groups.push(def);
        }
        let r = record;
        if r.data_bytes == r.bytes {
            serde_json::to_writer(&mut *out, &(group, part, r.url, r.resources, r.bytes))?;
        } else {
            let line = (group, part, r.url, r.resources, r.bytes, r.data_bytes);
            serde_json::to_writer(&mut *out, &line)?;
        }
        out.push(b'\n');
        Ok(())
    }
}

/// The end-of-downloads line.
pub(crate) fn complete_line(mark: &CompleteMark) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(mark)?;
    line.push(b'\n');
    Ok(line)
}

/// One journal line as read.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Compressed(u32, KeyPart, UrlId, u64, u64, u64),
    Same(u32, KeyPart, UrlId, u64, u64),
    Group(GroupLine),
    Complete(CompleteMark),
    /// Formats 1 to 3: `[key, kind, type, url id, resources, bytes(, data_bytes)]`.
    KeyedCompressed(String, FileKind, Option<String>, UrlId, u64, u64, u64),
    KeyedSame(String, FileKind, Option<String>, UrlId, u64, u64),
    /// Format 1: an object.
    Object(KeyedRecord),
}

/// A record of format 1: a file recorded complete under `key`.
#[derive(Debug, Deserialize)]
struct KeyedRecord {
    key: String,
    #[serde(flatten)]
    record: FileRecord,
}

/// What a journal line records.
#[derive(Debug, PartialEq)]
pub(crate) enum Entry {
    /// A file complete, by its key.
    File(String, FileRecord),
    /// The downloads complete.
    Complete(CompleteMark),
}

/// A journal as read.
#[derive(Debug)]
pub(crate) struct Replayed {
    /// Its entries, in order, up to the first line that is not a whole entry.
    pub(crate) entries: Vec<Entry>,
    /// Whether every byte was a whole entry (else the rest is a torn write, the process died in
    /// the middle of it, or was altered: it is ignored).
    pub(crate) whole: bool,
}

/// Reads a journal's entries.
pub(crate) fn replay(journal: &[u8]) -> Replayed {
    let mut groups: HashMap<u32, Group> = HashMap::new();
    let mut entries = Vec::new();
    let mut rest = journal;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let Ok(line) = serde_json::from_slice::<Line>(&rest[..end]) else {
            break;
        };
        match read(line, &mut groups) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(NotWritten) => break,
        }
        rest = &rest[end + 1..];
    }
    Replayed {
        entries,
        whole: rest.is_empty(),
    }
}

/// A line that parses but is not one fhir-bulk writes (a record of a group never defined).
struct NotWritten;

/// The entry a line adds (none for a group's definition, which goes to `groups`).
fn read(line: Line, groups: &mut HashMap<u32, Group>) -> Result<Option<Entry>, NotWritten> {
    let ((key, kind, resource_type), url, resources, bytes, data_bytes) = match line {
        Line::Group(line) => {
            groups.insert(line.group, line.def);
            return Ok(None);
        }
        Line::Complete(mark) => return Ok(Some(Entry::Complete(mark))),
        Line::Object(keyed) => return Ok(Some(Entry::File(keyed.key, keyed.record))),
        Line::Compressed(g, p, u, n, b, d) => (grouped(groups, g, p)?, u, n, b, d),
        Line::Same(g, p, u, n, b) => (grouped(groups, g, p)?, u, n, b, b),
        Line::KeyedCompressed(key, k, t, u, n, b, d) => ((key, k, t), u, n, b, d),
        Line::KeyedSame(key, k, t, u, n, b) => ((key, k, t), u, n, b, b),
    };
    let record = FileRecord::from((kind, resource_type, url, resources, bytes, data_bytes));
    Ok(Some(Entry::File(key, record)))
}

/// The key, kind and type of a record of `group`: a number for a group of numbered keys, a
/// whole key for a group of keys written whole.
fn grouped(
    groups: &HashMap<u32, Group>,
    group: u32,
    part: KeyPart,
) -> Result<(String, FileKind, Option<String>), NotWritten> {
    let def = groups.get(&group).ok_or(NotWritten)?;
    let key = match part {
        KeyPart::Number(n) if !def.prefix.is_empty() => format!("{}.{n}.{}", def.prefix, def.ext),
        KeyPart::Key(key) if def.prefix.is_empty() => key,
        _ => return Err(NotWritten),
    };
    Ok((key, def.kind, def.resource_type.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Phase;

    fn record(kind: FileKind, resource_type: Option<&str>, url: &str) -> FileRecord {
        FileRecord {
            kind,
            resource_type: resource_type.map(str::to_owned),
            url: UrlId::of(url),
            resources: 3,
            bytes: 250,
            data_bytes: 250,
        }
    }

    #[test]
    fn keys_split_only_when_they_rebuild_byte_for_byte() {
        assert_eq!(
            split_key("Patient.12.ndjson"),
            Some(("Patient", 12, "ndjson"))
        );
        assert_eq!(
            split_key("error/OperationOutcome.1.ndjson.gz"),
            Some(("error/OperationOutcome", 1, "ndjson.gz"))
        );
        assert_eq!(split_key("a.b.7.ndjson"), Some(("a.b", 7, "ndjson")));
        for whole in [
            "Patient.012.ndjson",
            "Patient.+1.ndjson",
            "Patient.1.json",
            ".1.ndjson",
            "Patient.ndjson",
            "Patient.99999999999.ndjson",
            "Patient..ndjson",
        ] {
            assert_eq!(split_key(whole), None, "{whole}");
        }
    }

    #[test]
    fn records_round_trip_with_one_definition_per_group() {
        let files = [
            (
                "Patient.1.ndjson",
                record(FileKind::Output, Some("Patient"), "http://h/1"),
            ),
            (
                "Patient.2.ndjson",
                record(FileKind::Output, Some("Patient"), "http://h/2"),
            ),
            (
                "output.1.ndjson",
                record(FileKind::Output, None, "http://h/3"),
            ),
            (
                "error/OperationOutcome.1.ndjson",
                record(FileKind::Error, None, "http://h/4"),
            ),
            ("Patient.3.ndjson.gz", {
                let mut r = record(FileKind::Output, Some("Patient"), "http://h/5");
                r.data_bytes = 9_000;
                r
            }),
            (
                "odd name",
                record(FileKind::Deleted, Some("Bundle"), "http://h/6"),
            ),
            (
                "Patient.007.ndjson",
                record(FileKind::Output, Some("Patient"), "http://h/7"),
            ),
        ];
        let mut encoder = Encoder::default();
        let mut journal = Vec::new();
        for (key, r) in &files {
            encoder.encode(key, r, &mut journal).unwrap();
        }
        let mark = CompleteMark {
            phase: Phase::Complete,
            error_issues: 2,
        };
        journal.extend(complete_line(&mark).unwrap());
        let text = String::from_utf8(journal.clone()).unwrap();
        // Six groups: Patient.ndjson, output, error, Patient.ndjson.gz, and two of keys
        // written whole (another kind, and a Patient key that does not rebuild).
        assert_eq!(text.matches("\"group\"").count(), 6, "{text}");
        let id = format!("{:?}", UrlId::of("http://h/2"));
        assert!(
            text.contains(&format!("\n[0,2,\"{id}\",3,250]\n")),
            "{text}"
        );
        assert!(text.contains(",250,9000]"), "{text}");
        let back = replay(&journal);
        assert!(back.whole);
        let mut expected: Vec<Entry> = files
            .iter()
            .map(|(k, r)| Entry::File((*k).to_owned(), r.clone()))
            .collect();
        expected.push(Entry::Complete(mark));
        assert_eq!(back.entries, expected);
    }

    #[test]
    fn a_group_redefined_by_a_later_run_applies_from_there_on() {
        let mut journal = Vec::new();
        let first = record(FileKind::Output, Some("Patient"), "http://h/1");
        Encoder::default()
            .encode("Patient.1.ndjson", &first, &mut journal)
            .unwrap();
        let second = record(FileKind::Output, Some("Observation"), "http://h/2");
        Encoder::default()
            .encode("Observation.1.ndjson", &second, &mut journal)
            .unwrap();
        let back = replay(&journal);
        assert!(back.whole);
        assert_eq!(
            back.entries,
            [
                Entry::File("Patient.1.ndjson".into(), first),
                Entry::File("Observation.1.ndjson".into(), second)
            ]
        );
    }

    #[test]
    fn a_torn_line_or_an_undefined_group_ends_the_replay() {
        let mut journal = Vec::new();
        let mut encoder = Encoder::default();
        let r = record(FileKind::Output, Some("Patient"), "http://h/1");
        encoder
            .encode("Patient.1.ndjson", &r, &mut journal)
            .unwrap();
        let whole = journal.len();
        encoder
            .encode("Patient.2.ndjson", &r, &mut journal)
            .unwrap();
        for cut in whole..journal.len() {
            let back = replay(&journal[..cut]);
            assert_eq!(back.entries.len(), 1, "cut at {cut}");
            assert_eq!(back.whole, cut == whole, "cut at {cut}");
        }
        let undefined = b"[5,1,\"0123456789abcdef\",1,2]\n";
        let mut bad = journal[..whole].to_vec();
        bad.extend_from_slice(undefined);
        let back = replay(&bad);
        assert_eq!((back.entries.len(), back.whole), (1, false));
        // A number for a group of whole keys, or a whole key for a numbered group.
        let mut bad = journal[..whole].to_vec();
        bad.extend_from_slice(b"[0,\"Patient.9.ndjson\",\"0123456789abcdef\",1,2]\n");
        assert!(!replay(&bad).whole);
    }

    #[test]
    fn the_lines_of_formats_1_to_3_are_read() {
        let id = format!("{:?}", UrlId::of("http://h/3"));
        let journal = format!(
            "{}\n[\"Patient.2.ndjson\",\"Output\",\"Patient\",\"http://h/2\",3,250]\n\
             [\"Patient.3.ndjson\",\"Output\",\"Patient\",\"{id}\",3,250,900]\n",
            serde_json::json!({
                "key": "Patient.1.ndjson", "kind": "Output", "resource_type": "Patient",
                "url": "http://h/1", "resources": 3, "bytes": 250, "data_bytes": 250
            })
        );
        let back = replay(journal.as_bytes());
        assert!(back.whole);
        let mut third = record(FileKind::Output, Some("Patient"), "http://h/3");
        third.data_bytes = 900;
        assert_eq!(
            back.entries,
            [
                Entry::File(
                    "Patient.1.ndjson".into(),
                    record(FileKind::Output, Some("Patient"), "http://h/1")
                ),
                Entry::File(
                    "Patient.2.ndjson".into(),
                    record(FileKind::Output, Some("Patient"), "http://h/2")
                ),
                Entry::File("Patient.3.ndjson".into(), third),
            ]
        );
    }
}
