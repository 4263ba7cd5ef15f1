//! The log of `tdfs mount`: env_logger to stderr or `--log-file`, with the
//! levels a daemon wants, and without fuser's report of a reply refused
//! only because the mount had ended (`fs::is_reply_after_end` says why that
//! cannot be prevented and when it is recognised).

use std::env;
use std::fs::OpenOptions;
use std::path::Path;

use log::{LevelFilter, Log, Metadata, Record};

use super::mount::MountError;
use crate::fs;

/// Logs go to stderr, or appended to `log_file` (`--log-file`); level info,
/// RUST_LOG filters, `debug` (`-d`) makes debug the default level.
///
/// # Errors
/// `MountError::File` when the log file cannot be opened.
pub(super) fn init_logging(debug: bool, log_file: Option<&Path>) -> Result<(), MountError> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(LevelFilter::Info);
    match env::var("RUST_LOG") {
        Ok(filters) => {
            builder.parse_filters(&filters);
        }
        // fuser warns when a session it did not unmount ends, which is
        // every plain `umount` of the mountpoint: not worth a warning.
        Err(_) if !debug => {
            builder.filter_module("fuser::session", LevelFilter::Error);
        }
        Err(_) => {}
    }
    if debug {
        builder.filter_level(LevelFilter::Debug);
    }
    if let Some(path) = log_file {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| MountError::File {
                what: "opening the log file",
                path: path.to_path_buf(),
                source,
            })?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    let logger = builder.build();
    let level = logger.filter();
    // A logger set up earlier by the caller stays in charge.
    if log::set_logger(Box::leak(Box::new(MountLog(logger)))).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}

/// env_logger, minus the one fuser record that marks a mount's end.
struct MountLog(env_logger::Logger);

impl Log for MountLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.0.matches(record) && !fs::is_reply_after_end(record) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
