//! Sweep files (`sweeps/*.yaml`): a pipeline, the parameters to vary and how.
//! Loading a `grid` or `random` sweep expands it into trials (the pipeline
//! with overrides) and validates every one of them, so bad paths or values
//! fail before anything runs, located in the sweep file; a `tpe` sweep's
//! trials are asked for as it runs ([`crate::sweep::search`]), and loading
//! validates each parameter's listed values and both ends of its range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::error::{Source, SpecError, check_identifier, did_you_mean};
use super::pipeline::{Pipeline, Tracking};
use super::yaml::{Node, Origin};
use crate::search::asha::{Asha, EarlyTerminate};
use crate::search::tpe::{Tpe, TpeSettings};
use crate::search::{Domain, Grid, History, Method as Search, Random};
use crate::stage::Registry;

/// A validated sweep with its trials.
#[derive(Debug)]
pub struct Sweep {
    /// The sweep file.
    pub source: Source,
    /// `name:` (default: the file name without extension).
    pub name: String,
    /// The pipeline file, resolved against the sweep file's directory.
    pub pipeline_file: PathBuf,
    /// `grid`, `random` or `tpe`.
    pub method: Method,
    /// `seed:` of the method's draws.
    pub seed: u64,
    /// `tpe:`, the sampler's settings (defaults unless `method: tpe` sets them).
    pub tpe: TpeSettings,
    /// `early_terminate:`, how trials are stopped early (`None`: never).
    pub early_terminate: Option<EarlyTerminate>,
    /// How many trials the method is asked for at most: `trials:`, or a
    /// grid's combinations.
    pub budget: usize,
    /// The metric that ranks trials.
    pub metric: Objective,
    /// Trials run at once.
    pub parallel: usize,
    /// The devices trials run on: `[cpu]` (CPU slots that split the cores)
    /// or GPUs that each trial leases whole (see [`Sweep::leased_devices`]).
    pub devices: Vec<String>,
    /// `tracking:` of the sweep, else of the pipeline.
    pub tracking: Option<Tracking>,
    /// `executor:`: where the trials run.
    pub executor: Executor,
    /// The dotted paths that vary, in file order.
    pub parameters: Vec<String>,
    /// How each of them varies, in the same order.
    pub domains: Vec<Domain>,
    /// The trials, in the order the method gave them: every trial of a
    /// `grid` or `random` sweep from loading on; those asked so far of a
    /// `tpe` sweep (none once loaded; see [`Sweep::trial`]).
    pub trials: Vec<Trial>,
    /// What builds a trial's pipeline from its values.
    template: Template,
}

/// What a trial's pipeline is made from: the sweep's pipeline file and
/// overrides, and where each parameter's values are written.
#[derive(Debug)]
struct Template {
    /// The pipeline file's source, with the `--set` overrides.
    base: Source,
    /// Its parsed tree.
    raw: Node,
    /// The `--set` overrides.
    overrides: Vec<String>,
    /// Each parameter's key and value origins.
    origins: Vec<Origins>,
    /// The sweep's first device, which stands for all in cache keys.
    device: String,
}

impl Sweep {
    /// The devices that trials lease one at a time, each for as long as a
    /// stage of theirs uses it: the GPUs of `devices`, none for `[cpu]`.
    pub fn leased_devices(&self) -> &[String] {
        if self.devices.iter().all(|d| d == "cpu") {
            &[]
        } else {
            &self.devices
        }
    }
}

/// One pipeline instance of a sweep.
#[derive(Debug, Clone)]
pub struct Trial {
    /// 8 hex digits derived from the parameter values, stable across runs.
    pub id: String,
    /// The value of each sweep parameter, in [`Sweep::parameters`] order.
    pub params: Vec<Json>,
    /// The pipeline with the overrides applied.
    pub pipeline: Pipeline,
}

impl Trial {
    /// The trial's name in tables, logs and MLflow: `trial-<id>`.
    pub fn label(&self) -> String {
        format!("trial-{}", self.id)
    }
}

impl Sweep {
    /// The position of the trial `name` names: `trial-<id>`, `<id>`, or a
    /// 0-based index in expansion order; the message says what exists otherwise.
    pub fn trial_index(&self, name: &str) -> Result<usize, String> {
        if let Ok(index) = name.parse::<usize>() {
            return match index < self.trials.len() {
                true => Ok(index),
                false => Err(format!(
                    "sweep `{}` has {} trials (indices from 0); there is no trial {index}",
                    self.name,
                    self.trials.len(),
                )),
            };
        }
        let id = name.strip_prefix("trial-").unwrap_or(name);
        self.trials.iter().position(|t| t.id == id).ok_or_else(|| {
            let labels: Vec<String> = self.trials.iter().map(Trial::label).collect();
            format!(
                "sweep `{}` has no trial `{name}`; its trials: {}",
                self.name,
                labels.join(", ")
            )
        })
    }
}

/// How trials are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every combination of the listed values.
    #[default]
    Grid,
    /// `trials` draws from the parameters' distributions.
    Random,
    /// `trials` trials, each asked from the results of those before it
    /// (the Tree-structured Parzen Estimator; see [`crate::search::tpe`]).
    Tpe,
}

impl Method {
    /// True when trials are chosen from the results of earlier ones.
    pub fn is_adaptive(self) -> bool {
        matches!(self, Method::Tpe)
    }
}

/// `metric:`: what ranks the trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// A metric reported by a stage of the trial, e.g. `eval_accuracy` or `test_f1`.
    pub name: String,
    /// Whether larger or smaller is better.
    pub goal: Goal,
}

/// Whether larger or smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Larger is better.
    Maximize,
    /// Smaller is better.
    Minimize,
}

impl Goal {
    /// Orders two metric values so that the better one comes first.
    pub fn order(self, a: f64, b: f64) -> std::cmp::Ordering {
        match self {
            Goal::Maximize => b.total_cmp(&a),
            Goal::Minimize => a.total_cmp(&b),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    #[serde(default)]
    name: Option<String>,
    pipeline: String,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    trials: Option<usize>,
    #[serde(default)]
    seed: u64,
    metric: Objective,
    #[allow(dead_code)]
    parameters: serde::de::IgnoredAny,
    #[serde(default = "one")]
    parallel: usize,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    tracking: Option<Tracking>,
    #[serde(default)]
    executor: Executor,
    #[serde(default)]
    tpe: Option<TpeSettings>,
    #[serde(default)]
    early_terminate: Option<EarlyTerminate>,
}

/// Where a sweep's trials run: `executor: local` (the default) or
/// `executor: {slurm: {...}}`; `pipeline run --executor` overrides it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// On this machine, as threads of this process.
    #[default]
    Local,
    /// As the tasks of Slurm job arrays, one trial a task.
    Slurm(SlurmSettings),
}

/// `executor: {slurm: ...}`: what every trial's array task asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// `--partition` (default: the cluster's default partition).
    #[serde(default)]
    pub partition: Option<String>,
    /// `--gres` per trial, e.g. `gpu:1` (a trial then sees its GPUs as `cuda:0`...).
    #[serde(default)]
    pub gres: Option<String>,
    /// `--cpus-per-task` (default 1); the trial runs with `--jobs` of it.
    #[serde(default)]
    pub cpus_per_task: Option<usize>,
    /// `--mem`, e.g. `32G`.
    #[serde(default)]
    pub mem: Option<String>,
    /// `--time`, e.g. `4:00:00`.
    #[serde(default)]
    pub time: Option<String>,
    /// Passed to `sbatch` as they are, e.g. `["--account=nlp"]`.
    #[serde(default)]
    pub extra: Vec<String>,
    /// Where the stages several trials share run (default `auto`).
    #[serde(default)]
    pub upstream: Upstream,
}

/// `upstream:` under `executor: {slurm: ...}`: where the stages that
/// several trials share run, before the trials' arrays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upstream {
    /// In the coordinator when none of them uses a device (data
    /// preparation: seconds, and no wait in the queue), else as a job.
    #[default]
    Auto,
    /// In the coordinator, on the machine it runs on.
    Local,
    /// As one Slurm job that the trials' arrays wait for.
    Job,
}

fn one() -> usize {
    1
}

/// One entry of `parameters:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParameterSpec {
    #[serde(default)]
    values: Option<Vec<Json>>,
    #[serde(default)]
    distribution: Option<Distribution>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Distribution {
    LogUniform,
    Uniform,
    IntUniform,
    Choice,
}

/// A parameter ready to expand: its path, where it is written, and its domain.
struct Parameter {
    path: String,
    origins: Origins,
    domain: Domain,
}

/// Where a parameter is written in the sweep file: its key, and each listed value.
#[derive(Debug, Clone)]
struct Origins {
    key: Origin,
    values: Vec<Origin>,
}

impl Origins {
    /// Where `value` of the parameter is written: its entry in `values`, else the key.
    fn of(&self, domain: &Domain, value: &Json) -> Origin {
        match domain {
            Domain::Values(values) => values
                .iter()
                .position(|v| v == value)
                .map_or(self.key, |i| self.values[i]),
            _ => self.key,
        }
    }
}

/// True when the YAML file is a sweep (it has `pipeline:` and `parameters:`).
pub fn is_sweep(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    Node::parse(&text).is_ok_and(|root| root.entry("pipeline").is_some() && root.entry("parameters").is_some())
}

impl Sweep {
    /// Reads a sweep file, expands its trials and validates each one;
    /// `overrides` (`--set`) apply to every trial.
    pub fn load(path: &Path, overrides: &[String], registry: &Registry) -> Result<Sweep, SpecError> {
        let source = Source::read(path, Vec::new())?;
        let root = source.parse()?;
        if root.entries().is_none() {
            return Err(source.error(
                root.origin,
                "a sweep file must be a mapping with `pipeline` and `parameters`",
            ));
        }
        let header: Header = source.deserialize(&root, &[], "the sweep")?;
        let at = |key: &str| root.locate([key]);
        if header.parallel == 0 {
            return Err(source.error(at("parallel"), "`parallel` must be at least 1"));
        }
        if let Some(devices) = &header.devices {
            check_devices(&source, &root, devices)?;
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let pipeline_file = dir.join(&header.pipeline);
        if !pipeline_file.is_file() {
            return Err(source
                .error(
                    at("pipeline"),
                    format!("the pipeline file {} does not exist", pipeline_file.display()),
                )
                .with_help("`pipeline:` is relative to the sweep file's directory"));
        }
        let base = Pipeline::load(&pipeline_file, overrides, registry)?;
        let devices = match header.devices {
            Some(devices) => devices,
            None => {
                base.check_device()?;
                vec![base.device.clone()]
            }
        };
        let parameters = read_parameters(&source, &root, header.method)?;
        let raw = base.source.parse()?;
        for p in &parameters {
            check_path(&source, &raw, p)?;
        }
        if header.tpe.is_some() && header.method != Method::Tpe {
            return Err(source
                .error(at("tpe"), "`tpe` holds the settings of `method: tpe`")
                .with_help("remove `tpe`, or set `method: tpe`"));
        }
        if let Some(early) = &header.early_terminate {
            let at = |key: &str| root.locate(["early_terminate", key]);
            if early.grace_steps == 0 {
                return Err(source.error(
                    at("grace_steps"),
                    "`grace_steps` must be at least 1 (training steps to the first rung)",
                ));
            }
            if early.reduction_factor < 2 {
                return Err(source.error(at("reduction_factor"), "`reduction_factor` must be at least 2"));
            }
            let metric = early.metric.as_deref().unwrap_or(&header.metric.name);
            if !metric.starts_with("eval_") {
                let (origin, what) = match early.metric {
                    Some(_) => (at("metric"), "`early_terminate.metric`"),
                    None => (
                        root.locate(["metric", "name"]),
                        "the sweep's metric, which `early_terminate` compares by default,",
                    ),
                };
                return Err(source
                    .error(
                        origin,
                        format!("{what} is `{metric}`, but trials are stopped on the evaluations during training"),
                    )
                    .with_help(
                        "set `early_terminate: {metric: eval_loss}` (or another `eval_` metric of the train stage)",
                    ));
            }
        }
        let domains: Vec<Domain> = parameters.iter().map(|p| p.domain.clone()).collect();
        let budget = match header.method {
            Method::Grid if header.trials.is_some() => {
                return Err(source
                    .error(
                        at("trials"),
                        "`trials` is for `method: random` or `tpe`; a grid runs every combination",
                    )
                    .with_help("remove `trials`, or set `method: random`"));
            }
            Method::Grid => match Grid::new(&domains).map(|g| g.size()).filter(|&n| n <= MAX_TRIALS) {
                Some(size) => size,
                None => {
                    let count = Grid::new(&domains).map_or_else(|| "more than 2^64".into(), |g| g.size().to_string());
                    return Err(source
                        .error(
                            at("parameters"),
                            format!("the grid has {count} combinations; a sweep may have at most {MAX_TRIALS} trials"),
                        )
                        .with_help("list fewer values, or draw a sample with `method: random` and `trials: N`"));
                }
            },
            Method::Random | Method::Tpe => {
                let method = if header.method == Method::Tpe { "tpe" } else { "random" };
                let Some(trials) = header.trials.filter(|&t| t > 0) else {
                    return Err(source
                        .error(
                            at("method"),
                            format!("`method: {method}` needs `trials: N` (at least 1)"),
                        )
                        .with_help("add e.g. `trials: 8`"));
                };
                if trials > MAX_TRIALS {
                    return Err(source.error(
                        at("trials"),
                        format!("`trials: {trials}`: a sweep may have at most {MAX_TRIALS} trials"),
                    ));
                }
                trials
            }
        };
        if budget > 1000 && !header.method.is_adaptive() {
            tracing::info!("expanding {budget} trials");
        }
        let name = header.name.unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "sweep".into(), |s| s.to_string_lossy().into_owned())
        });
        if let Err(e) = check_identifier(&name) {
            let error = source.error(root.locate(["name"]), format!("`name`: {e}"));
            return Err(if root.entry("name").is_some() {
                error
            } else {
                error.with_help("the name comes from the file name; set `name:`")
            });
        }
        let tracking = header.tracking.or_else(|| base.tracking.clone());
        let mut sweep = Sweep {
            source,
            name,
            pipeline_file,
            method: header.method,
            seed: header.seed,
            tpe: header.tpe.unwrap_or_default(),
            early_terminate: header.early_terminate,
            budget,
            metric: header.metric,
            parallel: header.parallel,
            tracking,
            executor: header.executor,
            parameters: parameters.iter().map(|p| p.path.clone()).collect(),
            domains,
            trials: Vec::new(),
            template: Template {
                base: base.source.clone(),
                raw,
                overrides: overrides.to_vec(),
                origins: parameters.into_iter().map(|p| p.origins).collect(),
                device: devices[0].clone(),
            },
            devices,
        };
        if sweep.method.is_adaptive() {
            for params in probes(&sweep.domains) {
                sweep.trial(params, registry)?;
            }
        } else {
            let method = sweep.search();
            let none = History::default();
            let mut ids = std::collections::HashSet::new();
            for params in (0..).map_while(|k| method.ask(k, &none)) {
                let trial = sweep.trial(params, registry)?;
                if ids.insert(trial.id.clone()) {
                    sweep.trials.push(trial);
                }
            }
        }
        Ok(sweep)
    }

    /// The sweep's method, to ask for its trials.
    pub fn search(&self) -> Box<dyn Search> {
        match self.method {
            Method::Grid => Box::new(Grid::new(&self.domains).expect("counted when loaded")),
            Method::Random => Box::new(Random::new(&self.domains, self.budget, self.seed)),
            Method::Tpe => Box::new(Tpe::new(
                &self.domains,
                self.metric.goal == Goal::Maximize,
                self.budget,
                self.seed,
                self.tpe,
            )),
        }
    }

    /// True when the trials run as slots free up, each a session of its own
    /// ([`crate::sweep::search`]): the method is adaptive, or trials are
    /// stopped early (the decisions compare trials in order).
    pub fn searches(&self) -> bool {
        self.method.is_adaptive() || self.early_terminate.is_some()
    }

    /// The rungs of `early_terminate`, when set, and the metric they compare.
    pub fn asha(&self) -> Option<(Asha, String)> {
        let early = self.early_terminate.as_ref()?;
        let metric = early.metric.clone().unwrap_or_else(|| self.metric.name.clone());
        let maximize = match metric == self.metric.name {
            true => self.metric.goal == Goal::Maximize,
            false => !metric.ends_with("loss"),
        };
        Some((Asha::new(early, maximize), metric))
    }

    /// The trial with these parameter values (in [`Sweep::parameters`]
    /// order): the pipeline with them as overrides, validated; an error
    /// points at the value in the sweep file.
    pub fn trial(&self, params: Vec<Json>, registry: &Registry) -> Result<Trial, SpecError> {
        let template = &self.template;
        let id = trial_id(&self.parameters, &params);
        let mut sets = template.overrides.clone();
        sets.extend(self.parameters.iter().zip(&params).map(|(p, v)| format!("{p}={v}")));
        let trial_source = Source {
            overrides: sets,
            ..template.base.clone()
        };
        let given = template.overrides.len();
        let pipeline =
            Pipeline::from_tree(trial_source, template.raw.clone(), registry).map_err(|e| match e.from_override {
                Some(i) if i as usize >= given => {
                    let p = i as usize - given;
                    let origin = template.origins[p].of(&self.domains[p], &params[p]);
                    let mut located = self.source.error(origin, e.message);
                    located.help = e.help;
                    located
                }
                _ => e,
            })?;
        // The sweep's devices decide where trials run; all are of one kind,
        // so the first stands for every one in the cache keys.
        let pipeline = Pipeline {
            device: template.device.clone(),
            ..pipeline
        };
        Ok(Trial { id, params, pipeline })
    }
}

/// The points a `tpe` sweep is validated at before it runs: each listed
/// value and both ends of each range, one parameter at a time, the others
/// at their first.
fn probes(domains: &[Domain]) -> Vec<Vec<Json>> {
    let ends = |d: &Domain| -> Vec<Json> {
        match d {
            Domain::Values(values) => values.clone(),
            Domain::LogUniform(min, max) | Domain::Uniform(min, max) => vec![Json::from(*min), Json::from(*max)],
            Domain::IntUniform(min, max) => vec![Json::from(*min), Json::from(*max)],
        }
    };
    let first: Vec<Json> = domains.iter().map(|d| ends(d)[0].clone()).collect();
    let mut points = vec![first.clone()];
    for (p, d) in domains.iter().enumerate() {
        for value in ends(d).into_iter().skip(1) {
            let mut point = first.clone();
            point[p] = value;
            points.push(point);
        }
    }
    points
}

/// Checks that `devices` lists at least one device, that this build and
/// machine have each, and that all are of one kind.
fn check_devices(source: &Source, root: &Node, devices: &[String]) -> Result<(), SpecError> {
    let Some(first) = devices.first() else {
        return Err(source.error(
            root.locate(["devices"]),
            "`devices` must list at least one device, e.g. [cpu]",
        ));
    };
    for (i, device) in devices.iter().enumerate() {
        let at = || root.locate(["devices", &i.to_string()]);
        if let Err(e) = crate::backend::device(device) {
            return Err(source.error(at(), format!("{e:#}")));
        }
        if crate::backend::kind(device).ok() != crate::backend::kind(first).ok() {
            return Err(source
                .error(at(), format!("`{device}` is not the same kind of device as `{first}`"))
                .with_help("list either `cpu` or GPUs (`cuda:N`), not both"));
        }
    }
    Ok(())
}

/// Reads `parameters:` into typed domains, checking them for the method.
fn read_parameters(source: &Source, root: &Node, method: Method) -> Result<Vec<Parameter>, SpecError> {
    let node = &root.entry("parameters").expect("required by the header").node;
    let Some(entries) = node.entries().filter(|e| !e.is_empty()) else {
        return Err(source
            .error(
                node.origin,
                "`parameters` must map dotted pipeline paths to their values",
            )
            .with_help("e.g. `stages.train.optimizer.lr: {values: [1.0e-3, 1.0e-4]}`"));
    };
    let mut parameters = Vec::new();
    for entry in entries {
        let what = format!("parameter `{}`", entry.key);
        let domain: ParameterSpec = source.deserialize(root, &["parameters", &entry.key], &what)?;
        let at = |key: &str| root.locate(["parameters", entry.key.as_str(), key]);
        let range = |name: &str| -> Result<(f64, f64), SpecError> {
            match (domain.min, domain.max) {
                (Some(min), Some(max)) if min <= max => Ok((min, max)),
                (Some(_), Some(_)) => Err(source.error(at("max"), format!("`max` of {what} must not be below `min`"))),
                _ => Err(source.error(entry.key_origin, format!("{what}: `{name}` needs `min` and `max`"))),
            }
        };
        let mut value_origins = Vec::new();
        let kind = match (domain.values, domain.distribution) {
            (Some(_), Some(d)) if !matches!(d, Distribution::Choice) => {
                return Err(source.error(
                    at("distribution"),
                    format!("{what} has both `values` and a `distribution`; keep one"),
                ));
            }
            (Some(values), _) => {
                if values.is_empty() {
                    return Err(source
                        .error(at("values"), format!("{what} has no values: the grid would be empty"))
                        .with_help("list at least one value"));
                }
                value_origins = (0..values.len())
                    .map(|i| root.locate(["parameters", entry.key.as_str(), "values", &i.to_string()]))
                    .collect();
                Domain::Values(values)
            }
            (None, None) | (None, Some(Distribution::Choice)) => {
                return Err(source
                    .error(
                        entry.key_origin,
                        format!("{what} needs `values` (or a `distribution` with method: random or tpe)"),
                    )
                    .with_help("e.g. `{values: [1.0e-3, 1.0e-4]}`"));
            }
            (None, Some(_)) if method == Method::Grid => {
                return Err(source
                    .error(
                        at("distribution"),
                        format!("{what}: a grid needs `values`; distributions are for `method: random` or `tpe`"),
                    )
                    .with_help("list `values`, or set `method: random` with `trials: N`"));
            }
            (None, Some(Distribution::LogUniform)) => {
                let (min, max) = range("log_uniform")?;
                if min <= 0.0 {
                    return Err(source.error(at("min"), format!("`min` of {what} must be positive for log_uniform")));
                }
                Domain::LogUniform(min, max)
            }
            (None, Some(Distribution::Uniform)) => {
                let (min, max) = range("uniform")?;
                if !(max - min).is_finite() {
                    return Err(source.error(
                        at("max"),
                        format!("{what}: the range from `min` to `max` is too wide to draw from"),
                    ));
                }
                Domain::Uniform(min, max)
            }
            (None, Some(Distribution::IntUniform)) => {
                let (min, max) = range("int_uniform")?;
                if min.fract() != 0.0 || max.fract() != 0.0 {
                    return Err(source.error(
                        at("min"),
                        format!("`min` and `max` of {what} must be integers for int_uniform"),
                    ));
                }
                for (key, value) in [("min", min), ("max", max)] {
                    if value.abs() > MAX_EXACT_INTEGER {
                        return Err(source.error(
                            at(key),
                            format!("`{key}` of {what} must be within ±2^53 (±{MAX_EXACT_INTEGER:.0}) for int_uniform"),
                        ));
                    }
                }
                Domain::IntUniform(min as i64, max as i64)
            }
        };
        parameters.push(Parameter {
            path: entry.key.clone(),
            origins: Origins {
                key: entry.key_origin,
                values: value_origins,
            },
            domain: kind,
        });
    }
    Ok(parameters)
}

/// Checks that a parameter path names a pipeline key: a top-level key, or a
/// key inside an existing stage (the stage's own schema checks deeper keys).
fn check_path(source: &Source, pipeline: &Node, parameter: &Parameter) -> Result<(), SpecError> {
    let segments: Vec<&str> = parameter.path.split('.').collect();
    let error = |message: String, candidates: Vec<String>| {
        source
            .error(parameter.origins.key, message)
            .with_help(candidates_help(&segments, &candidates))
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Err(source.error(
            parameter.origins.key,
            format!("`{}` is not a dotted key path", parameter.path),
        ));
    }
    const TOP: [&str; 4] = ["seed", "device", "name", "stages"];
    match segments.as_slice() {
        ["stages", stage, _, ..] => {
            let stages = pipeline
                .entry("stages")
                .and_then(|e| e.node.entries())
                .unwrap_or_default();
            if stages.iter().all(|e| e.key != *stage) {
                let names: Vec<String> = stages.iter().map(|e| e.key.clone()).collect();
                return Err(error(
                    format!("the pipeline has no stage `{stage}` (in `{}`)", parameter.path),
                    names,
                ));
            }
            Ok(())
        }
        [key] if TOP.contains(key) && *key != "stages" => Ok(()),
        _ => Err(error(
            format!("`{}` is not a key of the pipeline", parameter.path),
            TOP.iter().map(|s| s.to_string()).collect(),
        )),
    }
}

fn candidates_help(segments: &[&str], candidates: &[String]) -> String {
    let word = if segments.first() == Some(&"stages") && segments.len() > 1 {
        segments[1]
    } else {
        segments[0]
    };
    match did_you_mean(word, candidates) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!(
            "paths look like `stages.<stage>.<key>` or `seed`; candidates: {}",
            candidates.join(", ")
        ),
    }
}

/// The largest integer magnitude below which every integer is an exact `f64`.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// The most trials a sweep may have: a bound on the time and memory its
/// expansion costs (each trial is a pipeline in one graph).
pub const MAX_TRIALS: usize = 10_000;

/// 8 hex digits of the hash of the parameter paths and values.
fn trial_id(parameters: &[String], values: &[Json]) -> String {
    let pairs: Vec<(&str, &Json)> = parameters.iter().map(String::as_str).zip(values).collect();
    let text = serde_json::to_string(&pairs).expect("JSON values serialize");
    blake3::hash(text.as_bytes()).to_hex()[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_ids_depend_on_paths_and_values_only() {
        let params = ["a".to_string()];
        assert_eq!(trial_id(&params, &[1.into()]), trial_id(&params, &[1.into()]));
        assert_ne!(trial_id(&params, &[1.into()]), trial_id(&params, &[2.into()]));
        assert_ne!(
            trial_id(&params, &[1.into()]),
            trial_id(&["b".to_string()], &[1.into()])
        );
        assert_eq!(trial_id(&params, &[1.into()]).len(), 8);
    }

    #[test]
    fn tpe_probes_every_value_and_both_ends_once() {
        let domains = [Domain::Values(vec!["x".into(), "y".into()]), Domain::Uniform(0.5, 2.0)];
        let probes = probes(&domains);
        assert_eq!(
            probes,
            vec![
                vec![Json::from("x"), Json::from(0.5)],
                vec![Json::from("y"), Json::from(0.5)],
                vec![Json::from("x"), Json::from(2.0)],
            ]
        );
    }
}
