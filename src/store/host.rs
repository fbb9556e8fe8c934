//! Names that are unique across the hosts sharing a store: a store on a
//! shared filesystem is written by processes on several machines, whose
//! process ids repeat.

use std::sync::OnceLock;

/// This machine's host name (`/proc/sys/kernel/hostname`), with every
/// character other than ASCII letters, digits, `-` and `_` replaced by `_`
/// (`node1.cluster` -> `node1_cluster`), so that it fits in file names
/// split at dots; `localhost` where it cannot be read.
pub fn name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        sanitized(raw.trim())
    })
}

fn sanitized(raw: &str) -> String {
    if raw.is_empty() {
        return "localhost".into();
    }
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<host>.<pid>`: this process, among all hosts' processes.
pub fn process() -> &'static str {
    static PROCESS: OnceLock<String> = OnceLock::new();
    PROCESS.get_or_init(|| format!("{}.{}", name(), std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_in_dotted_file_names() {
        assert_eq!(sanitized("node1.cluster.example"), "node1_cluster_example");
        assert_eq!(sanitized("gpu-07_a"), "gpu-07_a");
        assert_eq!(sanitized(""), "localhost");
        assert_eq!(sanitized("ü/x y"), "__x_y");
        let this = process();
        let (host, pid) = this.rsplit_once('.').unwrap();
        assert_eq!(host, name());
        assert!(!host.contains('.') && !host.is_empty());
        assert_eq!(pid, std::process::id().to_string());
    }
}
