//! The frozen-encoder workflow's head against PyTorch, side by side at equal
//! threads: a training step (forward, backward, Adam) of
//! `pipelines/imdb-bert-bigru.yaml`'s model, a 2-layer bidirectional GRU of
//! 256 units with dropout 0.25 between the layers and on the pooled states,
//! over encoder features `[64, 128, 384]`, BCE with logits. Each repetition
//! runs ours and PyTorch's (benches/reference/bigru_head.py) one after the
//! other, alternating which goes first; the table gives medians and the
//! paired ratios. `make bench-head` (REPS, STEPS, THREADS: one count or
//! several, `THREADS=1,2`). With `PYTHON` unset it runs ours only.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use pipeline::data::batches::{Batch, Side};
use pipeline::data::rng;
use pipeline::model::config::ModelConfig;
use pipeline::model::{Classifier, Inputs, Setup, Shape, parameter_names};
use pipeline::train::Loss;
use pipeline::train::optimizer::{Clipping, Optimizer, OptimizerConfig, OptimizerKind};

/// The allocator of the `pipeline` binary (src/main.rs), so that the step
/// runs as it does there ([`pipeline::allocator::configure`] in `main`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;
const TIME: usize = 128;
const FEATURES: usize = 384;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A batch of random encoder features at full length.
fn batch() -> Batch {
    let mut stream = rng::stream(0, "bench/head");
    let features = (0..BATCH * TIME * FEATURES)
        .map(|_| (rng::unit(&mut stream) as f32 - 0.5) * 1.7)
        .collect();
    Batch {
        rows: (0..BATCH as u32).collect(),
        ids: vec![0; BATCH * TIME],
        width: TIME,
        lengths: vec![TIME as u32; BATCH],
        labels: (0..BATCH as i64).map(|i| i % 2).collect(),
        type_ids: None,
        features: Some((features, FEATURES)),
    }
}

/// Our seconds per training step, the median of `steps` after a warm-up.
fn ours(steps: usize) -> f64 {
    let config: ModelConfig = serde_json::from_value(serde_json::json!({
        "type": "gru", "hidden_size": 256, "num_layers": 2, "bidirectional": true,
        "dropout": 0.25, "head_dropout": 0.25, "pooling": "last",
    }))
    .unwrap();
    let ModelConfig::Rnn(config) = config else {
        unreachable!("type: gru is a recurrent network")
    };
    let setup = Setup {
        shape: Shape {
            vocab_size: 1,
            outputs: Loss::BceWithLogits.outputs(2),
            padding: Side::Right,
        },
        seed: 0,
        glove: None,
        checkpoint: None,
        features: Some(FEATURES),
        train: None,
    };
    let device = Device::flex().autodiff();
    let mut model = config.init(&setup, &device);
    let decays = parameter_names(&model).iter().map(|n| model.decays(n)).collect();
    let optimizer_config = OptimizerConfig {
        kind: OptimizerKind::Adam,
        lr: 1e-3,
        ..OptimizerConfig::default()
    };
    let mut optimizer = Optimizer::new(optimizer_config, decays);
    let no_clipping = Clipping {
        max_norm: None,
        max_value: None,
    };
    let train = batch();
    let mut dropout = rng::stream(0, "dropout");
    let mut times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let inputs = Inputs::new(&train, &device);
        let logits = model.forward(&inputs, Some(&mut dropout));
        let loss = Loss::BceWithLogits.tensor(logits, &train.labels, &device);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(model, grads, 1e-3, no_clipping, false).0;
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    median(times)
}

/// PyTorch's seconds per step from the reference script.
fn pytorch(python: Option<&str>, threads: usize, steps: usize) -> f64 {
    let Some(python) = python else {
        return f64::NAN;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/reference/bigru_head.py");
    let output = Command::new(python)
        .arg(script)
        .arg(threads.to_string())
        .arg(steps.to_string())
        .output()
        .expect("PYTHON runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    json["step_seconds"].as_f64().unwrap()
}

fn main() {
    pipeline::allocator::configure();
    let python = std::env::var("PYTHON").ok();
    if python.is_none() {
        eprintln!("PYTHON is not set: ours only (PyTorch's column is NaN)");
    }
    let reps: usize = env("REPS", "3").parse().unwrap();
    let steps: usize = env("STEPS", "3").parse().unwrap();
    let threads: Vec<usize> = env("THREADS", "1")
        .split(',')
        .map(|t| t.trim().parse().expect("THREADS: thread counts separated by commas"))
        .collect();
    let pools: Vec<_> = threads
        .iter()
        .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())
        .collect();
    // Per thread count, per repetition: (ours, PyTorch) seconds per step.
    let mut runs = vec![Vec::new(); threads.len()];
    for rep in 0..reps {
        for (k, (&count, pool)) in threads.iter().zip(&pools).enumerate() {
            let run_ours = || pool.install(|| ours(steps));
            let pair = if rep % 2 == 0 {
                let a = run_ours();
                (a, pytorch(python.as_deref(), count, steps))
            } else {
                let b = pytorch(python.as_deref(), count, steps);
                (run_ours(), b)
            };
            eprintln!(
                "rep {rep}, {count} thread(s): ours {:.3} s, PyTorch {:.3} s",
                pair.0, pair.1
            );
            runs[k].push(pair);
        }
    }
    println!(
        "BiGRU head (2 layers x 2 directions x 256, features {BATCH} x {TIME} x {FEATURES}), {reps} paired repetitions of {steps} steps"
    );
    println!("| threads | ours | PyTorch | ratio (>1: ours faster) | paired ratios |");
    println!("|---|---|---|---|---|");
    for (&count, runs) in threads.iter().zip(&runs) {
        let ratios: Vec<f64> = runs.iter().map(|(o, t)| t / o).collect();
        let list = ratios.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" / ");
        println!(
            "| {count} | {:.3} s | {:.3} s | {:.2}x | {list} |",
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
            median(ratios.clone()),
        );
    }
}
