//! How a command ends badly, and the exit code for it.

use fhir_bulk::Error;
use std::fmt;
use std::process::ExitCode;

/// Why a command did not complete.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad usage or bad input: a one-line explanation naming the flag to fix. Exit code 2.
    Usage(String),
    /// The export or a transfer failed, or error files hold error/fatal issues. Exit code 1.
    Failed(String),
    /// Ctrl-C or SIGTERM. Exit code 130.
    Interrupted,
}

impl CliError {
    /// A usage error about `flag`.
    pub(crate) fn usage(flag: &str, message: impl fmt::Display) -> CliError {
        CliError::Usage(format!("{flag}: {message}"))
    }

    /// The process exit code.
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
            CliError::Interrupted => ExitCode::from(130),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
            CliError::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// The command-line flag behind a library setting or kick-off parameter.
fn flag_for(name: &str) -> &'static str {
    match name {
        "base_url" => "BASE_URL",
        "status_url" => "STATUS_URL",
        "header" => "--header",
        "trusted_origin" => "--trusted-origin",
        "user_agent" => "--header",
        "poll_policy" => "--max-poll-interval",
        "_since" => "--since",
        "_until" => "--until",
        "_type" => "--type",
        "_typeFilter" => "--type-filter",
        "_elements" => "--elements",
        "includeAssociatedData" => "--include-associated-data",
        "_outputFormat" => "--output-format",
        "organizeOutputBy" => "--organize-output-by",
        "patient" => "--patient",
        "group" | "level" => "--group",
        "token" | "auth" => "--token",
        "client_id" => "--client-id",
        "private_key" | "jwks" | "algorithm" => "--private-key",
        "kid" => "--key-id",
        "token_url" => "--token-url",
        "scope" => "--scope",
        "client_secret" => "--client-secret",
        _ => "--param",
    }
}

/// Converts a library error: invalid settings and parameters are usage errors naming the
/// flag; everything else is a failure, with the request id to quote to the vendor.
pub(crate) fn from_lib(error: Error) -> CliError {
    match &error {
        Error::InvalidConfig { setting, message } => CliError::usage(flag_for(setting), message),
        Error::InvalidRequest { parameter, message } => {
            CliError::usage(flag_for(parameter), format!("`{parameter}`: {message}"))
        }
        _ => CliError::Failed(describe(&error)),
    }
}

/// An error's message plus its request id, when the server sent one.
pub(crate) fn describe(error: &Error) -> String {
    let text = error.to_string();
    match error.request_id() {
        Some(id) if !text.contains(id) => format!("{text} (request id {id})"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_parameters_name_their_flag() {
        let e = from_lib(Error::InvalidRequest {
            parameter: "_since".into(),
            message: "not an instant".into(),
        });
        assert!(
            matches!(&e, CliError::Usage(m) if m.starts_with("--since:")),
            "{e}"
        );
        let e = from_lib(Error::InvalidConfig {
            setting: "base_url",
            message: "bad".into(),
        });
        assert!(
            matches!(&e, CliError::Usage(m) if m.starts_with("BASE_URL:")),
            "{e}"
        );
        assert_eq!(e.exit_code(), ExitCode::from(2));
        assert_eq!(CliError::Interrupted.exit_code(), ExitCode::from(130));
        assert_eq!(CliError::Failed("x".into()).exit_code(), ExitCode::from(1));
    }
}
