//! [`Leftovers`]: what a [`Saver`](super::Saver) knows of the `.part` files and sidecars in
//! its directories, so a file with nothing left of an earlier save skips the look for them
//! (a trip to the blocking pool per file, the most of a small file's overhead after its
//! request).
//!
//! Each directory is looked at once, on the blocking pool, the first time a file is saved
//! in it: created when missing, then read for the names of `.part` files and sidecars. Only
//! those names are kept (memory grows with what earlier saves left, not with the files in
//! the directory). Until the look is back, files in the directory take the usual path. A
//! file whose save fails is noted as possibly left (its `.part` may be kept for a resume), so
//! a second save of it in the same saver looks again.

use super::save::{sidecar_path, with_suffix};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use tokio::task::JoinSet;

/// What is known of one directory.
#[derive(Debug)]
enum Dir {
    /// Being looked at, or the look failed (the directory could not be created or read: the
    /// usual path reports that, file by file).
    Unknown,
    /// The names of its `.part` files and sidecars.
    Known(HashSet<OsString>),
}

/// The `.part` files and sidecars a saver's directories hold.
#[derive(Debug, Default)]
pub(super) struct Leftovers {
    dirs: HashMap<PathBuf, Dir>,
    looking: JoinSet<(PathBuf, Option<HashSet<OsString>>)>,
}

impl Leftovers {
    /// Whether nothing of an earlier save of `path` is on disk (neither its `.part` nor its
    /// sidecar) and its directory exists. `false` when that is not known yet; the first
    /// question about a directory starts its look.
    pub(super) fn nothing_left(&mut self, path: &Path) -> bool {
        let Some((dir, names)) = names_of(path) else {
            return false;
        };
        match self.dirs.get(dir) {
            Some(Dir::Known(left)) => names.iter().all(|name| !left.contains(name)),
            Some(Dir::Unknown) => false,
            None => {
                self.dirs.insert(dir.to_owned(), Dir::Unknown);
                let dir = dir.to_owned();
                self.looking
                    .spawn_blocking(move || (dir.clone(), look(&dir)));
                false
            }
        }
    }

    /// A save of `path` failed: its `.part` and sidecar may be on disk now.
    pub(super) fn may_be_left(&mut self, path: &Path) {
        if let Some((dir, names)) = names_of(path)
            && let Some(Dir::Known(left)) = self.dirs.get_mut(dir)
        {
            left.extend(names);
        }
    }

    /// Takes in the looks that are back; ready when one came in (new files may now skip
    /// their look).
    pub(super) fn poll_looked(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut any = false;
        while let Poll::Ready(Some(joined)) = self.looking.poll_join_next(cx) {
            any = true;
            if let Ok((dir, Some(left))) = joined {
                self.dirs.insert(dir, Dir::Known(left));
            }
        }
        if any { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// The directory of `path` and the names of its `.part` and sidecar.
fn names_of(path: &Path) -> Option<(&Path, [OsString; 2])> {
    let dir = path.parent()?;
    let part = with_suffix(path, ".part");
    let sidecar = sidecar_path(&part);
    Some((
        dir,
        [
            part.file_name()?.to_owned(),
            sidecar.file_name()?.to_owned(),
        ],
    ))
}

/// Creates `dir` when missing and lists its `.part` files and sidecars (on the calling,
/// blocking, thread); `None` when it cannot.
fn look(dir: &Path) -> Option<HashSet<OsString>> {
    let at = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::create_dir_all(at).ok()?;
    let mut left = HashSet::new();
    for entry in std::fs::read_dir(at).ok()? {
        let name = entry.ok()?.file_name();
        let text = name.to_string_lossy();
        if text.ends_with(".part") || text.ends_with(".part.resume") {
            left.insert(name);
        }
    }
    Some(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn looked(leftovers: &mut Leftovers) {
        poll_fn(|cx| leftovers.poll_looked(cx)).await;
    }

    #[tokio::test]
    async fn a_file_has_nothing_left_only_once_its_directory_was_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("Patient");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("kept.ndjson.part"), "{}\n").unwrap();
        std::fs::write(sub.join("sidecar.ndjson.part.resume"), "{}").unwrap();
        std::fs::write(sub.join("done.ndjson"), "{}\n").unwrap();
        let mut leftovers = Leftovers::default();
        // Not known before the look is back.
        assert!(!leftovers.nothing_left(&sub.join("new.ndjson")));
        looked(&mut leftovers).await;
        assert!(leftovers.nothing_left(&sub.join("new.ndjson")));
        assert!(leftovers.nothing_left(&sub.join("done.ndjson")));
        assert!(!leftovers.nothing_left(&sub.join("kept.ndjson")));
        assert!(!leftovers.nothing_left(&sub.join("sidecar.ndjson")));
        // Only the leftovers' names are kept.
        let Some(Dir::Known(left)) = leftovers.dirs.get(&sub) else {
            panic!("not looked at");
        };
        assert_eq!(left.len(), 2);
        // A failed save may leave its `.part`: looked for again.
        leftovers.may_be_left(&sub.join("new.ndjson"));
        assert!(!leftovers.nothing_left(&sub.join("new.ndjson")));
    }

    #[tokio::test]
    async fn a_missing_directory_is_created_and_an_unusable_one_never_known() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a").join("b");
        let mut leftovers = Leftovers::default();
        assert!(!leftovers.nothing_left(&missing.join("f.ndjson")));
        looked(&mut leftovers).await;
        assert!(missing.is_dir());
        assert!(leftovers.nothing_left(&missing.join("f.ndjson")));
        // A directory under a file cannot be created: its files always take the usual path.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "x").unwrap();
        let under = blocked.join("sub").join("f.ndjson");
        assert!(!leftovers.nothing_left(&under));
        looked(&mut leftovers).await;
        assert!(!leftovers.nothing_left(&under));
    }
}
