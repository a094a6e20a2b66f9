//! How the `fhir-bulk` binary is configured: every option from a `FHIR_BULK_*` environment
//! variable or a TOML config file (flag > environment > file > default), shell completions
//! and a man page from subcommands, and `status` without options that mean nothing for one
//! poll.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

#[allow(dead_code)]
#[path = "cli/support.rs"]
mod support;

use fhir_bulk_test_server::TestServer;
use std::path::Path;
use support::*;

/// `_type` of the one kick-off the server received.
fn kicked_off_types(srv: &TestServer) -> String {
    let kickoffs = kickoffs(srv);
    assert_eq!(kickoffs.len(), 1);
    kickoffs[0]
        .query_pairs()
        .into_iter()
        .find(|(n, _)| n == "_type")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

async fn demo_server() -> TestServer {
    server(TestServer::builder().patients(2).polls_before_complete(0)).await
}

/// Runs `export` against a fresh server with `args` and `env`, returning the run, the
/// server and the output directory.
async fn export_with(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&Path>,
) -> (Run, TestServer, tempfile::TempDir) {
    let srv = demo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let base = srv.base_url().to_string();
    let mut all = vec!["export", base.as_str(), "--output-dir", s(dir.path()), FAST];
    all.extend_from_slice(args);
    let mut cmd = command(&all);
    for (name, value) in env {
        cmd.env(name, value);
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let output = cmd.output().await.unwrap();
    (finished(output), srv, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_from_the_environment_and_a_config_file_in_order() {
    // The environment sets an option...
    let (r, srv, _dir) = export_with(&[], &[("FHIR_BULK_TYPE", "Patient")], None).await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Patient");
    // ...and the command line beats it.
    let (r, srv, _dir) = export_with(
        &["--type", "Condition"],
        &[("FHIR_BULK_TYPE", "Patient")],
        None,
    )
    .await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Condition");

    // A config file: the top level for every subcommand, [export] for export.
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("fhir-bulk.toml");
    std::fs::write(
        &file,
        "concurrency = 2\nkeep-job = false\n[export]\ntype = \"Encounter\"\nkeep-job = true\n",
    )
    .unwrap();
    let (r, srv, _dir) = export_with(&["--config", s(&file)], &[], None).await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Encounter");
    assert_eq!(deletes(&srv), 0, "keep-job = true from [export]");
    assert!(
        r.stdout.contains("kept on the server (--keep-job)"),
        "{}",
        r.stdout
    );
    // The environment beats the file; the flag beats both.
    let (r, srv, _dir) = export_with(
        &["--config", s(&file)],
        &[("FHIR_BULK_TYPE", "Patient")],
        None,
    )
    .await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Patient");
    let (r, srv, _dir) = export_with(
        &["--config", s(&file), "--type=Condition"],
        &[("FHIR_BULK_TYPE", "Patient")],
        None,
    )
    .await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Condition");
    // FHIR_BULK_CONFIG names the file too.
    let (r, srv, _dir) = export_with(&[], &[("FHIR_BULK_CONFIG", s(&file))], None).await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Encounter");

    // The search path: ./fhir-bulk.toml, then $XDG_CONFIG_HOME/fhir-bulk/config.toml.
    let (r, srv, _dir) = export_with(&[], &[], Some(conf.path())).await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Encounter");
    let xdg = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(xdg.path().join("fhir-bulk")).unwrap();
    std::fs::write(
        xdg.path().join("fhir-bulk/config.toml"),
        "[export]\ntype = \"Observation\"\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let (r, srv, _dir) = export_with(
        &[],
        &[("XDG_CONFIG_HOME", s(xdg.path()))],
        Some(elsewhere.path()),
    )
    .await;
    assert_code(&r, 0);
    assert_eq!(kicked_off_types(&srv), "Observation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_file_is_a_usage_error_naming_it() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("bad.toml");
    std::fs::write(&file, "concurency = 8\n").unwrap();
    let (r, srv, _dir) = export_with(&["--config", s(&file)], &[], None).await;
    assert_code(&r, 2);
    assert!(
        r.stderr.contains("--config:") && r.stderr.contains("`concurency`"),
        "{}",
        r.stderr
    );
    assert!(srv.requests().is_empty(), "nothing is sent");
    std::fs::write(&file, "concurrency = [\n").unwrap();
    let (r, _srv, _dir) = export_with(&["--config", s(&file)], &[], None).await;
    assert_code(&r, 2);
    assert!(r.stderr.contains("is not valid TOML"), "{}", r.stderr);
    std::fs::write(&file, "concurrency = 0\n").unwrap();
    let (r, _srv, _dir) = export_with(&["--config", s(&file)], &[], None).await;
    assert_code(&r, 2);
    assert!(r.stderr.contains("--concurrency"), "{}", r.stderr);
    let missing = conf.path().join("missing.toml");
    let (r, _srv, _dir) = export_with(&["--config", s(&missing)], &[], None).await;
    assert_code(&r, 2);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_completions_and_man_page() {
    let r = run(&["export", "--help"]).await;
    assert_code(&r, 0);
    assert!(
        r.stdout.contains("[env: FHIR_BULK_CONCURRENCY="),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("[env: FHIR_BULK_TRUSTED_ORIGIN="),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("[env: FHIR_BULK_TOKEN]"),
        "secret values hidden: {}",
        r.stdout
    );
    assert!(r.stdout.contains("--config <FILE>"), "{}", r.stdout);
    let r = run(&["--help"]).await;
    // Help may be wrapped to the terminal's width.
    let help = r.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("3 every file is downloaded but"), "{help}");
    assert!(help.contains("fhir-bulk.toml"), "{help}");

    // `status` polls once: no polling limits.
    let r = run(&["status", "--help"]).await;
    assert_code(&r, 0);
    assert!(!r.stdout.contains("--max-poll-interval"), "{}", r.stdout);
    let r = run(&[
        "status",
        "https://ehr.example/jobs/1",
        "--max-poll-interval",
        "5",
    ])
    .await;
    assert_code(&r, 2);

    for (shell, marker) in [
        ("bash", "complete -F _fhir__bulk"),
        ("zsh", "#compdef fhir-bulk"),
        ("fish", "complete -c fhir-bulk"),
        ("elvish", "fhir-bulk"),
        ("powershell", "fhir-bulk"),
    ] {
        let r = run(&["completions", shell]).await;
        assert_code(&r, 0);
        assert!(r.stdout.contains(marker), "{shell}: {}", r.stdout);
        assert!(r.stdout.contains("trusted-origin"), "{shell}");
    }
    let r = run(&["man"]).await;
    assert_code(&r, 0);
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH fhir-bulk"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("export"), "{}", r.stdout);
    let r = run(&["completions", "tcsh"]).await;
    assert_code(&r, 2);
}
