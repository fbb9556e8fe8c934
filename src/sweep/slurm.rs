//! A sweep's trials as Slurm array tasks. The coordinator (the `pipeline
//! run SWEEP` process on the login node) surveys the store and submits the
//! trials that are not complete as job arrays (chunked below the cluster's
//! `MaxArraySize`, `%parallel` at a time, `--requeue`, named after the sweep
//! run so that a second coordinator finds and waits for them instead of
//! submitting again). Each task runs `pipeline run SWEEP --trial T` on its
//! node against the shared store; stages the trials share are built once,
//! by the first task to take the key's lock. The coordinator waits with one
//! `squeue` call per poll (backing off to 10 s) and cancels its arrays on
//! Ctrl-C; the store, not Slurm, says what finished: [`super::run`] then
//! gathers the trials with [`FromTheCluster`], which builds nothing.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::console::Console;
use crate::dag::{Job, Launcher, Reporter, Survey};
use crate::spec::{SlurmSettings, Sweep};
use crate::store::{Built, Lookup, Store};

/// Stands in for the cluster once its tasks have ended: a stage still
/// missing from the store failed there, and its task's log says why.
pub struct FromTheCluster {
    /// Where the tasks' logs are.
    pub logs: std::path::PathBuf,
}

impl Launcher for FromTheCluster {
    fn launch(&self, job: &Job, _: &Store, _: &dyn Reporter, _: &AtomicBool) -> anyhow::Result<Built> {
        anyhow::bail!(
            "its Slurm task did not store `{}`; the tasks' logs are in {}",
            job.node.label,
            self.logs.display()
        )
    }
}

/// How the coordinator reaches the cluster.
pub struct Submission<'a> {
    /// The sweep file as the user named it, made absolute for the nodes.
    pub sweep_file: &'a Path,
    /// The `--set` overrides, passed on to every task.
    pub sets: &'a [String],
    /// `executor: {slurm: ...}`.
    pub settings: &'a SlurmSettings,
}

/// Has every trial that is not complete in `store` computed by array tasks
/// and waits for them; returns whether it was interrupted (the arrays are
/// cancelled then). Trials are given by their index in the sweep's order.
pub fn run_trials(
    sweep: &Sweep,
    store: &Store,
    submission: &Submission,
    console: &Console,
    cancel: &AtomicBool,
) -> anyhow::Result<bool> {
    let session = super::session(sweep, store)?;
    let surveys = session.graph.survey(store);
    let complete = |n: usize| matches!(surveys[n], Survey::Known(Lookup::Valid(_)));
    let missing: Vec<usize> = (0..sweep.trials.len())
        .filter(|&i| !session.nodes[i].iter().all(|&n| complete(n)))
        .collect();
    drop(session);
    if missing.is_empty() {
        return Ok(false);
    }
    let name = job_name(sweep, submission, store);
    let logs = logs_dir(sweep, store);
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut jobs = queued(&name)?;
    if jobs.is_empty() {
        let max = max_array_size()?;
        for chunk in missing.chunks(max.max(1)) {
            jobs.push(submit(sweep, store, submission, &name, &logs, chunk)?);
        }
        console.line(&format!(
            "sweep `{}`: {} trial(s) submitted to Slurm as {} (job {}), {} at a time; logs in {}",
            sweep.name,
            missing.len(),
            name,
            jobs.join(", "),
            sweep.parallel,
            logs.display()
        ));
    } else {
        console.line(&format!(
            "sweep `{}`: waiting for its Slurm job(s) {} ({name}), already queued",
            sweep.name,
            jobs.join(", ")
        ));
    }
    wait(&jobs, console, cancel)
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

/// Where the array tasks' logs go: `<store>/.sweeps/<sweep>/slurm/`.
pub fn logs_dir(sweep: &Sweep, store: &Store) -> std::path::PathBuf {
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

/// Submits one array over `trials` (indices into the sweep); returns its job id.
fn submit(
    sweep: &Sweep,
    store: &Store,
    submission: &Submission,
    name: &str,
    logs: &Path,
    trials: &[usize],
) -> anyhow::Result<String> {
    let settings = submission.settings;
    let exe = std::env::current_exe().context("cannot find the pipeline binary")?;
    let cwd = std::env::current_dir()?;
    let store_root = std::path::absolute(store.root())?;
    let mut run = vec![
        quote(&exe.display().to_string()),
        "run".into(),
        quote(&submission.sweep_file.display().to_string()),
    ];
    for set in submission.sets {
        run.extend(["--set".into(), quote(set)]);
    }
    // The task's position in this array picks its trial from the list.
    let list: Vec<String> = trials.iter().map(usize::to_string).collect();
    let script = format!(
        "set -- {}; shift \"$SLURM_ARRAY_TASK_ID\"; exec {} --trial \"$1\" --jobs \"${{SLURM_CPUS_PER_TASK:-1}}\"",
        list.join(" "),
        run.join(" ")
    );
    let mut command = Command::new("sbatch");
    command
        .env("PIPELINE_STORE", &store_root)
        .current_dir(&cwd)
        .arg("--parsable")
        .arg(format!("--job-name={name}"))
        .arg(format!("--array=0-{}%{}", trials.len() - 1, sweep.parallel))
        .arg("--requeue")
        .arg(format!("--cpus-per-task={}", settings.cpus_per_task.unwrap_or(1)))
        .arg(format!("--output={}/%A_%a.out", logs.display()));
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
    command.args(&settings.extra).arg(format!("--wrap={script}"));
    let out = slurm(&mut command)?;
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    anyhow::ensure!(!id.is_empty(), "sbatch printed no job id");
    Ok(id)
}

/// Waits until no task of `jobs` is queued or running; cancels them when
/// `cancel` is set and returns true then.
fn wait(jobs: &[String], console: &Console, cancel: &AtomicBool) -> anyhow::Result<bool> {
    let mut pause = Duration::from_millis(250);
    let mut last = String::new();
    loop {
        if cancel.load(Ordering::SeqCst) {
            let _ = slurm(Command::new("scancel").args(jobs));
            console.line(&format!("cancelled Slurm job(s) {}", jobs.join(", ")));
            return Ok(true);
        }
        let out = slurm(Command::new("squeue").args(["-h", "-j", &jobs.join(","), "-o", "%T"]))?;
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for state in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            *counts.entry(state).or_default() += 1;
        }
        if counts.is_empty() {
            return Ok(false);
        }
        let summary = counts
            .iter()
            .map(|(s, n)| format!("{n} {}", s.to_lowercase()))
            .collect::<Vec<_>>()
            .join(", ");
        if summary != last {
            console.line(&format!("  slurm: {summary}"));
            last = summary;
        }
        // Short sleeps, so that Ctrl-C is seen at once.
        let mut slept = Duration::ZERO;
        while slept < pause && !cancel.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            slept += Duration::from_millis(50);
        }
        pause = (pause * 3 / 2).min(Duration::from_secs(10));
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
    use super::quote;

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
