//! The `tdfs` command line: one module per subcommand, argument parsing,
//! progress bars and exit codes.

pub mod completions;
pub mod mount;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Read-only FUSE filesystem that shows E2B-format VM template builds as
/// plain files.
#[derive(Debug, Parser)]
#[command(name = "tdfs", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a store's builds read-only with FUSE.
    Mount(mount::MountArgs),
    #[command(hide = true)]
    Completions(completions::CompletionsArgs),
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Mount(args) => match mount::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tdfs mount: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Completions(args) => {
            completions::run(args, Cli::command());
            ExitCode::SUCCESS
        }
    }
}
