//! The `tdfs` binary: logging (RUST_LOG) and the command line.

fn main() -> std::process::ExitCode {
    env_logger::init();
    tdfs::cli::main()
}
