//! `fhir-bulk demo`: starts the crate's in-process bulk data server on 127.0.0.1 with
//! synthetic patients and runs a full export against it through the same code path as
//! `fhir-bulk export` (kick-off, polls with X-Progress, manifest, downloads, verification,
//! DELETE, summary). No network is needed.

use crate::args::{DemoArgs, ExportArgs, PollArgs, RetryAfterUnitArg, ServerArgs};
use crate::error::CliError;
use crate::export;
use fhir_bulk::SecretString;
use fhir_bulk_test_server::TestServer;

/// Runs the demo.
pub(crate) async fn run(args: &DemoArgs) -> Result<(), CliError> {
    // A random token: the demo server requires it, and it never appears in any output.
    let token: String = (0..24).map(|_| fastrand::alphanumeric()).collect();
    let per_file = (args.patients * 3).clamp(50, 5_000);
    let server = TestServer::builder()
        .patients(args.patients)
        .max_resources_per_file(per_file)
        .polls_before_complete(2)
        .retry_after("1")
        .x_progress(["queued", "45% complete"])
        .require_bearer(token.clone())
        .error_file(["information", "warning"])
        .deleted_file(3)
        .start()
        .await
        .map_err(|e| CliError::Failed(format!("cannot start the demo server: {e}")))?;
    crate::out::err(&format!(
        "demo: a bulk data server with {} synthetic patients is listening on {}",
        args.patients,
        server.base_url()
    ));
    let export_args = ExportArgs {
        base_url: server.base_url().to_string(),
        group: None,
        all_patients: false,
        patients: Vec::new(),
        patients_file: None,
        post: false,
        types: Vec::new(),
        since: None,
        until: None,
        type_filters: Vec::new(),
        elements: Vec::new(),
        include_associated_data: Vec::new(),
        output_format: None,
        organize_output_by: None,
        params: Vec::new(),
        lenient: false,
        allow_partial_manifests: false,
        separate_export_status: false,
        list_encoding: None,
        type_filter_encoding: None,
        associated_data_encoding: None,
        server: ServerArgs {
            token: Some(SecretString::new(token)),
            ..ServerArgs::default()
        },
        poll: PollArgs {
            retry_after_unit: RetryAfterUnitArg::Seconds,
            max_poll_interval: Some(1.0),
        },
        output_dir: args.output_dir.clone(),
        output: args.output.clone(),
        attachments: Default::default(),
        keep_job: false,
        fresh: true,
        history: false,
    };
    let result = export::run(&export_args).await;
    server.shutdown().await;
    result
}
