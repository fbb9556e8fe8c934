//! The `pipeline` command line.
//!
//! Exit codes: 0 success; 1 a stage failed, `status` found stages that
//! would run, or `verify` found different bytes; 2 bad usage, an invalid
//! pipeline file, or a config value its stage's input does not have (a
//! missing column or file); 130 interrupted.

mod gc;
mod inspect;
mod metrics;
mod run;
mod sweep;
mod verify;
mod why;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use crate::dag::Graph;
use crate::spec::{Pipeline, SpecError};
use crate::stage::Registry;
use crate::store::Store;
use crate::tracking::{self, Tracker};

/// Exit code: a stage failed, stages are stale, or outputs differ.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or an invalid pipeline file.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: interrupted by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Declarative, cached experiment pipelines for text classification.
#[derive(Parser, Debug)]
#[command(
    name = "pipeline",
    version,
    about,
    after_help = "Exit codes: 0 success; 1 a stage failed, `status` found stages that would run, or `verify` found different bytes; 2 bad usage, an invalid pipeline file or a config value its data does not have; 130 interrupted.\nLogs: set RUST_LOG (e.g. RUST_LOG=pipeline=debug)."
)]
pub struct Cli {
    /// The cache store directory.
    #[arg(long, global = true, env = "PIPELINE_STORE", default_value = "artifacts")]
    store: PathBuf,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// A pipeline file and `--set` overrides, shared by most commands.
#[derive(clap::Args, Debug)]
struct Target {
    /// The pipeline file.
    file: PathBuf,
    /// Override a key, e.g. `--set stages.train.optimizer.lr=0.01` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// `--executor`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExecutorKind {
    /// Threads of this process.
    Local,
    /// Tasks of Slurm job arrays.
    Slurm,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline, reusing every cached stage, and update its lock file.
    Run {
        #[command(flatten)]
        target: Target,
        /// CPU threads that running stages may use together (default: all cores).
        #[arg(long, short)]
        jobs: Option<usize>,
        /// Of a sweep, run only this trial (`trial-<id>`, `<id>`, or its
        /// 0-based index in the sweep's order, as a Slurm array task gets it),
        /// with the stages it shares; no sweep lock, report or MLflow run.
        #[arg(long, value_name = "TRIAL")]
        trial: Option<String>,
        /// With `--trial`: its parameter values, a JSON list in the sweep's
        /// parameter order (how the coordinator of a `tpe` sweep on Slurm
        /// hands a task the trial it asked for).
        #[arg(long, requires = "trial", value_name = "JSON")]
        params: Option<String>,
        /// Of a sweep, run only the stages that several trials need (what
        /// a cluster's upstream job runs before the trials' array).
        #[arg(long, conflicts_with = "trial")]
        shared: bool,
        /// Where a sweep's trials run, over the sweep file's `executor:`:
        /// `local` (threads of this process) or `slurm` (array tasks).
        #[arg(long, value_enum, conflicts_with_all = ["trial", "shared"])]
        executor: Option<ExecutorKind>,
    },
    /// Show the stage graph with key prefixes and what would run.
    Plan {
        #[command(flatten)]
        target: Target,
    },
    /// Draw the stage graph: stages and what each needs.
    Dag {
        #[command(flatten)]
        target: Target,
        /// As a Mermaid flowchart.
        #[arg(long, conflicts_with = "dot")]
        mermaid: bool,
        /// As Graphviz DOT.
        #[arg(long)]
        dot: bool,
    },
    /// Print shell completions for bash, zsh, fish, elvish or PowerShell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the fully resolved pipeline (defaults filled in, overrides applied).
    Show {
        #[command(flatten)]
        target: Target,
    },
    /// Compare the pipeline with its lock file; exit 1 when anything would run.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Explain why a stage would run.
    Why {
        #[command(flatten)]
        target: Target,
        /// The stage.
        stage: String,
    },
    /// Re-run stages in a scratch store and compare their bytes with the lock file.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Only these stages (comma-separated); upstream stages come from the cache.
        #[arg(long, value_delimiter = ',')]
        stages: Vec<String>,
        /// CPU threads that running stages may use together (default: all cores).
        #[arg(long, short)]
        jobs: Option<usize>,
    },
    /// Print the evaluation scores of a pipeline, or of every trial of a sweep, from the store.
    Metrics {
        #[command(flatten)]
        target: Target,
        /// Comma-separated values, numbers in full.
        #[arg(long, conflicts_with = "md")]
        csv: bool,
        /// A Markdown table, numbers in full.
        #[arg(long)]
        md: bool,
        /// Compare with the scores in the lock file.
        #[arg(long)]
        diff: bool,
    },
    /// Drop the cache entries of a pipeline's current stages.
    Clean {
        #[command(flatten)]
        target: Target,
        /// Only these stages (comma-separated).
        #[arg(long, value_delimiter = ',')]
        stages: Vec<String>,
    },
    /// MLflow tracking: replay the calls spooled while the server was unreachable.
    Mlflow {
        #[command(subcommand)]
        command: MlflowCommand,
    },
    /// Re-hash every cache entry against its manifest; report (or remove) damaged ones.
    Fsck {
        /// Remove the damaged entries, so that the next run recomputes them.
        #[arg(long)]
        repair: bool,
    },
    /// Drop every cache entry that no lock file refers to.
    Gc {
        /// Lock files or directories to search for them (default: pipelines/ and sweeps/).
        locks: Vec<PathBuf>,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `pipeline mlflow ...`.
#[derive(Subcommand, Debug)]
enum MlflowCommand {
    /// Send the spooled calls in the store to the server, oldest first.
    Sync {
        /// The tracking server (default: MLFLOW_TRACKING_URI, else the server
        /// each spool file was written for).
        #[arg(long, env = "MLFLOW_TRACKING_URI")]
        uri: Option<String>,
    },
}

/// An error that is the user's to fix (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}", self.0)
    }
}

impl std::error::Error for UsageError {}

/// What every command gets.
struct Env<'a> {
    registry: &'a Registry,
    store: Store,
    json: bool,
}

impl Env<'_> {
    fn load(&self, target: &Target) -> anyhow::Result<Pipeline> {
        if crate::spec::is_sweep(&target.file) {
            return Err(UsageError(format!(
                "{} is a sweep file; this command takes a pipeline file (`pipeline run` takes both)",
                target.file.display()
            ))
            .into());
        }
        Ok(Pipeline::load(&target.file, &target.sets, self.registry)?)
    }

    /// The sweep file of `target` with its trials: those of a `tpe` sweep
    /// that the store's finished trials determine (see [`crate::sweep::search::replay`]).
    fn sweep(&self, target: &Target) -> anyhow::Result<crate::spec::Sweep> {
        let mut sweep = crate::spec::Sweep::load(&target.file, &target.sets, self.registry)?;
        crate::sweep::search::replay(&mut sweep, self.registry, &self.store)?;
        Ok(sweep)
    }

    /// The MLflow tracker of a `tracking:` section, if it has `mlflow` and a server.
    fn tracker(&self, tracking: Option<&crate::spec::Tracking>) -> anyhow::Result<Option<Tracker>> {
        let Some(mlflow) = tracking.and_then(|t| t.mlflow.as_ref()) else {
            return Ok(None);
        };
        let Some(uri) = tracking::server_uri(mlflow) else {
            eprintln!(
                "MLflow: no server for experiment `{}` (set {} or `uri:`); runs are recorded in the local store only",
                mlflow.experiment,
                tracking::URI_ENV
            );
            return Ok(None);
        };
        Ok(Some(Tracker::new(
            &uri,
            &mlflow.experiment,
            &tracking::spool_dir(self.store.root()),
        )))
    }

    fn graph(&self, pipeline: &Pipeline) -> anyhow::Result<(Graph, Vec<usize>)> {
        let mut graph = Graph::new();
        let nodes = graph.add_pipeline(pipeline, None, self.store.stat_cache())?;
        Ok((graph, nodes))
    }

    /// Prints a JSON result on stdout.
    fn print_json(&self, value: &serde_json::Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON values serialize")
        );
    }
}

/// Runs the command line with the given stage kinds; `main` passes the built-in ones.
pub fn main(registry: &Registry) -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let env = Env {
        registry,
        store: Store::open(&cli.store),
        json: cli.json,
    };
    let result = match &cli.command {
        Command::Run {
            target,
            jobs,
            trial,
            params,
            shared,
            executor,
        } => {
            let trial = trial.as_deref().map(|name| run::TrialArg {
                name,
                params: params.as_deref(),
            });
            run::run(&env, target, *jobs, trial, *shared, *executor)
        }
        Command::Plan { target } => inspect::plan(&env, target),
        Command::Show { target } => inspect::show(&env, target),
        Command::Dag { target, mermaid, dot } => {
            let format = match (mermaid, dot) {
                (true, _) => inspect::DagFormat::Mermaid,
                (_, true) => inspect::DagFormat::Dot,
                _ => inspect::DagFormat::Text,
            };
            inspect::dag(&env, target, format)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "pipeline",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Status { target } => inspect::status(&env, target),
        Command::Why { target, stage } => why::why(&env, target, stage),
        Command::Verify { target, stages, jobs } => verify::verify(&env, target, stages, *jobs),
        Command::Metrics { target, csv, md, diff } => {
            let format = match (csv, md) {
                (true, _) => metrics::Format::Csv,
                (_, true) => metrics::Format::Markdown,
                _ => metrics::Format::Table,
            };
            metrics::metrics(&env, target, format, *diff)
        }
        Command::Clean { target, stages } => gc::clean(&env, target, stages),
        Command::Gc { locks, dry_run } => gc::gc(&env, locks, *dry_run),
        Command::Fsck { repair } => gc::fsck(&env, *repair),
        Command::Mlflow {
            command: MlflowCommand::Sync { uri },
        } => sync(&env, uri.as_deref()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = if err.is::<SpecError>() || err.is::<UsageError>() {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            };
            if err.is::<SpecError>() || err.is::<UsageError>() {
                eprintln!("{err}");
            } else {
                eprintln!("error: {err:#}");
            }
            if cli.json {
                env.print_json(&serde_json::json!({ "error": format!("{err:#}") }));
            }
            ExitCode::from(code)
        }
    }
}

/// `pipeline mlflow sync`.
fn sync(env: &Env, uri: Option<&str>) -> anyhow::Result<u8> {
    let report = tracking::sync(uri, &tracking::spool_dir(env.store.root()))?;
    let servers = if report.servers.is_empty() {
        "no server".to_string()
    } else {
        report.servers.join(", ")
    };
    eprintln!(
        "mlflow sync: {} spool file(s) replayed, {} calls sent to {servers}",
        report.replayed.len(),
        report.calls
    );
    if !report.unparsable.is_empty() {
        eprintln!(
            "mlflow sync: {} line(s) were not spooled calls and were kept aside in *.jsonl.unparsed: {}",
            report.unparsable.len(),
            report.unparsable.join(", ")
        );
    }
    if env.json {
        env.print_json(&serde_json::to_value(&report)?);
    }
    Ok(0)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The flag that Ctrl-C (or SIGTERM) sets; a second one exits at once.
fn interrupt_flag() -> &'static AtomicBool {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!("interrupted: waiting for running stages to stop (Ctrl-C again to quit at once)");
    });
    &INTERRUPTED
}

/// The stage names of `--stages`, checked against the pipeline.
fn select_stages(pipeline: &Pipeline, names: &[String]) -> anyhow::Result<Vec<usize>> {
    if names.is_empty() {
        return Ok((0..pipeline.stages.len()).collect());
    }
    names
        .iter()
        .map(|name| {
            pipeline.stages.iter().position(|s| &s.name == name).ok_or_else(|| {
                let all: Vec<String> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
                let hint = crate::spec::did_you_mean(name, &all).map_or_else(
                    || format!("the stages are {}", all.join(", ")),
                    |b| format!("did you mean `{b}`?"),
                );
                UsageError(format!(
                    "no stage `{name}` in {}; {hint}",
                    pipeline.source.path.display()
                ))
                .into()
            })
        })
        .collect()
}

/// Default `--jobs`: every core.
fn default_jobs(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
