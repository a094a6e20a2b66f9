//! `fhir-bulk`: the command line tool for the FHIR Bulk Data Access API, built on the `fhir-bulk` library.
//!
//! ```text
//! fhir-bulk export [OPTIONS] <BASE_URL>      kick off (or resume) an export, download its files
//! fhir-bulk status <STATUS_URL>              one poll: progress, or the manifest summary
//! fhir-bulk cancel <STATUS_URL>              DELETE the job
//! fhir-bulk download <MANIFEST_JSON_FILE|STATUS_URL> --output-dir <DIR>
//! fhir-bulk demo                             a full export against an in-process server
//! fhir-bulk completions <SHELL>              a shell completion script
//! fhir-bulk man                              the man page
//! ```
//!
//! Exit codes: 0 complete; 1 data is missing (the export or a transfer failed); 2 bad usage
//! or bad input; 3 every file is downloaded but the server's error files report error/fatal
//! issues; 130 interrupted (Ctrl-C or SIGTERM).
//!
//! Options come from the command line, else `FHIR_BULK_*` environment variables, else a
//! config file ([`config`]). Server text is escaped before it is shown ([`escape`]); the
//! library's tracing events become terminal lines and log entries ([`trace`]).
//!
//! One module per job: [`args`] (the command line), [`auth`] and [`client`] (the library
//! client from the flags), [`request`] (the kick-off), [`export`] (the export flow),
//! [`transfer`] (downloading files), [`state`] (the job state and its journal, resume),
//! [`lock`] (one process per output directory), [`log`]
//! (`log.ndjson`), [`manifest`] (`manifest.json`), [`outcomes`] (error-file severities),
//! [`progress`] (bars or plain lines), [`summary`] (the final table), [`status`] (`status`
//! and `cancel`), [`download`] (`download`), [`demo`] (`demo`), [`signal`], [`time`],
//! [`out`] and [`error`] (exit codes).

mod args;
mod attachments;
mod auth;
mod client;
mod cloud;
mod cloud_state;
mod config;
mod demo;
mod download;
mod error;
mod escape;
mod export;
mod history;
mod journal;
mod lock;
mod log;
mod manifest;
mod out;
mod outcomes;
mod plural;
mod progress;
mod request;
mod signal;
mod state;
mod status;
mod summary;
mod time;
mod trace;
mod transfer;

use args::{Cli, Command};
use clap::FromArgMatches;
use error::CliError;
use std::process::ExitCode;

/// The file and terminal options of the subcommands that download (none for the others).
fn output_args(command: &Command) -> Option<&args::OutputArgs> {
    match command {
        Command::Export(args) => Some(&args.output),
        Command::Download(args) => Some(&args.output),
        Command::Demo(args) => Some(&args.output),
        _ => None,
    }
}

/// `-v` and `--quiet` of the subcommand, for the tracing events shown.
fn verbosity(command: &Command) -> progress::Verbosity {
    output_args(command).map_or(progress::Verbosity::Normal, progress::Verbosity::of)
}

/// `--threads` of the subcommands that download (1 for the others).
fn threads(command: &Command) -> u16 {
    output_args(command).map_or(1, |output| output.threads)
}

/// The runtime for `threads` (`--threads`): one thread runs everything (tokio's current-thread
/// runtime, blocking file work on its pool as always), as curl does; more are a multi-thread
/// runtime with that many workers. On one thread a small file costs no hand-off between
/// workers (measured: a third of the context switches and about a sixth less CPU for 20,000
/// one-line files, README "Performance").
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(threads));
        builder
    };
    builder.enable_all().build()
}

/// What to tell the user after an interruption.
fn interrupted_hint(command: &Command) -> Option<String> {
    match command {
        Command::Export(args) => Some(export::resume_hint(&args.output_dir)),
        Command::Download(args) => Some(export::resume_hint(&args.output_dir)),
        _ => None,
    }
}

async fn run(command: &Command) -> Result<(), CliError> {
    match command {
        Command::Export(args) => export::run(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Cancel(args) => status::cancel(args).await,
        Command::Download(args) => download::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Completions(args) => {
            let mut cmd = args::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, "fhir-bulk", &mut script);
            out::raw(&script);
            Ok(())
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(args::command())
                .render(&mut page)
                .map_err(|e| CliError::Failed(format!("cannot render the man page: {e}")))?;
            out::raw(&page);
            Ok(())
        }
    }
}

/// The command line, with the config file's values for options neither it nor the
/// environment sets.
fn parse() -> Result<Cli, CliError> {
    let cmd = args::command();
    let words = config::apply(&cmd, std::env::args_os().collect())?;
    let matches = cmd.get_matches_from(words);
    Cli::from_arg_matches(&matches).map_err(|e| CliError::Usage(e.to_string()))
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(error) => {
            out::err_toned("error:", &error.to_string(), out::Tone::Error);
            return error.exit_code();
        }
    };
    trace::install(verbosity(&cli.command));
    let runtime = match runtime(threads(&cli.command)) {
        Ok(runtime) => runtime,
        Err(e) => {
            out::err(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let interrupted = match signal::interrupted() {
            Ok(signal) => signal,
            Err(e) => return Err(CliError::Failed(format!("cannot watch for Ctrl-C: {e}"))),
        };
        tokio::select! {
            biased;
            () = interrupted => Err(CliError::Interrupted),
            result = run(&cli.command) => result,
        }
    });
    // Do not wait for blocking file operations of abandoned downloads.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Interrupted) => {
            match interrupted_hint(&cli.command) {
                Some(hint) => out::err(&format!("\ninterrupted: {hint}. The job was not deleted.")),
                None => out::err("\ninterrupted"),
            }
            CliError::Interrupted.exit_code()
        }
        Err(error @ CliError::ServerReportedErrors(_)) => {
            out::err_toned("warning:", &error.to_string(), out::Tone::Warning);
            error.exit_code()
        }
        Err(error) => {
            out::err_toned("error:", &error.to_string(), out::Tone::Error);
            error.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{runtime, threads};
    use clap::Parser;
    use tokio::runtime::RuntimeFlavor;

    /// `--threads` reaches the runtime choice for the subcommands that download, and is 1
    /// (one thread) when not given and for the others.
    #[test]
    fn the_threads_flag_chooses_the_workers() {
        let parsed = |words: &[&str]| threads(&super::Cli::parse_from(words).command);
        let download = ["fhir-bulk", "download", "m.json", "--output-dir", "out"];
        assert_eq!(parsed(&download), 1);
        assert_eq!(parsed(&[&download[..], &["--threads", "3"]].concat()), 3);
        assert_eq!(parsed(&["fhir-bulk", "demo", "--threads", "2"]), 2);
        assert_eq!(parsed(&["fhir-bulk", "status", "https://h/status/1"]), 1);
    }

    /// `--threads 1` (the default) is the current-thread runtime; more is a multi-thread
    /// runtime with exactly that many workers.
    #[test]
    fn threads_choose_the_runtime() {
        let one = runtime(1).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let three = runtime(3).unwrap();
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
    }
}
