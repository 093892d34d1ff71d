//! The `perfmon` command: `top`, `tail`, `report`, `agents` (see `perfmon --help`).

fn main() -> std::process::ExitCode {
    perfmon::cli::main()
}
