//! What one pipeline instance logs as an MLflow run: the resolved config as
//! params, the step history and stage metrics as metrics, provenance tags,
//! and the stages' reviewable outputs as artifacts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::client::{MAX_PARAM_VALUE, MAX_TAG_VALUE, Metric};
use super::tracker::now_ms;
use crate::dag::NodeState;
use crate::spec::Pipeline;
use crate::stage::Registry;
use crate::train::history::{HISTORY_FILE, History};

/// One stage of an instance, after the run.
#[derive(Debug, Clone)]
pub struct StageRecord {
    /// The stage's name in the pipeline.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its cache key.
    pub key: String,
    /// How it ended.
    pub state: NodeState,
    /// Its outputs, when it succeeded.
    pub out_dir: Option<PathBuf>,
    /// Its headline metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Whether its step metrics already went to the run while it ran.
    pub streamed: bool,
}

/// The resolved config flattened to `a.b.c = value` strings (lists as JSON),
/// each value cut to what the server keeps, with a visible mark.
pub fn params(pipeline: &Pipeline) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &Json, out: &mut Vec<(String, String)>) {
        match value {
            Json::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Json::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", &pipeline.resolved(), &mut out);
    out.into_iter().map(|(k, v)| (k, clip(v, MAX_PARAM_VALUE))).collect()
}

/// `value` cut to `max` characters, ending in "..." when cut.
pub fn clip(value: String, max: usize) -> String {
    if value.chars().count() <= max {
        return value;
    }
    let mut cut: String = value.chars().take(max - 3).collect();
    cut.push_str("...");
    cut
}

/// Git commit and dirty flag of the checkout holding `dir`, when it is one.
pub fn git_tags(dir: &Path) -> Vec<(String, String)> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return Vec::new();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    vec![
        ("mlflow.source.git.commit".into(), commit),
        ("pipeline.git.dirty".into(), dirty.to_string()),
    ]
}

/// Tags of an instance's run at creation: who, what, from where.
pub fn start_tags(pipeline: &Pipeline, git: &[(String, String)]) -> Vec<(String, String)> {
    let resolved = serde_json::to_string(&pipeline.resolved()).expect("JSON values serialize");
    let mut tags = vec![
        (
            "mlflow.user".into(),
            std::env::var("USER").unwrap_or_else(|_| "pipeline".into()),
        ),
        ("mlflow.source.name".into(), pipeline.source.path.display().to_string()),
        ("mlflow.source.type".into(), "LOCAL".into()),
        ("pipeline.name".into(), pipeline.name.clone()),
        (
            "pipeline.hash".into(),
            blake3::hash(resolved.as_bytes()).to_hex()[..16].to_string(),
        ),
    ];
    tags.extend(git.iter().cloned());
    tags
}

/// Tags at the end: per stage its key and whether it came from the cache,
/// `pipeline.cached` (every stage did), and the first error.
pub fn end_tags(stages: &[StageRecord], error: Option<&str>) -> Vec<(String, String)> {
    let mut tags = Vec::new();
    for s in stages {
        tags.push((format!("pipeline.stage.{}.key", s.name), s.key.clone()));
        tags.push((format!("pipeline.stage.{}.state", s.name), s.state.word().to_string()));
    }
    let cached = stages.iter().all(|s| s.state == NodeState::Cached);
    tags.push(("pipeline.cached".into(), cached.to_string()));
    if let Some(error) = error {
        tags.push(("pipeline.error".into(), clip(error.to_string(), MAX_TAG_VALUE)));
    }
    tags
}

/// Step metrics from the `history.csv` of every stage that did not stream
/// them (at their global step), then each stage metric at the last step; a
/// metric name reported by several stages is prefixed with the stage name.
pub fn metrics(stages: &[StageRecord]) -> anyhow::Result<Vec<Metric>> {
    let timestamp = now_ms();
    let mut out = Vec::new();
    let mut last_step = 0;
    for stage in stages {
        let Some(path) = stage
            .out_dir
            .as_ref()
            .map(|d| d.join(HISTORY_FILE))
            .filter(|p| p.is_file())
        else {
            continue;
        };
        let history = History::read_csv(&path)?;
        for row in &history.rows {
            last_step = last_step.max(row.step);
            if stage.streamed {
                continue;
            }
            out.extend(row.values.iter().map(|(key, &value)| Metric {
                key: key.clone(),
                value,
                timestamp,
                step: row.step as i64,
            }));
        }
    }
    let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
    for stage in stages {
        for key in stage.metrics.keys() {
            *owners.entry(key).or_default() += 1;
        }
    }
    for stage in stages {
        for (key, &value) in &stage.metrics {
            let key = if owners[key.as_str()] > 1 {
                format!("{}.{key}", stage.name)
            } else {
                key.clone()
            };
            if out.iter().any(|m| m.key == key && m.step == last_step as i64) {
                continue;
            }
            out.push(Metric {
                key,
                value,
                timestamp,
                step: last_step as i64,
            });
        }
    }
    Ok(out)
}

/// The files to upload: each stage's declared artifacts, as `<stage>/<file>`.
pub fn artifacts(registry: &Registry, stages: &[StageRecord]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for stage in stages {
        let (Some(dir), Some(kind)) = (&stage.out_dir, registry.get(&stage.kind)) else {
            continue;
        };
        let Ok(files) = crate::store::list_files(dir) else {
            continue;
        };
        for file in files {
            let wanted = kind.artifacts().iter().any(|pattern| match pattern.strip_prefix('*') {
                Some(suffix) => file.ends_with(suffix),
                None => file == *pattern,
            });
            if wanted {
                out.push((dir.join(&file), format!("{}/{file}", stage.name)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_visibly() {
        assert_eq!(clip("abcdef".into(), 6), "abcdef");
        assert_eq!(clip("abcdefg".into(), 6), "abc...");
    }

    #[test]
    fn stage_metrics_with_the_same_name_are_prefixed() {
        let stage = |name: &str, metrics: &[(&str, f64)]| StageRecord {
            name: name.into(),
            kind: "download".into(),
            key: "k".into(),
            state: NodeState::Ran,
            out_dir: None,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            streamed: false,
        };
        let stages = [stage("a", &[("bytes", 1.0), ("x", 2.0)]), stage("b", &[("bytes", 3.0)])];
        let keys: Vec<String> = metrics(&stages).unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["a.bytes", "x", "b.bytes"]);
    }
}
