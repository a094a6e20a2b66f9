//! One export across machines: shard K of N of a manifest's files.
//!
//! Every worker computes the same split from the same manifest, so N workers (a Kubernetes
//! Indexed Job, a Slurm array, N shells) each take a disjoint share and together cover every
//! file once. Files chained by `continuesInFile` stay in one shard (they are read in order).
//! Shares are balanced by `fileSize` when the manifest gives every file's size, else by the
//! number of files. The split is pure: no I/O, no randomness.

use crate::download::file_names;
use crate::error::{Error, Result};
use crate::manifest::FileUrl;
use crate::manifest::{CompletedExport, ExportFile};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Shard `index` of `count` (0-based: `0/3`, `1/3`, `2/3`), the form of a Kubernetes Indexed
/// Job's `JOB_COMPLETION_INDEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Shard {
    /// Shard `index` of `count`; `index` must be below `count`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(Error::InvalidConfig {
                setting: "shard",
                message: format!(
                    "shard {index}/{count} does not exist: the count must be at least 1 and the \
                     index from 0 to count - 1 (e.g. 0/3, 1/3, 2/3)"
                ),
            });
        }
        Ok(Shard { index, count })
    }

    /// Parses `K/N` (e.g. `2/3`).
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || Error::InvalidConfig {
            setting: "shard",
            message: format!(
                "`{text}` is not K/N: give the 0-based shard index and the count, e.g. 0/3"
            ),
        };
        let (k, n) = text.trim().split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Shard::new(k, n)
    }

    /// The whole export as one shard.
    pub fn all() -> Shard {
        Shard { index: 0, count: 1 }
    }

    /// The 0-based index.
    pub fn index(self) -> usize {
        self.index
    }

    /// The number of shards.
    pub fn count(self) -> usize {
        self.count
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The positions (into `files`, ascending) of the files shard `shard` takes.
pub fn shard_positions(files: &[ExportFile], shard: Shard) -> Vec<usize> {
    if shard.count <= 1 {
        return (0..files.len()).collect();
    }
    // Units: a file and the files its `continuesInFile` chain leads to.
    let position: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.file.url.expose(), i))
        .collect();
    let continued: HashSet<&str> = files
        .iter()
        .filter_map(|f| f.file.continues_in_file.as_ref().map(|u| u.expose()))
        .collect();
    let mut taken = vec![false; files.len()];
    let mut units: Vec<Vec<usize>> = Vec::new();
    let heads = (0..files.len()).filter(|&i| !continued.contains(files[i].file.url.expose()));
    // Heads first, then whatever only a cycle reaches.
    for start in heads.chain(0..files.len()) {
        if taken[start] {
            continue;
        }
        let mut unit = Vec::new();
        let mut next = Some(start);
        while let Some(i) = next.filter(|&i| !taken[i]) {
            taken[i] = true;
            unit.push(i);
            next = files[i]
                .file
                .continues_in_file
                .as_ref()
                .map(FileUrl::expose)
                .and_then(|u| position.get(u).copied());
        }
        units.push(unit);
    }
    let by_bytes = files.iter().all(|f| f.file.file_size.is_some());
    let weight = |unit: &Vec<usize>| -> u64 {
        if by_bytes {
            unit.iter()
                .map(|&i| files[i].file.file_size.unwrap_or(0).max(1))
                .sum()
        } else {
            unit.len() as u64
        }
    };
    // Largest first, ties by URL: the same order on every machine.
    let mut order: Vec<(u64, &str, usize)> = units
        .iter()
        .enumerate()
        .map(|(u, unit)| (weight(unit), files[unit[0]].file.url.expose(), u))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    let mut loads = vec![0u64; shard.count];
    let mut mine = Vec::new();
    for (w, _, u) in order {
        let target = (0..shard.count).min_by_key(|&s| (loads[s], s)).unwrap_or(0);
        loads[target] += w;
        if target == shard.index {
            mine.extend_from_slice(&units[u]);
        }
    }
    mine.sort_unstable();
    mine
}

/// The files shard `shard` takes, in manifest order.
pub fn shard_files(files: &[ExportFile], shard: Shard) -> Vec<ExportFile> {
    shard_positions(files, shard)
        .into_iter()
        .map(|i| files[i].clone())
        .collect()
}

/// The files of an export that shard `shard` saves, each with the relative path
/// [`file_names`] gives it in the whole export (so N shards write exactly the names one
/// machine would).
pub fn shard_file_names(
    export: &CompletedExport,
    gzip: bool,
    shard: Shard,
) -> Vec<(ExportFile, PathBuf)> {
    let files: Vec<ExportFile> = export.iter_files().collect();
    let keep: HashSet<usize> = shard_positions(&files, shard).into_iter().collect();
    drop(files);
    file_names(export, gzip)
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, named)| named)
        .collect()
}

impl crate::BulkClient {
    /// Like [`save_export`](crate::BulkClient::save_export), for shard `shard` of the export
    /// only: the files [`shard_file_names`] gives, under the names one machine would write.
    pub async fn save_export_shard(
        &self,
        export: &CompletedExport,
        dir: &Path,
        options: &crate::download::SaveOptions,
        shard: Shard,
    ) -> Result<crate::download::SaveReport> {
        let jobs = shard_file_names(export, options.gzip, shard);
        self.save_all(jobs.into_iter(), dir, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileKind, Manifest};
    use url::Url;

    fn export(entries: &[(&str, Option<u64>, Option<&str>)]) -> Vec<ExportFile> {
        let output: Vec<serde_json::Value> = entries
            .iter()
            .map(|(url, size, next)| {
                let mut v = serde_json::json!({"type": "Patient", "url": url});
                if let Some(s) = size {
                    v["fileSize"] = (*s).into();
                }
                if let Some(n) = next {
                    v["continuesInFile"] = (*n).into();
                }
                v
            })
            .collect();
        let body = serde_json::json!({
            "transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": true,
            "request": "https://x.example/$export", "output": output, "error": []
        });
        let page = Manifest::from_slice(body.to_string().as_bytes(), "m").unwrap();
        CompletedExport::from_manifests(Url::parse("https://x.example/s").unwrap(), vec![page])
            .files(FileKind::Output)
    }

    fn check_partition(files: &[ExportFile], n: usize) -> Vec<Vec<usize>> {
        let shards: Vec<Vec<usize>> = (0..n)
            .map(|k| shard_positions(files, Shard::new(k, n).unwrap()))
            .collect();
        let mut all: Vec<usize> = shards.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..files.len()).collect::<Vec<_>>(),
            "disjoint and covering"
        );
        shards
    }

    #[test]
    fn by_count_shards_are_disjoint_covering_and_even() {
        for total in [0usize, 1, 2, 7, 10, 31] {
            let urls: Vec<String> = (0..total).map(|i| format!("https://f/{i}")).collect();
            let entries: Vec<_> = urls.iter().map(|u| (u.as_str(), None, None)).collect();
            let files = export(&entries);
            for n in 1..=5 {
                let shards = check_partition(&files, n);
                let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "{total} files in {n}: {sizes:?}");
            }
        }
    }

    #[test]
    fn by_bytes_when_every_size_is_known() {
        let sizes = [100u64, 90, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10];
        let urls: Vec<String> = (0..sizes.len()).map(|i| format!("https://f/{i}")).collect();
        let entries: Vec<_> = urls
            .iter()
            .zip(sizes)
            .map(|(u, s)| (u.as_str(), Some(s), None))
            .collect();
        let files = export(&entries);
        let shards = check_partition(&files, 2);
        let loads: Vec<u64> = shards
            .iter()
            .map(|s| s.iter().map(|&i| sizes[i]).sum())
            .collect();
        // 290 bytes: 150 / 140 at worst; by count it would be 6 files each (100+90 together
        // possible).
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 10,
            "{loads:?}"
        );
        assert!(
            !shards[0].contains(&0) || !shards[0].contains(&1),
            "the two big files split"
        );
    }

    #[test]
    fn deterministic_and_chains_stay_together() {
        let files = export(&[
            ("https://f/a1", None, Some("https://f/a2")),
            ("https://f/a2", None, Some("https://f/a3")),
            ("https://f/a3", None, None),
            ("https://f/b", None, None),
            ("https://f/c", None, None),
            ("https://f/d", None, None),
        ]);
        let shards = check_partition(&files, 3);
        let with_a1 = shards.iter().find(|s| s.contains(&0)).unwrap();
        assert!(with_a1.contains(&1) && with_a1.contains(&2), "{shards:?}");
        assert_eq!(shards, check_partition(&files, 3), "same answer every time");
        // A cycle of continuesInFile still gets covered.
        let cyclic = export(&[
            ("https://f/x", None, Some("https://f/y")),
            ("https://f/y", None, Some("https://f/x")),
        ]);
        check_partition(&cyclic, 2);
    }

    #[test]
    fn shard_text() {
        assert_eq!(Shard::parse("2/3").unwrap(), Shard::new(2, 3).unwrap());
        assert_eq!(Shard::parse(" 0 / 1 ").unwrap().to_string(), "0/1");
        for bad in ["3/3", "1/0", "x/2", "2", "-1/3", ""] {
            let err = Shard::parse(bad).unwrap_err().to_string();
            assert!(err.contains("shard"), "{bad}: {err}");
        }
    }
}
