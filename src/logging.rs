//! Logging: warnings (or `RUST_LOG`) to the terminal, and a fuller record (`info` and up, or
//! `RUST_LOG`) to a file in the platform's log directory ([`crate::about::log_dir`]), so a user
//! who launched the desktop app from a menu still has something to attach to a bug report.
//! Files rotate daily and only the newest [`KEPT_LOG_FILES`] are kept.

use std::path::Path;

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How many daily log files are kept; older ones are deleted when a new one is opened.
pub const KEPT_LOG_FILES: usize = 7;

/// Log file names: `onair.YYYY-MM-DD.log`.
const PREFIX: &str = "onair";
const SUFFIX: &str = "log";

/// Installs the global logger. Returns a note for the user when the log file could not be
/// opened (logging then goes to the terminal only); never fails, so a read-only home directory
/// does not stop a broadcast.
pub fn init() -> Option<String> {
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(env_filter_or("warn"));
    let (file, note) = match crate::about::log_dir() {
        Some(dir) => match file_appender(&dir) {
            Ok(appender) => {
                let layer = tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(appender)
                    .with_filter(env_filter_or("info"));
                (Some(layer), None)
            }
            Err(e) => (
                None,
                Some(format!(
                    "not writing a log file: {e} (set {} to a writable directory)",
                    crate::about::LOG_DIR_ENV
                )),
            ),
        },
        None => (None, None),
    };
    // A second init (tests calling it twice) keeps the first logger.
    let _ = tracing_subscriber::registry()
        .with(terminal)
        .with(file)
        .try_init();
    note
}

fn env_filter_or(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Opens today's log file in `dir` (creating the directory), rotating daily and deleting all
/// but the newest [`KEPT_LOG_FILES`] files.
pub fn file_appender(dir: &Path) -> Result<RollingFileAppender, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(PREFIX)
        .filename_suffix(SUFFIX)
        .max_log_files(KEPT_LOG_FILES)
        .build(dir)
        .map_err(|e| format!("cannot open a log file in {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("onair.") && n.ends_with(".log"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_only_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        for day in 1..=12 {
            let name = format!("onair.2020-01-{day:02}.log");
            std::fs::write(dir.path().join(name), "old\n").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "not a log").unwrap();
        let mut appender = file_appender(dir.path()).unwrap();
        appender.write_all(b"today\n").unwrap();
        appender.flush().unwrap();
        let files = log_files(dir.path());
        assert_eq!(files.len(), KEPT_LOG_FILES, "{files:?}");
        // Today's file is among those kept. (Which old ones went depends on their creation
        // times, equal here to the clock's resolution.)
        assert!(
            files.iter().any(|f| !f.starts_with("onair.2020-")),
            "{files:?}"
        );
        assert!(
            dir.path().join("notes.txt").exists(),
            "other files are left alone"
        );
    }

    #[test]
    fn unwritable_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let err = file_appender(&file.join("logs")).unwrap_err();
        assert!(err.contains("cannot create"), "{err}");
    }
}
