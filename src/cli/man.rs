//! `tdfs man OUTDIR` (hidden): write the manual pages, generated from the
//! clap definitions, for packagers: `tdfs.1` and one page per subcommand
//! (`tdfs-mount.1`, `tdfs-pack.1`, ...; hidden ones have none).

use std::path::PathBuf;

use super::CliError;

#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages in (created if missing).
    #[arg(value_name = "OUTDIR")]
    pub out_dir: PathBuf,
}

/// Write the pages of `command` (the whole `tdfs` CLI) into `args.out_dir`.
pub fn run(args: ManArgs, command: clap::Command) -> Result<(), CliError> {
    let io_error = |source| CliError::Io {
        path: args.out_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&args.out_dir).map_err(io_error)?;
    clap_mangen::generate_to(command, &args.out_dir).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::CommandFactory;

    #[test]
    fn one_page_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("man1");
        run(
            ManArgs {
                out_dir: out_dir.clone(),
            },
            super::super::Cli::command(),
        )
        .unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        assert_eq!(
            pages,
            [
                "tdfs-demo.1",
                "tdfs-export.1",
                "tdfs-inspect.1",
                "tdfs-mount.1",
                "tdfs-pack.1",
                "tdfs-verify.1",
                "tdfs-working-set.1",
                "tdfs.1"
            ]
        );
        let mount = std::fs::read_to_string(out_dir.join("tdfs-mount.1")).unwrap();
        assert!(mount.contains("metrics\\-listen"), "{mount}");
        assert!(!mount.contains("bench\\-throttle"), "{mount}");
    }
}
