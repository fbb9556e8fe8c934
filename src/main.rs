use std::process::ExitCode;

/// mimalloc rather than glibc's malloc (see [`pipeline::allocator`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pipeline::allocator::configure();
    pipeline::cli::main(&pipeline::stages::builtin())
}
