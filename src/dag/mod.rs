//! The stage graph: cache keys, merged nodes, the scheduler that decides
//! what runs and when, and the launchers that run it.

mod graph;
mod key;
mod launcher;
mod scheduler;

pub use graph::{Graph, GraphNode, Survey};
pub use key::{Change, KeyMaterial, Need, write_canonical};
pub use launcher::{InProcess, Job, Launcher};
pub use scheduler::{BuiltBefore, ExecOptions, Execution, Failure, NodeResult, NodeState, Reporter, execute};
