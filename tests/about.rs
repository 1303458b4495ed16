//! What the binary says about itself and what packages generate from it: `--version` (with
//! the commit, and the log directory when verbose), `--licenses`, the man pages and shell
//! completions, and the log file in the platform's log directory.

use std::path::Path;
use std::process::{Command, Output};

fn onair(args: &[&str], log_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onair"))
        .args(args)
        .env("ONAIR_LOG_DIR", log_dir)
        .output()
        .expect("run onair")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_names_the_commit() {
    let logs = tempfile::tempdir().unwrap();
    for flag in ["--version", "-V"] {
        let out = onair(&[flag], logs.path());
        assert!(out.status.success(), "{}", stderr(&out));
        let line = stdout(&out);
        let line = line.trim_end();
        let rest = line
            .strip_prefix(concat!("onair ", env!("CARGO_PKG_VERSION"), " (commit "))
            .unwrap_or_else(|| panic!("unexpected version line {line:?}"));
        let commit = rest.strip_suffix(')').expect("closing parenthesis");
        assert!(
            commit == "unknown"
                || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{line:?}"
        );
        assert_eq!(stdout(&out).lines().count(), 1);
    }
}

#[test]
fn verbose_version_shows_the_log_directory() {
    let logs = tempfile::tempdir().unwrap();
    let out = onair(&["--version", "--verbose"], logs.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("log directory: {}", logs.path().display())),
        "{text}"
    );
    assert!(text.contains("licence: GPL-2.0-or-later"), "{text}");
    assert!(text.contains("aac encoder: "), "{text}");
    // --verbose means nothing on its own: clap says what it needs.
    let out = onair(&["--verbose"], logs.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--version"), "{}", stderr(&out));
}

#[test]
fn licenses_are_printed() {
    let logs = tempfile::tempdir().unwrap();
    let out = onair(&["--licenses"], logs.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("GPL-2.0-or-later"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn man_pages_come_from_the_cli_definition() {
    let logs = tempfile::tempdir().unwrap();
    let out = onair(&["manual"], logs.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(
        page.starts_with(".ie") || page.contains(".TH onair 1"),
        "{page}"
    );
    assert!(
        page.contains("live"),
        "the page lists the subcommands: {page}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = onair(
        &["manual", "--dir", dir.path().to_str().unwrap()],
        logs.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let live = std::fs::read_to_string(dir.path().join("onair-live.1")).unwrap();
    assert!(
        live.contains("duration"),
        "onair-live(1) documents --duration"
    );
    assert!(dir.path().join("onair.1").exists());
    // The generators themselves are hidden: no pages for them.
    assert!(!dir.path().join("onair-manual.1").exists());
    assert!(!dir.path().join("onair-completions.1").exists());
}

#[test]
fn completions_for_each_shell_and_a_clear_error_otherwise() {
    let logs = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "_onair()"),
        ("zsh", "#compdef onair"),
        ("fish", "complete -c onair"),
    ] {
        let out = onair(&["completions", shell], logs.path());
        assert!(out.status.success(), "{}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("live"), "{shell} completes the subcommands");
    }
    let out = onair(&["completions", "tcsh"], logs.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("possible values"), "{}", stderr(&out));
}

#[test]
fn commands_write_a_log_file_in_the_log_directory() {
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path().join("nested").join("logs");
    let out = onair(&["encoders"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("the log directory was created")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("onair.") && f.ends_with(".log")),
        "{files:?}"
    );
}

#[test]
fn an_unwritable_log_directory_is_a_warning_not_a_failure() {
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let out = onair(&["encoders"], &file.join("logs"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not writing a log file"),
        "{}",
        stderr(&out)
    );
}
