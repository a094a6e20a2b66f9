//! The command line: subcommands and options (clap derive). Parsing checks each value's form;
//! what needs the file system or the library's rules is checked later, still naming the flag.

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use fhir_bulk::{SecretString, ServerProfile};
use std::path::PathBuf;

/// The default output directory of `export`.
pub(crate) const DEFAULT_OUTPUT_DIR: &str = "fhir-export";

/// `fhir-bulk`: FHIR Bulk Data export from the shell, resumable, with an offline demo.
#[derive(Parser)]
#[command(
    name = "fhir-bulk",
    version,
    about = "FHIR Bulk Data ($export) client: kick off, poll, download, resume",
    long_about = "FHIR Bulk Data ($export) client: kick off an export, poll it, download its \
                  files into a directory, and resume after an interruption by running the same \
                  command again.\n\nEvery option can also come from an environment variable \
                  (FHIR_BULK_<OPTION>, e.g. FHIR_BULK_CONCURRENCY=8, shown with each option) \
                  or a config file (--config FILE; else ./fhir-bulk.toml, then \
                  $XDG_CONFIG_HOME/fhir-bulk/config.toml): `concurrency = 8` at the top applies \
                  to every subcommand, an [export] table to one. A flag beats the environment, \
                  which beats the file.\n\nExit codes: 0 complete; 1 data is missing (the export \
                  or a transfer failed); 2 bad usage or input; 3 every file is downloaded but \
                  the server's error files report error/fatal issues; 130 interrupted."
)]
pub(crate) struct Cli {
    /// A TOML config file of option values [default: ./fhir-bulk.toml, else
    /// $XDG_CONFIG_HOME/fhir-bulk/config.toml, when present].
    #[arg(long, global = true, value_name = "FILE", env = "FHIR_BULK_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The command line with an environment variable for every option: `FHIR_BULK_<LONG_NAME>`
/// (positional arguments, `--verbose` and the demo's options excepted); secrets' values are
/// never shown in `--help`.
pub(crate) fn command() -> clap::Command {
    Cli::command().mut_subcommands(|sub| {
        if !crate::config::CONFIGURABLE.contains(&sub.get_name()) {
            return sub;
        }
        sub.mut_args(|arg| match env_name(&arg) {
            Some(name) => {
                let secret = matches!(arg.get_id().as_str(), "token" | "client_secret" | "headers");
                arg.env(name).hide_env_values(secret)
            }
            None => arg,
        })
    })
}

/// The environment variable of an option: `FHIR_BULK_` and its long name in capitals.
pub(crate) fn env_name(arg: &clap::Arg) -> Option<String> {
    let long = arg.get_long()?;
    if arg.is_hide_set()
        || matches!(long, "help" | "version" | "config")
        || matches!(
            arg.get_action(),
            ArgAction::Count | ArgAction::Help | ArgAction::Version
        )
    {
        return None;
    }
    Some(format!(
        "FHIR_BULK_{}",
        long.replace('-', "_").to_ascii_uppercase()
    ))
}

/// The subcommands.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Kick off an export (or resume the one recorded in the output directory) and download
    /// its files.
    Export(Box<ExportArgs>),
    /// Poll a job once: its progress, or a summary of its manifest.
    Status(StatusArgs),
    /// Cancel a job (DELETE on its status URL).
    Cancel(CancelArgs),
    /// Download the files of a finished job, from a saved manifest or its status URL.
    Download(DownloadArgs),
    /// Run a complete export against an in-process demo server on 127.0.0.1 (no network).
    Demo(DemoArgs),
    /// Print a shell completion script, e.g. `fhir-bulk completions bash >
    /// ~/.local/share/bash-completion/completions/fhir-bulk`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `fhir-bulk man > fhir-bulk.1`.
    Man,
}

/// `fhir-bulk completions`.
#[derive(Args, Clone)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum, value_name = "SHELL")]
    pub(crate) shell: clap_complete::Shell,
}

/// Authorization and connection options, accepted by every subcommand that talks to a server.
///
/// Credentials: a static bearer token (`--token`, else the `FHIR_BULK_TOKEN` environment
/// variable); SMART Backend Services (`--client-id` with `--private-key`); or a client secret
/// (`--client-id` with `--client-secret`, else `FHIR_BULK_CLIENT_SECRET`). The environment
/// variables keep secrets out of the process list.
#[derive(Args, Clone, Default)]
pub(crate) struct ServerArgs {
    /// A static bearer token (better from the FHIR_BULK_TOKEN environment variable, out of
    /// the process list).
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret, help_heading = "Auth")]
    pub(crate) token: Option<SecretString>,

    /// The client id registered with the server: SMART Backend Services with --private-key,
    /// or a client secret with --client-secret.
    #[arg(long, value_name = "ID", help_heading = "Auth")]
    pub(crate) client_id: Option<String>,

    /// SMART Backend Services: the client's private key, a PEM file (PKCS#8, PKCS#1 or SEC 1;
    /// needs --key-id) or a JWKS file.
    #[arg(long, value_name = "FILE", help_heading = "Auth")]
    pub(crate) private_key: Option<PathBuf>,

    /// The `kid` the server knows the key by (required for a PEM key; selects a key of a
    /// JWKS).
    #[arg(long, value_name = "KID", help_heading = "Auth")]
    pub(crate) key_id: Option<String>,

    /// The token endpoint [default: discovered from the server's
    /// .well-known/smart-configuration].
    #[arg(long, value_name = "URL", help_heading = "Auth")]
    pub(crate) token_url: Option<String>,

    /// The scopes to request, space-separated [default: system/*.rs or system/*.read, as the
    /// server advertises].
    #[arg(long, value_name = "SCOPES", help_heading = "Auth")]
    pub(crate) scope: Option<String>,

    /// The client secret, with --client-id (better from the FHIR_BULK_CLIENT_SECRET
    /// environment variable).
    #[arg(long, value_name = "SECRET", value_parser = parse_secret, help_heading = "Auth")]
    pub(crate) client_secret: Option<SecretString>,

    /// An origin besides the FHIR server's that may receive the token (repeatable).
    #[arg(long = "trusted-origin", value_name = "ORIGIN", help_heading = "Auth")]
    pub(crate) trusted_origins: Vec<String>,

    /// A header sent to the FHIR server with every request (repeatable), e.g.
    /// `Epic-Client-ID: abc`.
    #[arg(
        long = "header",
        value_name = "NAME: VALUE",
        value_parser = parse_header,
        help_heading = "Auth"
    )]
    pub(crate) headers: Vec<(String, String)>,

    // Google Cloud (see cloud.rs).
    /// A Google credentials file: a service-account key or `authorized_user` credentials.
    /// The token (cloud-platform scope) goes to the FHIR server and to Cloud Storage for
    /// gs:// files [default with a healthcare.googleapis.com base URL and no other
    /// credentials: application default credentials].
    #[arg(long, value_name = "FILE", help_heading = "Auth")]
    pub(crate) google_credentials: Option<PathBuf>,
    /// The kind of server, for its encodings, documented limits, poll defaults and readings of
    /// Retry-After and DELETE answers: stu4, oracle, epic, google, microsoft, smart or generic
    /// [default: from the base URL's host when it is a vendor's cloud, else generic; `export`
    /// suggests the profile the CapabilityStatement's software matches].
    #[arg(long, value_name = "NAME", value_parser = parse_profile, help_heading = "Server")]
    pub(crate) server_profile: Option<ServerProfile>,
}

fn parse_profile(text: &str) -> Result<ServerProfile, String> {
    text.parse::<ServerProfile>().map_err(|e| match e {
        fhir_bulk::Error::InvalidConfig { message, .. } => message,
        other => other.to_string(),
    })
}

/// `--list-encoding` and `--type-filter-encoding`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListEncodingArg {
    /// One parameter, values joined with commas (STU2/STU3, Oracle).
    Comma,
    /// One parameter per value (STU4).
    Repeated,
    /// Comma-joined, commas inside a value escaped as `\,` (Epic's `_typeFilter`).
    Escaped,
}

/// `--associated-data-encoding`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AssociatedDataArg {
    /// `valueCode` (STU2/STU3).
    Code,
    /// `valueCoding` with the IG's code system (STU4).
    Coding,
}

/// How status polling waits.
#[derive(Args, Clone, Default)]
pub(crate) struct PollArgs {
    /// The unit of numeric Retry-After values.
    #[arg(
        long,
        value_enum,
        default_value_t = RetryAfterUnitArg::Seconds,
        help_heading = "Transfer"
    )]
    pub(crate) retry_after_unit: RetryAfterUnitArg,

    /// The longest wait between two status polls, and the longest wait any Retry-After may
    /// impose (a 429 included), in seconds (decimals allowed). Default 300.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, help_heading = "Transfer")]
    pub(crate) max_poll_interval: Option<f64>,
}

/// `--retry-after-unit`.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RetryAfterUnitArg {
    /// Delta-seconds, as HTTP defines Retry-After.
    #[default]
    Seconds,
    /// Milliseconds (one vendor sends these).
    Millis,
}

/// Where and how files are written, and what the terminal shows.
#[derive(Args, Clone)]
pub(crate) struct OutputArgs {
    /// Files downloaded at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=256),
        help_heading = "Transfer"
    )]
    pub(crate) concurrency: u16,

    /// Threads that read and check the downloads' lines. 1 (the default) runs the downloads
    /// on one thread, as curl does: the least CPU per file, and enough for about 1 GB/s of
    /// lines (half that with gzip on the wire). More check the lines of several files at once,
    /// for links faster than that (up to one per core and per --concurrency). Files are
    /// written, compressed (--gzip) and synced on threads of their own either way.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256),
        help_heading = "Transfer"
    )]
    pub(crate) threads: u16,

    /// Write `.ndjson.gz` files instead of `.ndjson`.
    #[arg(long, help_heading = "Transfer")]
    pub(crate) gzip: bool,

    /// Do not sync downloaded files to the disk before they are final (faster where a sync is
    /// slow). A killed run still resumes exactly, but an operating-system crash or power cut
    /// can lose files already reported downloaded: rerun with --fresh after one. The job state
    /// and attachments are still synced.
    #[arg(long, help_heading = "Transfer")]
    pub(crate) no_sync: bool,

    /// The longest NDJSON line accepted, in bytes (default 64 MiB).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Transfer"
    )]
    pub(crate) max_line_bytes: Option<u64>,

    /// Which per-file events `log.ndjson` gets: `done`, one `download_complete` per file;
    /// `all`, also a `download_request` as each file starts (the SMART bulk-data-client's
    /// full log); `errors`, only failures (`download_error`), for exports of very many small
    /// files, where per-file events would be most of the bytes written. Failures are always
    /// logged.
    #[arg(
        long,
        value_enum,
        value_name = "WHICH",
        default_value_t = LogFilesArg::Done,
        help_heading = "Output"
    )]
    pub(crate) log_files: LogFilesArg,

    /// No progress bars: plain timestamped lines, milestones only.
    #[arg(long, short = 'q', conflicts_with = "verbose", help_heading = "Output")]
    pub(crate) quiet: bool,

    /// More detail: every poll and every file (repeatable).
    #[arg(long, short = 'v', action = ArgAction::Count, help_heading = "Output")]
    pub(crate) verbose: u8,
}

/// `--log-files`.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum LogFilesArg {
    /// `download_complete` for every file saved.
    #[default]
    Done,
    /// `download_request` as each file starts, and `download_complete`.
    All,
    /// Only failures.
    Errors,
}

/// `--attachments`.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum AttachmentsArg {
    /// Leave attachments alone.
    #[default]
    Off,
    /// Download them into attachments/ beside the data and point the resources at the files.
    Save,
    /// Only inline: small ones of the allowed types become base64 `data`; others are left.
    Inline,
}

/// What is done with DocumentReference and DiagnosticReport attachments.
#[derive(Args, Clone, Default)]
pub(crate) struct AttachmentArgs {
    /// DocumentReference.content and DiagnosticReport.presentedForm attachments with a URL:
    /// `save` downloads them (token only to the FHIR server's and trusted origins, size and
    /// hash checked) into attachments/ beside the data and points each `url` at its file;
    /// `inline` only inlines small ones as base64 `data` (the `url` is kept); `off` leaves
    /// them alone.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = AttachmentsArg::Off,
        help_heading = "Attachments"
    )]
    pub(crate) attachments: AttachmentsArg,

    /// Inline attachments of fewer bytes than this, of the --inline-attachment-types
    /// [default: 1048576 with --attachments inline; 0 (none) with save].
    #[arg(long, value_name = "BYTES", help_heading = "Attachments")]
    pub(crate) inline_attachments_smaller_than: Option<u64>,

    /// The MIME types inlined, comma-separated (`text/*` allowed) [default:
    /// text/plain,text/html,application/xhtml+xml].
    #[arg(
        long,
        value_name = "MIME,..",
        value_delimiter = ',',
        help_heading = "Attachments"
    )]
    pub(crate) inline_attachment_types: Vec<String>,
}

/// `fhir-bulk export`.
#[derive(Args, Clone)]
pub(crate) struct ExportArgs {
    /// The FHIR server's base URL, e.g. https://ehr.example/fhir/r4.
    #[arg(value_name = "BASE_URL")]
    pub(crate) base_url: String,

    /// Export the members of this Group: [base]/Group/<ID>/$export.
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "all_patients",
        help_heading = "Level"
    )]
    pub(crate) group: Option<String>,

    /// Export all patients: [base]/Patient/$export.
    #[arg(long, help_heading = "Level")]
    pub(crate) all_patients: bool,

    /// Export these patients (repeatable; `Patient/123` or `123`): POST with a Parameters
    /// body, at the Patient level unless --group is given.
    #[arg(long = "patient", value_name = "REF", help_heading = "Level")]
    pub(crate) patients: Vec<String>,

    /// A file of patient references, one a line (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE", help_heading = "Level")]
    pub(crate) patients_file: Option<PathBuf>,

    /// Send the kick-off as POST with a Parameters body.
    #[arg(long, help_heading = "Level")]
    pub(crate) post: bool,

    /// Resource types to export (comma-separated or repeated): _type.
    #[arg(
        long = "type",
        value_name = "T1,T2",
        value_delimiter = ',',
        help_heading = "Kick-off parameters"
    )]
    pub(crate) types: Vec<String>,

    /// Only resources changed after this FHIR instant: _since. `auto`: the transactionTime
    /// of the last complete export of the same request in the --output-dir history (a full
    /// export when there is none); implies --history.
    #[arg(
        long,
        value_name = "INSTANT|auto",
        help_heading = "Kick-off parameters"
    )]
    pub(crate) since: Option<String>,

    /// Only resources changed before this FHIR instant: _until.
    #[arg(long, value_name = "INSTANT", help_heading = "Kick-off parameters")]
    pub(crate) until: Option<String>,

    /// A search query restricting one type, e.g. `Observation?category=laboratory`
    /// (repeatable): _typeFilter.
    #[arg(
        long = "type-filter",
        value_name = "QUERY",
        help_heading = "Kick-off parameters"
    )]
    pub(crate) type_filters: Vec<String>,

    /// Elements to include (comma-separated or repeated): _elements.
    #[arg(
        long,
        value_name = "E1,E2",
        value_delimiter = ',',
        help_heading = "Kick-off parameters"
    )]
    pub(crate) elements: Vec<String>,

    /// Associated data to include (comma-separated codes): includeAssociatedData.
    #[arg(
        long,
        value_name = "CODE,..",
        value_delimiter = ',',
        help_heading = "Kick-off parameters"
    )]
    pub(crate) include_associated_data: Vec<String>,

    /// The output format's MIME type: _outputFormat.
    #[arg(long, value_name = "MIME", help_heading = "Kick-off parameters")]
    pub(crate) output_format: Option<String>,

    /// Organize the files by this resource type (e.g. Patient): organizeOutputBy.
    #[arg(long, value_name = "TYPE", help_heading = "Kick-off parameters")]
    pub(crate) organize_output_by: Option<String>,

    /// Another kick-off parameter, passed through (repeatable); any name, the standard ones
    /// included (e.g. `allowPartialManifests=true`).
    #[arg(
        long = "param",
        value_name = "NAME=VALUE",
        value_parser = parse_param,
        help_heading = "Kick-off parameters"
    )]
    pub(crate) params: Vec<(String, String)>,

    /// Ask the server to ignore parameters it does not support (Prefer: handling=lenient).
    #[arg(long, help_heading = "Kick-off parameters")]
    pub(crate) lenient: bool,

    // Flags of the state/scale work (journal, lock, partial manifests) start here.
    /// Ask for partial manifests (allowPartialManifests=true) and download their files while
    /// the export still runs, so its completion costs only the last files.
    #[arg(long, help_heading = "Kick-off parameters")]
    pub(crate) allow_partial_manifests: bool,
    /// Ask for status answers as 200 with the job state in X-Export-Status (Prefer:
    /// separate-export-status, STU3+).
    #[arg(long, help_heading = "Kick-off parameters")]
    pub(crate) separate_export_status: bool,

    /// How _type, _elements and includeAssociatedData lists are sent [default: the server
    /// profile's; comma without one].
    #[arg(
        long,
        value_enum,
        value_name = "ENCODING",
        help_heading = "Kick-off parameters"
    )]
    pub(crate) list_encoding: Option<ListEncodingArg>,

    /// How several --type-filter queries are sent [default: the server profile's; repeated
    /// without one].
    #[arg(
        long,
        value_enum,
        value_name = "ENCODING",
        help_heading = "Kick-off parameters"
    )]
    pub(crate) type_filter_encoding: Option<ListEncodingArg>,

    /// How includeAssociatedData is typed in a POST body [default: the server profile's; code
    /// without one].
    #[arg(
        long,
        value_enum,
        value_name = "ENCODING",
        help_heading = "Kick-off parameters"
    )]
    pub(crate) associated_data_encoding: Option<AssociatedDataArg>,

    /// Authorization and headers.
    #[command(flatten)]
    pub(crate) server: ServerArgs,

    /// Polling.
    #[command(flatten)]
    pub(crate) poll: PollArgs,

    /// Where the files go.
    #[arg(
        long,
        value_name = "DIR",
        default_value = DEFAULT_OUTPUT_DIR,
        help_heading = "Transfer"
    )]
    pub(crate) output_dir: PathBuf,

    /// Files and terminal output.
    #[command(flatten)]
    pub(crate) output: OutputArgs,

    /// Attachments.
    #[command(flatten)]
    pub(crate) attachments: AttachmentArgs,

    /// Leave the job on the server after a complete download (no DELETE).
    #[arg(long, help_heading = "Transfer")]
    pub(crate) keep_job: bool,

    /// Forget the export recorded in the output directory (its state, manifest and files) and
    /// kick off a new one. The old job is left on the server. With --history: leave an
    /// interrupted run as it is and start a new one.
    #[arg(long, help_heading = "Transfer")]
    pub(crate) fresh: bool,

    // Flags of the history (incremental exports, see history.rs).
    /// Keep a history in --output-dir: each run in a dated subdirectory
    /// (2026-12-01T19-55-03Z/), each complete one recorded in latest.json for --since auto;
    /// an interrupted run is resumed by the next run of the same request.
    #[arg(long, help_heading = "Transfer")]
    pub(crate) history: bool,
}

/// The job a `status` or `cancel` command acts on, and how to reach it.
#[derive(Args, Clone)]
pub(crate) struct JobTarget {
    /// The job's status URL (the kick-off's Content-Location).
    #[arg(value_name = "STATUS_URL")]
    pub(crate) status_url: String,

    /// The FHIR server's base URL [default: the status URL's origin]: the token goes to its
    /// origin, and SMART discovery reads its .well-known/smart-configuration.
    #[arg(long, value_name = "URL")]
    pub(crate) base_url: Option<String>,

    /// Authorization and headers.
    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// `fhir-bulk status`: one poll, so no polling limits.
#[derive(Args, Clone)]
pub(crate) struct StatusArgs {
    /// The job.
    #[command(flatten)]
    pub(crate) target: JobTarget,

    /// The unit of a numeric Retry-After value, for the "poll again in" hint.
    #[arg(long, value_enum, default_value_t = RetryAfterUnitArg::Seconds)]
    pub(crate) retry_after_unit: RetryAfterUnitArg,
}

/// `fhir-bulk cancel`.
#[derive(Args, Clone)]
pub(crate) struct CancelArgs {
    /// The job.
    #[command(flatten)]
    pub(crate) target: JobTarget,
}

/// `fhir-bulk download`.
#[derive(Args, Clone)]
pub(crate) struct DownloadArgs {
    /// A saved manifest (e.g. an earlier export's manifest.json; its manifest.2.json, ...
    /// pages are read too) or a job's status URL.
    #[arg(value_name = "MANIFEST_JSON_FILE|STATUS_URL")]
    pub(crate) source: String,

    /// The FHIR server's base URL: the token goes to its origin, and SMART discovery reads
    /// its .well-known/smart-configuration [default: a manifest's `request` origin, or the
    /// status URL's origin].
    #[arg(long, value_name = "URL")]
    pub(crate) base_url: Option<String>,

    /// Authorization and headers.
    #[command(flatten)]
    pub(crate) server: ServerArgs,

    /// Polling (for a status URL whose job is still running).
    #[command(flatten)]
    pub(crate) poll: PollArgs,

    /// Where the files go.
    #[arg(long, value_name = "DIR", required = true, help_heading = "Transfer")]
    pub(crate) output_dir: PathBuf,

    /// Files and terminal output.
    #[command(flatten)]
    pub(crate) output: OutputArgs,

    /// Attachments.
    #[command(flatten)]
    pub(crate) attachments: AttachmentArgs,

    /// With a status URL: leave the job on the server after a complete download (no DELETE).
    #[arg(long, help_heading = "Transfer")]
    pub(crate) keep_job: bool,

    // One export across machines (see cloud.rs).
    /// Download only shard K of N of the files (0-based: 0/3, 1/3, 2/3), e.g. a Kubernetes
    /// Indexed Job's JOB_COMPLETION_INDEX: N workers with the same manifest and output
    /// together write exactly what one would.
    #[arg(long, value_name = "K/N", value_parser = crate::cloud::parse_shard, help_heading = "Transfer")]
    pub(crate) shard: Option<fhir_bulk::storage::Shard>,

    /// Accepted only to refuse it with the reason (`--since` belongs to `export`); hidden, no
    /// environment variable, not read from the config file.
    #[arg(long, value_name = "INSTANT|auto", hide = true)]
    pub(crate) since: Option<String>,
}

/// `fhir-bulk demo`.
#[derive(Args, Clone)]
pub(crate) struct DemoArgs {
    /// Synthetic patients on the demo server.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub(crate) patients: u64,

    /// Where the files go (emptied of an earlier demo's files first).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "fhir-export-demo",
        help_heading = "Transfer"
    )]
    pub(crate) output_dir: PathBuf,

    /// Files and terminal output.
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.trim().is_empty() {
        return Err("the token is empty".into());
    }
    Ok(SecretString::new(value.trim()))
}

fn parse_header(value: &str) -> Result<(String, String), String> {
    let Some((name, val)) = value.split_once(':') else {
        return Err("expected `NAME: VALUE`, e.g. `Epic-Client-ID: abc`".into());
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err("the header name is empty or holds spaces; expected `NAME: VALUE`".into());
    }
    Ok((name.to_owned(), val.trim().to_owned()))
}

fn parse_param(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, val)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), val.to_owned()))
        }
        _ => Err("expected `NAME=VALUE`, e.g. `_container=exports`".into()),
    }
}

fn parse_seconds(value: &str) -> Result<f64, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 60 or 0.5".to_owned())?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 365.0 {
        return Err("expected a number of seconds above 0 (and below a year)".into());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        command().debug_assert();
    }

    #[test]
    fn every_option_has_an_environment_variable() {
        let cmd = command();
        let export = cmd.find_subcommand("export").unwrap();
        let env = |id: &str| {
            export
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("concurrency").as_deref(), Some("FHIR_BULK_CONCURRENCY"));
        assert_eq!(
            env("trusted_origins").as_deref(),
            Some("FHIR_BULK_TRUSTED_ORIGIN")
        );
        assert_eq!(env("token").as_deref(), Some("FHIR_BULK_TOKEN"));
        assert_eq!(
            env("max_poll_interval").as_deref(),
            Some("FHIR_BULK_MAX_POLL_INTERVAL")
        );
        assert_eq!(
            env("base_url"),
            None,
            "positionals come from the command line"
        );
        assert_eq!(env("verbose"), None);
        for arg in export.get_arguments() {
            if arg
                .get_long()
                .is_some_and(|l| !matches!(l, "help" | "verbose" | "config"))
            {
                assert!(arg.get_env().is_some(), "{:?} has no env", arg.get_id());
            }
        }
        let demo = cmd.find_subcommand("demo").unwrap();
        assert!(demo.get_arguments().all(|a| a.get_env().is_none()));
        let status = cmd.find_subcommand("status").unwrap();
        assert!(
            status
                .get_arguments()
                .all(|a| a.get_id() != "max_poll_interval"),
            "one poll has no poll interval"
        );
    }

    #[test]
    fn value_parsers() {
        assert_eq!(
            parse_header("Epic-Client-ID: abc: d").unwrap(),
            ("Epic-Client-ID".to_owned(), "abc: d".to_owned())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": v").is_err());
        assert_eq!(
            parse_param("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_param("=x").is_err());
        assert!(parse_param("x").is_err());
        assert_eq!(parse_seconds("0.5").unwrap(), 0.5);
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_secret("  ").is_err());
    }
}
