//! Every file in `tests/malformed/` must fail to load with one specific,
//! located error, equal to the snapshot in the `.err` file beside it.
//! A first line `# set: a.b=1; c=2` gives `--set` overrides.
//! Run with `BLESS=1` to rewrite the snapshots after an intended change.
//! Each file must fail fast and small, bombs included (`bomb-*.yaml`: alias
//! expansion to 10^9 values, deep nesting): under a second each, and the
//! whole run under 200 MB of memory.

mod common;

use std::path::Path;

use pipeline::spec::Pipeline;

/// This process's peak resident memory (`VmHWM`).
fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn malformed_pipelines_give_located_errors() {
    let dir = Path::new("tests/malformed");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "only {} malformed files", files.len());
    let registry = common::kinds::registry();
    // The test binary alone (libtorch linked in) holds a few hundred MB: count what parsing adds.
    let before_kib = peak_memory_kib();
    let bless = std::env::var_os("BLESS").is_some();
    let mut mismatches = Vec::new();
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        let overrides: Vec<String> = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# set: "))
            .map(|sets| sets.split("; ").map(str::to_string).collect())
            .unwrap_or_default();
        let clock = std::time::Instant::now();
        let message = match Pipeline::load(file, &overrides, &registry) {
            Ok(_) => panic!("{} loaded without an error", file.display()),
            Err(err) => format!("{err}\n"),
        };
        let elapsed = clock.elapsed();
        assert!(elapsed.as_secs_f64() < 1.0, "{} took {elapsed:?}", file.display());
        let location = message.lines().nth(1).unwrap_or("");
        let expected_location = if overrides.is_empty() {
            format!("  --> {}:", file.display())
        } else {
            "  --> --set ".to_string()
        };
        assert!(
            location.starts_with(&expected_location),
            "{}: no location in\n{message}",
            file.display()
        );
        let snapshot = file.with_extension("err");
        if bless {
            std::fs::write(&snapshot, &message).unwrap();
        } else if std::fs::read_to_string(&snapshot).ok().as_deref() != Some(message.as_str()) {
            mismatches.push(format!("{}:\n{message}", snapshot.display()));
        }
    }
    let added_kib = peak_memory_kib() - before_kib;
    assert!(added_kib < 200 * 1024, "the malformed files took {added_kib} KiB");
    assert!(
        mismatches.is_empty(),
        "snapshots differ (BLESS=1 to accept):\n{}",
        mismatches.join("\n")
    );
}
