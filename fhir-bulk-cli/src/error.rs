//! How a command ends badly, and the exit code for it; and the one place where library errors
//! become messages in the user's words: advice names CLI flags (never library calls), server
//! text is escaped and cut ([`crate::escape`]), the server's own reason is shown.

use crate::escape::{capped, server_text};
use fhir_bulk::{Error, ErrorResponse};
use std::fmt;
use std::process::ExitCode;

/// Why a command did not complete.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad usage or bad input: a one-line explanation naming the flag to fix. Exit code 2.
    Usage(String),
    /// A bad config file or key, typed by the setting at fault. Exit code 2.
    Config(crate::config::ConfigError),
    /// The export or a transfer failed: data is missing. Exit code 1.
    Failed(String),
    /// Every file is downloaded, but the server's error files report error or fatal issues.
    /// Exit code 3.
    ServerReportedErrors(String),
    /// Ctrl-C or SIGTERM. Exit code 130.
    Interrupted,
}

/// Exit code of a complete download whose error files hold error/fatal issues.
pub(crate) const EXIT_SERVER_REPORTED_ERRORS: u8 = 3;

impl CliError {
    /// A usage error about `flag`.
    pub(crate) fn usage(flag: &str, message: impl fmt::Display) -> CliError {
        CliError::Usage(format!("{flag}: {message}"))
    }

    /// The process exit code.
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) | CliError::Config(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
            CliError::ServerReportedErrors(_) => ExitCode::from(EXIT_SERVER_REPORTED_ERRORS),
            CliError::Interrupted => ExitCode::from(130),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) | CliError::ServerReportedErrors(m) => {
                f.write_str(m)
            }
            CliError::Config(e) => fmt::Display::fmt(e, f),
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
        "max_line_bytes" => "--max-line-bytes",
        "concurrency" => "--concurrency",
        _ => "--param",
    }
}

/// Library wording in messages, and what a CLI user does instead.
const LIBRARY_ADVICE: &[(&str, &str)] = &[
    (
        "Use https, or call `allow_insecure_http(true)` if you really mean it",
        "Give an https:// URL (plain http is accepted only to this machine)",
    ),
    (
        "or `BulkClientBuilder::allow_insecure_http(true)` if you really mean it",
        "(plain http is accepted only to this machine), or give --token-url with an https URL",
    ),
    (
        "set Authorization through an auth provider (e.g. `bearer_token`), which sends it only \
         to trusted origins",
        "give the token with --token (or FHIR_BULK_TOKEN), not --header Authorization: it is \
         then sent only to trusted origins",
    ),
    (
        "give the final token endpoint URL with `token_url`",
        "give the final token endpoint URL with --token-url",
    ),
    ("Give it with `token_url`", "Give it with --token-url"),
    ("give it with `token_url`", "give it with --token-url"),
    (
        "give one with `private_key_pem`, `private_key_pem_file`, `jwks` or `jwks_file`",
        "give one with --private-key",
    ),
    ("choose one with `kid`", "choose one with --key-id"),
    (
        "raise DownloadOptions::max_line_bytes if the file is right",
        "raise --max-line-bytes if the file is right",
    ),
    (
        "Fetch a fresh manifest with `ExportJob::refresh_manifest` (servers may issue new URLs) \
         and download again, or start a new export",
        "Run the same command again (it asks the server for fresh file links), or start a new \
         export with --fresh",
    ),
    (
        "add it with `BulkClientBuilder::trusted_origin`",
        "add it with --trusted-origin",
    ),
];

/// `text` with library advice replaced by its CLI equivalent.
fn cli_words(text: &str) -> String {
    let mut text = text.to_owned();
    for (library, cli) in LIBRARY_ADVICE {
        if text.contains(library) {
            text = text.replace(library, cli);
        }
    }
    text
}

/// Where an error happened, when the message depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Polling the job's status URL (`export`, `status`, `download STATUS_URL`).
    Poll,
    /// Anything else.
    Other,
}

/// Converts a library error: invalid settings and parameters are usage errors naming the
/// flag; everything else is a failure, in the user's words, with the request id to quote to
/// the vendor.
pub(crate) fn from_lib(error: Error) -> CliError {
    from_lib_in(error, Step::Other)
}

/// [`from_lib`] for an error of `step`.
pub(crate) fn from_lib_in(error: Error, step: Step) -> CliError {
    match &error {
        Error::InvalidConfig { setting, message } => {
            CliError::usage(flag_for(setting), cli_words(message))
        }
        Error::InvalidRequest { parameter, message } if message.contains("its own setter") => {
            let flag = flag_for(parameter);
            CliError::usage(
                "--param",
                format!(
                    "`{parameter}` has its own flag: use {flag} instead of --param {parameter}=..."
                ),
            )
        }
        Error::InvalidRequest { parameter, message } => CliError::usage(
            flag_for(parameter),
            format!("`{parameter}`: {}", cli_words(message)),
        ),
        _ => CliError::Failed(describe_in(&error, step)),
    }
}

/// The kick-off was refused: which request (method and URL with its parameters, which are
/// not secrets), and why.
pub(crate) fn kickoff_refused(error: Error, request: &str) -> CliError {
    match from_lib(error) {
        CliError::Failed(message) => CliError::Failed(format!(
            "{message}\n  the refused request: {}",
            capped(request, 2000)
        )),
        other => other,
    }
}

/// An error's message in the user's words, plus its request id when the server sent one.
pub(crate) fn describe(error: &Error) -> String {
    describe_in(error, Step::Other)
}

/// [`describe`] for an error of `step`.
pub(crate) fn describe_in(error: &Error, step: Step) -> String {
    let text = match error {
        Error::UntrustedOrigin { origin, url } if step == Step::Poll => format!(
            "the server's status URL {} is on another origin ({}) than the FHIR server, so the \
             access token is not sent there. If that origin belongs to the same server, add it \
             with --trusted-origin {}",
            server_text(url),
            server_text(origin),
            server_text(origin)
        ),
        Error::UntrustedOrigin { origin, url } => format!(
            "refusing to send the access token to {} ({}): the file is on an origin that is \
             neither the FHIR server's nor trusted. If it belongs to the same server, add it \
             with --trusted-origin {}",
            server_text(origin),
            server_text(url),
            server_text(origin)
        ),
        Error::Auth { message, response } => auth_message(message, response.as_deref()),
        Error::RetriesExhausted {
            attempts,
            elapsed,
            last,
        } => format!(
            "gave up after {attempts} attempts over {}: {}",
            crate::time::human_duration(*elapsed),
            describe_in(last, step)
        ),
        _ => match error.error_response() {
            Some(response) if html(response).is_some() => html_message(error, response),
            _ => cli_words(&error.to_string()),
        },
    };
    let text = one_line_server_text(&text);
    match error.request_id() {
        Some(id) if !text.contains(id) => format!("{text} (request id {})", server_text(id)),
        _ => text,
    }
}

/// A message that may quote the server: every control character but the newlines the CLI
/// itself puts in is escaped, and the whole is capped.
fn one_line_server_text(text: &str) -> String {
    text.split('\n')
        .map(|line| capped(line, 2000))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether credentials were given on this run (see [`crate::auth::provider`]).
fn credentials_given() -> bool {
    crate::auth::CREDENTIALS_GIVEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// An authorization failure: a 401 without credentials asks for them; the server's reason is
/// shown.
fn auth_message(message: &str, response: Option<&ErrorResponse>) -> String {
    let reason = response.and_then(server_reason);
    let because = reason
        .map(|r| format!(". The server says: {r}"))
        .unwrap_or_default();
    match response {
        Some(r) if r.status == 401 && !credentials_given() => format!(
            "this server needs credentials: --token (or FHIR_BULK_TOKEN), or --client-id with \
             --private-key or --client-secret (HTTP 401 from {}){because}",
            server_text(&r.url)
        ),
        Some(r) if html(r).is_some() => format!(
            "authorization failed: {}{}",
            cli_words(message),
            html(r)
                .map(|t| format!(". The server answered with an HTML page, not FHIR: {t}"))
                .unwrap_or_default()
        ),
        _ => format!("authorization failed: {}{because}", cli_words(message)),
    }
}

/// The server's own reason: its OperationOutcome, else the start of its body.
fn server_reason(response: &ErrorResponse) -> Option<String> {
    if let Some(outcome) = &response.outcome {
        return Some(server_text(&outcome.to_string()));
    }
    if let Some(title) = html(response) {
        return Some(format!("(an HTML page) {title}"));
    }
    response
        .body
        .as_deref()
        .filter(|b| !b.trim().is_empty())
        .map(server_text)
}

/// For an HTML body: its `<title>`, else its first non-empty line, cut to one short line.
fn html(response: &ErrorResponse) -> Option<String> {
    html_title(response.body.as_deref()?)
}

/// [`html`] of a body.
fn html_title(body: &str) -> Option<String> {
    let body = body.trim_start();
    let head: String = body
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    if !(head.starts_with("<!doctype html") || head.starts_with("<html") || head.contains("<html"))
    {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .and_then(|start| {
            let from = start + "<title>".len();
            lower[from..]
                .find("</title>")
                .and_then(|end| body.get(from..from + end))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let line = title.unwrap_or_else(|| body.lines().find(|l| !l.trim().is_empty()).unwrap_or(""));
    Some(capped(line, 120))
}

/// An answer that is a web page: named as such, with one line of it.
fn html_message(error: &Error, response: &ErrorResponse) -> String {
    let what = match error {
        Error::KickoffRejected(_) => "the kick-off",
        Error::JobFailed(_) | Error::JobNotFound(_) => "the status request",
        Error::FileExpired { .. } => "the file request",
        Error::UnexpectedResponse { context, .. } => context,
        _ => "the request",
    };
    format!(
        "{what} got an HTML page, not a FHIR answer (HTTP {} from {}): \"{}\". Is the URL the \
         FHIR server's base (BASE_URL, --base-url)?",
        response.status,
        server_text(&response.url),
        html(response).unwrap_or_default()
    )
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
        assert_eq!(
            CliError::ServerReportedErrors("x".into()).exit_code(),
            ExitCode::from(3)
        );
    }

    #[test]
    fn html_pages_are_named_by_their_title_or_first_line() {
        assert_eq!(
            html_title("<!DOCTYPE html>\n<html><head><title> Sign in \x1b[2J</title></head>")
                .as_deref(),
            Some("Sign in \\x1b[2J")
        );
        assert_eq!(
            html_title("<html>\n<body>Not Found</body>").as_deref(),
            Some("<html>")
        );
        assert_eq!(html_title("{\"resourceType\":\"OperationOutcome\"}"), None);
        assert_eq!(html_title("plain text"), None);
    }

    #[test]
    fn library_advice_becomes_flags() {
        let e = from_lib(Error::InvalidRequest {
            parameter: "patient".into(),
            message: "`patient` has its own setter on ExportRequest; use it instead of `param`"
                .into(),
        });
        assert_eq!(
            e.to_string(),
            "--param: `patient` has its own flag: use --patient instead of --param patient=..."
        );
        let e = from_lib(Error::InvalidConfig {
            setting: "base_url",
            message: "`http://ehr.example/` uses plain http to a host that is not this machine: \
                      tokens and health data would cross the network unencrypted. Use https, or \
                      call `allow_insecure_http(true)` if you really mean it"
                .into(),
        });
        let text = e.to_string();
        assert!(
            text.starts_with("BASE_URL:") && !text.contains("allow_insecure_http"),
            "{text}"
        );
        let e = from_lib(Error::InvalidConfig {
            setting: "header",
            message: "set Authorization through an auth provider (e.g. `bearer_token`), which \
                      sends it only to trusted origins"
                .into(),
        });
        assert!(e.to_string().contains("--token") && !e.to_string().contains("bearer_token"));
        let e = from_lib(Error::Auth {
            message: "cannot find the token endpoint: x. Give it with `token_url`".into(),
            response: None,
        });
        assert!(e.to_string().ends_with("Give it with --token-url"), "{e}");
        let e = from_lib(Error::InvalidLine {
            file: "https://x/f".into(),
            line: 3,
            kind: fhir_bulk::LineErrorKind::TooLong,
            message: "longer than the maximum line length of 10 bytes (raise \
                      DownloadOptions::max_line_bytes if the file is right)"
                .into(),
        });
        assert!(e.to_string().contains("raise --max-line-bytes"), "{e}");
    }

    #[test]
    fn a_foreign_status_url_is_explained_as_one() {
        let error = Error::UntrustedOrigin {
            origin: "https://other.example".into(),
            url: "https://other.example/jobs/1".into(),
        };
        let poll = describe_in(&error, Step::Poll);
        assert!(
            poll.contains("status URL https://other.example/jobs/1 is on another origin"),
            "{poll}"
        );
        assert!(
            poll.contains("--trusted-origin https://other.example"),
            "{poll}"
        );
        assert!(!poll.contains("manifest"), "{poll}");
        let file = describe(&error);
        assert!(
            file.contains("--trusted-origin") && !file.contains("BulkClientBuilder"),
            "{file}"
        );
    }

    #[test]
    fn server_text_in_messages_is_escaped() {
        let e = from_lib(Error::BadManifest {
            url: "https://x/jobs/1".into(),
            message: "bad \x1b]0;owned\x07 \u{202e}txt".into(),
            source: None,
        });
        let text = e.to_string();
        assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
        assert!(text.contains("\\x1b]0;owned\\x07 \\u{202e}txt"), "{text}");
    }
}
