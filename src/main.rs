fn main() -> std::process::ExitCode {
    mw_experimental::cli::main()
}
