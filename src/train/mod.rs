//! Training: the loop (`fit`), losses, fused optimizers, schedules, metrics
//! and the step history.

pub mod checkpoint;
pub mod history;
pub mod metrics;
pub mod optimizer;
pub mod schedule;

use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::batches::{Batching, SplitTensors};
use crate::data::rng;
use crate::model::load_safetensors;
use crate::model::{Classifier, Inputs};
use crate::stage::{Pruned, StageContext, Verdict};
use anyhow::Context as _;
use history::History;
use metrics::Scores;
use optimizer::{Clipping, Optimizer, OptimizerConfig};
use schedule::Schedule;

/// The training loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Softmax cross-entropy over one output per label.
    #[default]
    CrossEntropy,
    /// Sigmoid binary cross-entropy on one logit (two labels only).
    BceWithLogits,
}

impl Loss {
    /// Output units for `labels` classes.
    pub fn outputs(self, labels: usize) -> usize {
        match self {
            Loss::CrossEntropy => labels,
            Loss::BceWithLogits => 1,
        }
    }

    /// The mean loss of `logits` against `labels`, differentiable.
    pub fn tensor(self, logits: Tensor<2>, labels: &[i64], device: &Device) -> Tensor<1> {
        let batch = labels.len();
        match self {
            Loss::CrossEntropy => {
                let index = Tensor::<2, Int>::from_data(TensorData::new(labels.to_vec(), [batch, 1]), device);
                log_softmax(logits, 1).gather(1, index).mean().neg()
            }
            Loss::BceWithLogits => {
                let targets: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
                let y = Tensor::<2>::from_data(TensorData::new(targets, [batch, 1]), device);
                let softplus_neg_abs = logits.clone().abs().neg().exp().log1p();
                (relu(logits.clone()) - logits * y + softplus_neg_abs).mean()
            }
        }
    }

    /// Per-row losses and class probabilities from plain logits (`outputs` per row).
    pub fn score(self, logits: &[f32], labels: &[i64], outputs: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
        let mut losses = Vec::with_capacity(labels.len());
        let mut probabilities = Vec::with_capacity(labels.len());
        for (row, &label) in logits.chunks(outputs).zip(labels) {
            let probs = match self {
                Loss::CrossEntropy => {
                    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
                    let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
                    losses.push(max + sum.ln() - f64::from(row[label as usize]));
                    row.iter().map(|&x| (f64::from(x) - max).exp() / sum).collect()
                }
                Loss::BceWithLogits => {
                    let x = f64::from(row[0]);
                    let y = label as f64;
                    losses.push(x.max(0.0) - x * y + (-x.abs()).exp().ln_1p());
                    let p = 1.0 / (1.0 + (-x).exp());
                    vec![1.0 - p, p]
                }
            };
            probabilities.push(probs);
        }
        (losses, probabilities)
    }
}

/// When training stops and what it optimises: the parts of the train config the loop reads.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Optimizer settings.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// The loss.
    pub loss: Loss,
    /// Total optimizer steps.
    pub total_steps: usize,
    /// Steps between history rows.
    pub logging_steps: usize,
    /// Steps between evaluations (0: never during training).
    pub eval_steps: usize,
    /// Early stopping and best-checkpoint selection.
    pub selection: Selection,
    /// Gradient clipping.
    pub clipping: Clipping,
    /// The trial seed (batch order, dropout).
    pub seed: u64,
}

/// Which evaluation is best, and when to stop.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The metric, e.g. `eval_loss`, `eval_accuracy`.
    pub metric: String,
    /// Whether larger is better.
    pub maximize: bool,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<usize>,
    /// The least change that counts as an improvement.
    pub min_delta: f64,
}

/// What training produced.
pub struct Fitted<M> {
    /// The model after the last step.
    pub final_model: M,
    /// The best evaluated model, with its step and metric value.
    pub best: Option<(M, usize, f64)>,
    /// Loss, learning rate, gradient norm and evaluation rows.
    pub history: History,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
}

/// The data a training run reads.
pub struct Data<'a> {
    /// The training split.
    pub train: &'a SplitTensors,
    /// The split evaluated every `eval_steps`, if any.
    pub eval: Option<&'a SplitTensors>,
    /// Batch formation.
    pub batching: &'a Batching,
    /// Number of labels.
    pub labels: usize,
}

/// Adds a row to the history and reports it as step metrics.
fn log_row(history: &mut History, ctx: &StageContext, step: usize, epoch: f64, values: &[(&str, f64)]) {
    history.push(step, epoch, values.iter().copied());
    ctx.progress.metrics(step as u64, values);
}

/// Trains `model` on `data` following `plan`; `device` is the autodiff device.
///
/// After each evaluation it asks the context's [`crate::stage::Pruner`]
/// whether to go on; when told to stop it saves its whole state in the
/// context's state folder ([`checkpoint`]) and fails with [`Pruned`]. A run
/// that finds such a state goes on from it (reporting the saved rows again,
/// and asking the pruner again at each saved evaluation), and ends with the
/// bits an uninterrupted run ends with.
pub fn fit<M: Classifier>(
    model: M,
    data: &Data,
    plan: &Plan,
    device: &Device,
    ctx: &StageContext,
) -> anyhow::Result<Fitted<M>> {
    let mut model = model;
    let decays = crate::model::parameter_names(&model)
        .iter()
        .map(|name| model.decays(name))
        .collect();
    let mut optimizer = Optimizer::new(plan.optimizer.clone(), decays);
    let mut history = History::default();
    let mut dropout = rng::stream(plan.seed, "dropout");
    let mut best: Option<(M, usize, f64)> = None;
    let mut since_best = 0;
    let mut stopped_early = false;
    let (mut window_loss, mut window_steps) = (0.0, 0usize);
    let mut last_finite: Option<(usize, f64)> = None;
    let epoch_batches = |epoch| {
        data.batching
            .plan(&data.train.lengths, plan.seed, epoch, true)
            .into_iter()
    };
    let mut epoch = 0u64;
    let mut batches = epoch_batches(epoch);
    let per_epoch = batches.len().max(1);
    let mut taken = 0;
    ctx.progress.set_total(plan.total_steps as u64, "steps");
    let mut step = 0;
    if let Some(saved) = checkpoint::load(ctx.state_dir) {
        let position: u128 = saved.state.dropout_position.parse().context("the dropout position")?;
        tracing::info!(step = saved.state.step, "going on from the saved training state");
        // The saved rows, as the run reported them, asking the pruner again.
        for row in &saved.history.rows {
            let values: Vec<(&str, f64)> = row.values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            ctx.progress.metrics(row.step as u64, &values);
            if row.values.contains_key(&plan.selection.metric)
                && let Some(pruner) = ctx.pruner
                && pruner.evaluated(row.step, &row.values, false) == Verdict::Prune
            {
                return Err(Pruned { step: row.step }.into());
            }
        }
        best = match (&saved.best, saved.state.best) {
            (Some(path), Some((step, value))) => Some((load_safetensors(model.clone(), path)?, step, value)),
            _ => None,
        };
        model = load_safetensors(model, &saved.weights)?;
        optimizer.restore(saved.optimizer);
        dropout.set_word_pos(position);
        history = saved.history;
        step = saved.state.step;
        epoch = saved.state.epoch;
        taken = saved.state.taken;
        batches = epoch_batches(epoch);
        for _ in 0..taken {
            batches.next();
        }
        (window_loss, window_steps) = saved.state.window;
        last_finite = saved.state.last_finite;
        since_best = saved.state.since_best;
        ctx.progress.advance(step as u64);
    }
    while step < plan.total_steps {
        ctx.check_cancelled()?;
        let rows = match batches.next() {
            Some(rows) => rows,
            None => {
                epoch += 1;
                batches = epoch_batches(epoch);
                taken = 0;
                continue;
            }
        };
        taken += 1;
        let batch = data.batching.batch(data.train, &rows);
        let inputs = Inputs::new(&batch, device);
        let logits = model.forward(&inputs, Some(&mut dropout));
        let loss = plan.loss.tensor(logits, &batch.labels, device);
        let loss = match model.penalty() {
            Some(penalty) => loss + penalty,
            None => loss,
        };
        let value = f64::from(loss.clone().into_scalar::<f32>());
        if !value.is_finite() {
            let last = match last_finite {
                Some((s, l)) => format!("the last finite loss was {l:.4} at step {s}"),
                None => "no step had a finite loss".to_string(),
            };
            anyhow::bail!(
                "step {}: the loss is {value} ({last}); lower the learning rate (`optimizer.lr`) \
                 or clip gradients (`clip_grad_norm: 1.0`)",
                step + 1
            );
        }
        last_finite = Some((step + 1, value));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = plan.optimizer.lr * plan.schedule.factor(step, plan.total_steps, plan.warmup_steps);
        let logging = (step + 1) % plan.logging_steps == 0 || step + 1 == plan.total_steps;
        let (updated, grad_norm) = optimizer.step(model, grads, lr, plan.clipping, logging);
        model = updated;
        step += 1;
        window_loss += value;
        window_steps += 1;
        ctx.progress.advance(1);
        let epoch_float = epoch as f64 + (step - epoch as usize * per_epoch).min(per_epoch) as f64 / per_epoch as f64;
        if logging {
            let mean = window_loss / window_steps as f64;
            let grad_norm = grad_norm.expect("computed on logging steps");
            let values = [("loss", mean), ("learning_rate", lr), ("grad_norm", grad_norm)];
            log_row(&mut history, ctx, step, epoch_float, &values);
            ctx.progress.message(&format!("loss {mean:.4}"));
            tracing::info!(step, loss = mean, lr, grad_norm, "training");
            (window_loss, window_steps) = (0.0, 0);
        }
        let evaluate_now = plan.eval_steps > 0 && (step % plan.eval_steps == 0 || step == plan.total_steps);
        if let (true, Some(eval)) = (evaluate_now, data.eval) {
            let inference = device.clone().without_autodiff();
            let evaluation = predict(&model.valid(), eval, data.batching, plan.loss, data.labels, &inference);
            let metrics = evaluation.metrics("eval_");
            let Some(&current) = metrics.get(&plan.selection.metric) else {
                anyhow::bail!(
                    "`metric`: evaluation has no metric `{}`; it has {}",
                    plan.selection.metric,
                    metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            tracing::info!(step, metric = %plan.selection.metric, value = current, "evaluated");
            let values: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            log_row(&mut history, ctx, step, epoch_float, &values);
            let improved = match &best {
                None => true,
                Some((_, _, b)) if plan.selection.maximize => current > b + plan.selection.min_delta,
                Some((_, _, b)) => current < b - plan.selection.min_delta,
            };
            if improved {
                best = Some((model.clone(), step, current));
                since_best = 0;
            } else {
                since_best += 1;
                if plan.selection.patience.is_some_and(|p| since_best >= p) {
                    tracing::info!(step, "early stopping");
                    stopped_early = true;
                }
            }
            let last = stopped_early || step == plan.total_steps;
            if let Some(pruner) = ctx.pruner
                && pruner.evaluated(step, &metrics, last) == Verdict::Prune
                && !last
            {
                match optimizer.state() {
                    Some(state) => {
                        let saved = checkpoint::LoopState {
                            step,
                            epoch,
                            taken,
                            dropout_position: dropout.get_word_pos().to_string(),
                            window: (window_loss, window_steps),
                            last_finite,
                            since_best,
                            best: best.as_ref().map(|(_, s, v)| (*s, *v)),
                        };
                        let best_model = best.as_ref().map(|(m, _, _)| m);
                        checkpoint::save(ctx.state_dir, &saved, &model, best_model, &state, &history)?;
                    }
                    None => {
                        // Only the curve so far: a later run starts over.
                        tracing::info!("the optimizer's state is on the device: not saved");
                        std::fs::create_dir_all(ctx.state_dir)?;
                        history.write_csv(&ctx.state_dir.join(history::HISTORY_FILE))?;
                    }
                }
                tracing::info!(step, "pruned");
                return Err(Pruned { step }.into());
            }
            if stopped_early {
                break;
            }
        }
    }
    Ok(Fitted {
        final_model: model,
        best,
        history,
        steps: step,
        stopped_early,
    })
}

/// Scores of a model on a whole split, and its predictions.
pub struct Evaluation {
    /// Confusion-matrix based scores.
    pub scores: Scores,
    /// Mean loss per row.
    pub loss: f64,
    /// Predicted label per row, in split order.
    pub predicted: Vec<i64>,
    /// Class probabilities per row.
    pub probabilities: Vec<Vec<f64>>,
}

impl Evaluation {
    /// Named metrics (`{prefix}loss`, `{prefix}accuracy`, ...).
    pub fn metrics(&self, prefix: &str) -> std::collections::BTreeMap<String, f64> {
        let mut metrics = self.scores.metrics(prefix);
        metrics.insert(format!("{prefix}loss"), self.loss);
        metrics
    }
}

/// Runs `model` over every row of `split` in order (no dropout).
pub fn predict<M: Classifier>(
    model: &M,
    split: &SplitTensors,
    batching: &Batching,
    loss: Loss,
    labels: usize,
    device: &Device,
) -> Evaluation {
    let outputs = loss.outputs(labels);
    let mut losses = Vec::with_capacity(split.rows());
    let mut probabilities = Vec::with_capacity(split.rows());
    for rows in batching.plan(&split.lengths, 0, 0, false) {
        let batch = batching.batch(split, &rows);
        let logits = model.forward(&Inputs::new(&batch, device), None);
        let logits = logits.into_data().try_into_vec::<f32>().expect("logits are f32");
        let (l, p) = loss.score(&logits, &batch.labels, outputs);
        losses.extend(l);
        probabilities.extend(p);
    }
    let predicted: Vec<i64> = probabilities
        .iter()
        .map(|p| {
            let mut best = 0;
            for (i, &v) in p.iter().enumerate() {
                if v > p[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect();
    Evaluation {
        scores: Scores::new(&split.labels, &predicted, labels),
        loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
        predicted,
        probabilities,
    }
}
