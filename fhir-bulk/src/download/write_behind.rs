//! [`WriteBehind`]: a file written on the blocking pool one owned buffer at a time, so the
//! caller fills its next buffer while the last one is written, and no byte is copied on the
//! way (tokio's `File` copies every write into a buffer of its own before writing it).

use std::io::{self, Write};
use tokio::task::JoinHandle;

/// What a finished write hands back: the file, the buffer (emptied, its capacity kept) and
/// the write's result.
type Done = (std::fs::File, Vec<u8>, io::Result<()>);

/// A file with at most one write running behind the caller.
///
/// Dropping it while a write runs lets that write finish on the blocking pool (as tokio's
/// `File` does); the data it writes is a whole buffer the caller handed over, never part of
/// one it still fills.
#[derive(Debug)]
pub(super) struct WriteBehind {
    /// The file, while no write runs.
    file: Option<std::fs::File>,
    /// The running write.
    running: Option<JoinHandle<Done>>,
    /// The buffer of the last finished write, emptied, for the caller's next fill.
    spare: Vec<u8>,
}

impl WriteBehind {
    /// Writes to `file` from its current position.
    pub(super) fn new(file: std::fs::File) -> WriteBehind {
        WriteBehind {
            file: Some(file),
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
        let mut file = self.file.take().ok_or_else(lost)?;
        self.running = Some(tokio::task::spawn_blocking(move || {
            let result = file.write_all(&data);
            data.clear();
            (file, data, result)
        }));
        Ok(std::mem::take(&mut self.spare))
    }

    /// Waits until everything handed to [`WriteBehind::write`] is in the file (written, not
    /// synced); the running write's error, if it failed.
    pub(super) async fn wait(&mut self) -> io::Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let (file, spare, result) = running
            .await
            .map_err(|e| io::Error::other(format!("the write task ended abnormally: {e}")))?;
        self.file = Some(file);
        self.spare = spare;
        result
    }

    /// The file, once every write is in it.
    pub(super) async fn into_std(mut self) -> io::Result<std::fs::File> {
        self.wait().await?;
        self.file.take().ok_or_else(lost)
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
        let mut file = WriteBehind::new(std::fs::File::create(&path).unwrap());
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
        drop(file.into_std().await.unwrap());
        let mut text = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        // Opened read-only: the write on the blocking pool fails.
        let mut file = WriteBehind::new(std::fs::File::open(&path).unwrap());
        let first = file.write(b"data".to_vec()).await;
        assert!(first.is_ok(), "the write runs behind: {first:?}");
        let error = file.wait().await.unwrap_err();
        assert_ne!(error.kind(), io::ErrorKind::Other, "{error}");
    }
}
