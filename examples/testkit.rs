//! The `pipeline` command line with the stage kinds of the test suite, used
//! by the integration tests to run real child processes.

#[path = "../tests/common/kinds.rs"]
mod kinds;

fn main() -> std::process::ExitCode {
    pipeline::cli::main(&kinds::registry())
}
