//! [`WriteBehind`]: a file written on the blocking pool one owned buffer at a time, so the
//! caller fills its next buffer while the last one is written, and no byte is copied on the
//! way (tokio's `File` copies every write into a buffer of its own before writing it).

use std::io::{self, Write};
use std::path::PathBuf;
use tokio::task::JoinHandle;

/// Where the bytes go: an open file, or a path the file is created at (emptied if it exists)
/// by the first trip to the blocking pool that needs it, so a small file is created, written
/// and renamed on one trip instead of being created on one of its own first.
#[derive(Debug)]
pub(super) enum Target {
    /// The file, open for writing.
    Open(std::fs::File),
    /// Not created yet.
    Create(PathBuf),
}

impl Target {
    /// The open file, created first when it is still a path (on the calling thread: call it
    /// on the blocking pool).
    pub(super) fn file(&mut self) -> io::Result<&mut std::fs::File> {
        match self {
            Target::Open(file) => Ok(file),
            Target::Create(path) => {
                let file = std::fs::File::create(&*path)?;
                *self = Target::Open(file);
                self.file()
            }
        }
    }
}

/// What a finished write hands back: the target, the buffer (emptied, its capacity kept) and
/// the write's result.
type Done = (Target, Vec<u8>, io::Result<()>);

/// A file with at most one write running behind the caller.
///
/// Dropping it while a write runs lets that write finish on the blocking pool (as tokio's
/// `File` does); the data it writes is a whole buffer the caller handed over, never part of
/// one it still fills.
#[derive(Debug)]
pub(super) struct WriteBehind {
    /// The file (or where it is to be created), while no write runs.
    target: Option<Target>,
    /// The running write.
    running: Option<JoinHandle<Done>>,
    /// The buffer of the last finished write, emptied, for the caller's next fill.
    spare: Vec<u8>,
}

impl WriteBehind {
    /// Writes to `target` (a file, from its current position, or a file to create).
    pub(super) fn new(target: Target) -> WriteBehind {
        WriteBehind {
            target: Some(target),
            running: None,
            spare: Vec::new(),
        }
    }

    /// Waits for the running write, then starts writing `data` and returns at once with an
    /// empty buffer to fill next (the one written before, its capacity kept). An error is
    /// the running write's (or this file's, lost to a write task that panicked).
    pub(super) async fn write(&mut self, mut data: Vec<u8>) -> io::Result<Vec<u8>> {
        self.wait().await?;
        if data.is_empty() {
            return Ok(data);
        }
        let mut target = self.target.take().ok_or_else(lost)?;
        self.running = Some(tokio::task::spawn_blocking(move || {
            let result = target.file().and_then(|file| file.write_all(&data));
            data.clear();
            (target, data, result)
        }));
        Ok(std::mem::take(&mut self.spare))
    }

    /// Waits until everything handed to [`WriteBehind::write`] is in the file (written, not
    /// synced); the running write's error, if it failed.
    pub(super) async fn wait(&mut self) -> io::Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let (target, spare, result) = running
            .await
            .map_err(|e| io::Error::other(format!("the write task ended abnormally: {e}")))?;
        self.target = Some(target);
        self.spare = spare;
        result
    }

    /// The target, once every write is in it (still a path when nothing was written).
    pub(super) async fn into_target(mut self) -> io::Result<Target> {
        self.wait().await?;
        self.target.take().ok_or_else(lost)
    }
}

fn lost() -> io::Error {
    io::Error::other("the file was lost to a write task that ended abnormally")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn buffers_are_written_in_order_and_handed_back_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = WriteBehind::new(Target::Open(std::fs::File::create(&path).unwrap()));
        let mut expected = Vec::new();
        let mut buffer = Vec::with_capacity(16);
        for i in 0..50u32 {
            buffer.extend_from_slice(format!("line {i}\n").as_bytes());
            expected.extend_from_slice(&buffer);
            let written = std::mem::take(&mut buffer);
            buffer = file.write(written).await.unwrap();
            assert!(buffer.is_empty());
        }
        // A recycled buffer keeps its capacity: after the first two writes the caller fills
        // the buffers it handed over.
        assert!(buffer.capacity() > 0);
        let empty = file.write(Vec::new()).await.unwrap();
        assert!(empty.is_empty());
        drop(file.into_target().await.unwrap());
        let mut text = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, expected);
    }

    /// A file to create is created by the first write (emptied if it exists), not before;
    /// with nothing written it is handed back still to create.
    #[tokio::test]
    async fn a_file_to_create_is_created_by_its_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let untouched = WriteBehind::new(Target::Create(path.clone()));
        assert!(matches!(
            untouched.into_target().await.unwrap(),
            Target::Create(_)
        ));
        assert!(!path.exists());
        std::fs::write(&path, "stale bytes of an earlier save\n").unwrap();
        let mut file = WriteBehind::new(Target::Create(path.clone()));
        let _ = file.write(Vec::new()).await.unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            31,
            "no write, no creation"
        );
        let _ = file.write(b"new\n".to_vec()).await.unwrap();
        let mut target = file.into_target().await.unwrap();
        assert!(matches!(target, Target::Open(_)));
        target.file().unwrap().write_all(b"tail\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\ntail\n");
        // A path that cannot be created fails the write that needed it.
        let mut blocked = WriteBehind::new(Target::Create(path.join("under-a-file")));
        let _ = blocked.write(b"x".to_vec()).await.unwrap();
        assert!(blocked.wait().await.is_err());
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        // Opened read-only: the write on the blocking pool fails.
        let mut file = WriteBehind::new(Target::Open(std::fs::File::open(&path).unwrap()));
        let first = file.write(b"data".to_vec()).await;
        assert!(first.is_ok(), "the write runs behind: {first:?}");
        let error = file.wait().await.unwrap_err();
        assert_ne!(error.kind(), io::ErrorKind::Other, "{error}");
    }
}
