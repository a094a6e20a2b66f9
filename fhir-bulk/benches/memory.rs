//! Peak memory while streaming one 1 GiB file with default settings (the default `Resource`
//! type), and the peak of each read mode over a 256 MiB file. Reads the process's peak
//! resident set (`VmHWM`), resetting it between runs through `/proc/self/clear_refs`. The
//! in-process server's own memory is included: both sides stay bounded.
//!
//! `cargo bench -p fhir-bulk --bench memory`
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use fhir_bulk::resource::Resource;
use fhir_bulk::{BulkClient, DownloadOptions, ExportFile};
use futures::TryStreamExt;
use std::time::Instant;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn reset_peak() {
    // "5" resets the peak resident set size (Linux 4.0+); ignored elsewhere.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn run(mode: &str, client: &BulkClient, file: &ExportFile) -> u64 {
    let options = DownloadOptions::default();
    match mode {
        "raw lines" => {
            client
                .download_lines(file, &options)
                .try_fold(0, |n, _| async move { Ok(n + 1) })
                .await
        }
        "default Resource" => {
            client
                .download_file::<Resource>(file, &options)
                .try_fold(0, |n, _| async move { Ok(n + 1) })
                .await
        }
        "serde_json::Value" => {
            client
                .download_file::<serde_json::Value>(file, &options)
                .try_fold(0, |n, _| async move { Ok(n + 1) })
                .await
        }
        _ => unreachable!(),
    }
    .expect("download")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("| file | mode | resources | MB/s | peak RSS (MiB) |");
        println!("| --- | --- | ---: | ---: | ---: |");
        for (size, modes) in [
            (1u64 << 30, &["default Resource"][..]),
            (
                256 << 20,
                &["raw lines", "default Resource", "serde_json::Value"][..],
            ),
        ] {
            let (server, client, file) = common::one_file(size).await;
            for mode in modes {
                reset_peak();
                let started = Instant::now();
                let n = run(mode, &client, &file).await;
                let secs = started.elapsed().as_secs_f64();
                let peak = peak_rss_mib().map_or("n/a".to_string(), |p| format!("{p:.0}"));
                println!(
                    "| {} MiB | {mode} | {n} | {:.0} | {peak} |",
                    size >> 20,
                    size as f64 / 1e6 / secs
                );
            }
            drop(server);
        }
    });
}
