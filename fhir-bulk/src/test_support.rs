//! Set-up shared by the library's unit tests.

use crate::{BulkClient, CompletedExport, ExportRequest};
use fhir_bulk_test_server::{TestServer, TestServerBuilder};

/// Starts `server`, builds a client for it and runs a system-level export to its end: the
/// server (keep it alive while its files are read), the client and the export.
pub(crate) async fn completed_export(
    server: TestServerBuilder,
) -> (TestServer, BulkClient, CompletedExport) {
    let server = server.start().await.unwrap();
    let client = BulkClient::builder(server.base_url().as_str())
        .build()
        .unwrap();
    let export = client
        .kick_off(&ExportRequest::system())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    (server, client, export)
}
