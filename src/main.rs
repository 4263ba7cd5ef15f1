//! The `tdfs` binary: the command line (which sets up logging).

fn main() -> std::process::ExitCode {
    tdfs::cli::main()
}
