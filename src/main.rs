use std::process::ExitCode;

fn main() -> ExitCode {
    pipeline::cli::main(&pipeline::stages::builtin())
}
