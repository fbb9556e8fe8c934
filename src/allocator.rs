//! The allocator the `pipeline` binary runs on (src/main.rs), and with it
//! the benchmarks that run its training steps in process: mimalloc, which
//! keeps freed blocks for reuse where glibc's malloc handed the steps' large
//! buffers back to the kernel and faulted them in again (see Cargo.toml).

/// mimalloc's `mi_option_purge_delay` (its index in mimalloc 3's
/// `mi_option_t`, which the Rust binding does not name).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc returns it
/// to the kernel. mimalloc's default, 1 s, is about one step of the frozen
/// workflow's BiGRU head (0.9-1.3 s here): its buffers went back and were
/// faulted in again between steps (`benches/head.rs`, 4 steps: 10,000-17,000
/// page faults at 0.9-1.1 s a step, 88,000 and a fifth of the time at 1.3 s
/// on a busy machine; 450 with 10 s). A step longer than 10 s pays for its
/// faults with well under 1 % of its time, and an idle process still gives
/// its memory back.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Sets mimalloc's options; call it first thing in `main`.
pub fn configure() {
    // SAFETY: sets an option by its index; mimalloc checks the index.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        // mimalloc 3's documented default for the purge delay, read before
        // `configure` changes it (tests do not run on mimalloc): an upgrade
        // that moves the option fails here.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 1000);
        }
        configure();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, PURGE_DELAY_MS);
    }
}
