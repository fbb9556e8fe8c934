//! Pipeline files: YAML with located errors, typed stage configs and `--set` overrides.

mod error;
pub mod paths;
mod pipeline;
mod sweep;
mod yaml;

pub use error::{Source, SpecError, check_identifier, did_you_mean, nested};
pub use pipeline::{MlflowTracking, Pipeline, StageSpec, Tracking, lock_path};
pub use sweep::{Executor, Goal, Method, Objective, SlurmSettings, Sweep, Trial, Upstream, is_sweep};
pub use yaml::{Entry, Node, Origin, Value};
