//! The stage graph: cache keys, merged nodes, and the concurrent executor.

mod executor;
mod graph;
mod key;

pub use executor::{ExecOptions, Execution, Failure, NodeResult, NodeState, Reporter, execute};
pub use graph::{Graph, GraphNode, Survey};
pub use key::{Change, KeyMaterial, Need, write_canonical};
