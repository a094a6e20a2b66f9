//! Shared set-up for the benchmarks: the in-process server on loopback with one big file.

use fhir_bulk::{BulkClient, CompletedExport, ExportFile, ExportRequest, FileKind};
use fhir_bulk_test_server::TestServer;

pub(crate) const TOKEN: &str = "bench-token";

/// A server exporting one Observation file of about `bytes` bytes (identity encoding, so the
/// socket ceiling and the client read the same bytes), the client, and the file.
pub(crate) async fn one_file(bytes: u64) -> (TestServer, BulkClient, ExportFile) {
    one_file_encoded(bytes, false).await
}

/// The same, with `Content-Encoding: gzip` on the wire when `gzip`.
pub(crate) async fn one_file_encoded(
    bytes: u64,
    gzip: bool,
) -> (TestServer, BulkClient, ExportFile) {
    let server = TestServer::builder()
        .resource_types(["Observation"])
        .file_bytes("Observation", bytes)
        .gzip(gzip)
        .retry_after("0")
        .require_bearer(TOKEN)
        .start()
        .await
        .expect("test server");
    let client = BulkClient::builder(server.base_url().as_str())
        .bearer_token(TOKEN)
        .build()
        .expect("client");
    let export: CompletedExport = client
        .export(&ExportRequest::system())
        .await
        .expect("export");
    let file = export.files(FileKind::Output).remove(0);
    (server, client, file)
}
