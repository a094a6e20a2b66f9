//! The library's `tracing` events on the terminal and in `log.ndjson`.
//!
//! A retry (`fhir_bulk::retry`) is shown at once, at the default verbosity, above the progress
//! bars: `retrying in 4 s (attempt 2 of 6): connection refused`; it is logged as the SMART
//! bulk-data-client's `download_error` for a download, else as `retry`. Honoured waits,
//! SMART discovery, token refreshes and resumes are shown with `-v`, redirects and any other
//! library event with `-vv`; integrity problems are warnings, logged as `download_warning`.
//! Every value is escaped and cut before it is shown ([`crate::escape`]); the library's
//! fields never hold a secret, and the CLI adds none.

use crate::escape::server_text;
use crate::progress::{Verbosity, print_line};
use serde_json::{Map, Value, json};
use std::fmt;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// What one event becomes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    /// A terminal line (not yet escaped).
    Line(String),
    /// A warning line.
    Warning(String),
    /// A `log.ndjson` entry: its event id and detail.
    Log(&'static str, Value),
}

/// Installs the layer for the whole process: terminal lines through the progress bars, log
/// entries into the open `log.ndjson`.
pub(crate) fn install(verbosity: Verbosity) {
    let layer = CliLayer {
        verbosity,
        sink: Arc::new(|output| match output {
            Output::Line(line) => print_line(&line),
            Output::Warning(line) => print_line(&format!("warning: {line}")),
            Output::Log(id, detail) => crate::log::to_current(id, detail),
        }),
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

/// The most detailed level shown at each verbosity.
fn max_level(verbosity: Verbosity) -> Level {
    match verbosity {
        Verbosity::Quiet | Verbosity::Normal => Level::WARN,
        Verbosity::Verbose => Level::INFO,
        Verbosity::Debug => Level::DEBUG,
    }
}

/// The layer: library events only, as detailed as the verbosity asks (retries always).
pub(crate) struct CliLayer {
    verbosity: Verbosity,
    sink: Arc<dyn Fn(Output) + Send + Sync>,
}

impl fmt::Debug for CliLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliLayer")
            .field("verbosity", &self.verbosity)
            .finish_non_exhaustive()
    }
}

impl<S: Subscriber> Layer<S> for CliLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        let target = metadata.target();
        (target == "fhir_bulk" || target.starts_with("fhir_bulk::"))
            && (metadata.is_span()
                || *metadata.level() <= max_level(self.verbosity)
                || target == "fhir_bulk::retry")
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        for output in map(
            metadata.target(),
            *metadata.level(),
            &fields.0,
            self.verbosity,
        ) {
            (self.sink)(output);
        }
    }
}

/// An event's fields as JSON values (`message` included).
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), json!(format!("{value:?}")));
    }
}

/// A delay for people: `4 s`, `1.5 s`, `250 ms`, `2 min 05 s`.
pub(crate) fn delay(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        let text = format!("{:.1}", ms as f64 / 1000.0);
        format!("{} s", text.trim_end_matches(".0"))
    } else {
        crate::time::human_duration(std::time::Duration::from_millis(ms))
    }
}

/// What an event means for the user and the log: the pure decision, tested without a
/// subscriber.
pub(crate) fn map(
    target: &str,
    level: Level,
    fields: &Map<String, Value>,
    verbosity: Verbosity,
) -> Vec<Output> {
    let text = |name: &str| fields.get(name).and_then(Value::as_str).map(server_text);
    let number = |name: &str| fields.get(name).and_then(Value::as_u64);
    let message = fields.get("message").and_then(Value::as_str).unwrap_or("");
    let shown = |needed: Verbosity| verbosity >= needed;
    match target {
        "fhir_bulk::retry" => {
            let what = text("what").unwrap_or_else(|| "request".to_owned());
            let attempt = number("attempt");
            let max = number("max_attempts");
            let delay_ms = number("delay_ms").unwrap_or(0);
            let cause = text("cause").unwrap_or_else(|| "a transient failure".to_owned());
            let url = text("url");
            let of = match (attempt, max) {
                (Some(a), Some(m)) => format!(" (attempt {a} of {m})"),
                (Some(a), None) => format!(" (attempt {a})"),
                _ => String::new(),
            };
            let mut line = format!("retrying in {}{of}: {cause}", delay(delay_ms));
            if verbosity >= Verbosity::Verbose {
                line.push_str(&format!(
                    " [{what}{}]",
                    url.as_deref().map(|u| format!(" {u}")).unwrap_or_default()
                ));
            }
            let mut out = Vec::new();
            if shown(Verbosity::Normal) {
                out.push(Output::Line(line));
            }
            let detail = json!({
                "fileUrl": url,
                "what": what,
                "message": cause,
                "attempt": attempt,
                "maxAttempts": max,
                "delayMs": delay_ms,
                "retrying": true,
            });
            out.push(Output::Log(
                if what == "download" {
                    "download_error"
                } else {
                    "retry"
                },
                detail,
            ));
            out
        }
        "fhir_bulk::download" if message == "integrity" => {
            let file = text("file").unwrap_or_default();
            let problem = text("problem").unwrap_or_default();
            vec![
                Output::Warning(format!("{file}: {problem}")),
                Output::Log(
                    "download_warning",
                    json!({ "fileUrl": file, "message": problem }),
                ),
            ]
        }
        "fhir_bulk::download" if message == "resuming" && shown(Verbosity::Verbose) => {
            vec![Output::Line(format!(
                "resuming {} at byte {} ({})",
                text("file").unwrap_or_default(),
                number("offset").unwrap_or(0),
                match text("mode").as_deref() {
                    Some("range") => "a Range request".to_owned(),
                    Some("skip") => "the server ignores Range: skipping what is saved".to_owned(),
                    Some(other) => other.to_owned(),
                    None => "mode unknown".to_owned(),
                }
            ))]
        }
        "fhir_bulk::retry_after" if shown(Verbosity::Verbose) => vec![Output::Line(format!(
            "waiting {} as the server asks ({})",
            delay(number("delay_ms").unwrap_or(0)),
            text("source").unwrap_or_else(|| "Retry-After".to_owned())
        ))],
        "fhir_bulk::auth" if shown(Verbosity::Verbose) => {
            vec![Output::Line(generic("auth", message, fields))]
        }
        "fhir_bulk::redirect" if shown(Verbosity::Debug) => vec![Output::Line(format!(
            "redirect (HTTP {}): {} -> {}",
            number("status").unwrap_or(0),
            text("from").unwrap_or_default(),
            text("to").unwrap_or_default()
        ))],
        _ if level == Level::WARN || level == Level::ERROR => {
            vec![Output::Warning(generic(target, message, fields))]
        }
        _ if level <= max_level(verbosity) => vec![Output::Line(generic(target, message, fields))],
        _ => Vec::new(),
    }
}

/// `target: message key=value ...`, every value escaped and cut.
fn generic(target: &str, message: &str, fields: &Map<String, Value>) -> String {
    let short = target.strip_prefix("fhir_bulk::").unwrap_or(target);
    let mut line = format!("{short}: {}", server_text(message));
    for (name, value) in fields {
        if name == "message" {
            continue;
        }
        let value = match value {
            Value::String(s) => server_text(s),
            other => other.to_string(),
        };
        line.push_str(&format!(" {name}={value}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn capture(verbosity: Verbosity, emit: impl FnOnce()) -> Vec<Output> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let layer = CliLayer {
            verbosity,
            sink: Arc::new(move |o| into.lock().unwrap().push(o)),
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        seen.lock().unwrap().clone()
    }

    fn retry() {
        tracing::warn!(
            target: "fhir_bulk::retry",
            what = "kick-off",
            attempt = 2u64,
            max_attempts = 6u64,
            delay_ms = 4000u64,
            cause = "connection refused",
            url = "http://127.0.0.1:9/fhir/$export",
            "retrying"
        );
    }

    #[test]
    fn a_retry_is_one_line_at_default_verbosity_and_a_log_entry() {
        let out = capture(Verbosity::Normal, retry);
        assert_eq!(
            out[0],
            Output::Line("retrying in 4 s (attempt 2 of 6): connection refused".into())
        );
        let Output::Log(id, detail) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(*id, "retry");
        assert_eq!(detail["attempt"], 2);
        assert_eq!(detail["maxAttempts"], 6);
        assert_eq!(detail["delayMs"], 4000);
        assert_eq!(detail["message"], "connection refused");
        assert_eq!(out.len(), 2);
        // Quiet: logged, not shown.
        let out = capture(Verbosity::Quiet, retry);
        assert!(
            matches!(out.as_slice(), [Output::Log("retry", _)]),
            "{out:?}"
        );
    }

    #[test]
    fn a_download_retry_is_a_download_error_entry() {
        let out = capture(Verbosity::Verbose, || {
            tracing::warn!(
                target: "fhir_bulk::retry",
                what = "download",
                attempt = 3u64,
                max_attempts = 6u64,
                delay_ms = 1500u64,
                cause = "the server cut the body at byte 10",
                url = "https://files.example/Patient.ndjson",
                "retrying"
            );
        });
        assert_eq!(
            out[0],
            Output::Line(
                "retrying in 1.5 s (attempt 3 of 6): the server cut the body at byte 10 \
                 [download https://files.example/Patient.ndjson]"
                    .into()
            )
        );
        assert!(
            matches!(&out[1], Output::Log("download_error", d) if d["fileUrl"] == "https://files.example/Patient.ndjson")
        );
    }

    #[test]
    fn other_events_follow_the_verbosity() {
        let events = || {
            tracing::info!(target: "fhir_bulk::retry_after", delay_ms = 30_000u64, source = "Retry-After");
            tracing::debug!(target: "fhir_bulk::redirect", from = "https://a/x", to = "https://b/y", status = 307u64);
            tracing::info!(target: "fhir_bulk::download", file = "https://f/1", offset = 1024u64, mode = "range", "resuming");
            tracing::warn!(target: "fhir_bulk::download", file = "https://f/1", problem = "cut at line 3\x1b[2J", "integrity");
            tracing::info!(target: "fhir_bulk::auth", "token refreshed");
            tracing::warn!(target: "other_crate", "not ours");
        };
        let normal = capture(Verbosity::Normal, events);
        assert_eq!(
            normal,
            vec![
                Output::Warning("https://f/1: cut at line 3\\x1b[2J".into()),
                Output::Log(
                    "download_warning",
                    json!({"fileUrl": "https://f/1", "message": "cut at line 3\\x1b[2J"})
                ),
            ]
        );
        let verbose = capture(Verbosity::Verbose, events);
        let lines: Vec<&str> = verbose
            .iter()
            .filter_map(|o| match o {
                Output::Line(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                "waiting 30 s as the server asks (Retry-After)",
                "resuming https://f/1 at byte 1024 (a Range request)",
                "auth: token refreshed",
            ]
        );
        let debug = capture(Verbosity::Debug, events);
        assert!(debug.contains(&Output::Line(
            "redirect (HTTP 307): https://a/x -> https://b/y".into()
        )));
    }

    #[test]
    fn delays_read_well() {
        assert_eq!(delay(4000), "4 s");
        assert_eq!(delay(1500), "1.5 s");
        assert_eq!(delay(250), "250 ms");
        assert_eq!(delay(125_000), "2 min 05 s");
    }
}
