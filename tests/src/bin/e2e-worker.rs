fn main() -> std::process::ExitCode {
    chatter_worker::cli::main()
}
