//! Faults of a sweep on a real single-node Slurm cluster
//! (tests/common/slurm.rs), each while a trial trains: its task killed, a
//! task requeued, the array cancelled, the coordinator killed, the
//! coordinator stopped with SIGTERM, the node dying, two coordinators at
//! once. Each ends with a sound store, and a re-run (or the same run)
//! completes the sweep without training any trial twice, with the lock of a
//! local run. Also: trials asking for a GPU each get their own.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::project::Project;
use common::slurm::Cluster;

/// Three trials of the sample pipeline, long enough to be caught training.
fn fault_sweep(project: &Project, extra: &str) {
    project.copy("imdb-sample.yaml");
    project.write_at(
        "sweeps/faults.yaml",
        &format!(
            "pipeline: ../pipelines/imdb-sample.yaml\n\
             method: grid\n\
             metric: {{name: eval_accuracy, goal: maximize}}\n\
             parameters:\n  \
               stages.train.optimizer.lr: {{values: [1.0e-3, 3.0e-4, 1.0e-4]}}\n  \
               stages.train.epochs: {{values: [6]}}\n\
             parallel: 2\n{extra}"
        ),
    );
}

/// The shared stages as a job of their own, which the trials' array waits for.
const SLURM: &str = "executor: {slurm: {cpus_per_task: 1, upstream: job}}\n";

/// The sweep's lock from a local run, computed once for the tests.
fn local_lock() -> &'static [u8] {
    static LOCK: OnceLock<Vec<u8>> = OnceLock::new();
    LOCK.get_or_init(|| {
        let local = Project::new();
        fault_sweep(&local, "");
        let output = local.run(&["run", "sweeps/faults.yaml"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::fs::read(local.main().join("sweeps/faults.lock")).unwrap()
    })
}

/// A coordinator (`pipeline --json run sweeps/faults.yaml`) in the background.
struct Coordinator {
    child: Child,
    stderr: PathBuf,
    stdout: PathBuf,
}

/// How a coordinator ended.
struct Ended {
    code: Option<i32>,
    stderr: String,
    result: serde_json::Value,
}

impl Coordinator {
    fn start(project: &Project, cluster: &Cluster, name: &str) -> Coordinator {
        let stderr = project.dir.path().join(format!("{name}.err"));
        let stdout = project.dir.path().join(format!("{name}.json"));
        let conf = cluster.conf();
        let child = project
            .command(
                &["--json", "run", "sweeps/faults.yaml"],
                &[("SLURM_CONF", conf.to_str().unwrap())],
            )
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Coordinator { child, stderr, stdout }
    }

    fn finish(mut self, cluster: &Cluster) -> Ended {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(400) {
                let _ = self.child.kill();
                panic!(
                    "the coordinator still runs after 400 s: {}\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default(),
                    cluster.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = std::fs::read_to_string(&self.stderr).unwrap();
        let result = serde_json::from_slice(&std::fs::read(&self.stdout).unwrap()).unwrap_or_default();
        Ended {
            code: status.code(),
            stderr,
            result,
        }
    }
}

fn logs_dir(project: &Project) -> PathBuf {
    project.dir.path().join("store/.sweeps/faults/slurm")
}

/// The tasks' `.out` logs, by file name.
fn task_logs(project: &Project) -> Vec<(String, String)> {
    common::slurm::task_logs(&logs_dir(project))
}

/// Waits until an array task trains; returns its task id (`12_1`) and its
/// trial's index in the sweep.
fn wait_for_training(project: &Project, cluster: &Cluster) -> (String, usize) {
    let start = Instant::now();
    loop {
        for (name, text) in task_logs(project) {
            let Some(task) = name.strip_suffix(".out").filter(|t| t.contains('_')) else {
                continue;
            };
            let attempt = text.rsplit("slurm: task").next().unwrap_or_default();
            if attempt.contains("running  train ") && !attempt.contains("ran      train ") {
                let (job, index) = task.split_once('_').unwrap();
                let tasks = std::fs::read_to_string(logs_dir(project).join(format!("{job}.tasks"))).unwrap();
                let label = tasks.lines().nth(index.parse().unwrap()).unwrap();
                let trial = trial_index(project, label);
                return (task.to_string(), trial);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no task trains after 180 s: {:?}\n{}",
            task_logs(project),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The 0-based index of the trial `label` in the sweep's order.
fn trial_index(project: &Project, label: &str) -> usize {
    let output = project.run(&["--json", "plan", "sweeps/faults.yaml"]);
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    plan["trials"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t["trial"] == label)
        .unwrap()
}

/// The PID of the `pipeline run ... --trial <trial>` process of the cluster.
fn trial_process(cluster: &Cluster, trial: usize) -> u32 {
    let wanted = format!("\0--trial\0{trial}\0");
    cluster
        .task_processes()
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&wanted))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no process runs trial {trial}"))
}

/// A fault sweep on a fresh cluster, its coordinator started, once one of
/// its array tasks trains: that task's id and its trial's index.
fn training_sweep() -> (Cluster, Project, Coordinator, (String, usize)) {
    local_lock();
    let cluster = Cluster::start();
    let project = Project::new();
    fault_sweep(&project, SLURM);
    let coordinator = Coordinator::start(&project, &cluster, "first");
    let training = wait_for_training(&project, &cluster);
    (cluster, project, coordinator, training)
}

/// A second coordinator completes the sweep, saying `expected`, with every
/// trial trained once across all runs.
fn rerun_completes(project: &Project, cluster: &Cluster, expected: &str) {
    let again = Coordinator::start(project, cluster, "again").finish(cluster);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stderr.contains(expected), "{expected}: {}", again.stderr);
    assert_completed_once(project);
}

/// Waits (up to `limit`) until Slurm has requeued `task`, then lets it
/// start now instead of after the begin time Slurm holds it back to.
fn start_now(cluster: &Cluster, task: &str, limit: Duration) {
    wait_for_state(cluster, task, "PENDING", limit);
    slurm(
        cluster,
        "scontrol",
        &["update", &format!("jobid={task}"), "starttime=now"],
    );
}

/// `slurm` client output for this cluster.
fn slurm(cluster: &Cluster, program: &str, args: &[&str]) -> String {
    let output = cluster.command(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until squeue shows `task` in `state`.
fn wait_for_state(cluster: &Cluster, task: &str, state: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let now = slurm(cluster, "squeue", &["-h", "-r", "-t", "all", "-j", task, "-o", "%T"]);
        if now.trim() == state {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "task {task} is {now:?}, not {state}, after {limit:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every entry matches its manifest and no dead run's lease counts as live.
fn assert_store_sound(project: &Project) {
    let output = project.run(&["--json", "fsck"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "fsck: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let gc = project.run(&["--json", "gc", "--dry-run"]);
    let gc: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        gc["skipped"].as_array().unwrap().len(),
        0,
        "a dead run's lease is live: {gc}"
    );
}

/// Over all tasks' logs, every trial trained to the end once and the
/// shared stages ran once; the sweep's lock is the local run's.
fn assert_completed_once(project: &Project) {
    let logs = task_logs(project);
    let count = |stage: &str| {
        logs.iter()
            .map(|(_, text)| {
                text.lines()
                    .filter(|l| l.trim_start().starts_with(&format!("ran      {stage} ")))
                    .count()
            })
            .sum::<usize>()
    };
    assert_eq!((count("load"), count("train")), (1, 3), "{logs:#?}");
    let lock = std::fs::read(project.main().join("sweeps/faults.lock")).unwrap();
    assert!(lock == local_lock(), "the lock differs from the local run's");
}

fn statuses(ended: &Ended) -> Vec<String> {
    let mut statuses: Vec<String> = ended.result["trials"]
        .as_array()
        .unwrap_or_else(|| panic!("no trials: {}", ended.stderr))
        .iter()
        .map(|t| t["status"].as_str().unwrap().to_string())
        .collect();
    statuses.sort();
    statuses
}

#[test]
fn a_task_killed_mid_training_fails_its_trial_only_and_a_rerun_completes_the_sweep() {
    let (cluster, project, coordinator, (task, trial)) = training_sweep();
    let pid = trial_process(&cluster, trial);
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let ended = coordinator.finish(&cluster);
    assert_eq!(ended.code, Some(1), "{}", ended.stderr);
    assert_eq!(statuses(&ended), ["failed", "finished", "finished"], "{}", ended.stderr);
    assert!(
        ended.stderr.contains("its Slurm task did not store `trial-") && ended.stderr.contains(&format!("{task}.out")),
        "{}",
        ended.stderr
    );
    assert_store_sound(&project);

    rerun_completes(&project, &cluster, ": 1 trial(s) as job");
}

#[test]
fn a_requeued_task_runs_again_from_the_cache() {
    let (cluster, project, coordinator, (task, _)) = training_sweep();
    slurm(&cluster, "scontrol", &["requeue", &task]);
    // Slurm holds a requeued job back for a while; let it start now.
    start_now(&cluster, &task, Duration::from_secs(60));
    let ended = coordinator.finish(&cluster);
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    let log = std::fs::read_to_string(logs_dir(&project).join(format!("{task}.out"))).unwrap();
    let attempts: Vec<&str> = log.split("slurm: task").skip(1).collect();
    assert_eq!(attempts.len(), 2, "{log}");
    assert!(attempts[1].contains("cached   load "), "{log}");
    assert_store_sound(&project);
    assert_completed_once(&project);
}

#[test]
fn a_cancelled_array_keeps_its_finished_trials_and_a_rerun_runs_the_rest() {
    let (cluster, project, coordinator, (task, _)) = training_sweep();
    let job = task.split_once('_').unwrap().0;
    slurm(&cluster, "scancel", &[job]);
    let ended = coordinator.finish(&cluster);
    assert_eq!(ended.code, Some(1), "{}", ended.stderr);
    let failed = statuses(&ended).iter().filter(|s| *s == "failed").count();
    assert!(failed >= 1, "{}", ended.stderr);
    assert_store_sound(&project);

    rerun_completes(&project, &cluster, &format!(": {failed} trial(s) as job"));
}

#[test]
fn a_coordinator_killed_and_started_again_reattaches_to_its_jobs() {
    let (cluster, project, mut coordinator, _) = training_sweep();
    coordinator.child.kill().unwrap();
    coordinator.child.wait().unwrap();
    rerun_completes(&project, &cluster, "already queued");
    assert_eq!(task_logs(&project).len(), 1 + 3, "nothing submitted twice");
    assert_store_sound(&project);
}

#[test]
fn a_coordinator_sent_sigterm_cancels_its_jobs_and_a_rerun_completes_the_sweep() {
    let (cluster, project, coordinator, _) = training_sweep();
    let pid = coordinator.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let ended = coordinator.finish(&cluster);
    assert_eq!(ended.code, Some(130), "{}", ended.stderr);
    // Its jobs are cancelled: none is left in the queue, no task runs.
    let start = Instant::now();
    loop {
        let queued = slurm(&cluster, "squeue", &["-h", "-r", "-o", "%i %T"]);
        if queued.trim().is_empty() && cluster.task_processes().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still queued or running 30 s after SIGTERM: {queued}\n{}",
            ended.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_store_sound(&project);

    rerun_completes(&project, &cluster, "submitted to Slurm");
}

#[test]
fn a_node_that_dies_mid_training_has_its_tasks_requeued() {
    let (cluster, project, coordinator, (task, _)) = training_sweep();
    // Not while a task starts: a restarted slurmd purges the script of one
    // whose process had not begun, and it fails instead of being requeued.
    let start = Instant::now();
    let running = loop {
        let running = slurm(&cluster, "squeue", &["-h", "-r", "-t", "R", "-o", "%i"]);
        let listed: BTreeSet<String> = running
            .lines()
            .map(str::trim)
            .filter(|t| t.contains('_'))
            .map(String::from)
            .collect();
        if listed == cluster.tasks_with_processes() {
            break running;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{listed:?} never all started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    cluster.kill_node();
    cluster.start_node();
    // Slurm finds the node's jobs gone (some 50 s here) and requeues them,
    // held back for a while: let them start now.
    for task in running.lines().map(str::trim).filter(|t| t.contains('_')) {
        start_now(&cluster, task, Duration::from_secs(240));
    }
    let ended = coordinator.finish(&cluster);
    assert_eq!(ended.code, Some(0), "{}\n{}", ended.stderr, cluster.logs());
    let log = std::fs::read_to_string(logs_dir(&project).join(format!("{task}.out"))).unwrap();
    assert_eq!(log.matches("slurm: task").count(), 2, "{log}");
    assert_store_sound(&project);
    assert_completed_once(&project);
}

#[test]
fn two_coordinators_of_one_sweep_submit_it_once() {
    local_lock();
    let cluster = Cluster::start();
    let project = Project::new();
    fault_sweep(&project, SLURM);
    let first = Coordinator::start(&project, &cluster, "first");
    let second = Coordinator::start(&project, &cluster, "second");
    let (first, second) = (first.finish(&cluster), second.finish(&cluster));
    for ended in [&first, &second] {
        assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    }
    let submitted = [&first, &second]
        .iter()
        .filter(|e| e.stderr.contains("submitted to Slurm"))
        .count();
    assert_eq!(submitted, 1, "{}\n---\n{}", first.stderr, second.stderr);
    assert_eq!(
        task_logs(&project).len(),
        1 + 3,
        "one job for the shared stages, one task per trial"
    );
    assert_store_sound(&project);
    assert_completed_once(&project);
}

#[test]
fn trials_asking_for_a_gpu_each_get_their_own() {
    let cluster = Cluster::start();
    let project = Project::new();
    fault_sweep(&project, "executor: {slurm: {cpus_per_task: 1, gres: \"gpu:1\"}}\n");
    let coordinator = Coordinator::start(&project, &cluster, "first");
    // Which tasks run at each moment, until the coordinator is done.
    let mut samples = Vec::new();
    let mut coordinator = Some(coordinator);
    let ended = loop {
        let out = cluster
            .command("squeue")
            .args(["-h", "-r", "-t", "R", "-o", "%i"])
            .output()
            .unwrap();
        let running: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| l.contains('_'))
            .collect();
        samples.push(running);
        let child = &mut coordinator.as_mut().unwrap().child;
        if child.try_wait().unwrap().is_some() {
            break coordinator.take().unwrap().finish(&cluster);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    // Each task saw one GPU, as Slurm gave it.
    let gpu_of = |task: &str| -> String {
        let log = std::fs::read_to_string(logs_dir(&project).join(format!("{task}.out"))).unwrap();
        let line = log.lines().find(|l| l.starts_with("slurm: task")).unwrap().to_string();
        let gpu = line.rsplit("CUDA_VISIBLE_DEVICES=").next().unwrap().to_string();
        assert!(gpu == "0" || gpu == "1", "{line}");
        gpu
    };
    let mut together = 0;
    for running in &samples {
        let mut gpus: Vec<String> = running.iter().map(|t| gpu_of(t)).collect();
        gpus.sort();
        let before = gpus.len();
        gpus.dedup();
        assert_eq!(gpus.len(), before, "two running tasks share a GPU: {running:?}");
        together += usize::from(before == 2);
    }
    assert!(together > 0, "no two tasks ran at once: {samples:?}");
}
