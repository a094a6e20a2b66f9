//! The config file: option values in TOML, below the command line and the environment.
//!
//! ```toml
//! # fhir-bulk.toml
//! concurrency = 8                 # every subcommand that has --concurrency
//! trusted-origin = ["https://files.ehr.example"]
//!
//! [export]                        # `fhir-bulk export` only; beats the top level
//! type = "Patient,Observation"
//! keep-job = true
//! ```
//!
//! Keys are the long option names (`max-poll-interval`, or `max_poll_interval`). The file is
//! `--config FILE` (or `FHIR_BULK_CONFIG`), else the first of `./fhir-bulk.toml` and
//! `$XDG_CONFIG_HOME/fhir-bulk/config.toml` (`~/.config/fhir-bulk/config.toml`) that exists.
//! Precedence: a flag on the command line, then its `FHIR_BULK_*` variable, then the file,
//! then the default. Values are handed to clap as if typed, so they are checked the same way.

use crate::error::CliError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Which setting of the configuration a [`ConfigError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Setting {
    /// The file itself (`--config FILE`, `FHIR_BULK_CONFIG` or the search path's): missing,
    /// unreadable or not TOML.
    File(PathBuf),
    /// A `[table]` of the file that is not a subcommand reading it.
    Table {
        /// The file.
        file: PathBuf,
        /// The table's name.
        table: String,
    },
    /// A key of the file: unknown, or with a bad value.
    Key {
        /// The file.
        file: PathBuf,
        /// The `[table]` it is in; `None` at the top level.
        table: Option<String>,
        /// The key as written.
        key: String,
    },
}

/// A bad config file or key: the setting at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The setting at fault.
    pub(crate) setting: Setting,
    /// What is wrong and how to fix it.
    pub(crate) message: String,
}

impl std::fmt::Display for ConfigError {
    /// `--config: FILE: `KEY`: MESSAGE` (the file's own errors name it in the message).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.setting {
            Setting::File(_) => write!(f, "--config: {}", self.message),
            Setting::Table { file, .. } | Setting::Key { file, .. } => {
                write!(f, "--config: {}: {}", file.display(), self.message)
            }
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> CliError {
        CliError::Config(e)
    }
}

fn file_error(path: &Path, message: String) -> CliError {
    CliError::Config(ConfigError {
        setting: Setting::File(path.to_path_buf()),
        message,
    })
}

/// The subcommands that read the config file and the environment (not the demo, whose
/// output directory is emptied first; not `completions` or `man`).
pub(crate) const CONFIGURABLE: &[&str] = &["export", "status", "cancel", "download"];

/// The file name looked for in the working directory.
pub(crate) const LOCAL_FILE: &str = "fhir-bulk.toml";

/// Where the config file is, if anywhere: `explicit` (must exist), else the search path.
pub(crate) fn locate(
    explicit: Option<PathBuf>,
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<Option<PathBuf>, CliError> {
    if let Some(path) = explicit {
        if !path.is_file() {
            let message = format!("{} does not exist or is not a file", path.display());
            return Err(file_error(&path, message));
        }
        return Ok(Some(path));
    }
    let user = xdg_config_home
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))
        .map(|dir| dir.join("fhir-bulk").join("config.toml"));
    Ok([Some(PathBuf::from(LOCAL_FILE)), user]
        .into_iter()
        .flatten()
        .find(|p| p.is_file()))
}

/// `args` (the whole command line, program name first) with the config file's values for
/// the chosen subcommand inserted after it, for options that neither the command line nor
/// the environment sets.
pub(crate) fn apply(cmd: &clap::Command, args: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let explicit =
        explicit_config(&args).or_else(|| std::env::var_os("FHIR_BULK_CONFIG").map(PathBuf::from));
    let explicit = explicit.filter(|p| !p.as_os_str().is_empty());
    let Some((position, name)) = subcommand(cmd, &args) else {
        return Ok(args);
    };
    if !CONFIGURABLE.contains(&name.as_str()) {
        return Ok(args);
    }
    let Some(path) = locate(
        explicit,
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )?
    else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| file_error(&path, format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        file_error(
            &path,
            format!("{} is not valid TOML: {}", path.display(), e.message()),
        )
    })?;
    let Some(sub) = cmd.find_subcommand(&name) else {
        return Ok(args);
    };
    let extra = values_for(cmd, sub, &table, &path, |arg| {
        given(arg, &args[position + 1..]) || env_set(arg)
    })?;
    let mut out = args;
    out.splice(position + 1..position + 1, extra);
    Ok(out)
}

/// `--config FILE` or `--config=FILE` on the command line.
fn explicit_config(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
    }
    None
}

/// The subcommand's position in `args` and its name: the first argument that is not an
/// option (or the value of `--config`).
fn subcommand(cmd: &clap::Command, args: &[OsString]) -> Option<(usize, String)> {
    let mut i = 1;
    while i < args.len() {
        let text = args[i].to_string_lossy();
        if text == "--config" {
            i += 2;
            continue;
        }
        if text.starts_with('-') {
            i += 1;
            continue;
        }
        let sub = cmd.find_subcommand(text.as_ref())?;
        return Some((i, sub.get_name().to_owned()));
    }
    None
}

/// Whether the command line sets `arg` (`--long`, `--long=..`, or its short letter).
fn given(arg: &clap::Arg, args: &[OsString]) -> bool {
    args.iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| {
            if let Some(long) = a.strip_prefix("--") {
                let name = long.split('=').next().unwrap_or(long);
                return arg.get_long() == Some(name)
                    || arg
                        .get_all_aliases()
                        .is_some_and(|aliases| aliases.contains(&name));
            }
            match (a.strip_prefix('-'), arg.get_short()) {
                (Some(shorts), Some(short)) => {
                    !shorts.is_empty()
                        && shorts.chars().all(char::is_alphabetic)
                        && shorts.contains(short)
                }
                _ => false,
            }
        })
}

/// Whether the environment sets `arg` (its `FHIR_BULK_*` variable, non-empty).
fn env_set(arg: &clap::Arg) -> bool {
    arg.get_env()
        .and_then(std::env::var_os)
        .is_some_and(|v| !v.is_empty())
}

/// The options the file gives `sub`, as command-line words, skipping those `skip` says are
/// set already. Keys of the top level apply when `sub` has them (and must be an option of
/// some subcommand); keys of `[sub]` must be options of `sub`.
fn values_for(
    cmd: &clap::Command,
    sub: &clap::Command,
    table: &toml::Table,
    path: &Path,
    skip: impl Fn(&clap::Arg) -> bool,
) -> Result<Vec<OsString>, CliError> {
    let bad =
        |setting: Setting, message: String| CliError::Config(ConfigError { setting, message });
    let key_of = |table: Option<&str>, key: &str| Setting::Key {
        file: path.to_path_buf(),
        table: table.map(str::to_owned),
        key: key.to_owned(),
    };
    let mut chosen: Vec<(String, &toml::Value, Option<&str>)> = Vec::new();
    for (key, value) in table {
        if let toml::Value::Table(_) = value {
            if !CONFIGURABLE.contains(&key.as_str()) {
                return Err(bad(
                    Setting::Table {
                        file: path.to_path_buf(),
                        table: key.clone(),
                    },
                    format!(
                        "[{key}] is not a subcommand that reads the config file (those are {})",
                        CONFIGURABLE.join(", ")
                    ),
                ));
            }
            continue;
        }
        let long = key.replace('_', "-");
        let known = CONFIGURABLE.iter().any(|name| {
            cmd.find_subcommand(name)
                .is_some_and(|s| find(s, &long).is_some())
        });
        if !known {
            return Err(bad(
                key_of(None, key),
                format!(
                    "`{key}` is not an option of fhir-bulk (keys are long option names, e.g. \
                     `concurrency = 8`)"
                ),
            ));
        }
        if find(sub, &long).is_some() {
            chosen.push((long, value, None));
        }
    }
    if let Some(toml::Value::Table(own)) = table.get(sub.get_name()) {
        for (key, value) in own {
            let long = key.replace('_', "-");
            if find(sub, &long).is_none() {
                return Err(bad(
                    key_of(Some(sub.get_name()), key),
                    format!(
                        "[{}] `{key}` is not an option of `fhir-bulk {}`",
                        sub.get_name(),
                        sub.get_name()
                    ),
                ));
            }
            chosen.retain(|(k, _, _)| *k != long);
            chosen.push((long, value, Some(sub.get_name())));
        }
    }
    let mut words = Vec::new();
    for (long, value, in_table) in chosen {
        let Some(arg) = find(sub, &long) else {
            continue;
        };
        if skip(arg) {
            continue;
        }
        words.extend(
            words_for(arg, &long, value)
                .map_err(|m| bad(key_of(in_table, &long), format!("`{long}`: {m}")))?,
        );
    }
    Ok(words)
}

/// The option `long` of `sub` (not `--help`, `--config` or a positional).
fn find<'a>(sub: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
    sub.get_arguments().find(|a| {
        a.get_long() == Some(long)
            && !a.is_hide_set()
            && !matches!(long, "help" | "version" | "config")
    })
}

/// A value as the command-line words for `--long`.
fn words_for(arg: &clap::Arg, long: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = format!("--{long}");
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(x) => Ok(x.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err("expected a string, a number or a list of them".to_owned()),
        }
    };
    match arg.get_action() {
        clap::ArgAction::SetTrue => match value {
            toml::Value::Boolean(true) => Ok(vec![flag.into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err("expected true or false".to_owned()),
        },
        clap::ArgAction::Count => match value {
            toml::Value::Integer(n) if (0..=5).contains(n) => {
                Ok((0..*n).map(|_| OsString::from(&flag)).collect())
            }
            toml::Value::Boolean(b) => Ok(if *b { vec![flag.into()] } else { Vec::new() }),
            _ => Err("expected a count from 0 to 5".to_owned()),
        },
        _ => {
            let values = match value {
                toml::Value::Array(items) => {
                    items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
                }
                other => vec![scalar(other)?],
            };
            Ok(values
                .into_iter()
                .map(|v| OsString::from(format!("{flag}={v}")))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Vec<String>, CliError> {
        let cmd = crate::args::command();
        let table: toml::Table = text.parse().unwrap();
        let args = os(args);
        let (pos, name) = subcommand(&cmd, &args).unwrap();
        let sub = cmd.find_subcommand(&name).unwrap();
        let extra = values_for(&cmd, sub, &table, Path::new("f.toml"), |arg| {
            given(arg, &args[pos + 1..])
        })?;
        Ok(extra
            .into_iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn file_values_become_words_below_the_command_line() {
        let file = r#"
            concurrency = 8
            max_poll_interval = 0.5
            trusted-origin = ["https://a.example", "https://b.example"]
            gzip = true
            [export]
            type = "Patient"
            concurrency = 2
            keep-job = true
            [download]
            concurrency = 3
        "#;
        let words = with_file(file, &["fhir-bulk", "export", "https://x/fhir"]).unwrap();
        assert!(words.contains(&"--concurrency=2".to_owned()), "{words:?}");
        assert!(!words.contains(&"--concurrency=8".to_owned()), "{words:?}");
        assert!(words.contains(&"--max-poll-interval=0.5".to_owned()));
        assert!(words.contains(&"--trusted-origin=https://b.example".to_owned()));
        assert!(words.contains(&"--gzip".to_owned()));
        assert!(words.contains(&"--keep-job".to_owned()));
        assert!(words.contains(&"--type=Patient".to_owned()));
        // The command line wins.
        let words = with_file(
            file,
            &["fhir-bulk", "export", "--concurrency", "9", "-q", "u"],
        )
        .unwrap();
        assert!(
            !words.iter().any(|w| w.starts_with("--concurrency")),
            "{words:?}"
        );
        // `status` has no --concurrency: the top-level key is skipped there.
        let words = with_file(file, &["fhir-bulk", "status", "https://x/jobs/1"]).unwrap();
        assert!(
            !words.iter().any(|w| w.starts_with("--concurrency")),
            "{words:?}"
        );
        assert!(
            !words.iter().any(|w| w.starts_with("--max-poll")),
            "{words:?}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let e = with_file("concurency = 8", &["fhir-bulk", "export", "u"]).unwrap_err();
        assert!(
            e.to_string().starts_with("--config: f.toml: `concurency`"),
            "{e}"
        );
        let e = with_file("[status]\nconcurrency = 8", &["fhir-bulk", "status", "u"]).unwrap_err();
        assert!(e.to_string().contains("[status] `concurrency`"), "{e}");
        let e = with_file("[demo]\npatients = 8", &["fhir-bulk", "export", "u"]).unwrap_err();
        assert!(e.to_string().contains("[demo]"), "{e}");
        let e = with_file("gzip = \"yes\"", &["fhir-bulk", "export", "u"]).unwrap_err();
        assert!(
            e.to_string().contains("`gzip`: expected true or false"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_setting_by_type() {
        let setting = |text: &str, args: &[&str]| match with_file(text, args) {
            Err(CliError::Config(e)) => e.setting,
            other => panic!("expected a config error, got {other:?}"),
        };
        let file = PathBuf::from("f.toml");
        assert_eq!(
            setting("concurency = 8", &["fhir-bulk", "export", "u"]),
            Setting::Key {
                file: file.clone(),
                table: None,
                key: "concurency".into()
            }
        );
        assert_eq!(
            setting("[status]\nconcurrency = 8", &["fhir-bulk", "status", "u"]),
            Setting::Key {
                file: file.clone(),
                table: Some("status".into()),
                key: "concurrency".into()
            }
        );
        assert_eq!(
            setting("[export]\ngzip = 1", &["fhir-bulk", "export", "u"]),
            Setting::Key {
                file: file.clone(),
                table: Some("export".into()),
                key: "gzip".into()
            }
        );
        assert_eq!(
            setting("[demo]\npatients = 8", &["fhir-bulk", "export", "u"]),
            Setting::Table {
                file,
                table: "demo".into()
            }
        );
        let missing = PathBuf::from("/nonexistent/fhir-bulk.toml");
        match locate(Some(missing.clone()), None, None) {
            Err(CliError::Config(e)) => {
                assert_eq!(e.setting, Setting::File(missing));
                assert!(e.to_string().starts_with("--config: "), "{e}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_search_path() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().join("xdg");
        std::fs::create_dir_all(xdg.join("fhir-bulk")).unwrap();
        assert_eq!(locate(None, Some(xdg.clone()), None).unwrap(), None);
        std::fs::write(xdg.join("fhir-bulk/config.toml"), "").unwrap();
        assert_eq!(
            locate(None, Some(xdg.clone()), None).unwrap(),
            Some(xdg.join("fhir-bulk/config.toml"))
        );
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".config/fhir-bulk")).unwrap();
        std::fs::write(home.join(".config/fhir-bulk/config.toml"), "").unwrap();
        assert_eq!(
            locate(None, None, Some(home.clone())).unwrap(),
            Some(home.join(".config/fhir-bulk/config.toml"))
        );
        assert!(locate(Some(dir.path().join("missing.toml")), None, None).is_err());
        assert_eq!(
            explicit_config(&os(&["fhir-bulk", "--config=a.toml", "export"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            explicit_config(&os(&["fhir-bulk", "export", "--config", "b.toml"])),
            Some(PathBuf::from("b.toml"))
        );
    }
}
