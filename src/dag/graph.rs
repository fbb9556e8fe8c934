//! Builds the graph of stage nodes from one or more pipeline instances.
//! Nodes are identified by their recipe ([`GraphNode::id`]), so equal stages
//! of several instances (the trials of a sweep) become one node. A node's
//! cache key follows its upstream outputs' content, so it is known only once
//! every stage it needs has an entry: [`GraphNode::resolve`] completes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::key::{KeyMaterial, Need};
use crate::spec::{Pipeline, SpecError, did_you_mean};
use crate::stage::InputFile;
use crate::store::{Lookup, StatCache, Store};

/// One unit of work: a stage with a given recipe, and its key once known.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// The node's identity in the graph: the hash of its key material with
    /// each upstream stage named by its own id instead of its outputs.
    pub id: String,
    /// The key material with upstream outputs unknown (`None`).
    recipe: KeyMaterial,
    /// The complete key material and its key, set once the upstream outputs are known.
    resolved: OnceLock<(String, KeyMaterial)>,
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

impl GraphNode {
    /// The stage kind.
    pub fn kind(&self) -> &str {
        &self.recipe.kind
    }

    /// The cache key, once the outputs of the stages it needs are known.
    pub fn key(&self) -> Option<&str> {
        self.resolved.get().map(|(key, _)| key.as_str())
    }

    /// The key material: complete once [`GraphNode::key`] is known, else with upstream outputs `None`.
    pub fn material(&self) -> &KeyMaterial {
        self.resolved.get().map_or(&self.recipe, |(_, material)| material)
    }

    /// Completes the key from the output digests of the stages it needs (in
    /// `needs` order) and returns it; a node already resolved keeps its key.
    pub fn resolve(&self, outputs: impl IntoIterator<Item = String>) -> &str {
        let (key, _) = self.resolved.get_or_init(|| {
            let mut material = self.recipe.clone();
            for (need, output) in material.needs.iter_mut().zip(outputs) {
                need.output = Some(output);
            }
            debug_assert!(material.is_complete(), "every upstream output is given");
            (material.key(), material)
        });
        key
    }
}

/// What the store says about a node before anything runs ([`Graph::survey`]).
#[derive(Debug)]
pub enum Survey {
    /// Its key is known: the store's entry under it.
    Known(Lookup),
    /// Its key waits for these nodes, which have no entry, to run: whether it
    /// runs then depends on what they produce.
    After(Vec<usize>),
}

/// Stage nodes in topological order (every node comes after the nodes it needs).
#[derive(Debug, Default)]
pub struct Graph {
    /// The nodes.
    pub nodes: Vec<GraphNode>,
    by_id: HashMap<String, usize>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Looks every node up in `store`, resolving the key of each node whose
    /// upstream entries are all there, in topological order.
    pub fn survey(&self, store: &Store) -> Vec<Survey> {
        let mut surveys: Vec<Survey> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let mut after = BTreeSet::new();
            let mut outputs = Vec::with_capacity(node.deps.len());
            for &d in &node.deps {
                match &surveys[d] {
                    Survey::Known(Lookup::Valid(manifest)) => outputs.push(manifest.output_digest()),
                    Survey::Known(_) => {
                        after.insert(d);
                    }
                    Survey::After(nodes) => after.extend(nodes),
                }
            }
            let survey = if after.is_empty() {
                let key = node.resolve(outputs);
                Survey::Known(store.lookup(node.kind(), key))
            } else {
                Survey::After(after.into_iter().collect())
            };
            surveys.push(survey);
        }
        surveys
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
        let recipe = KeyMaterial {
            kind: stage.kind.clone(),
            version: stage.resolved.version,
            config: stage.resolved.config.clone(),
            needs: stage
                .needs
                .iter()
                .map(|&n| Need {
                    stage: pipeline.stages[n].name.clone(),
                    output: None,
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
        let mut named_by_ids = recipe.clone();
        for (need, &d) in named_by_ids.needs.iter_mut().zip(&deps) {
            need.output = Some(format!("node {}", self.nodes[d].id));
        }
        let id = named_by_ids.key();
        let node = match self.by_id.get(&id) {
            Some(&existing) => existing,
            None => {
                let resolved = OnceLock::new();
                if recipe.needs.is_empty() {
                    // Nothing upstream: the id's material is the complete material, so the id is the key.
                    let _ = resolved.set((id.clone(), recipe.clone()));
                }
                self.nodes.push(GraphNode {
                    id: id.clone(),
                    recipe,
                    resolved,
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
                self.by_id.insert(id, self.nodes.len() - 1);
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
