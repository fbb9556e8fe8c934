//! A sweep's trials as Slurm array tasks. The coordinator (the `pipeline
//! run SWEEP` process on the login node) surveys the store and submits only
//! what is missing: the stages several trials share come first, run by the
//! coordinator itself when none of them uses a device (data preparation:
//! no wait in the queue) or else as one job (`pipeline run SWEEP --shared`;
//! `upstream:` decides); then the incomplete trials as job arrays
//! (`--dependency=afterok` on that job, chunked below the cluster's
//! `MaxArraySize`, `%parallel` at a time, `--requeue`), all named after the
//! sweep run so that a second coordinator, or this one started again, finds
//! and waits for them instead of submitting again. Each task runs `pipeline
//! run SWEEP --trial T` on its node against the shared store. The
//! coordinator follows the tasks with one `squeue` call per poll (every
//! twentieth of the time waited, from 0.25 s up to 10 s; `sacct` only for
//! tasks gone from it, and only where accounting is on) and cancels them on
//! Ctrl-C. The store, not Slurm, says what finished: [`super::run`] then
//! gathers the trials with [`FromTheCluster`], which builds nothing.
//!
//! An adaptive search (`method: tpe`) cannot know its trials up front: the
//! coordinator asks them one at a time as a local run does, and
//! [`ClusterSearch`] runs each as a job of one task, `pipeline run SWEEP
//! --trial T --params JSON`, under the same job name, so the trials, their
//! values and the lock are those of a local run.
//!
//! Next to the tasks' logs, `<job>.tasks` lists what each task of a job
//! runs (a trial label per array index, or `shared`), so that a failure can
//! point at its task's log and the states of a reattached job have names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::console::Console;
use crate::dag::{BuiltBefore, Job, Launcher, NodeState, Reporter, Survey};
use crate::session::Session;
use crate::spec::{SlurmSettings, Sweep, Trial, Upstream};
use crate::stage::Registry;
use crate::store::{Built, Lookup, Store};

/// What `<job>.tasks` names the upstream job's only task.
const SHARED: &str = "shared";

/// Stands in for the cluster once its tasks have ended: a stage still
/// missing from the store failed there, and its task's log says why.
pub struct FromTheCluster {
    /// What the sweep's jobs ran, and where their logs are.
    tasks: Tasks,
    /// The nodes the cluster was to compute for this run (those missing
    /// when the coordinator looked), by id.
    built: BTreeMap<String, BuiltBefore>,
}

impl FromTheCluster {
    /// The nodes the cluster was to compute for this run: what of them is
    /// in the store now, its tasks built (see
    /// [`crate::dag::ExecOptions::built_before`]).
    pub fn built(&self) -> &BTreeMap<String, BuiltBefore> {
        &self.built
    }
}

impl Launcher for FromTheCluster {
    fn launch(&self, job: &Job, _: &Store, _: &dyn Reporter, _: &AtomicBool) -> anyhow::Result<Built> {
        anyhow::bail!("{}", self.tasks.why_missing(&job.node.label))
    }
}

/// Where the trials of an adaptive search (`method: tpe`) run on Slurm:
/// each asked trial as a job of one task, `pipeline run SWEEP --trial
/// LABEL --params JSON` (the task builds what of it the store lacks, the
/// stages it shares with other trials included, under their keys' locks),
/// named as the sweep's arrays are. Made with [`ClusterSearch::attach`],
/// which holds the sweep's submission lock until dropped.
pub struct ClusterSearch<'a> {
    sweep: &'a Sweep,
    store: &'a Store,
    submission: &'a Submission<'a>,
    submitting: Submitting,
}

impl<'a> ClusterSearch<'a> {
    /// Takes the sweep's submission lock and waits for the jobs of an
    /// earlier coordinator of the same run still queued (their trials are
    /// then in the store for the search to find).
    pub fn attach(
        sweep: &'a Sweep,
        store: &'a Store,
        submission: &'a Submission<'a>,
        console: &Console,
        cancel: &AtomicBool,
    ) -> anyhow::Result<ClusterSearch<'a>> {
        let submitting = Submitting::start(sweep, store, submission)?;
        let jobs = queued(&submitting.name)?;
        if !jobs.is_empty() {
            console.line(&format!(
                "sweep `{}`: waiting for its Slurm job(s) {} ({}), already queued",
                sweep.name,
                jobs.join(", "),
                submitting.name
            ));
            wait(&jobs, &Tasks::read(&submitting.logs), console, cancel, &|| false)?;
        }
        Ok(ClusterSearch {
            sweep,
            store,
            submission,
            submitting,
        })
    }

    /// Runs `trial` as a job of one task and waits for it to end, or for
    /// `stored` to say the store holds the whole trial (or cancels it when
    /// `cancel` is set); returns what that job ran, which says why a stage
    /// it should have stored is missing.
    pub fn run(
        &self,
        trial: &Trial,
        console: &Console,
        cancel: &AtomicBool,
        stored: &dyn Fn() -> bool,
    ) -> anyhow::Result<Tasks> {
        let Submitting { name, logs, .. } = &self.submitting;
        let job = submit(
            self.sweep,
            self.store,
            self.submission,
            name,
            logs,
            Work::Asked(trial),
            None,
        )?;
        let label = trial.label();
        console.trial_state(&label, &format!("submitted to Slurm as job {job}"));
        let tasks = Tasks {
            logs: logs.clone(),
            jobs: BTreeMap::from([(job.parse().context("sbatch printed no job number")?, vec![label])]),
        };
        wait(&[job], &tasks, console, cancel, stored)?;
        Ok(tasks)
    }
}

/// A sweep run's Slurm job name and logs folder, and the store's lock that
/// lets one coordinator at a time look for its jobs and submit.
struct Submitting {
    name: String,
    logs: PathBuf,
    _lock: std::fs::File,
}

impl Submitting {
    /// Checks the sweep's `gres`, makes the logs folder and takes the lock.
    fn start(sweep: &Sweep, store: &Store, submission: &Submission) -> anyhow::Result<Submitting> {
        check_gres(sweep, submission)?;
        let name = job_name(sweep, submission, store);
        let logs = logs_dir(sweep, store);
        std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        let lock = store.exclusive(&name)?;
        Ok(Submitting {
            name,
            logs,
            _lock: lock,
        })
    }
}

/// A sweep whose trials run on GPUs needs `gres` to give each its own.
fn check_gres(sweep: &Sweep, submission: &Submission) -> anyhow::Result<()> {
    anyhow::ensure!(
        sweep.leased_devices().is_empty() || submission.settings.gres.is_some(),
        "sweep `{}` runs its trials on GPUs ({}): give each its GPU with `gres: gpu:1` under `executor: {{slurm: ...}}`",
        sweep.name,
        sweep.devices.join(", ")
    );
    Ok(())
}

/// How the coordinator reaches the cluster.
pub struct Submission<'a> {
    /// The sweep file as the user named it, made absolute for the nodes.
    pub sweep_file: &'a Path,
    /// The `--set` overrides, passed on to every task.
    pub sets: &'a [String],
    /// `executor: {slurm: ...}`.
    pub settings: &'a SlurmSettings,
    /// The stage kinds, for the shared stages the coordinator runs itself.
    pub registry: &'a Registry,
    /// Threads for those stages.
    pub jobs: usize,
}

/// Has every trial that is not complete in `store` computed by Slurm jobs
/// and waits for them, showing each trial's task on `console` (when
/// `cancel` is set, the jobs are cancelled); returns what gathers the
/// trials from the store.
pub fn run_trials(
    sweep: &Sweep,
    store: &Store,
    submission: &Submission,
    console: &Console,
    cancel: &AtomicBool,
) -> anyhow::Result<FromTheCluster> {
    // One coordinator at a time looks and submits: a second one finds the
    // first one's jobs, or a store where they have finished.
    let Submitting {
        name,
        logs,
        _lock: submitting,
    } = Submitting::start(sweep, store, submission)?;
    let all = super::session(sweep, store)?;
    let Missing {
        trials: missing,
        shared: shared_missing,
        nodes: mut built,
    } = missing_work(sweep, &all, store);
    let gather = |built: BTreeSet<String>| FromTheCluster {
        tasks: Tasks::read(&logs),
        built: built
            .into_iter()
            .map(|id| {
                let state = NodeState::RanElsewhere;
                (id, BuiltBefore { state, seconds: 0.0 })
            })
            .collect(),
    };
    let mut jobs = queued(&name)?;
    if jobs.is_empty() {
        if missing.is_empty() {
            return Ok(gather(built));
        }
        // Shared stages first, here or as one job, when more than one trial waits for them.
        let mut upstream = None;
        if shared_missing && missing.len() > 1 {
            let shared = super::shared_of(sweep, &all, store)?.context("the trials share no stage")?;
            if runs_here(&shared, submission.settings.upstream) {
                // This process builds them (and shows them so): not the cluster.
                for node in &shared.graph.nodes {
                    built.remove(&node.id);
                }
                if run_here(sweep, &shared, store, submission, console, cancel)? {
                    return Ok(gather(built));
                }
            } else {
                upstream = Some(submit(sweep, store, submission, &name, &logs, Work::Shared, None)?);
            }
        }
        let max = max_array_size()?;
        for chunk in missing.chunks(max.max(1)) {
            let work = Work::Trials(chunk);
            jobs.push(submit(
                sweep,
                store,
                submission,
                &name,
                &logs,
                work,
                upstream.as_deref(),
            )?);
        }
        let first = match &upstream {
            Some(id) => format!("the shared stages as job {id}, then "),
            None => String::new(),
        };
        console.line(&format!(
            "sweep `{}`: submitted to Slurm as {name}: {first}{} trial(s) as job {}, {} at a time; logs in {}",
            sweep.name,
            missing.len(),
            jobs.join(", "),
            sweep.parallel,
            logs.display()
        ));
        jobs.extend(upstream);
    } else {
        console.line(&format!(
            "sweep `{}`: waiting for its Slurm job(s) {} ({name}), already queued",
            sweep.name,
            jobs.join(", ")
        ));
    }
    drop(submitting);
    let cluster = gather(built);
    let stored = || missing_work(sweep, &all, store).trials.is_empty();
    wait(&jobs, &cluster.tasks, console, cancel, &stored)?;
    Ok(cluster)
}

/// Whether the coordinator runs the shared stages of `session` itself.
fn runs_here(session: &Session, upstream: Upstream) -> bool {
    match upstream {
        Upstream::Local => true,
        Upstream::Job => false,
        Upstream::Auto => session.graph.nodes.iter().all(|n| n.material().device.is_none()),
    }
}

/// Runs the shared stages in this process; returns whether it was
/// interrupted, and fails (submitting nothing) when a stage failed.
fn run_here(
    sweep: &Sweep,
    shared: &Session,
    store: &Store,
    submission: &Submission,
    console: &Console,
    cancel: &AtomicBool,
) -> anyhow::Result<bool> {
    console.line(&format!(
        "sweep `{}`: the {} stage(s) its trials share run here first",
        sweep.name,
        shared.graph.nodes.len()
    ));
    let devices = sweep.leased_devices();
    let execution = super::build_shared(
        shared,
        submission.registry,
        store,
        devices,
        submission.jobs,
        console,
        cancel,
    );
    if execution.interrupted {
        return Ok(true);
    }
    let failed = shared
        .graph
        .nodes
        .iter()
        .zip(&execution.results)
        .find_map(|(node, result)| match &result.state {
            NodeState::Failed(error) => Some((node, error)),
            _ => None,
        });
    if let Some((node, error)) = failed {
        anyhow::bail!(
            "sweep `{}`: the shared stage `{}` failed, so no trial was submitted: {error}",
            sweep.name,
            node.label
        );
    }
    Ok(false)
}

/// What of a sweep is not in the store.
struct Missing {
    /// The trials (indices) not complete.
    trials: Vec<usize>,
    /// Whether a stage several of them share is missing.
    shared: bool,
    /// The ids of the missing nodes.
    nodes: BTreeSet<String>,
}

/// What of `session` (the sweep's trials) is missing from `store`.
fn missing_work(sweep: &Sweep, session: &Session, store: &Store) -> Missing {
    let surveys = session.graph.survey(store);
    let complete = |n: usize| matches!(surveys[n], Survey::Known(Lookup::Valid(_)));
    Missing {
        trials: (0..sweep.trials.len())
            .filter(|&i| !session.nodes[i].iter().all(|&n| complete(n)))
            .collect(),
        shared: (0..surveys.len()).any(|n| !session.is_own(n) && !complete(n)),
        nodes: (0..surveys.len())
            .filter(|&n| !complete(n))
            .map(|n| session.graph.nodes[n].id.clone())
            .collect(),
    }
}

/// `pipeline-<sweep>-<8 hex>`: the sweep file, its overrides and the store,
/// so that the same sweep run started twice finds its own jobs.
fn job_name(sweep: &Sweep, submission: &Submission, store: &Store) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [
        submission.sweep_file.display().to_string(),
        submission.sets.join("\n"),
        store.root().display().to_string(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    format!("pipeline-{}-{}", sweep.name, &hasher.finalize().to_hex()[..8])
}

/// Where the Slurm tasks' logs go: `<store>/.sweeps/<sweep>/slurm/`.
fn logs_dir(sweep: &Sweep, store: &Store) -> PathBuf {
    store.root().join(".sweeps").join(&sweep.name).join("slurm")
}

/// The ids of the queued or running jobs named `name`.
fn queued(name: &str) -> anyhow::Result<Vec<String>> {
    let out = slurm(Command::new("squeue").args(["-h", "-n", name, "-o", "%F"]))?;
    let mut ids: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The cluster's `MaxArraySize` (array indices run below it).
fn max_array_size() -> anyhow::Result<usize> {
    let config = slurm(Command::new("scontrol").args(["show", "config"]))?;
    let value = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("MaxArraySize"))
        .and_then(|rest| rest.trim().trim_start_matches('=').trim().parse().ok());
    Ok(value.unwrap_or(1001))
}

/// What one submitted job computes.
#[derive(Clone, Copy)]
enum Work<'a> {
    /// The stages several trials share (`--shared`), one task.
    Shared,
    /// These trials (indices into the sweep), one array task each.
    Trials(&'a [usize]),
    /// One trial an adaptive search asked for, one task given its parameters.
    Asked(&'a Trial),
}

/// Submits one job, after the job `after` when given; returns its id and
/// records its tasks in `<logs>/<id>.tasks`.
fn submit(
    sweep: &Sweep,
    store: &Store,
    submission: &Submission,
    name: &str,
    logs: &Path,
    work: Work,
    after: Option<&str>,
) -> anyhow::Result<String> {
    let settings = submission.settings;
    let exe = std::env::current_exe().context("cannot find the pipeline binary")?;
    let store_root = std::path::absolute(store.root())?;
    let mut run = vec![
        quote(&exe.display().to_string()),
        "run".into(),
        quote(&submission.sweep_file.display().to_string()),
    ];
    for set in submission.sets {
        run.extend(["--set".into(), quote(set)]);
    }
    let jobs = "--jobs \"${SLURM_CPUS_PER_TASK:-1}\"";
    let mut command = Command::new("sbatch");
    command
        .env("PIPELINE_STORE", &store_root)
        .current_dir(std::env::current_dir()?)
        .arg("--parsable")
        .arg(format!("--job-name={name}"))
        .arg("--requeue")
        // A requeued task's log keeps what its earlier runs printed.
        .arg("--open-mode=append")
        .arg(format!("--cpus-per-task={}", settings.cpus_per_task.unwrap_or(1)));
    let tasks = match work {
        Work::Shared => {
            command
                .arg(format!("--output={}/%j.out", logs.display()))
                .arg(format!("--wrap=exec {} --shared {jobs}", run.join(" ")));
            vec![SHARED.to_string()]
        }
        Work::Trials(trials) => {
            // The task's position in this array picks its trial from the list.
            let list: Vec<String> = trials.iter().map(usize::to_string).collect();
            command
                .arg(format!("--array=0-{}%{}", trials.len() - 1, sweep.parallel))
                .arg(format!("--output={}/%A_%a.out", logs.display()))
                .arg(format!(
                    "--wrap=set -- {}; shift \"$SLURM_ARRAY_TASK_ID\"; exec {} --trial \"$1\" {jobs}",
                    list.join(" "),
                    run.join(" ")
                ));
            if let Some(after) = after {
                command
                    .arg(format!("--dependency=afterok:{after}"))
                    .arg("--kill-on-invalid-dep=yes");
            }
            trials.iter().map(|&i| sweep.trials[i].label()).collect()
        }
        Work::Asked(trial) => {
            let params = serde_json::to_string(&trial.params)?;
            // Named as an array's task 0 is, so that its log is found the same way.
            command
                .arg(format!("--output={}/%j_0.out", logs.display()))
                .arg(format!(
                    "--wrap=exec {} --trial {} --params {} {jobs}",
                    run.join(" "),
                    trial.label(),
                    quote(&params)
                ));
            vec![trial.label()]
        }
    };
    for (flag, value) in [
        ("--partition", &settings.partition),
        ("--gres", &settings.gres),
        ("--mem", &settings.mem),
        ("--time", &settings.time),
    ] {
        if let Some(value) = value {
            command.arg(format!("{flag}={value}"));
        }
    }
    command.args(&settings.extra);
    let out = slurm(&mut command)?;
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    anyhow::ensure!(!id.is_empty(), "sbatch printed no job id");
    let file = logs.join(format!("{id}.tasks"));
    std::fs::write(&file, tasks.join("\n") + "\n").with_context(|| format!("cannot write {}", file.display()))?;
    Ok(id)
}

/// What the jobs of a sweep run, from their `<job>.tasks` files.
pub struct Tasks {
    logs: PathBuf,
    /// Per job id (ascending), what each of its tasks runs.
    jobs: BTreeMap<u64, Vec<String>>,
}

impl Tasks {
    fn read(logs: &Path) -> Tasks {
        let mut jobs = BTreeMap::new();
        for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".tasks").and_then(|id| id.parse().ok()) {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                jobs.insert(id, text.lines().map(String::from).collect());
            }
        }
        Tasks {
            logs: logs.to_path_buf(),
            jobs,
        }
    }

    /// What task `12_3` (or job `12`) runs, as Slurm's `squeue` names it.
    fn of(&self, task: &str) -> Option<&str> {
        let (job, index) = task.split_once('_').unwrap_or((task, "0"));
        let list = self.jobs.get(&job.parse().ok()?)?;
        list.get(index.parse::<usize>().ok()?).map(String::as_str)
    }

    /// Why the stage `label` (`trial-x/train`, or a shared stage's) is not
    /// in the store: the end of its task's log.
    pub fn why_missing(&self, label: &str) -> String {
        let owner = label.split_once('/').map_or(SHARED, |(trial, _)| trial);
        let Some(log) = self.log_of(owner) else {
            return format!(
                "no Slurm task stored `{label}`; the tasks' logs are in {}",
                self.logs.display()
            );
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(4)..].join("\n    ");
        format!(
            "its Slurm task did not store `{label}`; its log {}:\n    {tail}",
            log.display()
        )
    }

    /// The log of the latest task that ran `what` (a trial label or `shared`).
    fn log_of(&self, what: &str) -> Option<PathBuf> {
        self.jobs.iter().rev().find_map(|(id, list)| {
            let index = list.iter().position(|t| t == what)?;
            Some(match what {
                SHARED => self.logs.join(format!("{id}.out")),
                _ => self.logs.join(format!("{id}_{index}.out")),
            })
        })
    }
}

/// Slurm's job states after which a task does not run again.
const ENDED: [&str; 9] = [
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
];

/// Waits until no task of `jobs` is queued or running, showing each task's
/// state as it changes; cancels them when `cancel` is set. Between two
/// polls it asks `stored` every 50 ms whether the store already holds all
/// the jobs were to compute, and returns at once when it does: the store
/// says what finished, and a task whose last entry is stored has nothing
/// left to do but exit (up to a poll's pause, 0.25 s to 10 s, sooner).
fn wait(
    jobs: &[String],
    tasks: &Tasks,
    console: &Console,
    cancel: &AtomicBool,
    stored: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut shown = BTreeMap::<String, String>::new();
    let mut accounting = true;
    let show = |task: &str, state: &str| {
        let text = format!("slurm job {task}: {}", state.to_lowercase().replace('_', " "));
        match tasks.of(task) {
            Some(SHARED) | None => console.line(&format!("  shared stages: {text}")),
            Some(trial) => console.trial_state(trial, &text),
        }
    };
    loop {
        if cancel.load(Ordering::SeqCst) {
            let _ = slurm(Command::new("scancel").args(jobs));
            console.line(&format!("cancelled Slurm job(s) {}", jobs.join(", ")));
            return Ok(());
        }
        // Every task, one line each, ended ones too (for MinJobAge).
        let states =
            task_states(Command::new("squeue").args(["-h", "-r", "-t", "all", "-j", &jobs.join(","), "-o", "%i %T"]))?;
        // Tasks gone from squeue: their end from sacct, where accounting is on.
        let gone: Vec<String> = shown
            .iter()
            .filter(|(task, state)| {
                !states.contains_key(*task) && state.as_str() != "ENDED" && !ENDED.contains(&state.as_str())
            })
            .map(|(task, _)| task.clone())
            .collect();
        let mut ended_states = BTreeMap::new();
        if !gone.is_empty() && accounting {
            match task_states(Command::new("sacct").args([
                "-n",
                "-X",
                "-P",
                "-j",
                &gone.join(","),
                "-o",
                "JobID,State",
            ])) {
                Ok(found) => ended_states = found,
                Err(e) => {
                    tracing::debug!("sacct: {e:#}");
                    accounting = false;
                }
            }
        }
        for task in gone {
            let state = ended_states.remove(&task).unwrap_or_else(|| "ENDED".into());
            let state = state.split_whitespace().next().unwrap_or("ENDED").to_string();
            show(&task, &state);
            shown.insert(task, "ENDED".into());
        }
        let mut active = false;
        for (task, state) in &states {
            active |= !ENDED.contains(&state.as_str());
            if shown.get(task) != Some(state) {
                show(task, state);
                shown.insert(task.clone(), state.clone());
            }
        }
        if !active {
            return Ok(());
        }
        // A twentieth of the time waited so far: a task that ends is seen
        // within 5 % of the sweep's time, and a long sweep polls every 10 s.
        let pause = (start.elapsed() / 20).clamp(Duration::from_millis(250), Duration::from_secs(10));
        // Short sleeps, so that Ctrl-C is seen at once.
        let mut slept = Duration::ZERO;
        while slept < pause && !cancel.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            slept += Duration::from_millis(50);
            if stored() {
                return Ok(());
            }
        }
    }
}

/// `task state` lines of `squeue` or `sacct` (`|` between them) by task;
/// no task when Slurm no longer knows the jobs.
fn task_states(command: &mut Command) -> anyhow::Result<BTreeMap<String, String>> {
    let out = match slurm(command) {
        Ok(out) => out,
        Err(e) if format!("{e}").contains("Invalid job id") => String::new(),
        Err(e) => return Err(e),
    };
    Ok(out
        .lines()
        .filter_map(|line| {
            let (task, state) = line.trim().split_once([' ', '|'])?;
            Some((task.to_string(), state.trim().to_string()))
        })
        .collect())
}

/// The Slurm allocation this process runs in, from the variables Slurm
/// sets in a task's environment.
pub struct Allocation {
    /// `12_3` for an array task, else the job id.
    task: String,
    /// The node it runs on.
    node: String,
    /// `CUDA_VISIBLE_DEVICES`, as Slurm set it for the task's `--gres`.
    visible: Option<String>,
}

impl Allocation {
    /// The allocation of this process; `None` outside Slurm.
    pub fn current() -> Option<Allocation> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let job = var("SLURM_JOB_ID")?;
        let task = match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
            (Some(array), Some(index)) => format!("{array}_{index}"),
            _ => job,
        };
        Some(Allocation {
            task,
            node: var("SLURMD_NODENAME").unwrap_or_else(|| "?".into()),
            visible: var("CUDA_VISIBLE_DEVICES"),
        })
    }

    /// The GPUs Slurm gave the task as this process sees them: `cuda:0`
    /// up to one per entry of `CUDA_VISIBLE_DEVICES`.
    pub fn gpus(&self) -> Vec<String> {
        let count = self
            .visible
            .as_deref()
            .map_or(0, |v| v.split(',').filter(|d| !d.trim().is_empty()).count());
        (0..count).map(|i| format!("cuda:{i}")).collect()
    }

    /// `slurm: task 12_3 on node7, CUDA_VISIBLE_DEVICES=1`, for the task's log.
    pub fn describe(&self) -> String {
        format!(
            "slurm: task {} on {}, CUDA_VISIBLE_DEVICES={}",
            self.task,
            self.node,
            self.visible.as_deref().unwrap_or("(unset)")
        )
    }
}

/// Runs a Slurm client command; its stdout, or an error with its stderr.
fn slurm(command: &mut Command) -> anyhow::Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .with_context(|| format!("cannot run `{program}`: is this a Slurm login node?"))?;
    anyhow::ensure!(
        output.status.success(),
        "`{program}` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `text` as one word for `/bin/sh`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::{Allocation, Tasks, quote};

    #[test]
    fn a_task_sees_its_gpus_from_cuda_0() {
        let with = |visible: Option<&str>| Allocation {
            task: "7_1".into(),
            node: "n1".into(),
            visible: visible.map(String::from),
        };
        assert_eq!(with(Some("3")).gpus(), ["cuda:0"]);
        assert_eq!(with(Some("1,3")).gpus(), ["cuda:0", "cuda:1"]);
        assert!(with(Some(" ")).gpus().is_empty());
        assert!(with(None).gpus().is_empty());
        assert_eq!(
            with(Some("1")).describe(),
            "slurm: task 7_1 on n1, CUDA_VISIBLE_DEVICES=1"
        );
    }

    #[test]
    fn tasks_files_name_each_task_and_its_latest_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("9.tasks"), "shared\n").unwrap();
        std::fs::write(dir.path().join("10.tasks"), "trial-a\ntrial-b\n").unwrap();
        std::fs::write(dir.path().join("12.tasks"), "trial-b\n").unwrap();
        let tasks = Tasks::read(dir.path());
        assert_eq!(tasks.of("10_1"), Some("trial-b"));
        assert_eq!(tasks.of("9"), Some("shared"));
        assert_eq!(tasks.of("10_2"), None);
        assert_eq!(tasks.of("11_0"), None);
        assert_eq!(tasks.log_of("trial-b"), Some(dir.path().join("12_0.out")));
        assert_eq!(tasks.log_of("trial-a"), Some(dir.path().join("10_0.out")));
        assert_eq!(tasks.log_of("shared"), Some(dir.path().join("9.out")));
        assert_eq!(tasks.log_of("trial-c"), None);
    }

    #[test]
    fn quoted_words_survive_the_shell() {
        for word in ["plain", "with space", "it's", "$HOME `x` \"q\"", ""] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", quote(word))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), word);
        }
    }
}
