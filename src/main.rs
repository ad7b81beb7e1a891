fn main() -> std::process::ExitCode {
    mw_experimental::main()
}
