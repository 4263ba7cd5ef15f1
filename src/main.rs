fn main() -> std::process::ExitCode {
    tdfs::cli::main()
}
