fn main() -> std::process::ExitCode {
    alluvium::cli::main()
}
