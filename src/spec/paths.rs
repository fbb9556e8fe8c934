//! Local paths in pipeline files: relative to the pipeline file's directory,
//! with `${NAME}` or `${NAME:-default}` taken from the environment, so that
//! a data root can move without editing the file
//! (`${PIPELINE_DATA:-../../shared/data}/imdb/train.parquet`). Cache keys
//! hold the path as written and the file's content hash, never the expansion.

use std::path::{Path, PathBuf};

/// `written` with every `${NAME}` and `${NAME:-default}` replaced.
pub fn expand(written: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = written;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..];
        let end = inner
            .find('}')
            .ok_or_else(|| format!("`{written}`: `${{` without its closing `}}`"))?;
        let (name, default) = match inner[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&inner[..end], None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!("`{written}`: `{name}` is not an environment variable name"));
        }
        match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "`{written}` names ${{{name}}}, which is not set (or write `${{{name}:-default}}`)"
                ));
            }
        }
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the local path `written` points, from the pipeline directory `dir`.
pub fn local(dir: &Path, written: &str) -> anyhow::Result<PathBuf> {
    Ok(dir.join(expand(written).map_err(anyhow::Error::msg)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_with_their_defaults() {
        assert_eq!(expand("../data/a.parquet").unwrap(), "../data/a.parquet");
        assert_eq!(
            expand("${PIPELINE_TEST_UNSET_ROOT:-../../shared/data}/imdb").unwrap(),
            "../../shared/data/imdb"
        );
        let home = std::env::var("HOME").unwrap();
        assert_eq!(expand("${HOME}/x").unwrap(), format!("{home}/x"));
        assert!(
            expand("${PIPELINE_TEST_UNSET_ROOT}/x")
                .unwrap_err()
                .contains("which is not set")
        );
        assert!(expand("${HOME/x").unwrap_err().contains("closing"));
        assert!(expand("${9A}/x").unwrap_err().contains("not an environment variable"));
    }
}
