//! [`WriteBehind`]: a file written on the blocking pool one owned buffer at a time, so the
//! caller fills its next buffer while the last one is written, and no byte is copied on the
//! way (tokio's `File` copies every write into a buffer of its own before writing it). A
//! gzip save's compression runs on the same trip, so a runtime worker never spends the
//! milliseconds deflate takes per buffer.

use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};
use std::io::{self, Write};
use std::path::PathBuf;
use tokio::task::JoinHandle;

/// A gzip member's header (RFC 1952): deflate, no flags, no time, default level, unknown
/// system (flate2's `GzEncoder` writes the same).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Gzip members one after another (a multi-member gzip file), compressed with one deflate
/// state for the whole file: ending a member resets it instead of allocating a new one (about
/// 300 KiB, once per member).
pub(super) struct Encoder {
    /// The current member's deflate stream; its compressed bytes collect in the `Vec`.
    deflate: DeflateEncoder<Vec<u8>>,
    /// The current member's CRC-32 and length.
    crc: Crc,
    /// Whether the current member's header is out.
    started: bool,
    /// The ended member's last bytes, then (emptied) the next member's buffer.
    ended: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("member_bytes", &self.crc.amount())
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Compresses `data` into the current member (starting one if none is).
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.start();
        self.crc.update(data);
        self.deflate.write_all(data)
    }

    fn start(&mut self) {
        if !self.started {
            self.deflate.get_mut().extend_from_slice(&GZIP_HEADER);
            self.started = true;
        }
    }

    /// The compressed bytes not yet taken (the member goes on).
    fn pending(&mut self) -> &mut Vec<u8> {
        self.deflate.get_mut()
    }

    /// Ends the current member (an empty one when nothing was written since the last):
    /// returns the rest of its bytes, which the caller writes and empties.
    fn end_member(&mut self) -> io::Result<&mut Vec<u8>> {
        self.start();
        let mut member = self.deflate.reset(std::mem::take(&mut self.ended))?;
        member.extend_from_slice(&self.crc.sum().to_le_bytes());
        member.extend_from_slice(&self.crc.amount().to_le_bytes());
        self.crc.reset();
        self.started = false;
        self.ended = member;
        Ok(&mut self.ended)
    }
}

/// A new encoder (deflate's default level), no member started.
pub(super) fn encoder() -> Encoder {
    Encoder {
        deflate: DeflateEncoder::new(Vec::new(), Compression::default()),
        crc: Crc::new(),
        started: false,
        ended: Vec::new(),
    }
}

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

/// What one write puts in the file: `data` as it is, or compressed into the current gzip
/// member, which `end_member` then ends. Returns the bytes written to the file (on the
/// calling thread: call it on the blocking pool).
pub(super) fn put(
    target: &mut Target,
    gzip: Option<&mut Encoder>,
    data: &[u8],
    end_member: bool,
) -> io::Result<u64> {
    let Some(encoder) = gzip else {
        if data.is_empty() {
            return Ok(0);
        }
        target.file()?.write_all(data)?;
        return Ok(data.len() as u64);
    };
    encoder.write(data)?;
    let out = if end_member {
        encoder.end_member()?
    } else {
        encoder.pending()
    };
    if out.is_empty() {
        return Ok(0);
    }
    // Emptied whether or not the write succeeds: bytes of a failed write are never written
    // again in front of later ones.
    let written = target.file().and_then(|file| file.write_all(out));
    let len = out.len() as u64;
    out.clear();
    written.map(|()| len)
}

/// What a finished write hands back: the target, the encoder, the buffer (emptied, its
/// capacity kept) and the write's result (the bytes it put in the file).
type Done = (Target, Option<Encoder>, Vec<u8>, io::Result<u64>);

/// A file with at most one write running behind the caller.
///
/// Dropping it while a write runs lets that write finish on the blocking pool (as tokio's
/// `File` does); the data it writes is a whole buffer the caller handed over, never part of
/// one it still fills.
#[derive(Debug)]
pub(super) struct WriteBehind {
    /// The file (or where it is to be created), while no write runs.
    target: Option<Target>,
    /// The current gzip member's encoder (a gzip save), while no write runs.
    gzip: Option<Encoder>,
    /// The running write.
    running: Option<JoinHandle<Done>>,
    /// The buffer of the last finished write, emptied, for the caller's next fill.
    spare: Vec<u8>,
    /// The file's length once every finished write is in it.
    len: u64,
}

impl WriteBehind {
    /// Writes to `target` (a file of `len` bytes, from its end, or a file to create), through
    /// `gzip` when it is a gzip save (the encoder of the member the next bytes go to).
    pub(super) fn new(target: Target, len: u64, gzip: Option<Encoder>) -> WriteBehind {
        WriteBehind {
            target: Some(target),
            gzip,
            running: None,
            spare: Vec::new(),
            len,
        }
    }

    /// Waits for the running write, then starts writing `data` (compressed, for a gzip save,
    /// with the member ended after it when `end_member`) and returns at once with an empty
    /// buffer to fill next (the one written before, its capacity kept). An error is the
    /// running write's (or this file's, lost to a write task that panicked).
    pub(super) async fn write(
        &mut self,
        mut data: Vec<u8>,
        end_member: bool,
    ) -> io::Result<Vec<u8>> {
        self.wait().await?;
        // After the wait the encoder, if any, is back.
        if data.is_empty() && !(self.gzip.is_some() && end_member) {
            return Ok(data);
        }
        let mut target = self.target.take().ok_or_else(lost)?;
        let mut gzip = self.gzip.take();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let result = put(&mut target, gzip.as_mut(), &data, end_member);
            data.clear();
            (target, gzip, data, result)
        }));
        Ok(std::mem::take(&mut self.spare))
    }

    /// Waits until everything handed to [`WriteBehind::write`] is in the file (written, not
    /// synced); the running write's error, if it failed.
    pub(super) async fn wait(&mut self) -> io::Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let (target, gzip, spare, result) = running
            .await
            .map_err(|e| io::Error::other(format!("the write task ended abnormally: {e}")))?;
        self.target = Some(target);
        self.gzip = gzip;
        self.spare = spare;
        self.len += result?;
        Ok(())
    }

    /// The file's length once every finished write is in it: after [`WriteBehind::wait`]
    /// (or a [`WriteBehind::write`], which waits for the write before it), the length up to
    /// the last buffer handed over before that.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The target, its length and the current gzip member's encoder, once every write is in
    /// it (still a path when nothing was written).
    pub(super) async fn into_target(mut self) -> io::Result<(Target, u64, Option<Encoder>)> {
        self.wait().await?;
        let target = self.target.take().ok_or_else(lost)?;
        Ok((target, self.len, self.gzip.take()))
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
        let mut file =
            WriteBehind::new(Target::Open(std::fs::File::create(&path).unwrap()), 0, None);
        let mut expected = Vec::new();
        let mut buffer = Vec::with_capacity(16);
        for i in 0..50u32 {
            buffer.extend_from_slice(format!("line {i}\n").as_bytes());
            expected.extend_from_slice(&buffer);
            let written = std::mem::take(&mut buffer);
            buffer = file.write(written, false).await.unwrap();
            assert!(buffer.is_empty());
        }
        // A recycled buffer keeps its capacity: after the first two writes the caller fills
        // the buffers it handed over.
        assert!(buffer.capacity() > 0);
        let empty = file.write(Vec::new(), false).await.unwrap();
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
        let untouched = WriteBehind::new(Target::Create(path.clone()), 0, None);
        assert!(matches!(
            untouched.into_target().await.unwrap().0,
            Target::Create(_)
        ));
        assert!(!path.exists());
        std::fs::write(&path, "stale bytes of an earlier save\n").unwrap();
        let mut file = WriteBehind::new(Target::Create(path.clone()), 0, None);
        let _ = file.write(Vec::new(), false).await.unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            31,
            "no write, no creation"
        );
        let _ = file.write(b"new\n".to_vec(), false).await.unwrap();
        let (mut target, len, _) = file.into_target().await.unwrap();
        assert_eq!(len, 4, "the bytes its writes put in the file");
        assert!(matches!(target, Target::Open(_)));
        target.file().unwrap().write_all(b"tail\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\ntail\n");
        // A path that cannot be created fails the write that needed it.
        let mut blocked = WriteBehind::new(Target::Create(path.join("under-a-file")), 0, None);
        let _ = blocked.write(b"x".to_vec(), false).await.unwrap();
        assert!(blocked.wait().await.is_err());
    }

    /// The encoder's members, written through [`put`] a chunk at a time, are the bytes
    /// flate2's `GzEncoder` makes of each member's data fed the same way (its state reset,
    /// not rebuilt, between members), an empty member included, and the file decodes whole.
    #[test]
    fn members_are_what_flate2s_gzip_encoder_makes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.gz");
        let mut target = Target::Create(path.clone());
        let mut gzip = encoder();
        let members: Vec<Vec<u8>> = (0..4u32)
            .map(|m| {
                (0..(m * 3000))
                    .flat_map(|i| format!("{{\"member\":{m},\"line\":{i}}}\n").into_bytes())
                    .collect()
            })
            .collect();
        let mut written = 0;
        for member in &members {
            let chunks: Vec<&[u8]> = member.chunks(7000).collect();
            for chunk in &chunks {
                written += put(&mut target, Some(&mut gzip), chunk, false).unwrap();
            }
            written += put(&mut target, Some(&mut gzip), &[], true).unwrap();
        }
        let expected: Vec<u8> = members
            .iter()
            .flat_map(|member| {
                // Fed the same chunks: deflate's output depends on how its input is split.
                let mut reference =
                    flate2::write::GzEncoder::new(Vec::new(), Compression::default());
                for chunk in member.chunks(7000) {
                    reference.write_all(chunk).unwrap();
                }
                reference.finish().unwrap()
            })
            .collect();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len() as u64, written);
        let first = file.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(file.len(), expected.len(), "first difference at {first:?}");
        assert_eq!(first, None);
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&file[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, members.concat());
    }

    /// A gzip write takes the encoder with it to the blocking pool: the caller (a runtime
    /// worker) is handed back its next buffer while the encoder is away, so the deflate work
    /// is not done on the caller's thread; it comes back with the finished write.
    #[tokio::test]
    async fn a_gzip_write_compresses_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.gz");
        let mut file = WriteBehind::new(Target::Create(path.clone()), 0, Some(encoder()));
        let lines: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{{\"line\":{i}}}\n").into_bytes())
            .collect();
        let _ = file.write(lines.clone(), true).await.unwrap();
        assert!(file.gzip.is_none(), "the encoder is away with the write");
        assert!(file.running.is_some());
        file.wait().await.unwrap();
        assert!(file.gzip.is_some(), "and back once it is done");
        let written = std::fs::read(&path).unwrap();
        assert_eq!(file.len(), written.len() as u64);
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&written[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, lines);
    }

    /// Compressed bytes whose write failed are dropped, not written in front of the next
    /// member (the save fails and resumes from its sidecar; the encoder must not replay them).
    #[test]
    fn a_failed_member_write_leaves_nothing_behind_in_the_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let read_only = dir.path().join("ro");
        std::fs::write(&read_only, b"").unwrap();
        let mut gzip = encoder();
        let mut refused = Target::Open(std::fs::File::open(&read_only).unwrap());
        assert!(put(&mut refused, Some(&mut gzip), b"lost\n", true).is_err());
        let path = dir.path().join("f.gz");
        let mut target = Target::Create(path.clone());
        // Two members: the encoder's two buffers take turns, so a leftover would show in one.
        put(&mut target, Some(&mut gzip), b"kept\n", true).unwrap();
        put(&mut target, Some(&mut gzip), b"more\n", true).unwrap();
        let mut decoded = String::new();
        flate2::read::MultiGzDecoder::new(&std::fs::read(&path).unwrap()[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, "kept\nmore\n");
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        // Opened read-only: the write on the blocking pool fails.
        let mut file = WriteBehind::new(Target::Open(std::fs::File::open(&path).unwrap()), 0, None);
        let first = file.write(b"data".to_vec(), false).await;
        assert!(first.is_ok(), "the write runs behind: {first:?}");
        let error = file.wait().await.unwrap_err();
        assert_ne!(error.kind(), io::ErrorKind::Other, "{error}");
    }
}
