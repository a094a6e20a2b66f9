//! The kick-off request the `export` flags describe.

use crate::args::{AssociatedDataArg, ExportArgs, ListEncodingArg};
use crate::error::{CliError, from_lib};
use fhir_bulk::{AssociatedDataEncoding, ExportRequest, ListEncoding};
use std::path::Path;

/// Builds and validates the request; a bad value is a usage error naming its flag.
pub(crate) fn build(args: &ExportArgs) -> Result<ExportRequest, CliError> {
    let mut patients = args.patients.clone();
    if let Some(file) = &args.patients_file {
        patients.extend(read_patients_file(file)?);
    }
    if let Some(bad) = patients.iter().find(|p| p.trim().is_empty()) {
        return Err(CliError::usage(
            "--patient",
            format!("`{bad}` is not a patient reference; give `Patient/123` or `123`"),
        ));
    }
    let mut request = match (&args.group, args.all_patients || !patients.is_empty()) {
        (Some(id), _) => {
            if id.trim().is_empty() {
                return Err(CliError::usage("--group", "the Group id is empty"));
            }
            ExportRequest::group(id.trim())
        }
        (None, true) => ExportRequest::all_patients(),
        (None, false) => ExportRequest::system(),
    };
    if args.post || !patients.is_empty() {
        request = request.post();
    }
    for patient in patients {
        request = request.patient(patient.trim());
    }
    let types: Vec<&str> = non_empty(&args.types);
    if !types.is_empty() {
        request = request.types(types);
    }
    if let Some(since) = &args.since {
        request = request.since(since.trim());
    }
    if let Some(until) = &args.until {
        request = request.until(until.trim());
    }
    for filter in &args.type_filters {
        request = request.type_filter(filter.trim());
    }
    let elements = non_empty(&args.elements);
    if !elements.is_empty() {
        request = request.elements(elements);
    }
    for code in non_empty(&args.include_associated_data) {
        request = request.include_associated_data(code);
    }
    if let Some(format) = &args.output_format {
        request = request.output_format(format.trim());
    }
    if let Some(by) = &args.organize_output_by {
        request = request.organize_output_by(by.trim());
    }
    for (name, value) in &args.params {
        request = request.param(name, value.as_str());
    }
    request = request
        .lenient(args.lenient)
        .separate_export_status(args.separate_export_status);
    if let Some(encoding) = args.list_encoding {
        request = request.list_encoding(list_encoding(encoding));
    }
    if let Some(encoding) = args.type_filter_encoding {
        request = request.type_filter_encoding(list_encoding(encoding));
    }
    if let Some(encoding) = args.associated_data_encoding {
        request = request.associated_data_encoding(match encoding {
            AssociatedDataArg::Code => AssociatedDataEncoding::Code,
            AssociatedDataArg::Coding => AssociatedDataEncoding::Coding,
        });
    }
    // The IG's rules and the server profile's documented limits, before anything is sent.
    let profile = crate::client::profile(&args.base_url, &args.server);
    let _prepared = profile.prepare(&request).map_err(from_lib)?;
    Ok(request)
}

fn list_encoding(arg: ListEncodingArg) -> ListEncoding {
    match arg {
        ListEncodingArg::Comma => ListEncoding::CommaJoined,
        ListEncodingArg::Repeated => ListEncoding::Repeated,
        ListEncodingArg::Escaped => ListEncoding::CommaJoinedEscaped,
    }
}

fn non_empty(values: &[String]) -> Vec<&str> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect()
}

/// One reference a line; blank lines and lines starting with `#` are skipped.
fn read_patients_file(path: &Path) -> Result<Vec<String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(
            "--patients-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let patients: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if patients.is_empty() {
        return Err(CliError::usage(
            "--patients-file",
            format!("{} lists no patient references", path.display()),
        ));
    }
    Ok(patients)
}
