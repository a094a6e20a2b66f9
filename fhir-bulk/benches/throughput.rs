//! Download throughput from the in-process server on loopback: the socket ceiling (bytes read
//! and dropped), raw lines (every line checked whole), the default `Resource`, a small user
//! struct, `serde_json::Value`, raw lines with gzip on the wire; and, without a server, the
//! two costs a download adds per byte: gzip decoding (as the client feeds it, 8 KiB slices)
//! and the whole-line check (with the serde_json check it replaced, for comparison).
//!
//! `cargo bench -p fhir-bulk --bench throughput`
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

mod common;

use common::TOKEN;
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use fhir_bulk::resource::Resource;
use fhir_bulk::{BulkClient, DownloadOptions, ExportFile};
use fhir_bulk_test_server::TestServer;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::sync::OnceLock;

/// 256 MiB per iteration.
const FILE_BYTES: u64 = 256 << 20;

struct Setup {
    runtime: tokio::runtime::Runtime,
    _server: TestServer,
    client: BulkClient,
    file: ExportFile,
    bytes: u64,
    lines: u64,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (server, client, file) = runtime.block_on(common::one_file(FILE_BYTES));
        let (bytes, lines) = runtime.block_on(socket_ceiling(&file));
        Setup {
            runtime,
            _server: server,
            client,
            file,
            bytes,
            lines,
        }
    })
}

fn bench_typed<T: DeserializeOwned + Send + 'static>(bencher: Bencher) {
    let s = setup();
    bencher
        .counter(BytesCount::new(s.bytes))
        .counter(ItemsCount::new(s.lines))
        .bench(|| {
            s.runtime.block_on(async {
                let n = s
                    .client
                    .download_file::<T>(&s.file, &DownloadOptions::default())
                    .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                    .await
                    .expect("download");
                assert_eq!(n, s.lines);
            })
        });
}

/// The same bytes read from the socket and dropped.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn ceiling_socket(bencher: Bencher) {
    let s = setup();
    bencher
        .counter(BytesCount::new(s.bytes))
        .counter(ItemsCount::new(s.lines))
        .bench(|| s.runtime.block_on(socket_ceiling(&s.file)));
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn raw_lines(bencher: Bencher) {
    let s = setup();
    bencher
        .counter(BytesCount::new(s.bytes))
        .counter(ItemsCount::new(s.lines))
        .bench(|| {
            s.runtime.block_on(async {
                let n = s
                    .client
                    .download_lines(&s.file, &DownloadOptions::default())
                    .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                    .await
                    .expect("download");
                assert_eq!(n, s.lines);
            })
        });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn default_resource(bencher: Bencher) {
    bench_typed::<Resource>(bencher);
}

/// A narrow analytics struct: the fields a pipeline keeps.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Narrow {
    id: String,
    status: Option<String>,
    subject: Option<Reference>,
    #[serde(rename = "effectiveDateTime")]
    effective: Option<String>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Reference {
    reference: String,
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn user_struct(bencher: Bencher) {
    bench_typed::<Narrow>(bencher);
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn serde_json_value(bencher: Bencher) {
    bench_typed::<serde_json::Value>(bencher);
}

/// A smaller file served with `Content-Encoding: gzip`, for the gzip path end to end.
struct GzipSetup {
    runtime: tokio::runtime::Runtime,
    _server: TestServer,
    client: BulkClient,
    file: ExportFile,
    /// The file's NDJSON (decoded) and as the server gzips it.
    ndjson: Vec<u8>,
    packed: Vec<u8>,
    lines: u64,
}

/// 64 MiB of NDJSON per iteration for the gzip benches.
const GZIP_FILE_BYTES: u64 = 64 << 20;

fn gzip_setup() -> &'static GzipSetup {
    static SETUP: OnceLock<GzipSetup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (server, client, file) =
            runtime.block_on(common::one_file_encoded(GZIP_FILE_BYTES, true));
        let mut ndjson = Vec::new();
        let mut lines = 0;
        for line in server.dataset().all_lines("Observation").expect("lines") {
            ndjson.extend_from_slice(line.as_bytes());
            ndjson.push(b'\n');
            lines += 1;
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(&ndjson).expect("gzip");
        let packed = encoder.finish().expect("gzip");
        GzipSetup {
            runtime,
            _server: server,
            client,
            file,
            ndjson,
            packed,
            lines,
        }
    })
}

/// Raw lines of a file sent with `Content-Encoding: gzip` (decoded and every line checked).
#[divan::bench(sample_count = 5, sample_size = 1)]
fn raw_lines_gzip(bencher: Bencher) {
    let s = gzip_setup();
    bencher
        .counter(BytesCount::new(s.ndjson.len()))
        .counter(ItemsCount::new(s.lines))
        .bench(|| {
            s.runtime.block_on(async {
                let n = s
                    .client
                    .download_lines(&s.file, &DownloadOptions::default())
                    .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                    .await
                    .expect("download");
                assert_eq!(n, s.lines);
            })
        });
}

/// gzip decoding alone, fed as the client feeds it (the write API, 8 KiB slices), with the
/// flate2 backend the crate is built with (`zlib-rs`).
#[divan::bench(sample_count = 10, sample_size = 1)]
fn gzip_decode(bencher: Bencher) {
    let s = gzip_setup();
    bencher.counter(BytesCount::new(s.ndjson.len())).bench(|| {
        let mut decoder = flate2::write::MultiGzDecoder::new(Vec::with_capacity(1 << 20));
        let mut out = 0;
        for piece in s.packed.chunks(8 * 1024) {
            decoder.write_all(piece).expect("gzip");
            out += decoder.get_ref().len();
            decoder.get_mut().clear();
        }
        decoder.try_finish().expect("gzip");
        out += decoder.get_ref().len();
        assert_eq!(out, s.ndjson.len());
    });
}

/// The whole-line check alone (UTF-8, one JSON object, nothing after it), per line: the
/// validating scan of `check_line`.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn line_check(bencher: Bencher) {
    let s = gzip_setup();
    bencher
        .counter(BytesCount::new(s.ndjson.len()))
        .counter(ItemsCount::new(s.lines))
        .bench(|| {
            let mut n = 0u64;
            for line in s.ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                fhir_bulk::resource::check_line(line).expect("valid line");
                n += 1;
            }
            assert_eq!(n, s.lines);
        });
}

/// The whole-line check on lines with one long text (900 bytes of a 1,000-byte line, the
/// shape `scripts/compare-curl.sh` serves): long strings are searched with memchr.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn line_check_long_text(bencher: Bencher) {
    let text = "x".repeat(900);
    let lines: Vec<String> = (0..100_000)
        .map(|i| {
            format!(
                r#"{{"resourceType":"Observation","id":"o{i}","status":"final","code":{{"text":"{text}"}},"subject":{{"reference":"Patient/p{}"}}}}"#,
                i % 997
            )
        })
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    bencher
        .counter(BytesCount::new(bytes))
        .counter(ItemsCount::new(lines.len()))
        .bench(|| {
            for line in &lines {
                fhir_bulk::resource::check_line(line.as_bytes()).expect("valid line");
            }
        });
}

/// The serde_json check the validating scan replaced (UTF-8 over the line, then serde_json's
/// skipping parse of one object to its end), on the same lines: the before of `line_check`.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn line_check_serde_reference(bencher: Bencher) {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Members;

    impl<'de> Visitor<'de> for Members {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key::<IgnoredAny>()?.is_some() {
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let s = gzip_setup();
    bencher
        .counter(BytesCount::new(s.ndjson.len()))
        .counter(ItemsCount::new(s.lines))
        .bench(|| {
            let mut n = 0u64;
            for line in s.ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let text = std::str::from_utf8(line).expect("UTF-8");
                let mut deserializer = serde_json::Deserializer::from_str(text);
                deserializer.deserialize_map(Members).expect("valid line");
                deserializer.end().expect("valid line");
                n += 1;
            }
            assert_eq!(n, s.lines);
        });
}

/// Reads the file straight off the socket and drops the bytes: the ceiling.
async fn socket_ceiling(file: &ExportFile) -> (u64, u64) {
    let http = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("reqwest");
    let mut response = http
        .get(file.file.url.expose())
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    (bytes, lines)
}

fn main() {
    divan::main();
}
