fn main() -> std::process::ExitCode {
    chatter_gateway::cli::main()
}
