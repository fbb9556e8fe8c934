//! Located configuration errors, rendered like compiler diagnostics.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::yaml::{Node, Origin};

/// The text a spec was read from, used to point errors at their place.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file as the user named it.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
    /// The `--set` overrides, as given (`key=value`).
    pub overrides: Vec<String>,
}

/// An error in a pipeline or sweep file: what is wrong, where, and a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// `path:line:col`, or the `--set` argument that caused it.
    pub location: String,
    /// The offending source line and a caret under the column, when in the file.
    pub snippet: Option<(usize, String, usize)>,
    /// What is wrong and what was expected.
    pub message: String,
    /// A suggestion, e.g. "did you mean `optimizer`?".
    pub help: Option<String>,
    /// The index of the `--set` override it points at, when it points at one.
    pub from_override: Option<u32>,
}

impl SpecError {
    /// Adds a hint to the error.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        write!(f, "  --> {}", self.location)?;
        if let Some((line, text, col)) = &self.snippet {
            let width = line.to_string().len();
            let pad = " ".repeat(width);
            let caret = " ".repeat(col.saturating_sub(1));
            write!(f, "\n{pad} |\n{line} | {text}\n{pad} | {caret}^")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Checks that a name (of a pipeline, sweep or stage) is an identifier:
/// 1 to 100 letters, digits, `_`, `-` and `.`, not starting with `.`. Names
/// become file and folder names, so nothing else may reach a path.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 100 || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(format!(
            "`{name}` is not a name: use 1 to 100 letters, digits, `_`, `-` and `.`, not starting with `.`"
        ));
    }
    Ok(())
}

/// The largest pipeline or sweep file read (1 MiB; real ones are a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

impl Source {
    /// Reads a file, naming it in the error when it cannot be read, is larger
    /// than [`MAX_FILE_BYTES`], is not UTF-8 or holds a NUL character.
    pub fn read(path: &Path, overrides: Vec<String>) -> Result<Source, SpecError> {
        let unlocated = |message: String| SpecError {
            location: path.display().to_string(),
            snippet: None,
            message,
            help: None,
            from_override: None,
        };
        let cannot_read = |e: std::io::Error| unlocated(format!("cannot read {}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(cannot_read)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE_BYTES + 1), &mut bytes)
            .map_err(cannot_read)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(unlocated(format!(
                "{} is larger than {} KiB: this is not a pipeline or sweep file",
                path.display(),
                MAX_FILE_BYTES / 1024
            )));
        }
        let (text, bad) = match String::from_utf8(bytes) {
            Ok(text) => {
                let nul = text.find('\0');
                (text, nul.map(|at| (at, "a NUL character: pipeline files are text")))
            }
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
                (
                    valid,
                    Some((at, "bytes that are not UTF-8: pipeline files are UTF-8 text")),
                )
            }
        };
        let source = Source {
            path: path.to_path_buf(),
            text,
            overrides,
        };
        if let Some((at, what)) = bad {
            let before = &source.text[..at.min(source.text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(source.error(Origin::File { line, col }, format!("the file holds {what}")));
        }
        Ok(source)
    }

    /// An error at `origin`.
    pub fn error(&self, origin: Origin, message: impl Into<String>) -> SpecError {
        let from_override = match origin {
            Origin::Override(i) => u32::try_from(i).ok(),
            Origin::File { .. } => None,
        };
        let (location, snippet) = match origin {
            Origin::File { line, col } => {
                let text = self.text.lines().nth(line.saturating_sub(1)).unwrap_or("");
                let col = col.min(text.chars().count() + 1);
                (
                    format!("{}:{line}:{col}", self.path.display()),
                    Some((line, text.to_string(), col)),
                )
            }
            Origin::Override(i) => (
                format!("--set {}", self.overrides.get(i).map_or("", String::as_str)),
                None,
            ),
        };
        SpecError {
            location,
            snippet,
            message: message.into(),
            help: None,
            from_override,
        }
    }

    /// Parses the file into a located tree.
    pub fn parse(&self) -> Result<Node, SpecError> {
        Node::parse(&self.text).map_err(|e| self.error(e.origin, e.message))
    }

    /// Deserializes `node` (found at `path` in the file) into `T`, turning
    /// serde's messages into located errors with suggestions. `what` names
    /// the thing being read, e.g. "stage `train`".
    pub fn deserialize<T: DeserializeOwned>(&self, root: &Node, path: &[&str], what: &str) -> Result<T, SpecError> {
        let node = path.iter().try_fold(root, |n, k| n.entry(k).map(|e| &e.node));
        let node = node.expect("deserialize is called on a path that exists");
        if let Some(origin) = node.find_non_finite() {
            return Err(self.error(origin, "NaN and infinite numbers are not allowed here"));
        }
        serde_path_to_error::deserialize(node.to_json()).map_err(|err| {
            let mut at: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            at.extend(err.path().iter().filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            }));
            self.explain(root, at, &err.into_inner().to_string(), what)
        })
    }

    /// Rewrites one serde message as a located, user-facing error.
    fn explain(&self, root: &Node, mut at: Vec<String>, message: &str, what: &str) -> SpecError {
        if let Some((below, inner)) = message.strip_prefix(NESTED).and_then(|rest| rest.split_once("`: ")) {
            at.extend(below.split('.').map(str::to_string));
            return self.explain(root, at, inner, what);
        }
        let located = |at: &[String]| root.locate(at.iter().map(String::as_str));
        let dotted = |at: &[String]| at.join(".");
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
            if at.last().map(String::as_str) == Some(key) {
                at.pop();
            }
            let origin = root.locate_key(at.iter().map(String::as_str), key);
            let candidates = backticked(expected);
            let scope = if at.is_empty() {
                what.to_string()
            } else {
                format!("`{}` of {what}", dotted(&at))
            };
            let err = self.error(origin, format!("unknown key `{key}` in {scope}"));
            return match did_you_mean(key, &candidates) {
                Some(best) => err.with_help(format!("did you mean `{best}`?")),
                None if candidates.is_empty() => err.with_help("this mapping takes no keys"),
                None => err.with_help(format!("expected one of {}", quote_list(&candidates))),
            };
        }
        if let Some(rest) = message.strip_prefix("unknown variant `") {
            let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let candidates = backticked(expected);
            let err = self.error(located(&at), format!("`{}` of {what} cannot be `{value}`", dotted(&at)));
            return match did_you_mean(value, &candidates) {
                Some(best) => err.with_help(format!("did you mean `{best}`?")),
                None => err.with_help(format!("expected one of {}", quote_list(&candidates))),
            };
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let key = rest.trim_end_matches('`');
            let (scope, origin) = match at.split_last() {
                None => (what.to_string(), root.origin),
                Some((last, parent)) => (
                    format!("`{}` of {what}", dotted(&at)),
                    root.locate_key(parent.iter().map(String::as_str), last),
                ),
            };
            return self.error(origin, format!("missing required key `{key}` in {scope}"));
        }
        if let Some(rest) = message
            .strip_prefix("invalid type: ")
            .or_else(|| message.strip_prefix("invalid value: "))
        {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
            return self.error(
                located(&at),
                format!(
                    "`{}` of {what} must be {}, found {found}",
                    dotted(&at),
                    friendly_type(expected)
                ),
            );
        }
        let subject = if at.is_empty() {
            what.to_string()
        } else {
            format!("`{}` of {what}", dotted(&at))
        };
        self.error(located(&at), format!("{subject}: {message}"))
    }
}

/// An error at `path` below the value being deserialized. Path-tracking
/// readers ([`crate::spec::Source::deserialize`]) add it to the path they
/// know: a hand-written `Deserialize` hides what lies below it otherwise.
pub fn nested<E: serde::de::Error>(path: &str, message: &str) -> E {
    E::custom(format!("{NESTED}{path}`: {message}"))
}

/// The prefix of a [`nested`] error.
const NESTED: &str = "below `";

/// The names between backticks in a serde "expected one of `a`, `b`" list.
fn backticked(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn quote_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.as_str())
}

/// Serde's Rust type names in words.
fn friendly_type(expected: &str) -> String {
    match expected {
        "f32" | "f64" => "a number".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = vec!["optimizer".to_string(), "epochs".to_string()];
        assert_eq!(did_you_mean("optimiser", &names), Some("optimizer"));
        assert_eq!(did_you_mean("zzz", &names), None);
    }

    #[test]
    fn renders_a_snippet_with_a_caret() {
        let source = Source {
            path: "p.yaml".into(),
            text: "a: 1\nbb: 2\n".into(),
            overrides: vec![],
        };
        let err = source
            .error(Origin::File { line: 2, col: 1 }, "bad")
            .with_help("fix it");
        assert_eq!(
            err.to_string(),
            "error: bad\n  --> p.yaml:2:1\n  |\n2 | bb: 2\n  | ^\n  = help: fix it"
        );
    }
}
