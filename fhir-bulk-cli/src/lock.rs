//! One process per output directory: `fhir-bulk.lock` in the directory, held with an exclusive
//! advisory lock (`flock` on Unix; a file opened without sharing on Windows) for the whole run.
//! The lock ends with the process, however it ends (a SIGKILL included), so a stale lock file
//! never blocks the next run. The file holds the pid of the process holding it, to name it in
//! the second run's error.

use crate::error::CliError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// The lock file's name.
pub(crate) const LOCK_FILE: &str = "fhir-bulk.lock";

/// The lock of one output directory, released when dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir`, or says which process holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, CliError> {
        let path = dir.join(LOCK_FILE);
        let cannot = |e: std::io::Error| {
            CliError::usage(
                "--output-dir",
                format!("cannot create the lock file {}: {e}", path.display()),
            )
        };
        let mut file = match open(&path) {
            Ok(file) => file,
            Err(e) if is_held(&e) => return Err(held(dir, &path, None)),
            Err(e) => return Err(cannot(e)),
        };
        match try_lock(&file) {
            Ok(true) => {}
            Ok(false) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(held(dir, &path, text.trim().parse::<u32>().ok()));
            }
            Err(e) => return Err(cannot(e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(cannot)?;
        Ok(DirLock { _file: file })
    }
}

/// The error of a second run.
fn held(dir: &Path, path: &Path, pid: Option<u32>) -> CliError {
    let who = pid.map_or_else(
        || "another fhir-bulk process".to_owned(),
        |pid| format!("another fhir-bulk process (pid {pid})"),
    );
    CliError::usage(
        "--output-dir",
        format!(
            "{} is in use by {who}, which holds {}; two runs on one directory would corrupt \
             its files. Wait for that run to end (or stop it), or use another --output-dir",
            dir.display(),
            path.display()
        ),
    )
}

#[cfg(unix)]
fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[cfg(unix)]
fn is_held(_: &std::io::Error) -> bool {
    false
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another process holds the lock.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` takes a file descriptor, which `file` keeps open for the call; it
    // touches no memory of ours.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Opened without sharing: a second open fails with a sharing violation while it is held.
#[cfg(windows)]
fn open(path: &Path) -> std::io::Result<File> {
    use std::os::windows::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .share_mode(0)
        .open(path)
}

#[cfg(windows)]
fn is_held(e: &std::io::Error) -> bool {
    // ERROR_SHARING_VIOLATION
    e.raw_os_error() == Some(32)
}

#[cfg(windows)]
fn try_lock(_: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(not(any(unix, windows)))]
fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[cfg(not(any(unix, windows)))]
fn is_held(_: &std::io::Error) -> bool {
    false
}

#[cfg(not(any(unix, windows)))]
fn try_lock(_: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to the open file description: a second open in the same
        // process conflicts, as another process would.
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("--output-dir"),
            "{err}"
        );
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
