//! A real single-node Slurm cluster on 127.0.0.1 for the tests: Debian's
//! munged, slurmctld and slurmd (`make test` installs them), each started
//! with a config of its own in a temporary directory (`select/cons_tres`,
//! `proctrack/linuxproc`, `task/none`, no cgroups, no accounting, two fake
//! GPUs on character devices, `batch_sched_delay=0`, an `Epilog`) and
//! stopped by PID when the cluster is dropped.
//! Needs root, as CI has. See `../shared/notes/slurm.md`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running cluster; its daemons stop when it is dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
}

const DAEMONS: [&str; 3] = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"];

impl Cluster {
    /// Starts munged, slurmctld and slurmd, and waits until the node is idle.
    /// Fails (never skips) where Slurm is missing.
    pub fn start() -> Cluster {
        for daemon in DAEMONS {
            assert!(
                Path::new(daemon).exists(),
                "{daemon} is missing: `make test` installs Debian's slurmctld, slurmd, slurm-client and munge"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let root = root.as_path();
        // munged runs as its own user and keeps its socket here.
        run(Command::new("chown").args(["munge:munge"]).arg(root));
        let path = |name: &str| root.join(name).display().to_string();
        run(Command::new("/usr/sbin/runuser")
            .args(["-u", "munge", "--", "/usr/sbin/munged"])
            .args([
                format!("--socket={}", path("munge.sock")),
                format!("--pid-file={}", path("munged.pid")),
                format!("--log-file={}", path("munged.log")),
                format!("--seed-file={}", path("munged.seed")),
            ]));
        for (i, gpu) in ["gpu0", "gpu1"].iter().enumerate() {
            run(Command::new("mknod").arg(path(gpu)).args(["c", "195", &i.to_string()]));
        }
        for sub in ["state", "spool"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let (controller, node) = (free_port(), free_port());
        let conf = format!(
            "ClusterName=test\nSlurmctldHost=localhost\nSlurmUser=root\nAuthType=auth/munge\n\
             AuthInfo=socket={sock}\nMpiDefault=none\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\nSlurmdTimeout=10\n\
             KillWait=5\nMinJobAge=300\nMaxArraySize=1001\nGresTypes=gpu\n{scheduler}{epilog}\
             StateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\nSlurmdPidFile={d_pid}\nSlurmctldLogFile={ctld_log}\nSlurmdLogFile={d_log}\n\
             SlurmctldPort={controller}\nSlurmdPort={node}\n\
             NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 Gres=gpu:2 State=UNKNOWN\n\
             PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
            scheduler = scheduler_parameters(),
            epilog = epilog(),
            sock = path("munge.sock"),
            state = path("state"),
            spool = path("spool"),
            ctld_pid = path("slurmctld.pid"),
            d_pid = path("slurmd.pid"),
            ctld_log = path("slurmctld.log"),
            d_log = path("slurmd.log"),
        );
        std::fs::write(root.join("slurm.conf"), conf).unwrap();
        std::fs::write(
            root.join("gres.conf"),
            format!(
                "AutoDetect=off\nNodeName=localhost Name=gpu File={}\nNodeName=localhost Name=gpu File={}\n",
                path("gpu0"),
                path("gpu1")
            ),
        )
        .unwrap();
        let cluster = Cluster { dir };
        run(Command::new("/usr/sbin/slurmctld").args(["-f", &path("slurm.conf"), "-i"]));
        cluster.start_node();
        cluster.wait_for_node("idle", Duration::from_secs(30));
        cluster
    }

    /// Starts the node's slurmd.
    pub fn start_node(&self) {
        let conf = self.conf().display().to_string();
        run(Command::new("/usr/sbin/slurmd").args(["-f", &conf, "-N", "localhost"]));
    }

    /// Waits until `sinfo` shows the node in `state` (`idle`, `mix`, ...).
    pub fn wait_for_node(&self, state: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let out = self.command("sinfo").args(["-h", "-o", "%t"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == state {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "the node is not {state} after {limit:?}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node dies: slurmd, the job steps and their tasks get SIGKILL at
    /// once, in one `kill`, the steps first: a step that outlived its task,
    /// even briefly on a busy machine, reported the task's SIGKILL and Slurm
    /// failed the task instead of requeueing it after the node failure.
    pub fn kill_node(&self) {
        let tasks = self.task_processes();
        let mut pids: Vec<u32> = tasks
            .iter()
            .filter_map(|&pid| parent(pid))
            .filter(|&p| comm(p).starts_with("slurmstepd"))
            .collect();
        pids.extend(
            std::fs::read_to_string(self.dir.path().join("slurmd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok()),
        );
        pids.extend(tasks);
        let _ = Command::new("kill")
            .arg("-9")
            .args(pids.iter().map(u32::to_string))
            .status();
    }

    /// The processes of this cluster's jobs: those whose environment has
    /// this cluster's `SLURM_CONF` and a `SLURM_JOB_ID`.
    pub fn task_processes(&self) -> Vec<u32> {
        self.jobs_processes().into_iter().map(|(pid, _)| pid).collect()
    }

    /// The array tasks (`<job>_<index>`) that have a process on the node.
    pub fn tasks_with_processes(&self) -> std::collections::BTreeSet<String> {
        self.jobs_processes().into_iter().filter_map(|(_, task)| task).collect()
    }

    /// Each process of this cluster's jobs, with its array task when it has one.
    fn jobs_processes(&self) -> Vec<(u32, Option<String>)> {
        let conf = format!("SLURM_CONF={}", self.conf().display());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
            if vars.contains(&conf.as_bytes()) && vars.iter().any(|v| v.starts_with(b"SLURM_JOB_ID=")) {
                let var = |name: &str| {
                    vars.iter()
                        .find_map(|v| v.strip_prefix(format!("{name}=").as_bytes()))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                let task = var("SLURM_ARRAY_JOB_ID")
                    .zip(var("SLURM_ARRAY_TASK_ID"))
                    .map(|(j, i)| format!("{j}_{i}"));
                found.push((pid, task));
            }
        }
        found
    }

    /// A Slurm client command (`sbatch`, `squeue`, ...) for this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.conf());
        command
    }

    /// The cluster's `slurm.conf`, for `SLURM_CONF`.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// A folder for job output.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log", "munged.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- {name}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // No job outlives its cluster.
        let _ = self.command("scancel").args(["--user", "root"]).status();
        for pid in self.task_processes() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for name in ["slurmd.pid", "slurmctld.pid", "munged.pid"] {
            let Ok(pid) = std::fs::read_to_string(self.dir.path().join(name)) else {
                continue;
            };
            let pid = pid.trim().to_string();
            let _ = Command::new("kill").arg(&pid).status();
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        }
    }
}

/// The Slurm tasks' `.out` logs in `dir` (none when it does not exist), by
/// file name, sorted.
pub fn task_logs(dir: &Path) -> Vec<(String, String)> {
    let mut logs: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    logs.sort();
    logs
}

/// The cluster's `SchedulerParameters` line: `batch_sched_delay=0`, the
/// high-throughput setting that starts a batch job (an array's next task)
/// on the scheduler's next pass after a job ends, not up to 3 s later
/// (Slurm's default); `PIPELINE_TEST_SLURM_SCHEDULER` replaces it (empty:
/// Slurm's defaults), for the overhead benchmark.
fn scheduler_parameters() -> String {
    overridable(
        "SchedulerParameters",
        "PIPELINE_TEST_SLURM_SCHEDULER",
        "batch_sched_delay=0",
    )
}

/// The cluster's `Epilog` line: `/bin/true` (clusters commonly run an
/// epilog of their own, to clean up a node). Slurm 22.05 frees a finished
/// job's node in one of two ways: where the node has an epilog, slurmd
/// reports its end and slurmctld schedules the next job (an array's next
/// task) at once; where it has none, slurmd answers that the job is
/// already complete and the next job waits for slurmctld's background
/// pass, once a second (0.5 s per task start on average, measured here).
/// `PIPELINE_TEST_SLURM_EPILOG` replaces it (empty: none), for the
/// overhead benchmark.
fn epilog() -> String {
    overridable("Epilog", "PIPELINE_TEST_SLURM_EPILOG", "/bin/true")
}

/// The config line `key=default`, or `key=<$var>` when the variable is set,
/// or no line when it is set but empty.
fn overridable(key: &str, var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(value) if value.is_empty() => String::new(),
        Ok(value) => format!("{key}={value}\n"),
        Err(_) => format!("{key}={default}\n"),
    }
}

/// Runs a set-up command, failing with its output.
fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The parent of a process.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// A process's command name.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default()
}
