//! The `tdfs` command line: one module per subcommand, argument parsing,
//! progress bars and exit codes.

pub mod completions;
mod daemon;
mod demo;
mod export;
mod inspect;
mod keeper;
mod logging;
mod man;
pub mod mount;
mod pack;
mod parse;
mod readiness;
mod supervisor;
mod verify;
mod working_set;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use uuid::Uuid;

use crate::pack::PackError;
use crate::store::{Store, StoreConfig, StoreError, WritableStore};
use crate::template::{Builds, TemplateConfig, TemplateError};

#[derive(Debug, Parser)]
#[command(
    name = "tdfs",
    version,
    about = "Show E2B-format VM template builds as plain files, and write them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a build from raw images, as a layer on a base build or fresh.
    ///
    /// Only blocks that differ from the base's view are stored; zero blocks
    /// are stored nowhere. Objects are written atomically, data first and
    /// the two .header objects last: a build without headers is an
    /// interrupted pack, not a build.
    Pack(pack::Args),
    /// Add a thin layer over a build in the store whose diff is the build's
    /// working set, stored first in first-touch order.
    ///
    /// For a build packed in template order (by E2B, or `pack --layout
    /// template`): a replay of its trace then fetches one stretch of the
    /// layer instead of most of the build's frames. The layer's header maps
    /// every other byte to the base exactly as the base's header does; the
    /// base's objects are never rewritten. The trace is taken from the
    /// base's metadata.json unless given, and goes into the layer's.
    WorkingSet(working_set::Args),
    /// Show a build's headers: metadata, mappings, builds section, frames.
    Inspect(inspect::Args),
    /// Check a build: headers, every frame of its diffs, sizes and SHA-256.
    Verify(verify::Args),
    /// Write a template file of a build, flattened, to a raw (sparse) file.
    Export(export::Args),
    /// Make a demo store (base build + two layers) and mount it.
    Demo(demo::Args),
    /// Mount a store's builds read-only with FUSE (a daemon unless
    /// --foreground; SIGINT or SIGTERM unmounts).
    // Boxed: its flags outweigh every other command's.
    Mount(Box<mount::MountArgs>),
    /// Print a shell completion script (bash, zsh, fish, ...).
    #[command(hide = true)]
    Completions(completions::CompletionsArgs),
    /// Write the manual pages (tdfs.1, tdfs-mount.1, ...) into a directory.
    #[command(hide = true)]
    Man(man::ManArgs),
}

/// Why a command failed; main prints it after `tdfs: error: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Mount(#[from] mount::MountError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build {build} failed verification ({count} problem(s), listed above)")]
    VerifyFailed { build: Uuid, count: usize },
}

/// Parse the arguments, run the command, and turn an error into a message
/// on stderr and exit code 1 (clap exits with 2 on bad usage).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `mount` sets up its own logging (--log-file, -d).
    if !matches!(cli.command, Command::Mount(_) | Command::Demo(_)) {
        env_logger::init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tdfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Pack(args) => pack::run(args),
        Command::WorkingSet(args) => working_set::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Export(args) => export::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Mount(args) => Ok(mount::run(*args)?),
        Command::Completions(args) => {
            completions::run(args, Cli::command());
            Ok(())
        }
        Command::Man(args) => man::run(args, Cli::command()),
    }
}

/// The build a reading tool works on: `--store STORE BUILD` (inspect,
/// verify, export).
#[derive(Debug, clap::Args)]
pub struct StoredBuild {
    /// Store holding the build.
    #[arg(long)]
    pub store: String,
    /// Build id.
    #[arg(value_name = "BUILD", value_parser = parse::parse_build)]
    pub id: Uuid,
}

/// The store a `--store` value names: a directory, `file://DIR`,
/// `s3://BUCKET[/PREFIX]` or `gs://BUCKET[/PREFIX]`. `create` makes a
/// missing local directory (writers). Readers keep it as an `Arc<dyn Store>`.
pub fn open_store_arg(location: &str, create: bool) -> Result<Arc<dyn WritableStore>, CliError> {
    let opts = StoreConfig {
        create,
        ..StoreConfig::default()
    };
    Ok(crate::store::open(location, &opts)?)
}

/// The builds of `store` for a command that reads headers and blobs but no
/// diff (inspect, verify): it makes no cache directory and starts no fetch
/// threads, so the temporary directory named as its cache parent is never
/// touched.
pub fn header_reader(store: Arc<dyn Store>) -> Arc<Builds> {
    Builds::new(store, TemplateConfig::for_tool(std::env::temp_dir()))
}

/// `12.0 MiB` style, for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
