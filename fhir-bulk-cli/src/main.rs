//! `fhir-bulk`: the command line tool for the FHIR Bulk Data Access API, built on the `fhir-bulk` library.
//!
//! ```text
//! fhir-bulk export [OPTIONS] <BASE_URL>      kick off (or resume) an export, download its files
//! fhir-bulk status <STATUS_URL>              one poll: progress, or the manifest summary
//! fhir-bulk cancel <STATUS_URL>              DELETE the job
//! fhir-bulk download <MANIFEST_JSON_FILE|STATUS_URL> --output-dir <DIR>
//! fhir-bulk demo                             a full export against an in-process server
//! ```
//!
//! Exit codes: 0 complete; 1 the export or a transfer failed, or error files hold error/fatal
//! issues; 2 bad usage or bad input; 130 interrupted (Ctrl-C or SIGTERM).
//!
//! One module per job: [`args`] (the command line), [`auth`] and [`client`] (the library
//! client from the flags), [`request`] (the kick-off), [`export`] (the export flow),
//! [`transfer`] (downloading files), [`state`] (the job state file and resume), [`log`]
//! (`log.ndjson`), [`manifest`] (`manifest.json`), [`outcomes`] (error-file severities),
//! [`progress`] (bars or plain lines), [`summary`] (the final table), [`status`] (`status`
//! and `cancel`), [`download`] (`download`), [`demo`] (`demo`), [`signal`], [`time`],
//! [`out`] and [`error`] (exit codes).

mod args;
mod auth;
mod client;
mod cloud;
mod demo;
mod download;
mod error;
mod export;
mod log;
mod manifest;
mod out;
mod outcomes;
mod progress;
mod request;
mod signal;
mod state;
mod status;
mod summary;
mod time;
mod transfer;

use args::{Cli, Command};
use clap::Parser;
use error::CliError;
use std::process::ExitCode;

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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Err(error) => {
            out::err(&format!("error: {error}"));
            error.exit_code()
        }
    }
}
