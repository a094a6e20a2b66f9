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
        request = pass_through(request, name, value)?;
    }
    if args.allow_partial_manifests {
        request = request.allow_partial_manifests(true);
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

/// Whether the request asks for partial manifests (`--allow-partial-manifests`, or
/// `--param allowPartialManifests=true`).
pub(crate) fn wants_partial_manifests(request: &ExportRequest) -> bool {
    request
        .query_pairs()
        .iter()
        .any(|(name, value)| name == "allowPartialManifests" && value == "true")
}

/// `--param NAME=VALUE`: any name is passed through. The standard parameters go through the
/// library's setter for them (the wire is the same, and the request's checks apply); every
/// other name as given.
fn pass_through(
    request: ExportRequest,
    name: &str,
    value: &str,
) -> Result<ExportRequest, CliError> {
    let v = value.trim();
    let list = || {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    Ok(match name {
        "_type" => request.types(list()),
        "_elements" => request.elements(list()),
        "_since" => request.since(v),
        "_until" => request.until(v),
        "_outputFormat" => request.output_format(v),
        "_typeFilter" => request.type_filter(v),
        "organizeOutputBy" => request.organize_output_by(v),
        "includeAssociatedData" => list()
            .into_iter()
            .fold(request, |r, code| r.include_associated_data(code)),
        "allowPartialManifests" => match v {
            "true" => request.allow_partial_manifests(true),
            "false" => request.allow_partial_manifests(false),
            _ => {
                return Err(CliError::usage(
                    "--param",
                    format!("allowPartialManifests takes `true` or `false`, not `{v}`"),
                ));
            }
        },
        _ => request.param(name, value),
    })
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
