//! Builds the graph of stage nodes from one or more pipeline instances.
//! Nodes are identified by their cache key, so equal stages of several
//! instances (the trials of a sweep) become one node.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use super::key::{KeyMaterial, Need};
use crate::spec::{Pipeline, SpecError, did_you_mean};
use crate::stage::InputFile;
use crate::store::StatCache;

/// One unit of work: a stage with a given key.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// The cache key.
    pub key: String,
    /// What the key is made of (kind, config, upstream keys, ...).
    pub material: KeyMaterial,
    /// Nodes this one needs, in `needs` order.
    pub deps: Vec<usize>,
    /// CPU threads the stage keeps busy.
    pub threads: usize,
    /// Directory of the (first) pipeline file that uses the node.
    pub pipeline_dir: PathBuf,
    /// The name of that pipeline.
    pub pipeline: String,
    /// The pipeline seed and device the stage runs with.
    pub seed: u64,
    /// See [`crate::spec::Pipeline::device`].
    pub device: String,
    /// How the node is shown: its stage name, prefixed by the instance label when there are several.
    pub label: String,
}

/// Stage nodes in topological order (every node comes after the nodes it needs).
#[derive(Debug, Default)]
pub struct Graph {
    /// The nodes.
    pub nodes: Vec<GraphNode>,
    by_key: HashMap<String, usize>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node with this cache key.
    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// Adds a pipeline instance and returns the node of each of its stages
    /// (in stage order). `label` prefixes node labels, for sweeps.
    pub fn add_pipeline(
        &mut self,
        pipeline: &Pipeline,
        label: Option<&str>,
        stat: &StatCache,
    ) -> anyhow::Result<Vec<usize>> {
        let mut nodes: Vec<Option<usize>> = vec![None; pipeline.stages.len()];
        for i in 0..pipeline.stages.len() {
            self.add_stage(pipeline, i, label, stat, &mut nodes)?;
        }
        Ok(nodes.into_iter().map(|n| n.expect("every stage was added")).collect())
    }

    fn add_stage(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        label: Option<&str>,
        stat: &StatCache,
        nodes: &mut [Option<usize>],
    ) -> anyhow::Result<usize> {
        if let Some(node) = nodes[index] {
            return Ok(node);
        }
        let stage = &pipeline.stages[index];
        let mut deps = Vec::with_capacity(stage.needs.len());
        for &need in &stage.needs {
            deps.push(self.add_stage(pipeline, need, label, stat, nodes)?);
        }
        let mut inputs = BTreeMap::new();
        for file in &stage.resolved.input_files {
            let path = crate::spec::paths::expand(&file.path)
                .map(|expanded| pipeline.dir.join(expanded))
                .map_err(|e| pipeline.stage_error(&stage.name, file.key, e))?;
            let digest = stat
                .digest(&path)
                .map_err(|e| unreadable_input(pipeline, &stage.name, file, &path, &e))?;
            inputs.insert(file.path.clone(), digest.blake3);
        }
        let material = KeyMaterial {
            kind: stage.kind.clone(),
            version: stage.resolved.version,
            config: stage.resolved.config.clone(),
            needs: stage
                .needs
                .iter()
                .zip(&deps)
                .map(|(&n, &d)| Need {
                    stage: pipeline.stages[n].name.clone(),
                    key: self.nodes[d].key.clone(),
                })
                .collect(),
            seed: stage.resolved.uses_seed.then_some(pipeline.seed),
            pipeline: stage.resolved.uses_pipeline_name.then(|| pipeline.name.clone()),
            device: stage.resolved.uses_device.then(|| {
                let kind = crate::backend::kind(&pipeline.device);
                kind.expect("devices are checked when a pipeline is loaded").to_string()
            }),
            inputs,
        };
        let key = material.key();
        let node = match self.by_key.get(&key) {
            Some(&existing) => existing,
            None => {
                self.nodes.push(GraphNode {
                    key: key.clone(),
                    material,
                    deps,
                    threads: stage.resolved.threads,
                    pipeline_dir: pipeline.dir.clone(),
                    pipeline: pipeline.name.clone(),
                    seed: pipeline.seed,
                    device: pipeline.device.clone(),
                    label: match label {
                        Some(prefix) => format!("{prefix}/{}", stage.name),
                        None => stage.name.clone(),
                    },
                });
                self.by_key.insert(key, self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        nodes[index] = Some(node);
        Ok(node)
    }
}

/// A stage's input file that cannot be read: located at the key that names
/// it, saying what the path is relative to, with the closest existing name.
fn unreadable_input(pipeline: &Pipeline, stage: &str, file: &InputFile, path: &Path, error: &io::Error) -> SpecError {
    let what = if error.kind() == io::ErrorKind::NotFound {
        "does not exist".to_string()
    } else {
        format!("cannot be read: {error}")
    };
    let message = format!(
        "stage `{stage}`: `{}` names {}, which {what} (paths are relative to the pipeline file's directory, {})",
        file.key,
        path.display(),
        pipeline.dir.display()
    );
    let error = pipeline.stage_error(stage, file.key, message);
    match closest_existing(path) {
        Some(found) => error.with_help(format!("did you mean {}?", found.display())),
        None => error,
    }
}

/// The existing path nearest to `path`: under the deepest directory that
/// exists, the entry whose name is closest to the missing component.
fn closest_existing(path: &Path) -> Option<PathBuf> {
    let mut missing = path;
    let parent = loop {
        let parent = missing.parent()?;
        if parent.as_os_str().is_empty() || parent.is_dir() {
            break parent;
        }
        missing = parent;
    };
    let name = missing.file_name()?.to_string_lossy();
    let listing = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let mut names: Vec<String> = std::fs::read_dir(listing)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    did_you_mean(&name, &names).map(|found| parent.join(found))
}
