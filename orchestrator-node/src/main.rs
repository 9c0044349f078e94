//! The `conclave` binary: all logic lives in the library (`conclave::cli`).

fn main() -> std::process::ExitCode {
    conclave::cli::main()
}
