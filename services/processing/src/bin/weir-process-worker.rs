fn main() -> std::process::ExitCode {
    weir_processing::worker::main()
}
