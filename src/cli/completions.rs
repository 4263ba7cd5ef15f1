//! `tdfs completions SHELL` (hidden): print a shell completion script, for
//! packagers (`tdfs completions bash > /usr/share/bash-completion/completions/tdfs`).

use std::io;

#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// Write the completion script of `command` (the whole `tdfs` CLI).
pub fn run(args: CompletionsArgs, mut command: clap::Command) {
    clap_complete::generate(args.shell, &mut command, "tdfs", &mut io::stdout());
}
