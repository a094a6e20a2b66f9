//! Many small files through the `fhir-bulk` binary: `fhir-bulk download manifest.json` against
//! a minimal keep-alive file server in this process (one Patient line per file), for 500,
//! 2,000, 4,000 and 20,000 files (100,000 too with `FHIR_BULK_BENCH_100K=1`). Prints the
//! child's wall time, CPU time (user + system, from `wait4`), peak RSS, the bytes it passed to
//! `write` (`/proc/<pid>/io`), and the CPU ratio of 4,000 files to 500 (linear is 8; the
//! target is at most 10).
//!
//! The binary is started by a small launcher (this bench re-run with `FHIR_BULK_BENCH_LAUNCH`
//! set, before it builds anything): a child's `ru_maxrss` is at least the RSS of the process
//! that spawned it (at `exec` the kernel keeps the high-water mark of the memory it replaces,
//! which for a `vfork`ed child is the parent's), so measured from the bench process itself,
//! with its server and a 20,000-entry manifest in memory, the figure was the bench's.
//!
//! The files go to the system's temporary directory, or to `FHIR_BULK_BENCH_DIR` (a new file
//! system there gives figures that do not depend on what the machine's has been through:
//! creating files right after thousands were deleted costs ext4 extra system time).
//!
//! `cargo bench -p fhir-bulk-cli --bench many_files`
//! `FHIR_BULK_BENCH_DIR=/mnt/fresh cargo bench -p fhir-bulk-cli --bench many_files`
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark harness: a failed unwrap is a failed run"
)]

#[path = "../tests/cli/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

/// What one run of the binary cost.
struct Cost {
    wall: Duration,
    cpu: Duration,
    peak_rss: u64,
    written: u64,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

#[allow(clippy::zombie_processes)] // reaped by wait4
fn download(manifest: &Path, out: &Path) -> Cost {
    let started = Instant::now();
    let child = std::process::Command::new(support::BIN)
        .args([
            "download",
            support::s(manifest),
            "--output-dir",
            support::s(out),
            "--quiet",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fhir-bulk runs");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // Wait for the exit without reaping (WNOWAIT), read the bytes written, then reap.
    // SAFETY: an all-zero siginfo_t is valid; waitid fills it for our own child.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let waited = unsafe {
        libc::waitid(
            libc::P_PID,
            libc::id_t::try_from(pid).expect("pid"),
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(waited, 0, "waitid");
    let wall = started.elapsed();
    let written = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for the child `pid`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fhir-bulk download failed"
    );
    Cost {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        written,
    }
}

/// Set in the launcher's environment; its arguments are the manifest and the output directory.
const LAUNCH: &str = "FHIR_BULK_BENCH_LAUNCH";

/// The launcher: runs the binary once and prints its cost (wall ns, CPU ns, peak RSS bytes,
/// bytes written) on one line.
fn launch() {
    let args: Vec<String> = std::env::args().collect();
    let (manifest, out) = (Path::new(&args[1]), Path::new(&args[2]));
    let cost = download(manifest, out);
    println!(
        "{} {} {} {}",
        cost.wall.as_nanos(),
        cost.cpu.as_nanos(),
        cost.peak_rss,
        cost.written
    );
}

/// [`download`] through the launcher.
fn measured(manifest: &Path, out: &Path) -> Cost {
    let shown = std::process::Command::new(std::env::current_exe().expect("the bench binary"))
        .env(LAUNCH, "1")
        .arg(manifest)
        .arg(out)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the launcher runs");
    assert!(shown.status.success(), "the launcher failed");
    let text = String::from_utf8(shown.stdout).expect("utf-8");
    let v: Vec<u128> = text
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    assert_eq!(v.len(), 4, "launcher said {text:?}");
    let nanos = |n: u128| Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX));
    Cost {
        wall: nanos(v[0]),
        cpu: nanos(v[1]),
        peak_rss: u64::try_from(v[2]).unwrap_or(u64::MAX),
        written: u64::try_from(v[3]).unwrap_or(u64::MAX),
    }
}

fn main() {
    if std::env::var_os(LAUNCH).is_some() {
        launch();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(support::FileServer::start());
    let mut counts = vec![500usize, 2_000, 4_000, 20_000];
    if std::env::var_os("FHIR_BULK_BENCH_100K").is_some() {
        counts.push(100_000);
    }
    println!("| files | wall | CPU | CPU per file | peak RSS | bytes written | of which data |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut cpu_of = std::collections::HashMap::new();
    // Every case's files stay until the end, and the dirty pages of the one before are
    // written back first (untimed): on ext4, creating files right after deleting thousands,
    // or while the kernel writes back the last case's, would charge this case for them.
    let mut kept = Vec::new();
    for n in counts {
        let _ = std::process::Command::new("sync").status();
        let dir = match std::env::var_os("FHIR_BULK_BENCH_DIR") {
            Some(root) => tempfile::tempdir_in(root),
            None => tempfile::tempdir(),
        }
        .expect("temp dir");
        let manifest = dir.path().join("in").join("manifest.json");
        std::fs::create_dir_all(manifest.parent().expect("parent")).expect("mkdir");
        std::fs::write(&manifest, server.manifest(n)).expect("manifest");
        let out = dir.path().join("out");
        let cost = measured(&manifest, &out);
        let data: u64 = std::fs::read_dir(&out)
            .expect("out")
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("Patient.") && name.ends_with(".ndjson")
            })
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum();
        println!(
            "| {n} | {:.2} s | {:.2} s | {:.0} µs | {:.1} MiB | {:.2} MB | {:.2} MB |",
            cost.wall.as_secs_f64(),
            cost.cpu.as_secs_f64(),
            cost.cpu.as_secs_f64() * 1e6 / n as f64,
            cost.peak_rss as f64 / (1024.0 * 1024.0),
            cost.written as f64 / 1e6,
            data as f64 / 1e6,
        );
        cpu_of.insert(n, cost.cpu.as_secs_f64());
        kept.push(dir);
    }
    drop(kept);
    if let (Some(small), Some(large)) = (cpu_of.get(&500), cpu_of.get(&4_000)) {
        println!(
            "\nCPU for 4,000 files / CPU for 500: {:.1} (linear 8, target <= 10)",
            large / small.max(1e-9)
        );
    }
}
