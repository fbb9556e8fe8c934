use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: it keeps the training steps' large
/// buffers for reuse instead of returning them to the kernel (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pipeline::cli::main(&pipeline::stages::builtin())
}
