//! The pipeline file: `name`, `seed`, `device`, `tracking` and ordered `stages`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Source, SpecError, check_identifier, did_you_mean};
use super::yaml::{Node, Origin, Value};
use crate::stage::{Registry, ResolvedConfig};

/// A parsed, validated pipeline with every stage config resolved.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file and overrides it was read from.
    pub source: Source,
    /// The pipeline file's directory; relative paths in configs resolve against it.
    pub dir: PathBuf,
    /// `name:`.
    pub name: String,
    /// `seed:`, used by every stage that has randomness.
    pub seed: u64,
    /// `device:` (default `cpu`).
    pub device: String,
    /// `tracking:`.
    pub tracking: Option<Tracking>,
    /// Stages in file order (`needs` may point forwards; the graph orders them).
    pub stages: Vec<StageSpec>,
}

/// One stage of a pipeline.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The stage's name (its key under `stages:`).
    pub name: String,
    /// Its kind (`kind:`, default the name).
    pub kind: String,
    /// Indices (into [`Pipeline::stages`]) of the stages it needs, in `needs` order.
    pub needs: Vec<usize>,
    /// The validated config.
    pub resolved: ResolvedConfig,
}

/// `tracking:` in a pipeline or sweep file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tracking {
    /// Log runs to an MLflow tracking server.
    pub mlflow: Option<MlflowTracking>,
}

impl Tracking {
    /// A copy without the user info (credentials) in the server address, for display.
    pub fn redacted(&self) -> Tracking {
        Tracking {
            mlflow: self.mlflow.as_ref().map(|m| MlflowTracking {
                experiment: m.experiment.clone(),
                uri: m.uri.as_deref().map(crate::tracking::redact),
            }),
        }
    }
}

/// `tracking.mlflow:`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlflowTracking {
    /// The experiment's name.
    pub experiment: String,
    /// The server; defaults to `MLFLOW_TRACKING_URI`.
    #[serde(default)]
    pub uri: Option<String>,
}

/// The top-level keys, typed; `stages` is read separately to keep its order.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    seed: u64,
    #[serde(default = "default_device")]
    device: String,
    #[serde(default)]
    tracking: Option<Tracking>,
    #[allow(dead_code)]
    stages: serde::de::IgnoredAny,
}

fn default_device() -> String {
    "cpu".to_string()
}

/// The lock file that belongs to a pipeline file: `x.yaml` -> `x.lock`.
pub fn lock_path(pipeline: &Path) -> PathBuf {
    pipeline.with_extension("lock")
}

impl Pipeline {
    /// Reads, overrides (`key.path=value`), validates and resolves a pipeline file.
    pub fn load(path: &Path, overrides: &[String], registry: &Registry) -> Result<Pipeline, SpecError> {
        let source = Source::read(path, overrides.to_vec())?;
        let root = source.parse()?;
        Pipeline::from_tree(source, root, registry)
    }

    /// The pipeline of a file already read and parsed: `root` is
    /// `source.parse()`, before `source.overrides` are applied (a sweep reads
    /// and parses its pipeline file once for all its trials).
    pub fn from_tree(source: Source, mut root: Node, registry: &Registry) -> Result<Pipeline, SpecError> {
        let path = source.path.clone();
        let path = path.as_path();
        if matches!(root.value, Value::Null) {
            return Err(source
                .error(root.origin, "the pipeline file is empty")
                .with_help("a pipeline needs `name`, `seed` and `stages`"));
        }
        if root.entries().is_none() {
            return Err(source.error(
                root.origin,
                format!(
                    "a pipeline file must be a mapping with `name`, `seed` and `stages`, found {}",
                    root.type_name()
                ),
            ));
        }
        apply_overrides(&source, &mut root)?;
        let header: Header = source.deserialize(&root, &[], "the pipeline")?;
        if let Err(e) = check_identifier(&header.name) {
            return Err(source.error(root.locate(["name"]), format!("`name`: {e}")));
        }
        if let Err(e) = crate::backend::kind(&header.device) {
            return Err(source.error(root.locate(["device"]), format!("{e:#}")));
        }
        let stages_node = &root.entry("stages").expect("`stages` was required by the header").node;
        let stages = read_stages(&source, stages_node, registry)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Ok(Pipeline {
            source,
            dir,
            name: header.name,
            seed: header.seed,
            device: header.device,
            tracking: header.tracking,
            stages,
        })
    }

    /// Checks that this build and machine have the pipeline's device, when a
    /// stage uses it: `cuda:N` needs the `tch` feature and that GPU.
    pub fn check_device(&self) -> Result<(), SpecError> {
        if !self.stages.iter().any(|s| s.resolved.uses_device) {
            return Ok(());
        }
        let Err(e) = crate::backend::device(&self.device) else {
            return Ok(());
        };
        Err(self.error_at(&["device"], format!("{e:#}")))
    }

    /// An error at the dotted `key` of stage `stage`'s body (see [`Pipeline::error_at`]).
    pub fn stage_error(&self, stage: &str, key: &str, message: impl Into<String>) -> SpecError {
        let mut path = vec!["stages", stage];
        path.extend(key.split('.'));
        self.error_at(&path, message)
    }

    /// An error located at the value of a key path (`["stages", "d", "source"]`),
    /// or at the `--set` override that gave it; at the nearest enclosing key
    /// when the path is not written out.
    pub fn error_at(&self, path: &[&str], message: impl Into<String>) -> SpecError {
        let root = self.source.parse().and_then(|mut root| {
            apply_overrides(&self.source, &mut root)?;
            Ok(root)
        });
        match root {
            Ok(root) => self.source.error(root.locate(path.iter().copied()), message),
            Err(e) => e,
        }
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The fully resolved pipeline as JSON (for `pipeline show`).
    pub fn resolved(&self) -> serde_json::Value {
        let stages: serde_json::Map<String, serde_json::Value> = self
            .stages
            .iter()
            .map(|s| {
                let mut body = serde_json::Map::new();
                body.insert("kind".into(), s.kind.clone().into());
                let needs: Vec<_> = s.needs.iter().map(|&i| self.stages[i].name.clone()).collect();
                body.insert("needs".into(), needs.into());
                if let serde_json::Value::Object(config) = &s.resolved.config {
                    body.extend(config.clone());
                }
                (s.name.clone(), body.into())
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "seed": self.seed,
            "device": self.device,
            "tracking": self.tracking.as_ref().map(Tracking::redacted),
            "stages": stages,
        })
    }
}

/// Applies `--set a.b.c=value` overrides to the tree, each located as its own argument.
fn apply_overrides(source: &Source, root: &mut Node) -> Result<(), SpecError> {
    for (index, text) in source.overrides.iter().enumerate() {
        let at = Origin::Override(index);
        let Some((path, value)) = text.split_once('=') else {
            return Err(source
                .error(at, format!("`{text}` is not an override"))
                .with_help("write --set key.path=value, e.g. --set stages.train.optimizer.lr=0.01"));
        };
        let segments: Vec<&str> = path.trim().split('.').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(source.error(at, format!("`{path}` is not a dotted key path")));
        }
        let value = Node::parse_override(value, index).map_err(|e| source.error(at, e.message))?;
        root.set_path(&segments, value).map_err(|(depth, type_name)| {
            source.error(
                at,
                format!(
                    "cannot set `{path}`: `{}` is {type_name}, not a mapping",
                    segments[..depth].join(".")
                ),
            )
        })?;
    }
    Ok(())
}

/// Reads `stages:`: names, kinds, `needs` (default: the previous stage) and configs.
fn read_stages(source: &Source, node: &Node, registry: &Registry) -> Result<Vec<StageSpec>, SpecError> {
    let Some(entries) = node.entries() else {
        return Err(source.error(
            node.origin,
            format!(
                "`stages` must be a mapping from stage names to stages, found {}",
                node.type_name()
            ),
        ));
    };
    if entries.is_empty() {
        return Err(source
            .error(node.origin, "`stages` is empty")
            .with_help("a pipeline needs at least one stage"));
    }
    let names: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
    let index_of: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut stages = Vec::with_capacity(entries.len());
    let mut need_origins = Vec::with_capacity(entries.len());
    for (position, entry) in entries.iter().enumerate() {
        let name = &entry.key;
        if check_identifier(name).is_err() || name.contains('.') {
            return Err(source.error(
                entry.key_origin,
                format!("stage name `{name}` may only contain letters, digits, `_` and `-`"),
            ));
        }
        let what = format!("stage `{name}`");
        let body = &entry.node;
        let mut config = Node {
            value: Value::Map(Vec::new()),
            origin: entry.key_origin,
        };
        let mut kind = (name.clone(), entry.key_origin);
        let mut needs = None;
        match &body.value {
            Value::Null => {}
            Value::Map(items) => {
                let mut rest = Vec::new();
                for item in items {
                    match item.key.as_str() {
                        "kind" => match &item.node.value {
                            Value::Str(k) => kind = (k.clone(), item.node.origin),
                            _ => {
                                return Err(source.error(
                                    item.node.origin,
                                    format!("`kind` of {what} must be a string, found {}", item.node.type_name()),
                                ));
                            }
                        },
                        "needs" => needs = Some(&item.node),
                        _ => rest.push(item.clone()),
                    }
                }
                config.value = Value::Map(rest);
            }
            _ => {
                return Err(source.error(
                    body.origin,
                    format!("{what} must be a mapping of its settings, found {}", body.type_name()),
                ));
            }
        }
        let Some(stage_kind) = registry.get(&kind.0) else {
            let known = registry.names();
            let mut err = source.error(kind.1, format!("unknown stage kind `{}` for {what}", kind.0));
            err = match did_you_mean(&kind.0, &known) {
                Some(best) => err.with_help(format!("did you mean `{best}`?")),
                None => err.with_help(format!(
                    "known kinds: {}; set `kind:` when the stage name is not a kind",
                    known.join(", ")
                )),
            };
            return Err(err);
        };
        let (need_list, origins) = match needs {
            None if position == 0 => (Vec::new(), Vec::new()),
            None => (vec![position - 1], vec![entry.key_origin]),
            Some(needs) => read_needs(source, needs, &what, &names, &index_of)?,
        };
        let resolved = stage_kind.resolve(source, &config, &what)?;
        stages.push(StageSpec {
            name: name.clone(),
            kind: kind.0,
            needs: need_list,
            resolved,
        });
        need_origins.push(origins);
    }
    check_acyclic(source, &stages, &need_origins)?;
    Ok(stages)
}

/// Reads a `needs:` list (a name or a list of names) into stage indices.
fn read_needs(
    source: &Source,
    node: &Node,
    what: &str,
    names: &[String],
    index_of: &HashMap<&str, usize>,
) -> Result<(Vec<usize>, Vec<Origin>), SpecError> {
    let items: Vec<&Node> = match &node.value {
        Value::Null => Vec::new(),
        Value::Str(_) => vec![node],
        Value::Seq(items) => items.iter().collect(),
        _ => {
            return Err(source.error(
                node.origin,
                format!(
                    "`needs` of {what} must be a list of stage names, found {}",
                    node.type_name()
                ),
            ));
        }
    };
    let mut indices = Vec::new();
    let mut origins = Vec::new();
    for item in items {
        let Value::Str(need) = &item.value else {
            return Err(source.error(
                item.origin,
                format!("`needs` of {what} must list stage names, found {}", item.type_name()),
            ));
        };
        let Some(&index) = index_of.get(need.as_str()) else {
            let err = source.error(
                item.origin,
                format!("{what} needs `{need}`, which is not a stage of this pipeline"),
            );
            return Err(match did_you_mean(need, names) {
                Some(best) => err.with_help(format!("did you mean `{best}`?")),
                None => err.with_help(format!("the stages are {}", names.join(", "))),
            });
        };
        if indices.contains(&index) {
            return Err(source.error(item.origin, format!("{what} lists `{need}` twice in `needs`")));
        }
        indices.push(index);
        origins.push(item.origin);
    }
    Ok((indices, origins))
}

/// Fails on the first `needs` edge that closes a cycle, naming the whole cycle.
fn check_acyclic(source: &Source, stages: &[StageSpec], origins: &[Vec<Origin>]) -> Result<(), SpecError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(i: usize, stages: &[StageSpec], marks: &mut [Mark], path: &mut Vec<usize>) -> Option<(Vec<usize>, usize)> {
        marks[i] = Mark::Open;
        path.push(i);
        for (n, &dep) in stages[i].needs.iter().enumerate() {
            match marks[dep] {
                Mark::Open => {
                    let start = path.iter().position(|&p| p == dep).expect("open nodes are on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(dep);
                    return Some((cycle, n));
                }
                Mark::New => {
                    if let Some(found) = visit(dep, stages, marks, path) {
                        return Some(found);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; stages.len()];
    for i in 0..stages.len() {
        if marks[i] == Mark::New
            && let Some((cycle, edge)) = visit(i, stages, &mut marks, &mut Vec::new())
        {
            let closing = cycle[cycle.len() - 2];
            let names: Vec<&str> = cycle.iter().map(|&c| stages[c].name.as_str()).collect();
            return Err(source
                .error(
                    origins[closing][edge],
                    format!("stages form a cycle: {}", names.join(" -> ")),
                )
                .with_help(
                    "`needs` must not lead back to the stage itself; a stage without `needs` needs the stage before it",
                ));
        }
    }
    Ok(())
}
