//! A training run's whole state at an evaluation, saved when a sweep's early
//! stopping prunes it (see [`crate::stage::Pruner`]), so that a later run of
//! the same key (the trial promoted, or run without early stopping) goes on
//! from there and ends with the bits an uninterrupted run ends with.
//!
//! The stage's state folder holds `state.json` (the loop's counters, the
//! dropout stream's position, the best evaluation so far), `weights.safetensors`
//! (the model), `best.safetensors` (the best evaluated model, when there is
//! one), `optimizer.safetensors` (its buffers, `first.<i>` and `second.<i>`
//! per parameter) and `history.csv` (the rows so far). A folder is written
//! beside it and renamed into place, so a run killed while saving leaves the
//! previous state or none; one that cannot be read is ignored with a warning
//! (the run starts from step 0: a state is a shortcut, never a cache entry).

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::history::{HISTORY_FILE, History};
use super::optimizer::OptimizerState;

/// The loop's counters and scalars at the saved step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: usize,
    /// The epoch being read.
    pub epoch: u64,
    /// Batches of that epoch already taken.
    pub taken: usize,
    /// The dropout stream's word position (a decimal string: it is a `u128`).
    pub dropout_position: String,
    /// The loss summed since the last logging row, and over how many steps.
    pub window: (f64, usize),
    /// The last finite loss and its step.
    pub last_finite: Option<(usize, f64)>,
    /// Evaluations since the best one.
    pub since_best: usize,
    /// The best evaluation's step and metric value.
    pub best: Option<(usize, f64)>,
}

/// What [`load`] finds: the loop's state, the optimizer's and the history,
/// with the paths of the weights to load into the model.
pub struct Saved {
    /// The loop's counters.
    pub state: LoopState,
    /// The optimizer's steps and buffers.
    pub optimizer: OptimizerState,
    /// The rows logged up to the saved step.
    pub history: History,
    /// `weights.safetensors`.
    pub weights: PathBuf,
    /// `best.safetensors`, when the state has a best evaluation.
    pub best: Option<PathBuf>,
}

const STATE_FILE: &str = "state.json";

/// Writes the state to `dir` (replacing what is there).
pub fn save<M: Module>(
    dir: &Path,
    state: &LoopState,
    model: &M,
    best: Option<&M>,
    optimizer: &OptimizerState,
    history: &History,
) -> anyhow::Result<()> {
    let fresh = dir.with_extension("new");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)?;
    }
    std::fs::create_dir_all(&fresh).with_context(|| format!("cannot create {}", fresh.display()))?;
    crate::model::save_safetensors(model, &fresh.join("weights.safetensors"))?;
    if let Some(best) = best {
        crate::model::save_safetensors(best, &fresh.join("best.safetensors"))?;
    }
    save_buffers(optimizer, &fresh.join("optimizer.safetensors"))?;
    history.write_csv(&fresh.join(HISTORY_FILE))?;
    let json = serde_json::json!({ "loop": state, "optimizer_steps": optimizer.steps });
    // Written last: a folder without it is incomplete.
    std::fs::write(fresh.join(STATE_FILE), serde_json::to_vec_pretty(&json)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&fresh, dir).with_context(|| format!("cannot move {} into place", fresh.display()))?;
    Ok(())
}

/// The state saved in `dir`, if there is one that can be read.
pub fn load(dir: &Path) -> Option<Saved> {
    if !dir.join(STATE_FILE).is_file() {
        return None;
    }
    match read(dir) {
        Ok(saved) => Some(saved),
        Err(e) => {
            tracing::warn!("ignoring the saved training state in {}: {e:#}", dir.display());
            None
        }
    }
}

fn read(dir: &Path) -> anyhow::Result<Saved> {
    #[derive(Deserialize)]
    struct File {
        #[serde(rename = "loop")]
        state: LoopState,
        optimizer_steps: i32,
    }
    let file: File = serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE))?)?;
    let history = History::read_csv(&dir.join(HISTORY_FILE))?;
    let best = dir.join("best.safetensors");
    anyhow::ensure!(
        file.state.best.is_some() == best.is_file(),
        "best.safetensors does not match state.json"
    );
    Ok(Saved {
        optimizer: OptimizerState {
            steps: file.optimizer_steps,
            buffers: load_buffers(&dir.join("optimizer.safetensors"))?,
        },
        state: file.state,
        history,
        weights: dir.join("weights.safetensors"),
        best: best.is_file().then_some(best),
    })
}

fn save_buffers(optimizer: &OptimizerState, path: &Path) -> anyhow::Result<()> {
    use safetensors::{Dtype, tensor::TensorView};
    let bytes: Vec<[Vec<u8>; 2]> = optimizer
        .buffers
        .iter()
        .map(|pair| pair.clone().map(|b| b.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::new();
    for (i, [first, second]) in bytes.iter().enumerate() {
        views.push((
            format!("first.{i}"),
            TensorView::new(Dtype::F32, vec![first.len() / 4], first)?,
        ));
        views.push((
            format!("second.{i}"),
            TensorView::new(Dtype::F32, vec![second.len() / 4], second)?,
        ));
    }
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn load_buffers(path: &Path) -> anyhow::Result<Vec<[Vec<f32>; 2]>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let floats = |name: String| -> anyhow::Result<Vec<f32>> {
        let view = file
            .tensor(&name)
            .map_err(|e| anyhow::anyhow!("{}: {name}: {e}", path.display()))?;
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    };
    (0..file.len() / 2)
        .map(|i| Ok([floats(format!("first.{i}"))?, floats(format!("second.{i}"))?]))
        .collect()
}
