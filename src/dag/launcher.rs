//! Where a node's work runs. The scheduler ([`super::execute`]) decides
//! which node is ready, looks it up in the store, and holds the CPU and
//! device budget; a [`Launcher`] builds the entry of a node that has to run
//! and says how that ended. [`InProcess`], the default, runs the stage on a
//! thread of this process.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicBool;

use super::graph::GraphNode;
use super::scheduler::Reporter;
use crate::stage::{Pruner, Registry, StageContext, StageInput};
use crate::store::{Built, Store};

/// A node the scheduler started, with its inputs and resources resolved.
pub struct Job<'a> {
    /// The node.
    pub node: &'a GraphNode,
    /// The output directories of the nodes it needs, in `needs` order.
    pub inputs: &'a [StageInput],
    /// CPU threads it may use.
    pub threads: usize,
    /// The device it runs on (a leased GPU, or its pipeline's device).
    pub device: &'a str,
    /// Asked after each of its evaluations whether it goes on (see
    /// [`super::ExecOptions::pruner`]).
    pub pruner: Option<&'a dyn Pruner>,
}

/// Builds the entries of the nodes the scheduler starts.
pub trait Launcher: Sync {
    /// Builds `job`'s entry in `store` (or finds that another process built
    /// it) and returns it, blocking until the work has ended; an error is
    /// the node's failure ([`crate::stage::Cancelled`] once `cancel` is set).
    /// The scheduler calls it on a thread per job, for several jobs at once.
    fn launch(&self, job: &Job, store: &Store, reporter: &dyn Reporter, cancel: &AtomicBool) -> anyhow::Result<Built>;
}

/// Runs each stage in this process, on the job's threads; a panicking
/// stage becomes an error.
pub struct InProcess<'a> {
    /// The stage kinds.
    pub registry: &'a Registry,
}

impl Launcher for InProcess<'_> {
    fn launch(&self, job: &Job, store: &Store, reporter: &dyn Reporter, cancel: &AtomicBool) -> anyhow::Result<Built> {
        let node = job.node;
        let stage = self
            .registry
            .get(node.kind())
            .ok_or_else(|| anyhow::anyhow!("unknown stage kind `{}`", node.kind()))?;
        let progress = reporter.started(node);
        store.build(
            node.material(),
            || reporter.waiting(node),
            |out_dir, state_dir| {
                let ctx = StageContext {
                    out_dir,
                    inputs: job.inputs,
                    pipeline_dir: &node.pipeline_dir,
                    pipeline: &node.pipeline,
                    seed: node.seed,
                    device: job.device,
                    threads: job.threads,
                    progress: progress.as_ref(),
                    cancel,
                    state_dir,
                    pruner: job.pruner,
                };
                match catch_unwind(AssertUnwindSafe(|| stage.run(&node.material().config, &ctx))) {
                    Ok(result) => result,
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("unknown panic");
                        Err(anyhow::anyhow!("the stage panicked: {message}"))
                    }
                }
            },
        )
    }
}
