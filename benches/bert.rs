//! BERT speed against PyTorch, side by side at equal threads: a fine-tuning
//! step of the MiniLM checkpoint with the classification head (batch 8 x 128
//! tokens: forward, backward, global-norm clipping, AdamW) and the frozen
//! encoder's throughput (batch 32 x 128, sequences per second). Each
//! repetition runs ours and PyTorch's (benches/reference/bert_speed.py) one
//! after the other, alternating which goes first; the table gives medians
//! and the paired ratios. `make bench-bert` (REPS, STEPS, THREADS: one count
//! or several, `THREADS=1,2`, each run in every repetition, with our scaling
//! from the first count to the others as paired ratios too). With `PYTHON`
//! unset it runs ours only.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use pipeline::data::batches::{Batch, Side};
use pipeline::data::rng;
use pipeline::model::bert::{BertConfig, Checkpoint};
use pipeline::model::{Classifier, Inputs, Setup, Shape, parameter_names};
use pipeline::train::Loss;
use pipeline::train::optimizer::{Clipping, Optimizer, OptimizerConfig};

/// The allocator of the `pipeline` binary (src/main.rs), so that the step
/// runs as it does there ([`pipeline::allocator::configure`] in `main`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// `rows` sequences of 128 random word pieces between [CLS] and [SEP].
fn batch(rows: usize) -> Batch {
    let mut stream = rng::stream(0, "bench/bert");
    let ids = (0..rows * 128)
        .map(|i| match i % 128 {
            0 => 101,
            127 => 102,
            _ => 1000 + (rng::unit(&mut stream) * 29000.0) as u32,
        })
        .collect();
    Batch {
        rows: (0..rows as u32).collect(),
        ids,
        width: 128,
        lengths: vec![128; rows],
        labels: (0..rows as i64).map(|i| i % 2).collect(),
        type_ids: None,
        features: None,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Our seconds per fine-tuning step and sequences per second, `steps` each after a warm-up.
fn ours(checkpoint: &Checkpoint, steps: usize) -> (f64, f64) {
    let config: BertConfig = serde_json::from_value(serde_json::json!({"checkpoint": "minilm"})).unwrap();
    let setup = Setup {
        shape: Shape {
            vocab_size: checkpoint.architecture.vocab_size,
            outputs: 2,
            padding: Side::Right,
        },
        seed: 0,
        glove: None,
        checkpoint: Some(checkpoint),
        features: None,
        train: None,
    };
    let device = Device::flex().autodiff();
    let mut model = config.init(&setup, &device).unwrap();
    let decays = parameter_names(&model).iter().map(|n| model.decays(n)).collect();
    let optimizer_config = OptimizerConfig {
        lr: 5e-5,
        ..OptimizerConfig::default()
    };
    let mut optimizer = Optimizer::new(optimizer_config, decays);
    let clipping = Clipping {
        max_norm: Some(1.0),
        max_value: None,
    };
    let train = batch(8);
    let mut dropout = rng::stream(0, "dropout");
    let mut times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let inputs = Inputs::new(&train, &device);
        let loss = Loss::CrossEntropy.tensor(model.forward(&inputs, Some(&mut dropout)), &train.labels, &device);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(model, grads, 5e-5, clipping, false).0;
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let frozen = model.valid();
    let inference = device.without_autodiff();
    let rows = batch(32);
    let mut forward = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let states = frozen.encode(&Inputs::new(&rows, &inference), &mut None);
        let _ = states.into_data();
        if step > 0 {
            forward.push(start.elapsed().as_secs_f64());
        }
    }
    (median(times), 32.0 / median(forward))
}

/// PyTorch's figures from the reference script.
fn pytorch(python: Option<&str>, checkpoint: &PathBuf, threads: usize, steps: usize) -> (f64, f64) {
    let Some(python) = python else {
        return (f64::NAN, f64::NAN);
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/reference/bert_speed.py");
    let output = Command::new(python)
        .arg(script)
        .arg(checkpoint)
        .arg(threads.to_string())
        .arg(steps.to_string())
        .output()
        .expect("PYTHON runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    (
        json["step_seconds"].as_f64().unwrap(),
        json["sequences_per_second"].as_f64().unwrap(),
    )
}

fn main() {
    pipeline::allocator::configure();
    let python = std::env::var("PYTHON").ok();
    if python.is_none() {
        eprintln!("PYTHON is not set: ours only (PyTorch's columns are NaN)");
    }
    let dir = PathBuf::from(std::env::var("MINILM_DIR").expect("MINILM_DIR: the all-MiniLM-L6-v2 checkpoint"));
    let reps: usize = env("REPS", "3").parse().unwrap();
    let threads: Vec<usize> = env("THREADS", "1")
        .split(',')
        .map(|t| t.trim().parse().expect("THREADS: thread counts separated by commas"))
        .collect();
    let steps: usize = env("STEPS", "5").parse().unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let pools: Vec<_> = threads
        .iter()
        .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())
        .collect();
    // Per thread count, per repetition: (ours, PyTorch), each (seconds per step, sequences/s).
    let mut runs = vec![Vec::new(); threads.len()];
    for rep in 0..reps {
        for (k, (&count, pool)) in threads.iter().zip(&pools).enumerate() {
            let run_ours = || pool.install(|| ours(&checkpoint, steps));
            let (a, b) = if rep % 2 == 0 {
                let a = run_ours();
                (a, pytorch(python.as_deref(), &dir, count, steps))
            } else {
                let b = pytorch(python.as_deref(), &dir, count, steps);
                (run_ours(), b)
            };
            eprintln!(
                "rep {rep}, {count} thread(s): step ours {:.3} s, PyTorch {:.3} s; frozen ours {:.1}/s, PyTorch {:.1}/s",
                a.0, b.0, a.1, b.1
            );
            runs[k].push((a, b));
        }
    }
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" / ");
    println!(
        "MiniLM (all-MiniLM-L6-v2), {reps} paired repetitions of {steps} steps, thread counts {:?} in each",
        threads
    );
    println!("| | threads | ours | PyTorch | ratio (>1: ours faster) | paired ratios |");
    println!("|---|---|---|---|---|---|");
    for (&count, runs) in threads.iter().zip(&runs) {
        let step_ratios: Vec<f64> = runs.iter().map(|(o, t)| t.0 / o.0).collect();
        let frozen_ratios: Vec<f64> = runs.iter().map(|(o, t)| o.1 / t.1).collect();
        println!(
            "| fine-tuning step, 8 x 128 | {count} | {:.3} s | {:.3} s | {:.2}x | {} |",
            median(runs.iter().map(|r| r.0.0).collect()),
            median(runs.iter().map(|r| r.1.0).collect()),
            median(step_ratios.clone()),
            list(&step_ratios)
        );
        println!(
            "| frozen encoder, 32 x 128 | {count} | {:.1} seq/s | {:.1} seq/s | {:.2}x | {} |",
            median(runs.iter().map(|r| r.0.1).collect()),
            median(runs.iter().map(|r| r.1.1).collect()),
            median(frozen_ratios.clone()),
            list(&frozen_ratios)
        );
    }
    // Scaling: each thread count against the first, within the same repetition.
    for (&count, later) in threads.iter().zip(&runs).skip(1) {
        let step: Vec<f64> = runs[0].iter().zip(later).map(|(a, b)| a.0.0 / b.0.0).collect();
        let frozen: Vec<f64> = runs[0].iter().zip(later).map(|(a, b)| b.0.1 / a.0.1).collect();
        println!(
            "ours at {count} threads against {}: fine-tuning step {:.2}x ({}), frozen encoder {:.2}x ({})",
            threads[0],
            median(step.clone()),
            list(&step),
            median(frozen.clone()),
            list(&frozen)
        );
    }
}
