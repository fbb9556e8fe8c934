//! Links the `pipeline` binary (and the benchmarks that re-execute
//! themselves as it) as a position-dependent executable.
//!
//! As a PIE, every start spent 1.4 of its 3 ms in the dynamic loader: 93,000
//! relative relocations write into 2 MB of `.data.rel.ro` (trait objects,
//! string tables), about 500 copy-on-write page faults. Linked at a fixed
//! address the loader applies none: `pipeline --version` took 1.6 ms
//! instead of 3.0 and 156 page faults instead of 683 (`perf stat -r 30`).
//! `-z pack-relative-relocs` keeps PIE but still touches those pages (2.9 ms,
//! 644 faults). The cost is ASLR for the executable's own image (libraries
//! and the stack keep it), which a command-line tool run by its user can
//! afford. The library's objects stay position-independent.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-benches=-no-pie");
}
